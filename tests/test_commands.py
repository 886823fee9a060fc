"""Downstream commands judged by their results: a planted signal is found and shuffled labels are not; the ROC
picture and the predictions agree with metrics.json; the report command's saved generator is its base with the
trained adapter merged in."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from sklearn.metrics import roc_auc_score, roc_curve

import rad_dino_hf.cli.downstream as train_downstream
from rad_dino_hf import plots

N_PATIENTS, PER_PATIENT = 20, 2


def _planted_table(folder: Path, shuffled: bool) -> Path:
    """40 noisy 64 px images of 20 patients; class "dark" is darker than class "bright" (grey 80 vs 150, noise 30).
    With `shuffled`, each patient's label is drawn independently of its images (still 10 patients per class)."""
    rng = np.random.default_rng(0)
    folder.mkdir(exist_ok=True)
    sides = ["dark", "bright"] * (N_PATIENTS // 2)
    labels = list(rng.permutation(sides)) if shuffled else sides
    rows = []
    for patient in range(N_PATIENTS):
        for view in range(PER_PATIENT):
            image = rng.normal(80 if sides[patient] == "dark" else 150, 30, size=(64, 64))
            name = f"{patient}_{view}.png"
            Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(folder / name)
            rows.append({"file": str(folder / name), "label": labels[patient], "patient": f"p{patient}"})
    path = folder / ("shuffled.csv" if shuffled else "planted.csv")
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture
def tables(tmp_path):
    return {kind: _planted_table(tmp_path / "images", kind == "shuffled") for kind in ("planted", "shuffled")}


@pytest.fixture
def figures(monkeypatch):
    """The figures the commands save, by file name (captured before they are closed)."""
    captured = {}
    save = plots.save_figure

    def keep(figure, path, *args, **kwargs):
        captured[str(path)] = [
            (line.get_xdata().copy(), line.get_ydata().copy(), line.get_label()) for line in figure.axes[0].lines
        ]
        return save(figure, path, *args, **kwargs)

    monkeypatch.setattr(plots, "save_figure", keep)
    return captured


def _predictions(output: Path) -> tuple[np.ndarray, np.ndarray]:
    """Validation labels (1 = dark) and p_dark from predictions.csv."""
    with open(output / "predictions.csv", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    return np.array([row["label"] == "dark" for row in rows], int), np.array([float(row["p_dark"]) for row in rows])


def _classify(command: str, model_dir: Path, table: Path, output: Path, *extra: str) -> dict:
    arguments = [command, "--model", str(model_dir), "--csv", str(table), "--val-fraction", "0.5"]
    return train_downstream.main([*arguments, "--output", str(output), *extra])


@pytest.mark.parametrize("command", ["linear-probe", "knn"])
def test_frozen_feature_commands_find_the_planted_signal_only(command, tiny_model_dir, tables, tmp_path, figures):
    cache = ["--cache-dir", str(tmp_path / "cache")]
    planted = _classify(command, tiny_model_dir, tables["planted"], tmp_path / "planted", *cache)
    shuffled = _classify(command, tiny_model_dir, tables["shuffled"], tmp_path / "shuffled", *cache)
    assert planted["auroc"]["macro"]["value"] >= 0.9 and planted["accuracy"]["value"] >= 0.8
    assert shuffled["auroc"]["macro"]["value"] <= 0.75 and shuffled["accuracy"]["value"] <= 0.75

    # metrics.json, predictions.csv and the ROC picture tell the same story.
    output = tmp_path / "planted"
    saved = json.loads((output / "metrics.json").read_text())
    labels, scores = _predictions(output)
    assert len(labels) == planted["n"] == 20
    assert saved["auroc"]["macro"]["value"] == pytest.approx(roc_auc_score(labels, scores))
    assert saved["accuracy"]["value"] == pytest.approx(np.mean((scores >= 0.5) == labels), abs=1 / 20 + 1e-9)
    fpr, tpr, _ = roc_curve(labels, scores)
    [dark] = [line for line in figures[str(output / "roc_curves.png")] if line[2].startswith("dark")]
    np.testing.assert_allclose(dark[0], fpr)
    np.testing.assert_allclose(dark[1], tpr)
    assert f"AUROC {roc_auc_score(labels, scores):.3f}" in dark[2]


def test_finetune_command_finds_the_planted_signal_only(tiny_model_dir, tables, tmp_path):
    extra = ["--method", "full", "--epochs", "2", "--batch-size", "10", "--image-size", "28", "--lr", "1e-3"]
    extra += ["--no-augment"]
    planted = _classify("finetune", tiny_model_dir, tables["planted"], tmp_path / "planted", *extra)
    shuffled = _classify("finetune", tiny_model_dir, tables["shuffled"], tmp_path / "shuffled", *extra)
    assert planted["auroc"]["macro"]["value"] >= 0.9, planted["auroc"]
    assert shuffled["auroc"]["macro"]["value"] <= 0.75, shuffled["auroc"]


REPORTS = [
    "No effusion.",
    "Patchy opacities.",
    "Cardiomegaly present.",
    "Right consolidation.",
    "Small effusion.",
    "Clear.",
]


def test_report_command_saves_its_base_with_the_trained_adapter_merged(tiny_model, tmp_path):
    """generator/ = tiny_lm/ + (alpha / r) B A of adapter/ on every LoRA target, the adapter's projector, the
    encoder unchanged; and the merge changed the language model (a discarded adapter would leave it as the base)."""
    from image_processing_rad_dino import RadDinoImageProcessor

    tiny_model.save_pretrained(tmp_path / "encoder")
    RadDinoImageProcessor(size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56}).save_pretrained(
        tmp_path / "encoder"
    )
    rng = np.random.default_rng(0)
    (tmp_path / "data" / "images").mkdir(parents=True)
    rows = []
    for index, text in enumerate(REPORTS):
        Image.fromarray(rng.integers(0, 256, (64, 64), dtype=np.uint8)).save(tmp_path / f"data/images/{index}.png")
        rows.append({"file": f"images/{index}.png", "patient": f"p{index // 2}", "clinical_notes": text})
    with open(tmp_path / "data" / "metadata.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    output = tmp_path / "out"
    train_downstream.main(
        ["report", "--encoder", str(tmp_path / "encoder"), "--data", str(tmp_path / "data"), "--val-fraction", "0.3"]
        + ["--text-column", "clinical_notes"]
        + ["--tiny-hidden-size", "32", "--tiny-layers", "1", "--tiny-vocab-size", "300", "--max-report-tokens", "24"]
        + ["--lm-epochs", "1", "--stage1-epochs", "1", "--stage2-epochs", "2", "--lora-rank", "2", "--batch-size", "2"]
        + ["--max-new-tokens", "2", "--train-eval-size", "1", "--output", str(output)]
    )
    encoder = load_file(tmp_path / "encoder" / "model.safetensors")
    generator = load_file(output / "generator" / "model.safetensors")
    base = load_file(output / "tiny_lm" / "model.safetensors")
    adapter = load_file(output / "adapter" / "adapter_model.safetensors")
    settings = json.loads((output / "adapter" / "adapter_config.json").read_text())
    assert not settings["use_rslora"] and not settings["use_dora"]
    scale = settings["lora_alpha"] / settings["r"]

    prefix = "base_model.model."
    targets = {key.removeprefix(prefix).removesuffix(".lora_A.weight") for key in adapter if ".lora_A." in key}
    assert len(targets) == 7  # q, k, v, o, gate, up, down of the one layer
    changed = 0
    for name, tensor in generator.items():
        if name.startswith("model.vision_tower."):
            torch.testing.assert_close(tensor, encoder[name.removeprefix("model.vision_tower.")])
        elif name.startswith("model.multi_modal_projector."):
            torch.testing.assert_close(tensor, adapter[prefix + name])  # the projector trained in stage 2
        else:
            module = name.removesuffix(".weight")
            original = base[name.replace("model.language_model.", "model.")]
            expected = original.clone()
            if module in targets:
                delta = adapter[f"{prefix}{module}.lora_B.weight"] @ adapter[f"{prefix}{module}.lora_A.weight"]
                expected += scale * delta
                changed += int((tensor - original).abs().max() > 1e-4)
            # the tokenizer's added <image> token is one more embedding row
            torch.testing.assert_close(tensor[: len(original)], expected, rtol=1e-4, atol=1e-5, msg=name)
    assert changed == len(targets)
