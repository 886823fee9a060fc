"""Feature extraction command and the patch-PCA picture, on the embedded sample with a tiny encoder."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA

import rad_dino_hf.cli.downstream as train_downstream
from image_processing_rad_dino import RadDinoImageProcessor
from rad_dino_hf.embeddings import list_images, read_embeddings, vectors
from rad_dino_hf.errors import USAGE_EXIT_CODE, UserError
from rad_dino_hf.encoders import extract_features
from rad_dino_hf.plots import patch_pca_rgb

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLE = REPO_ROOT / "data" / "sample" / "images"


@pytest.fixture
def tiny_processor():
    return RadDinoImageProcessor(size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56})


def test_extract_features_shapes_and_order(tiny_model, tiny_processor):
    files = list_images(SAMPLE)[:5]
    features = extract_features(tiny_model, tiny_processor, files, batch_size=2, progress=False)
    assert features["cls"].shape == (5, 64)
    assert features["patch"].shape == (5, 64, 4, 4)
    single = extract_features(tiny_model, tiny_processor, files[3:4], progress=False)
    assert torch.allclose(single["cls"][0], features["cls"][3], atol=1e-5)


def test_extract_features_cls_blocks_are_each_block_s_normed_cls(tiny_model, tiny_processor):
    """DINOv2's linear-evaluation input, built by running the blocks one by one: the final norm of the CLS token
    after each of the last n blocks, earliest first; the last one is the model's CLS embedding."""
    files = list_images(SAMPLE)[:3]
    blocks = tiny_model.config.num_hidden_layers
    features = extract_features(tiny_model, tiny_processor, files, progress=False, cls_blocks=blocks)
    pixels = tiny_processor([str(path) for path in files], return_tensors="pt")["pixel_values"]
    with torch.inference_mode():
        tokens = tiny_model.embeddings(pixels)
        expected = []
        for layer in tiny_model.encoder.layer:
            tokens = layer(tokens)
            tokens = tokens[0] if isinstance(tokens, tuple) else tokens
            expected.append(tiny_model.layernorm(tokens[:, 0]))
    width = tiny_model.config.hidden_size
    assert features["cls_blocks"].shape == (3, blocks * width)
    assert torch.allclose(features["cls_blocks"], torch.cat(expected, dim=1), atol=1e-5)
    assert torch.allclose(features["cls_blocks"][:, -width:], features["cls"], atol=1e-6)
    last = extract_features(tiny_model, tiny_processor, files, progress=False, cls_blocks=1)["cls_blocks"]
    assert torch.allclose(last, features["cls"], atol=1e-6)
    with pytest.raises(ValueError, match="cls_blocks"):
        extract_features(tiny_model, tiny_processor, files, progress=False, cls_blocks=blocks + 1)


def test_patch_pca_matches_sklearn_up_to_sign():
    generator = torch.Generator().manual_seed(0)
    # Anisotropic data so the leading components are well separated.
    patch_maps = torch.randn(3, 16, 5, 5, generator=generator) * torch.linspace(4, 0.1, 16).view(1, 16, 1, 1)
    rgb = patch_pca_rgb(patch_maps)
    assert rgb.shape == (3, 5, 5, 3) and rgb.min() >= 0 and rgb.max() <= 1
    tokens = patch_maps.permute(0, 2, 3, 1).reshape(-1, 16).numpy()
    reference = PCA(n_components=3).fit_transform(tokens)
    ours = rgb.reshape(-1, 3)
    for component in range(3):
        correlation = np.corrcoef(ours[:, component], reference[:, component])[0, 1]
        assert abs(correlation) > 0.9999, (component, correlation)


def test_features_command_writes_outputs(tiny_model, tiny_processor, tmp_path):
    model_dir = tmp_path / "model"
    tiny_model.save_pretrained(model_dir)
    tiny_processor.save_pretrained(model_dir)
    images = tmp_path / "images"
    images.mkdir()
    for path in list_images(SAMPLE)[:3]:
        (images / path.name).write_bytes(path.read_bytes())
    (images / "notes.txt").write_text("ignored: not an image suffix")
    output = tmp_path / "out"
    train_downstream.main(["features", "--images", str(images), "--model", str(model_dir), "--output", str(output)])
    saved = read_embeddings(output)
    assert vectors(saved, "cls").shape == (3, 64) and "patch" not in saved.column_names  # rows: test_embeddings
    summary = json.loads((output / "summary.json").read_text())
    assert summary["rows"] == 3 and summary["errors"] == 0 and summary["model"] == str(model_dir)
    assert (output / "patch_pca.png").stat().st_size > 1000


def test_missing_folder_and_unknown_model_are_clear_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        list_images(tmp_path / "nope")
    with pytest.raises(UserError, match="No images"):
        list_images(tmp_path)
    with pytest.raises(SystemExit, match=str(USAGE_EXIT_CODE)) as info:  # one line `error: ...`, no traceback
        train_downstream.main(["features", "--images", str(SAMPLE), "--model", str(tmp_path / "no-model")])
    assert "no-model: cannot load an encoder" in str(info.value.__cause__)


def test_feature_cache_hit_is_identical_and_skips_the_encoder(tiny_model, tiny_processor, tmp_path, monkeypatch):
    from rad_dino_hf.encoders import cached_features

    files = list_images(SAMPLE)[:3]
    first, hit = cached_features(tiny_model, tiny_processor, files, tmp_path, progress=False)
    assert not hit

    def no_encoder(*args, **kwargs):
        raise AssertionError("the encoder ran on a cache hit")

    monkeypatch.setattr(tiny_model, "forward", no_encoder)
    second, hit = cached_features(tiny_model, tiny_processor, files, tmp_path, progress=False)
    assert hit and all(torch.equal(first[name], second[name]) for name in first)
    subset, hit = cached_features(tiny_model, tiny_processor, files[2:0:-1], tmp_path, progress=False)
    assert hit and torch.equal(subset["cls"], first["cls"][[2, 1]])  # rows looked up by path
    monkeypatch.undo()
    reference = extract_features(tiny_model, tiny_processor, files, progress=False)
    assert torch.equal(first["cls"], reference["cls"]) and torch.equal(first["patch"], reference["patch"])
    assert torch.equal(first["mean_patch"], reference["patch"].mean(dim=(2, 3)))
    copy = tmp_path / "copy.png"
    copy.write_bytes(files[0].read_bytes())
    other, hit = cached_features(tiny_model, tiny_processor, [files[0], copy], tmp_path, progress=False)
    assert not hit and torch.equal(other["cls"][1], first["cls"][0])  # a new file is encoded, the rest read
    os.utime(copy, ns=(0, 0))  # a changed file is a new file
    assert not cached_features(tiny_model, tiny_processor, [copy], tmp_path, progress=False)[1]


def test_linear_probe_command(tiny_model_dir, labelled_sample_csv, tmp_path):
    model_dir = tiny_model_dir
    output = tmp_path / "probe"
    arguments = [
        "linear-probe",
        "--model",
        str(model_dir),
        "--csv",
        str(labelled_sample_csv),
        "--val-fraction",
        "0.34",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--output",
        str(output),
    ]
    results = train_downstream.main(arguments)
    assert results["n_images"] == 12 and not results["features_from_cache"]
    assert results["class_names"] == ["bacterial", "normal", "viral"]
    saved = json.loads((output / "metrics.json").read_text())
    predictions = (output / "predictions.csv").read_text().splitlines()[1:]
    hits = [row.split(",")[2] == row.split(",")[3] for row in predictions]  # label == predicted
    assert len(hits) == saved["n"] and saved["accuracy"]["value"] == pytest.approx(np.mean(hits))
    assert (output / "roc_curves.png").exists() and (output / "confusion_matrix.png").exists()  # content: test_commands
    assert train_downstream.main(arguments)["features_from_cache"]


def test_two_processes_share_the_encoding_and_match_one(tiny_model_dir, labelled_sample_csv, tmp_path, free_port):
    """`accelerate launch` with two CPU processes: each encodes half into the cache's embeddings dataset, the
    features read back equal one process's in the files' order, and only the main process writes metrics.json."""
    arguments = ["--model", str(tiny_model_dir), "--csv", str(labelled_sample_csv), "--val-fraction", "0.34"]
    single = train_downstream.main(
        ["linear-probe", *arguments, "--cache-dir", str(tmp_path / "one"), "--output", str(tmp_path / "out1")]
    )
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file"]
    launch += [str(REPO_ROOT / "configs" / "accelerate" / "cpu_2proc.yaml"), "--main_process_port", str(free_port)]
    command = [*launch, str(REPO_ROOT / "train_downstream.py"), "linear-probe", *arguments]
    command += ["--cache-dir", str(tmp_path / "two"), "--output", str(tmp_path / "out2")]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run(command, timeout=300, env=environment, cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "6/6" in run.stderr and "12/12" not in run.stderr  # progress bars: each process encoded half
    [one], [two] = (list((tmp_path / name).glob("*/part-*")) for name in ("one", "two"))
    assert one.relative_to(tmp_path / "one") == two.relative_to(tmp_path / "two")  # same weights, preprocessing, files
    first, second = read_embeddings(one), read_embeddings(two)
    assert first.column("path").to_pylist() == second.column("path").to_pylist()
    for name in ("cls", "mean_patch"):
        np.testing.assert_allclose(vectors(first, name), vectors(second, name), atol=1e-5, rtol=1e-5)
    metrics = json.loads((tmp_path / "out2" / "metrics.json").read_text())
    assert metrics["accuracy"] == single["accuracy"] and metrics["n_images"] == 12


def test_linear_probe_reports_missing_columns(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("file,diagnosis\nx.png,normal\n")
    with pytest.raises(SystemExit, match=str(USAGE_EXIT_CODE)) as info:
        train_downstream.main(["linear-probe", "--model", "random", "--csv", str(path)])
    assert "lacks column" in str(info.value.__cause__)


def test_dicom_features_follow_the_conversion(tiny_model, tiny_processor, monochrome1_dicom, tmp_path):
    """DICOM goes through the processor's own conversion (modality LUT, MONOCHROME1, min-max), not raw values: its
    features are those of the hand-converted 8-bit image (conftest), and differ from the uninverted image's."""
    from PIL import Image

    dicom, expected = monochrome1_dicom
    Image.fromarray(expected).save(tmp_path / "converted.png")
    Image.fromarray(255 - expected).save(tmp_path / "uninverted.png")
    paths = [dicom, tmp_path / "converted.png", tmp_path / "uninverted.png"]
    features = extract_features(tiny_model, tiny_processor, paths, progress=False)
    torch.testing.assert_close(features["cls"][0], features["cls"][1])
    torch.testing.assert_close(features["patch"][0], features["patch"][1])
    assert (features["cls"][0] - features["cls"][2]).abs().max() > 1e-3


def test_visualize_dicom_and_png(tiny_model, tiny_processor, tmp_path):
    dicom = REPO_ROOT / "tests" / "fixtures" / "dicom" / "RG1_UNCR.dcm"
    model_dir = tmp_path / "model"
    tiny_model.save_pretrained(model_dir)
    tiny_processor.save_pretrained(model_dir)
    pictures = train_downstream.main(
        ["visualize", str(dicom), str(list_images(SAMPLE)[0]), "--model", str(model_dir), "--output", str(tmp_path)]
    )
    assert [p.name for p in pictures] == ["RG1_UNCR_attention.png", f"{list_images(SAMPLE)[0].stem}_attention.png"]
    assert all(p.is_file() for p in pictures)  # the maps' content: test_cls_attention_maps_are_distributions


def test_cls_attention_maps_are_distributions():
    from rad_dino_hf.plots import cls_attention_maps

    attentions = torch.softmax(torch.randn(2, 3, 17, 17), dim=-1)
    maps = cls_attention_maps(attentions, (4, 4))
    assert maps.shape == (2, 3, 4, 4)
    assert np.allclose(maps.sum(axis=(2, 3)), 1.0)
    expected = attentions[1, 2, 0, 1:] / attentions[1, 2, 0, 1:].sum()
    assert np.allclose(maps[1, 2].ravel(), expected.numpy())
