"""Downstream use of a RAD-DINO encoder.

Subcommands:
  features      encode a folder of radiographs (PNG, JPEG, 16-bit, DICOM) and save CLS + patch features and a
                patch-feature PCA picture. With no arguments it runs on the embedded sample in data/sample.
  segment       train a segmentation decoder (linear or upsampling) on a frozen encoder's patch maps from
                folders with a metadata.csv (file, patient, lung_mask columns); patient split; lung Dice with a 95 %
                bootstrap interval, pooled Dice/IoU, overlay pictures, and the model saved for from_pretrained.
  visualize     for each image or DICOM given: patch-feature PCA and the last layer's CLS attention per head.
  linear-probe  logistic regression on frozen features (CLS + mean patch token) of images listed in a CSV with a
                label and a patient column; patient-level split; accuracy, AUROC, AUPRC with 95 % bootstrap CIs,
                ROC curves and a confusion matrix. Features are cached, so reruns skip the encoder.

Examples:
  python train_downstream.py features
  python train_downstream.py features --images ../shared/data/dicom --model ./my-rad-dino --output outputs/dicom
  python train_downstream.py linear-probe --model outputs/pretrain/export
  python train_downstream.py segment --model outputs/pretrain/export
  python train_downstream.py visualize ../shared/data/dicom/RG1_UNCR.dcm --model outputs/pretrain/export
"""

import argparse
import copy
import csv
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from modeling_rad_dino import RadDinoForSemanticSegmentation, RadDinoModel
from rad_dino.eval_plots import plot_confusion_matrix, plot_roc_curves, plot_segmentation_overlay
from rad_dino.features import RELEASED_MODEL_ID, cached_features, extract_features, list_images, load_encoder
from rad_dino.plots import cls_attention_maps, patch_pca_rgb, save_attention_figure, save_pca_figure
from rad_dino.probe import linear_probe, patient_split
from rad_dino.segmentation import foreground_dice, mask_like_processor, predict, train_decoder

logger = logging.getLogger("rad_dino")
REPO = Path(__file__).resolve().parent
SAMPLE_IMAGES = REPO / "data" / "sample" / "images"
SHARED_DATA = REPO.parent / "shared" / "data"
PEDIATRIC_CSV = SHARED_DATA / "pediatric-pneumonia" / "train.csv"
MASKED_SETS = [SHARED_DATA / "hannover-covid", SHARED_DATA / "covid-chestxray"]


def encoder_view(processor, pixel_values: torch.Tensor) -> np.ndarray:
    """The radiograph as the encoder saw it: `(1, 3, H, W)` normalised pixels -> `(H, W)` grey in [0, 1]."""
    return (pixel_values[0, 0] * processor.image_std[0] + processor.image_mean[0]).clamp(0, 1).numpy()


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
    views = [encoder_view(processor, processor(str(path), return_tensors="pt")["pixel_values"]) for path in shown]
    picture = save_pca_figure(
        views,
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


def run_visualize(args: argparse.Namespace) -> list[Path]:
    model, processor, model_name = load_encoder(args.model, random_fallback=args.model == RELEASED_MODEL_ID)
    # Attention maps need the eager attention path (sdpa never materialises the weights).
    eager = RadDinoModel._from_config(model.config, attn_implementation="eager").eval()
    eager.load_state_dict(model.state_dict())
    output, pictures = Path(args.output), []
    for source in args.images:
        pixels = processor(str(source), return_tensors="pt")["pixel_values"]
        with torch.inference_mode():
            result = eager(pixels, output_attentions=True)
        grid = tuple(result.patch_embeddings.shape[-2:])
        view = encoder_view(processor, pixels)
        path = output / f"{Path(source).stem}_attention.png"
        save_attention_figure(
            view, cls_attention_maps(result.attentions[-1], grid)[0], patch_pca_rgb(result.patch_embeddings)[0], path
        )
        pictures.append(path)
        logger.info("%s -> %s (%s)", source, path, model_name)
    return pictures


def read_masked_sets(folders: list[str], mask_column: str) -> tuple[list[Path], list[Path], np.ndarray]:
    """(image, mask, patient) of every row with a mask in each folder's metadata.csv; patients namespaced by folder."""
    images, masks, patients = [], [], []
    for folder in map(Path, folders):
        with open(folder / "metadata.csv", encoding="utf-8", newline="") as handle:
            for row in csv.DictReader(handle):
                if row.get(mask_column):
                    images.append(folder / row["file"])
                    masks.append(folder / row[mask_column])
                    patients.append(f"{folder.name}/{row['patient']}")
    if not images:
        raise ValueError(f"No rows with a {mask_column!r} mask in {folders}")
    return images, masks, np.array(patients)


def run_segment(args: argparse.Namespace) -> dict:
    images, mask_files, patients = read_masked_sets(args.data, args.mask_column)
    encoder, processor, model_name = load_encoder(args.model, random_fallback=args.model == RELEASED_MODEL_ID)
    features, from_cache = cached_features(encoder, processor, images, args.cache_dir, batch_size=args.batch_size)
    masks = torch.from_numpy(np.stack([mask_like_processor(str(path), processor) for path in mask_files]))
    train, val = patient_split(patients, args.val_fraction, args.seed)
    logger.info("Segmentation: %d train / %d validation images, no patient in both", len(train), len(val))

    config = copy.deepcopy(encoder.config)
    config.num_labels, config.segmentation_decoder = 2, args.decoder
    config.id2label, config.label2id = {0: "background", 1: "lung"}, {"background": 0, "lung": 1}
    torch.manual_seed(args.seed)
    model = RadDinoForSemanticSegmentation(config)
    model.dinov2.load_state_dict(encoder.state_dict())
    start = time.perf_counter()
    losses = train_decoder(model, features["patch"][train], masks[train], args.epochs, args.lr, seed=args.seed)
    train_seconds = time.perf_counter() - start
    predictions = predict(model.eval(), features["patch"][val], tuple(masks.shape[-2:]))
    results = foreground_dice(predictions, masks[val].numpy(), seed=args.seed)
    results.update(
        model=model_name,
        decoder=args.decoder,
        epochs=args.epochs,
        final_train_loss=losses[-1],
        train_seconds=round(train_seconds, 1),
        features_from_cache=from_cache,
        n_train=int(len(train)),
    )
    output = Path(args.output)
    model.save_pretrained(output / "model")
    processor.save_pretrained(output / "model")
    for index in val[: args.pictures]:
        view = encoder_view(processor, processor(str(images[index]), return_tensors="pt")["pixel_values"])
        view = (view * 255).astype(np.uint8)
        position = int(np.where(val == index)[0][0])
        plot_segmentation_overlay(
            view,
            predictions[position],
            masks[index].numpy(),
            output / f"overlay_{images[index].stem}.png",
            class_names=["background", "lung"],
        )
    (output / "metrics.json").write_text(json.dumps(results, indent=2))
    dice = results["lung_dice_per_image"]
    logger.info(
        "lung Dice %.3f (95%% CI %.3f-%.3f) over %d validation images; model, metrics and overlays in %s",
        dice["value"],
        dice["ci_low"],
        dice["ci_high"],
        results["n_images"],
        output,
    )
    return results


def read_labelled_csv(args: argparse.Namespace) -> tuple[list[Path], np.ndarray, np.ndarray, list[str]]:
    """Files, integer labels, patients and sorted class names from a CSV; relative files resolve from --image-root."""
    csv_path = Path(args.csv)
    if not csv_path.is_file():
        raise FileNotFoundError(f"Label CSV not found: {csv_path} (pass --csv)")
    with open(csv_path, encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    missing = {args.image_column, args.label_column, args.patient_column} - set(rows[0] if rows else {})
    if missing:
        raise ValueError(f"{csv_path} lacks column(s) {sorted(missing)}; columns: {sorted(rows[0]) if rows else []}")
    root = Path(args.image_root) if args.image_root else csv_path.parent
    classes = sorted({row[args.label_column] for row in rows})
    files = [root / row[args.image_column] for row in rows]
    labels = np.array([classes.index(row[args.label_column]) for row in rows])
    patients = np.array([row[args.patient_column] for row in rows])
    return files, labels, patients, classes


def run_linear_probe(args: argparse.Namespace) -> dict:
    files, labels, patients, classes = read_labelled_csv(args)
    model, processor, model_name = load_encoder(args.model, random_fallback=args.model == RELEASED_MODEL_ID)
    start = time.perf_counter()
    features, from_cache = cached_features(model, processor, files, args.cache_dir, batch_size=args.batch_size)
    encode_seconds = time.perf_counter() - start
    vectors = torch.cat([features["cls"], features["patch"].mean(dim=(2, 3))], dim=1).numpy()
    train, val = patient_split(patients, args.val_fraction, args.seed)
    logger.info("Probe: %d train / %d validation images, no patient in both", len(train), len(val))
    results = linear_probe(
        vectors[train], labels[train], patients[train], vectors[val], labels[val], class_names=classes, seed=args.seed
    )
    probabilities = results.pop("probabilities")
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    plot_roc_curves(labels[val], probabilities, output / "roc_curves.png", class_names=classes)
    plot_confusion_matrix(
        labels[val], probabilities.argmax(axis=1), output / "confusion_matrix.png", class_names=classes
    )
    results.update(
        model=model_name,
        csv=str(args.csv),
        n_images=len(files),
        features_from_cache=from_cache,
        encode_seconds=round(encode_seconds, 2),
        seed=args.seed,
    )
    (output / "metrics.json").write_text(json.dumps(results, indent=2))
    accuracy, auroc = results["accuracy"], results["auroc"]["macro"]
    logger.info(
        "accuracy %.3f (95%% CI %.3f-%.3f), macro AUROC %.3f (%.3f-%.3f); metrics and pictures in %s",
        accuracy["value"],
        accuracy["ci_low"],
        accuracy["ci_high"],
        auroc["value"],
        auroc["ci_low"],
        auroc["ci_high"],
        output,
    )
    return results


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default=RELEASED_MODEL_ID,
        help=f"Hub id or directory (default {RELEASED_MODEL_ID}; offline without a cache it falls back to random "
        "weights with a warning), or 'random'",
    )
    parser.add_argument("--batch-size", type=int, default=4)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    features = commands.add_parser("features", help="encode images; save features and a patch-PCA picture")
    features.add_argument(
        "--images", default=str(SAMPLE_IMAGES), help="folder of images/DICOM (default: embedded sample)"
    )
    add_model_arguments(features)
    features.add_argument("--output", default="outputs/features", help="output folder")
    features.add_argument("--max-pictures", type=int, default=8, help="images shown in the PCA picture")
    features.set_defaults(run=run_features)

    segment = commands.add_parser("segment", help="segmentation decoder on a frozen encoder, lung Dice")
    add_model_arguments(segment)
    segment.add_argument(
        "--data",
        nargs="+",
        default=[str(p) for p in MASKED_SETS],
        help="folders with metadata.csv (file, patient and mask columns)",
    )
    segment.add_argument("--mask-column", default="lung_mask")
    segment.add_argument("--decoder", choices=["linear", "upsample"], default="linear")
    segment.add_argument("--epochs", type=int, default=30)
    segment.add_argument("--lr", type=float, default=1e-3)
    segment.add_argument("--val-fraction", type=float, default=0.25, help="share of patients held out")
    segment.add_argument("--seed", type=int, default=0)
    segment.add_argument("--pictures", type=int, default=4, help="overlay pictures of validation images")
    segment.add_argument("--cache-dir", default="outputs/feature_cache")
    segment.add_argument("--output", default="outputs/segment")
    segment.set_defaults(run=run_segment)

    visualize = commands.add_parser("visualize", help="patch PCA and CLS attention maps of images or DICOM files")
    visualize.add_argument("images", nargs="+", help="image or DICOM files")
    add_model_arguments(visualize)
    visualize.add_argument("--output", default="outputs/visualize")
    visualize.set_defaults(run=run_visualize)

    probe = commands.add_parser("linear-probe", help="logistic regression on frozen features, patient split")
    add_model_arguments(probe)
    probe.add_argument("--csv", default=str(PEDIATRIC_CSV), help="CSV with image, label and patient columns")
    probe.add_argument("--image-root", help="folder the CSV's image paths are relative to (default: the CSV's)")
    probe.add_argument("--image-column", default="file")
    probe.add_argument("--label-column", default="label")
    probe.add_argument("--patient-column", default="patient")
    probe.add_argument("--val-fraction", type=float, default=0.25, help="share of patients held out")
    probe.add_argument("--seed", type=int, default=0)
    probe.add_argument("--cache-dir", default="outputs/feature_cache", help="where computed features are kept")
    probe.add_argument("--output", default="outputs/linear_probe")
    probe.set_defaults(run=run_linear_probe)
    return parser


def main(argv: list[str] | None = None):
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return args.run(args)


if __name__ == "__main__":
    main()
