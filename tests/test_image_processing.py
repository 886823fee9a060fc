"""Tests for image_processing_rad_dino: reader, min-max scaling, processor parity, DICOM, bad inputs, round trip.

DICOM inputs are the small pydicom-data copies in tests/fixtures/dicom (shipped with the repository). The one test
that needs a volume of real radiographs reads ../shared/data (relative to the repository root) and is skipped with a
reason when it is absent. Run with HF_HUB_OFFLINE=1.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile
from transformers import AutoImageProcessor, BitImageProcessorPil

from image_processing_rad_dino import (
    MIN_IMAGE_SIDE,
    RadDinoImageProcessor,
    UnreadableImageError,
    read_image,
    to_uint8,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
DICOM_DIR = REPO_ROOT / "tests" / "fixtures" / "dicom"
SAMPLE_DIR = REPO_ROOT / "data" / "sample"
SAMPLE_PNG = SAMPLE_DIR / "images" / "00870a9c.png"  # an adult CR radiograph (hannover-covid), 8-bit PNG

needs_shared = pytest.mark.skipif(
    not SHARED_DATA.is_dir(), reason=f"needs the real radiographs of ../shared/data (not found at {SHARED_DATA})"
)

# The released microsoft/rad-dino preprocessor_config.json.
RELEASED = dict(
    crop_size={"height": 518, "width": 518},
    do_center_crop=True,
    do_convert_rgb=True,
    do_normalize=True,
    do_rescale=True,
    do_resize=True,
    image_mean=[0.5307, 0.5307, 0.5307],
    image_std=[0.2583, 0.2583, 0.2583],
    resample=3,
    rescale_factor=0.00392156862745098,
    size={"shortest_edge": 518},
)


@pytest.fixture(scope="module")
def processor() -> RadDinoImageProcessor:
    return RadDinoImageProcessor()


@pytest.fixture(scope="module")
def reference() -> BitImageProcessorPil:
    return BitImageProcessorPil(**RELEASED)


def _real_8bit_images() -> list[Path]:
    pediatric = []
    for label in ("normal", "bacterial", "viral"):
        pediatric += sorted((SHARED_DATA / "pediatric-pneumonia" / "train" / label).glob("*.jpg"))[:2]
    hannover = sorted((SHARED_DATA / "hannover-covid" / "images").glob("*.png"))[:4]
    return pediatric + hannover


@pytest.fixture(scope="module")
def dicom_rg1() -> dict:
    """RG1 uncompressed (241 x 256 copy): reader output and raw stored values."""
    pydicom = pytest.importorskip("pydicom")
    path = DICOM_DIR / "RG1_UNCR.dcm"
    return {"path": path, "image": read_image(path), "raw": pydicom.dcmread(path).pixel_array}


# --------------------------------------------------------------------------------------------------------------
# Defaults and parity with BitImageProcessor
# --------------------------------------------------------------------------------------------------------------


def test_defaults_equal_released_config(processor):
    saved = processor.to_dict()
    for key, value in RELEASED.items():
        got = saved[key]
        if isinstance(value, list):
            got = list(got)
        assert got == value, key
    assert saved["image_processor_type"] == "BitImageProcessor"


@needs_shared
def test_bit_identical_to_bit_image_processor_on_real_8bit_images(processor, reference):
    paths = _real_8bit_images()
    assert len(paths) >= 8, "expected real JPEG and PNG chest X-rays in the shared data"
    for path in paths:
        ours = processor(Image.open(path), return_tensors="np")["pixel_values"]
        ref = reference(Image.open(path), return_tensors="np")["pixel_values"]
        assert ours.shape == (1, 3, 518, 518)
        assert ours.dtype == np.float32
        assert np.array_equal(ours, ref), path
        # A path (read by read_image) gives the same result as the stock processor given the same path.
        from_path = processor(str(path), return_tensors="np")["pixel_values"]
        assert np.array_equal(from_path, reference(str(path), return_tensors="np")["pixel_values"]), path
        assert np.array_equal(from_path, ref), path
    # Batched call equals the per-image results.
    batch = processor([Image.open(p) for p in paths[:3]], return_tensors="np")["pixel_values"]
    singles = [reference(Image.open(p), return_tensors="np")["pixel_values"][0] for p in paths[:3]]
    assert np.array_equal(batch, np.stack(singles))


def test_bit_identical_to_bit_image_processor_on_the_embedded_sample(processor, reference):
    """The repository's own 8-bit JPEG and PNG radiographs, as PIL images and as paths (read by read_image)."""
    images = SAMPLE_DIR / "images"
    # Most of these do not span 0..255 (e.g. 00870a9c.png: 2..238), so a min-max stretch of 8-bit data shows.
    paths = [images / name for name in ("00870a9c.png", "073a8f93.png", "1052b0fe.png", "person10_virus_35.jpg")]
    paths += sorted(images.glob("IM-*.jpg"))[:1]
    for path in paths:
        ref = reference(Image.open(path), return_tensors="np")["pixel_values"]
        assert np.array_equal(processor(Image.open(path), return_tensors="np")["pixel_values"], ref), path
        assert np.array_equal(processor(str(path), return_tensors="np")["pixel_values"], ref), path


def test_8bit_files_keep_their_grey_values(tmp_path, processor):
    """An 8-bit file of greys 60..180 is not stretched: a flat 60 region normalises to (60 / 255 - mean) / std."""
    image = np.full((32, 32), 60, dtype=np.uint8)
    image[:, 16:] = 180
    path = tmp_path / "narrow.png"
    Image.fromarray(image).save(path)
    assert np.array_equal(read_image(path), image)
    out = processor(path, return_tensors="np", size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    pixels = out["pixel_values"][0, 0]
    assert pixels[:, 2] == pytest.approx(np.full(32, (60 / 255 - 0.5307) / 0.2583), abs=1e-5)
    assert pixels[:, -3] == pytest.approx(np.full(32, (180 / 255 - 0.5307) / 0.2583), abs=1e-5)


def test_accepts_bytes_arrays_and_grey_arrays(processor, reference):
    path = SAMPLE_PNG
    ref = reference(Image.open(path), return_tensors="np")["pixel_values"]
    grey = np.asarray(Image.open(path).convert("L"))
    assert grey.ndim == 2
    for source in (path.read_bytes(), path, grey, np.stack([grey] * 3, axis=-1)):
        out = processor(source, return_tensors="np")["pixel_values"]
        assert np.array_equal(out, ref), type(source)


# --------------------------------------------------------------------------------------------------------------
# to_uint8 and 16-bit images
# --------------------------------------------------------------------------------------------------------------


def test_to_uint8_min_max_and_constant():
    ramp = np.linspace(100.0, 4000.0, 256).reshape(16, 16)
    out = to_uint8(ramp)
    assert out.dtype == np.uint8 and out.shape == (16, 16)
    assert out.min() == 0 and out.max() == 255
    assert np.all(np.diff(out.ravel().astype(int)) >= 0)  # monotone
    constant = np.full((20, 20), 1234, dtype=np.uint16)
    with np.errstate(all="raise"):  # no divide-by-zero
        assert np.array_equal(to_uint8(constant), np.zeros((20, 20), np.uint8))


def test_to_uint8_hand_values():
    """255 * (x - 100) / 200 = 0, 1.275, 3.825, 77.775, 253.725, 255, rounded to the nearest integer."""
    values = np.array([[100, 101, 103], [161, 299, 300]], dtype=np.uint16)
    assert to_uint8(values).tolist() == [[0, 1, 4], [78, 254, 255]]
    assert to_uint8(values.astype(np.float32) - 1000).tolist() == [[0, 1, 4], [78, 254, 255]]  # negative floats


def test_16bit_png_hand_values(tmp_path, processor):
    """16-bit PNG: 255 * (x - 1000) / 4000 -> 0, 63.75, 133.875, 255 -> 0, 64, 134, 255; then the stock pipeline."""
    quadrant = np.array([[1000, 2000], [3100, 5000]], dtype=np.uint16)
    path = tmp_path / "grey16.png"
    Image.fromarray(np.kron(quadrant, np.ones((8, 8), dtype=np.uint16))).save(path)
    expected = np.kron(np.array([[0, 64], [134, 255]], dtype=np.uint8), np.ones((8, 8), dtype=np.uint8))
    assert np.array_equal(to_uint8(read_image(path)), expected)
    small = {"size": {"shortest_edge": 16}, "crop_size": {"height": 16, "width": 16}}
    out = processor(path, return_tensors="np", **small)["pixel_values"]
    reference = BitImageProcessorPil(**{**RELEASED, **small})(Image.fromarray(expected).convert("RGB"))
    assert np.array_equal(out, reference["pixel_values"][0][None])


def test_dicom_monochrome1_hand_values(monochrome1_dicom, processor):
    """Modality LUT, MONOCHROME1 inversion and min-max scaling of a synthetic DICOM, worked by hand (conftest)."""
    path, expected = monochrome1_dicom
    assert np.array_equal(to_uint8(read_image(path)), expected)
    small = {"size": {"shortest_edge": 16}, "crop_size": {"height": 16, "width": 16}}
    out = processor(path, return_tensors="np", **small)["pixel_values"]
    reference = BitImageProcessorPil(**{**RELEASED, **small})(Image.fromarray(expected).convert("RGB"))
    assert np.array_equal(out, reference["pixel_values"][0][None])


def test_16bit_png_keeps_range_then_scales(tmp_path, processor):
    ramp = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)  # 0 .. 65520
    path = tmp_path / "ramp16.png"
    Image.fromarray(ramp).save(path)
    image = read_image(path)
    assert image.dtype == np.uint16 and image.shape == (64, 64)
    assert np.array_equal(image, ramp)  # full 16-bit values kept, not truncated to 8 bits
    assert image.max() > 255
    scaled = to_uint8(image)
    assert scaled.min() == 0 and scaled.max() == 255
    # 256 distinct input levels per 8-bit step: the scaled ramp must use (nearly) all 256 output levels.
    assert len(np.unique(scaled)) == 256
    out = processor(path, return_tensors="np")["pixel_values"]
    via_uint8 = processor(np.stack([scaled] * 3, axis=-1), return_tensors="np")["pixel_values"]
    assert out.shape == (1, 3, 518, 518)
    assert np.array_equal(out, via_uint8)
    # A 16-bit array and a 16-bit PIL image are handled the same way.
    assert np.array_equal(processor(ramp, return_tensors="np")["pixel_values"], out)
    assert np.array_equal(processor(Image.open(path), return_tensors="np")["pixel_values"], out)


def test_16bit_tiff(tmp_path):
    values = np.linspace(0, 40000, 30 * 40).reshape(30, 40).astype(np.uint16)
    path = tmp_path / "grey16.tif"
    Image.fromarray(values).save(path)
    image = read_image(path)
    assert image.dtype == np.uint16
    assert np.array_equal(image, values)


# --------------------------------------------------------------------------------------------------------------
# DICOM
# --------------------------------------------------------------------------------------------------------------


def test_dicom_monochrome1_is_inverted_chest(dicom_rg1):
    pydicom = pytest.importorskip("pydicom")
    ds = pydicom.dcmread(dicom_rg1["path"], stop_before_pixels=True)
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    image, raw = dicom_rg1["image"], dicom_rg1["raw"]
    assert image.shape == raw.shape == (256, 241) and image.dtype == np.float32
    # Inverted relative to the stored values.
    assert np.corrcoef(image.ravel()[::97], raw.ravel()[::97].astype(np.float64))[0, 1] < -0.9
    # Anatomy: after inversion the spine/mediastinum column is brighter than the two lung fields.
    display = to_uint8(image)
    h, w = display.shape
    rows = slice(int(0.30 * h), int(0.60 * h))
    mediastinum = display[rows, int(0.45 * w) : int(0.55 * w)].mean()
    lungs = np.concatenate(
        [display[rows, int(0.20 * w) : int(0.35 * w)].ravel(), display[rows, int(0.65 * w) : int(0.80 * w)].ravel()]
    ).mean()
    assert mediastinum > lungs + 30, (mediastinum, lungs)
    raw_display = to_uint8(raw)  # the stored (non-inverted) values show the opposite
    raw_mediastinum = raw_display[rows, int(0.45 * w) : int(0.55 * w)].mean()
    assert raw_mediastinum < raw_display[rows, int(0.20 * w) : int(0.35 * w)].mean()


def test_dicom_rg3_monochrome1_inverted():
    pydicom = pytest.importorskip("pydicom")
    path = DICOM_DIR / "RG3_UNCR.dcm"
    ds = pydicom.dcmread(path)
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    image = read_image(path)
    assert image.shape == (256, 256)
    assert np.corrcoef(image.ravel()[::89], ds.pixel_array.ravel()[::89].astype(np.float64))[0, 1] < -0.9
    # Also through a pydicom Dataset object.
    assert np.array_equal(read_image(ds), image)


def test_dicom_through_processor(processor, dicom_rg1):
    out = processor(dicom_rg1["path"], return_tensors="np")["pixel_values"]
    assert out.shape == (1, 3, 518, 518)
    assert np.array_equal(out[0, 0], out[0, 1]) and np.array_equal(out[0, 0], out[0, 2])
    expected = processor(np.repeat(to_uint8(dicom_rg1["image"])[..., None], 3, axis=-1), return_tensors="np")
    assert np.array_equal(out, expected["pixel_values"])
    # Range check: min-max scaled to [0, 255] before the stock pipeline.
    lo, hi = (0 - 0.5307 * 255) / (0.2583 * 255), (255 - 0.5307 * 255) / (0.2583 * 255)
    assert out.min() >= lo - 0.05 and out.max() <= hi + 0.05


def test_dicom_jpeg2000_lossless_matches_uncompressed(processor, dicom_rg1):
    pytest.importorskip("pylibjpeg")
    image = read_image(DICOM_DIR / "RG1_J2KR.dcm")
    assert np.array_equal(image, dicom_rg1["image"])  # lossless
    a = processor(DICOM_DIR / "RG1_J2KR.dcm", return_tensors="np")["pixel_values"]
    b = processor(dicom_rg1["path"], return_tensors="np")["pixel_values"]
    assert np.allclose(a, b, atol=1e-6)


def test_dicom_missing_decoder_names_package(monkeypatch):
    pytest.importorskip("pydicom")
    from pydicom.pixels import get_decoder
    from pydicom.uid import JPEG2000Lossless

    decoder = get_decoder(JPEG2000Lossless)
    # Make pydicom believe that every JPEG 2000 plugin lacks its dependencies: it raises its own
    # "all plugins are missing dependencies" RuntimeError, as on a machine without pylibjpeg.
    monkeypatch.setattr(decoder, "_available", {})
    monkeypatch.setattr(
        decoder,
        "_unavailable",
        {
            "gdcm": ("gdcm>=3.0.10",),
            "pylibjpeg": ("pylibjpeg>=2.0", "pylibjpeg-openjpeg>=2.0"),
            "pillow": ("pillow>=10.0", "numpy"),
        },
    )
    with pytest.raises(UnreadableImageError) as info:
        read_image(DICOM_DIR / "RG1_J2KR.dcm")
    message = str(info.value)
    assert "RG1_J2KR.dcm" in message
    assert "pip install pylibjpeg pylibjpeg-openjpeg" in message


# --------------------------------------------------------------------------------------------------------------
# Bad inputs
# --------------------------------------------------------------------------------------------------------------


def _write_jpeg(path: Path) -> None:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, size=(128, 128), dtype=np.uint8)).save(path, quality=90)


def _assert_unreadable(source, expected_name: str) -> UnreadableImageError:
    with pytest.raises(UnreadableImageError) as info:
        read_image(source)
    assert expected_name in str(info.value)
    assert isinstance(info.value, ValueError)
    return info.value


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    _assert_unreadable(path, "empty.png")


def test_missing_file(tmp_path):
    _assert_unreadable(tmp_path / "nowhere.png", "nowhere.png")


def test_truncated_jpeg(tmp_path, processor):
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    full = tmp_path / "full.jpg"
    _write_jpeg(full)
    data = full.read_bytes()
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(data[: len(data) // 2])
    _assert_unreadable(cut, "cut.jpg")
    with pytest.raises(UnreadableImageError, match="cut.jpg"):
        processor(str(cut))
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    assert read_image(full).shape == (128, 128)


def test_text_file_named_png(tmp_path):
    path = tmp_path / "x.png"
    path.write_text("this is not an image\n")
    _assert_unreadable(path, "x.png")


def test_tiny_image(tmp_path):
    path = tmp_path / "dot.png"
    Image.new("L", (1, 1), 128).save(path)
    error = _assert_unreadable(path, "dot.png")
    assert f"{MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE}" in str(error)
    ok = tmp_path / "patch.png"
    Image.new("L", (MIN_IMAGE_SIDE, MIN_IMAGE_SIDE), 128).save(ok)
    assert read_image(ok).shape == (MIN_IMAGE_SIDE, MIN_IMAGE_SIDE)


def test_opaque_rgba_png_works(tmp_path, processor):
    rgba = np.zeros((40, 50, 4), dtype=np.uint8)
    rgba[..., 0] = 200
    rgba[..., 1] = 100
    rgba[..., 2] = 50
    rgba[..., 3] = 255
    path = tmp_path / "rgba.png"
    Image.fromarray(rgba, mode="RGBA").save(path)
    image = read_image(path)
    assert image.shape == (40, 50, 3) and image.dtype == np.uint8
    assert np.array_equal(image, rgba[..., :3])  # opaque alpha dropped, colours kept
    out = processor(path, return_tensors="np")["pixel_values"]
    assert out.shape == (1, 3, 518, 518)


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_transparent_png_is_rejected(tmp_path, processor, mode):
    grey = np.full((40, 50), 120, dtype=np.uint8)
    alpha = np.linspace(0, 255, 50, dtype=np.uint8)[None, :].repeat(40, axis=0)
    channels = [grey, grey, grey, alpha] if mode == "RGBA" else [grey, alpha]
    path = tmp_path / f"transparent-{mode}.png"
    Image.fromarray(np.stack(channels, axis=-1), mode=mode).save(path)
    with pytest.raises(UnreadableImageError, match=f"transparent-{mode}.png.*transparent"):
        read_image(path)
    with pytest.raises(UnreadableImageError, match="transparent"):
        processor(str(path), return_tensors="np")


def test_bytes_name_is_used(tmp_path):
    with pytest.raises(UnreadableImageError, match="upload-17.png"):
        read_image(b"not an image at all", name="upload-17.png")
    with pytest.raises(UnreadableImageError, match="<bytes>"):
        read_image(b"")


def test_dicom_without_pixel_data(tmp_path):
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"  # CR Image Storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientName = "Test^NoPixels"
    ds.Modality = "CR"
    path = tmp_path / "nopixels.dcm"
    ds.save_as(path, enforce_file_format=True)
    assert path.read_bytes()[128:132] == b"DICM"
    error = _assert_unreadable(path, "nopixels.dcm")
    assert "pixel data" in str(error).lower()
    # Also detected by the DICM magic without the .dcm suffix.
    renamed = tmp_path / "nopixels.bin"
    renamed.write_bytes(path.read_bytes())
    _assert_unreadable(renamed, "nopixels.bin")


# --------------------------------------------------------------------------------------------------------------
# save_pretrained / from_pretrained
# --------------------------------------------------------------------------------------------------------------


def test_save_and_load_round_trip(tmp_path, processor, reference):
    import json

    processor.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "preprocessor_config.json").read_text())
    # Decision: stock type name (loads without remote code) + auto_map to this class (with remote code).
    assert config["image_processor_type"] == "BitImageProcessor"
    # Per backend, not a string: see test_stock_loading.py for why (pipeline(...) would ask to run custom code).
    assert config["auto_map"] == {"AutoImageProcessor": {"pil": "image_processing_rad_dino.RadDinoImageProcessor"}}
    assert (tmp_path / "image_processing_rad_dino.py").is_file()

    plain = AutoImageProcessor.from_pretrained(tmp_path)
    assert type(plain).__name__ == "BitImageProcessorPil"
    remote = AutoImageProcessor.from_pretrained(tmp_path, trust_remote_code=True)
    assert type(remote).__name__ == "RadDinoImageProcessor"
    assert type(remote).__module__.startswith("transformers_modules")

    path = SAMPLE_PNG
    expected = processor(Image.open(path), return_tensors="np")["pixel_values"]
    for loaded in (plain, remote):
        got = loaded(Image.open(path), return_tensors="np")["pixel_values"]
        assert np.array_equal(got, expected), type(loaded)
    assert np.array_equal(reference(Image.open(path), return_tensors="np")["pixel_values"], expected)

    # The remote-code processor keeps the extended inputs (16-bit arrays here).
    ramp = (np.arange(32 * 48, dtype=np.uint32).reshape(32, 48) * 40).astype(np.uint16)
    assert np.array_equal(
        remote(ramp, return_tensors="np")["pixel_values"], processor(ramp, return_tensors="np")["pixel_values"]
    )

    # Saving the remote-loaded processor again writes the same configuration.
    again = tmp_path / "again"
    remote.save_pretrained(again)
    assert json.loads((again / "preprocessor_config.json").read_text()) == config


# --------------------------------------------------------------------------------------------------------------
# Embedded sample
# --------------------------------------------------------------------------------------------------------------


def test_embedded_sample(processor):
    metadata = SAMPLE_DIR / "metadata.csv"
    if not metadata.is_file():
        pytest.skip(f"embedded sample not found at {SAMPLE_DIR}")
    rows = list(csv.DictReader(metadata.open()))
    assert list(rows[0].keys()) == [
        "file", "source", "patient", "license", "label", "sex", "age", "lung_mask", "report", "report_source"
    ]  # fmt: skip
    assert (SAMPLE_DIR / "ATTRIBUTION.md").is_file()
    files = [path for path in SAMPLE_DIR.rglob("*") if path.is_file()]
    assert sum(path.stat().st_size for path in files) <= 10 * 1024 * 1024
    listed = {SAMPLE_DIR / row["file"] for row in rows} | {
        SAMPLE_DIR / row["lung_mask"] for row in rows if row["lung_mask"]
    }
    assert listed == set(files) - {metadata, SAMPLE_DIR / "ATTRIBUTION.md"}  # every file listed, nothing missing
    by_source: dict[str, set] = {}
    for row in rows:
        by_source.setdefault(row["source"], set()).add(row["patient"])
    patients = {"pediatric-pneumonia": 36, "hannover-covid": 28, "covid-chestxray": 2, "pydicom-data": 1}
    assert {k: len(v) for k, v in by_source.items()} == patients
    assert len(rows) == sum(patients.values())  # one image a patient
    assert {row["license"] for row in rows} == {"CC BY 4.0", "CC BY 3.0", "MIT"}
    labels = [r["label"] for r in rows if r["source"] == "pediatric-pneumonia"]
    assert sorted(set(labels)) == ["bacterial", "normal", "viral"] and all(labels.count(x) == 12 for x in set(labels))
    assert {r["report_source"] for r in rows if r["report"]} == {"template from the label", "case report notes"}
    for row in rows:
        if row["lung_mask"]:
            mask = np.asarray(Image.open(SAMPLE_DIR / row["lung_mask"]))
            assert mask.shape == read_image(SAMPLE_DIR / row["file"]).shape[:2]
            assert set(np.unique(mask)) <= {0, 1, 255}
    image = read_image(SAMPLE_DIR / rows[0]["file"])
    assert image.dtype == np.uint8 and min(image.shape[:2]) >= MIN_IMAGE_SIDE
    assert processor(io.BytesIO((SAMPLE_DIR / rows[-1]["file"]).read_bytes()).getvalue(), return_tensors="np")[
        "pixel_values"
    ].shape == (1, 3, 518, 518)
