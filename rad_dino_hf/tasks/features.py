"""Encode a folder of radiographs (PNG, JPEG, 16-bit, DICOM) and save CLS + patch features and a patch-feature PCA
picture. With no arguments it runs on the embedded sample in data/sample.

Writes features.safetensors (`cls` (N, D), `patch` (N, D, h, w); the file list in its metadata), patch_pca.png and
summary.json (model, throughput, shapes)."""

import argparse
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from accelerate import Accelerator
from safetensors.torch import save_file

from rad_dino_hf.features import list_images
from rad_dino_hf.plots import patch_pca_rgb, save_pca_figure
from rad_dino_hf.tasks.arguments import REPO, EncoderOptions, add_encoder_arguments
from rad_dino_hf.tasks.common import encode, encoder_view

logger = logging.getLogger("rad_dino_hf")


@dataclass
class Options:
    encoder: EncoderOptions
    images: str
    output: str
    max_pictures: int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--images",
        default=str(REPO / "data" / "sample" / "images"),
        help="folder of images/DICOM (default: embedded sample)",
    )
    add_encoder_arguments(parser)
    parser.add_argument("--output", default="outputs/features", help="output folder")
    parser.add_argument("--max-pictures", type=int, default=8, help="images shown in the PCA picture")


def run(options: Options, accelerator: Accelerator) -> dict | None:
    files = list_images(options.images)
    encoding = encode(options.encoder, files, accelerator)
    if not accelerator.is_main_process:
        return None
    features, processor, seconds = encoding.features, encoding.processor, encoding.seconds
    output = Path(options.output)
    output.mkdir(parents=True, exist_ok=True)
    save_file(
        {name: tensor.contiguous() for name, tensor in features.items()},
        output / "features.safetensors",
        metadata={"model": encoding.name, "files": json.dumps([str(path) for path in files])},
    )
    shown = files[: options.max_pictures]
    views = [encoder_view(processor, processor(str(path), return_tensors="pt")["pixel_values"]) for path in shown]
    picture = save_pca_figure(
        views, patch_pca_rgb(features["patch"][: len(shown)]), [path.name for path in shown], output / "patch_pca.png"
    )
    summary = {
        "model": encoding.name,
        "images": len(files),
        "seconds": round(seconds, 2),
        "images_per_second": round(len(files) / seconds, 3),
        "cls_shape": list(features["cls"].shape),
        "patch_shape": list(features["patch"].shape),
    }
    (output / "summary.json").write_text(json.dumps(summary, indent=2))
    logger.info(
        "Features: %s; picture: %s; %.2f images/s", output / "features.safetensors", picture, len(files) / seconds
    )
    return summary
