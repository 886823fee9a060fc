"""Segmentation on a frozen encoder: mask/image alignment, the segment command, Dice with intervals."""

import csv
import json
from pathlib import Path

import numpy as np
import PIL.Image
import torch

import rad_dino_hf.cli.downstream as train_downstream
from image_processing_rad_dino import RadDinoImageProcessor
from rad_dino_hf.segmentation_decoder import foreground_dice, mask_like_processor

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample" / "images"


def _rectangle_image_and_mask(
    folder: Path, name: str, box: tuple[int, int, int, int], size=(90, 60)
) -> tuple[Path, Path]:
    image = np.full(size[::-1], 30, dtype=np.uint8)
    mask = np.zeros(size[::-1], dtype=np.uint8)
    left, top, right, bottom = box
    image[top:bottom, left:right] = 220
    mask[top:bottom, left:right] = 1
    mask[:2] = 255  # an ignored strip
    PIL.Image.fromarray(image).save(folder / f"{name}.png")
    PIL.Image.fromarray(mask).save(folder / f"{name}_mask.png")
    return folder / f"{name}.png", folder / f"{name}_mask.png"


def test_mask_follows_the_processor_geometry(tmp_path):
    """A bright rectangle and its mask stay aligned through resize + centre crop of a non-square image."""
    processor = RadDinoImageProcessor(size={"shortest_edge": 42}, crop_size={"height": 42, "width": 42})
    image_path, mask_path = _rectangle_image_and_mask(tmp_path, "box", (40, 20, 70, 50))
    pixels = processor(str(image_path), return_tensors="np")["pixel_values"][0, 0]
    bright = pixels > (pixels.min() + pixels.max()) / 2
    mask = mask_like_processor(str(mask_path), processor)
    assert mask.shape == (42, 42) and set(np.unique(mask)) <= {0, 1, 255}
    lung = mask == 1
    iou = (bright & lung).sum() / (bright | lung).sum()
    assert iou > 0.9, iou


def test_foreground_dice_interval_and_perfect_prediction():
    targets = np.zeros((5, 8, 8), dtype=np.uint8)
    targets[:, 2:6, 2:6] = 1
    targets[:, 0] = 255
    perfect = np.where(targets == 255, 1, targets).astype(np.uint8)  # "lung" under ignored pixels must not count
    result = foreground_dice(perfect, targets)
    assert result["lung_dice_per_image"] == {"value": 1.0, "ci_low": 1.0, "ci_high": 1.0}
    half = targets.copy()
    half[:, 2:4, 2:6] = 0  # half the lung missed: Dice = 2*8 / (8 + 16)
    assert np.isclose(foreground_dice(half, targets)["lung_dice_per_image"]["value"], 2 * 8 / 24)


def test_segment_command(tiny_model, tmp_path):
    processor = RadDinoImageProcessor(size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56})
    model_dir, data = tmp_path / "model", tmp_path / "set"
    tiny_model.save_pretrained(model_dir)
    processor.save_pretrained(model_dir)
    data.mkdir()
    rows = []
    for index in range(10):
        image, mask = _rectangle_image_and_mask(data, f"case{index}", (10 + 3 * index, 10, 60, 50))
        rows.append({"file": image.name, "patient": f"p{index}", "lung_mask": mask.name})
    with open(data / "metadata.csv", "w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["file", "patient", "lung_mask"])
        writer.writeheader()
        writer.writerows(rows)
    output = tmp_path / "out"
    results = train_downstream.main(
        [
            "segment",
            "--model",
            str(model_dir),
            "--data",
            str(data),
            "--epochs",
            "40",
            "--lr",
            "0.01",
            "--val-fraction",
            "0.3",
            "--cache-dir",
            str(tmp_path / "cache"),
            "--output",
            str(output),
            "--pictures",
            "1",
        ]
    )
    assert results["n_images"] == 3 and results["n_train"] == 7
    assert results["lung_dice_per_image"]["value"] > 0.5  # a bright box on a dark field is learnable
    saved = json.loads((output / "metrics.json").read_text())
    assert saved["pooled"]["dataset"]["dice"]["per_class"]
    assert len(list(output.glob("overlay_*.png"))) == 1
    from modeling_rad_dino import RadDinoForSemanticSegmentation

    reloaded = RadDinoForSemanticSegmentation.from_pretrained(output / "model").eval()
    assert reloaded(torch.zeros(1, 3, 56, 56)).logits.shape == (1, 2, 56, 56)
