"""For each image or DICOM file given: the patch-feature PCA and the last layer's CLS attention per head, in one
picture per file (`<stem>_attention.png`). With no file given, the embedded sample's DICOM (a MONOCHROME1 chest
radiograph from pydicom-data)."""

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator

from modeling_rad_dino import RadDinoModel
from rad_dino_hf import embedded_sample
from rad_dino_hf.encoders import load_encoder
from rad_dino_hf.plots import cls_attention_maps, patch_pca_rgb, save_attention_figure
from rad_dino_hf.tasks.arguments import EncoderOptions, add_encoder_arguments
from rad_dino_hf.tasks.common import encoder_view

logger = logging.getLogger("rad_dino_hf")


@dataclass
class Options:
    encoder: EncoderOptions
    images: list[str]
    output: str


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "images",
        nargs="*",
        metavar="FILE",
        default=[str(embedded_sample.DICOM)],
        help="image or DICOM files",
    )
    add_encoder_arguments(parser)
    parser.add_argument("--output", default="outputs/visualize", help="output folder")


def run(options: Options, accelerator: Accelerator) -> list[Path] | None:
    """The pictures' paths. A few files need no sharing: the main process draws them all."""
    if not accelerator.is_main_process:
        return None
    sources = [embedded_sample.require(path, "FILE arguments") for path in options.images]
    model, processor, model_name = load_encoder(options.encoder.model)
    # Attention maps need the eager attention path (sdpa never materialises the weights).
    eager = RadDinoModel._from_config(model.config, attn_implementation="eager").eval()
    eager.load_state_dict(model.state_dict())
    output, pictures = Path(options.output), []
    for source in sources:
        pixels = processor(str(source), return_tensors="pt")["pixel_values"]
        with torch.inference_mode():
            result = eager(pixels, output_attentions=True)
        grid = tuple(result.patch_embeddings.shape[-2:])
        path = output / f"{Path(source).stem}_attention.png"
        save_attention_figure(
            encoder_view(processor, pixels),
            cls_attention_maps(result.attentions[-1], grid)[0],
            patch_pca_rgb(result.patch_embeddings)[0],
            path,
        )
        pictures.append(path)
        logger.info("%s -> %s (%s)", source, path, model_name)
    return pictures
