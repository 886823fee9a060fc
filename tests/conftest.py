"""Shared fixtures: tiny RAD-DINO configs, a saved tiny model and the labelled sample."""

import csv
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "fresh_clone: runs the commands in a copy of the checkout with no ../shared (test_fresh_clone.py)"
    )


REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLE = REPO_ROOT / "data" / "sample"


def copy_checkout(destination: Path) -> Path:
    """The files git tracks or would track in the checkout, copied to `destination` (a deleted file is left out)."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO_ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = REPO_ROOT / name
        if source.is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)
    return destination


@pytest.fixture
def tiny_config():
    from configuration_rad_dino import RadDinoConfig

    return RadDinoConfig(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=56,
        dino_head_hidden_size=32,
        dino_head_bottleneck_size=16,
        dino_head_n_prototypes=50,
    )


@pytest.fixture
def tiny_model(tiny_config):
    from modeling_rad_dino import RadDinoModel

    torch.manual_seed(0)
    model = RadDinoModel(tiny_config).eval()
    # Non-trivial LayerScale and mask token so that tests notice if either is dropped or misplaced.
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("lambda1") or name.endswith("mask_token"):
                parameter.normal_()
    return model


@pytest.fixture
def tiny_model_dir(tiny_model, tmp_path):
    """`tiny_model` saved with a 56 px processor, as `--model DIR` takes it."""
    from image_processing_rad_dino import RadDinoImageProcessor

    model_dir = tmp_path / "model"
    tiny_model.save_pretrained(model_dir)
    RadDinoImageProcessor(size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56}).save_pretrained(model_dir)
    return model_dir


@pytest.fixture
def labelled_sample_csv(tmp_path) -> Path:
    """12 of the embedded sample's labelled pediatric images (its first 4 per class, 12 patients) as a probe CSV:
    few enough to keep the tests that encode them fast."""
    with open(SAMPLE / "metadata.csv", encoding="utf-8") as handle:
        labelled = [row for row in csv.DictReader(handle) if row["label"]]
    rows = [
        row for label in ("normal", "bacterial", "viral") for row in [r for r in labelled if r["label"] == label][:4]
    ]
    path = tmp_path / "probe.csv"
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["file", "label", "patient"])
        writer.writeheader()
        for row in rows:
            writer.writerow({"file": str(SAMPLE / row["file"]), "label": row["label"], "patient": row["patient"]})
    return path


@pytest.fixture
def free_port() -> int:
    """A TCP port nothing listens on now, for a multi-process rendezvous (fixed ports collide across runs)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# Stored values of a small MONOCHROME1 radiograph and what RAD-DINO preprocessing makes of them, worked by hand:
# modality LUT 2 * v - 100 -> -100, 160, 400, 1900; MONOCHROME1 mirrors within the range (1800 - x) -> 1900, 1640,
# 1400, -100; min-max to [0, 255]: 255 * (x + 100) / 2000 -> 255, 221.85, 191.25, 0 -> rint 255, 222, 191, 0.
MONOCHROME1_STORED = (0, 130, 250, 1000)
MONOCHROME1_UINT8 = (255, 222, 191, 0)


@pytest.fixture
def monochrome1_dicom(tmp_path) -> tuple[Path, "object"]:
    """An uncompressed 16 x 16 MONOCHROME1 DICOM with a rescale slope/intercept, and its expected uint8 image."""
    import numpy as np

    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    quadrant = np.array(MONOCHROME1_STORED).reshape(2, 2)
    stored = np.kron(quadrant, np.ones((8, 8), dtype=int)).astype(np.uint16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"  # CR Image Storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID, "CR"
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME1"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleSlope, ds.RescaleIntercept = 2, -100
    ds.PixelData = stored.tobytes()
    path = tmp_path / "mono1.dcm"
    ds.save_as(path, enforce_file_format=True)
    expected = np.kron(np.array(MONOCHROME1_UINT8).reshape(2, 2), np.ones((8, 8), dtype=int)).astype(np.uint8)
    return path, expected
