"""Downstream use of a RAD-DINO encoder.

Subcommands:
  features   encode a folder of radiographs (PNG, JPEG, 16-bit, DICOM) and save CLS + patch features and a
             patch-feature PCA picture. With no arguments it runs on the embedded sample in data/sample.

Examples:
  python train_downstream.py features
  python train_downstream.py features --images ../shared/data/dicom --model ./my-rad-dino --output outputs/dicom
"""

import argparse
import json
import logging
import time
from pathlib import Path

from safetensors.torch import save_file

from image_processing_rad_dino import read_image
from rad_dino.features import RELEASED_MODEL_ID, extract_features, list_images, load_encoder
from rad_dino.plots import patch_pca_rgb, save_pca_figure

logger = logging.getLogger("rad_dino")
SAMPLE_IMAGES = Path(__file__).resolve().parent / "data" / "sample" / "images"


def run_features(args: argparse.Namespace) -> None:
    files = list_images(args.images)
    model, processor, model_name = load_encoder(args.model, random_fallback=args.model == RELEASED_MODEL_ID)
    logger.info("Encoding %d images from %s with %s", len(files), args.images, model_name)
    start = time.perf_counter()
    features = extract_features(model, processor, files, batch_size=args.batch_size)
    seconds = time.perf_counter() - start

    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    save_file(
        {name: tensor.contiguous() for name, tensor in features.items()},
        output / "features.safetensors",
        metadata={"model": model_name, "files": json.dumps([str(path) for path in files])},
    )
    shown = files[: args.max_pictures]
    # Show each radiograph as the encoder saw it: resized and centre-cropped, un-normalised.
    views = [
        processor(image, return_tensors="pt")["pixel_values"][0, 0] * processor.image_std[0] + processor.image_mean[0]
        for image in (read_image(path) for path in shown)
    ]
    picture = save_pca_figure(
        [view.clamp(0, 1).numpy() for view in views],
        patch_pca_rgb(features["patch"][: len(shown)]),
        [path.name for path in shown],
        output / "patch_pca.png",
    )
    summary = {
        "model": model_name,
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    features = commands.add_parser("features", help="encode images; save features and a patch-PCA picture")
    features.add_argument(
        "--images", default=str(SAMPLE_IMAGES), help="folder of images/DICOM (default: embedded sample)"
    )
    features.add_argument(
        "--model",
        default=RELEASED_MODEL_ID,
        help=f"Hub id or directory (default {RELEASED_MODEL_ID}; offline without a cache it falls back to random "
        "weights with a warning), or 'random'",
    )
    features.add_argument("--output", default="outputs/features", help="output folder")
    features.add_argument("--batch-size", type=int, default=4)
    features.add_argument("--max-pictures", type=int, default=8, help="images shown in the PCA picture")
    features.set_defaults(run=run_features)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args.run(args)


if __name__ == "__main__":
    main()
