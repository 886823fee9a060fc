"""Train a segmentation decoder (`linear`, DINOv2's linear head, or `upsample`) on a frozen encoder's patch maps
from folders with a metadata.csv (file, patient and mask columns; default: the embedded sample's 22 radiographs
with a lung mask); patient-level split. Reports lung Dice per image
with a 95 % bootstrap interval and pooled Dice/IoU, draws overlays of validation images, and saves the model for
`RadDinoForSemanticSegmentation.from_pretrained`."""

import argparse
import copy
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator

from modeling_rad_dino import RadDinoForSemanticSegmentation
from rad_dino_hf.plots import plot_segmentation_overlay
from rad_dino_hf.segmentation_decoder import foreground_dice, mask_like_processor, predict, train_decoder
from rad_dino_hf.supervised import fresh_training_log
from rad_dino_hf.tables import load_table, patient_split
from rad_dino_hf import embedded_sample
from rad_dino_hf.tasks.arguments import FrozenTaskOptions, add_frozen_task_arguments
from rad_dino_hf.tasks.common import encode, encoder_view

logger = logging.getLogger("rad_dino_hf")
CLASS_NAMES = ["background", "lung"]


@dataclass
class Options(FrozenTaskOptions):
    data: list[str]
    mask_column: str
    decoder: str
    epochs: int
    lr: float
    pictures: int
    output: str


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_frozen_task_arguments(parser)
    parser.add_argument(
        "--data",
        nargs="+",
        default=[str(embedded_sample.SAMPLE_DIR)],
        help="folders with metadata.csv (file, patient and mask columns); by default the embedded sample",
    )
    parser.add_argument(
        "--mask-column", default="lung_mask", help="column of mask paths (0 background, 1 lung, 255 ignored)"
    )
    parser.add_argument(
        "--decoder",
        choices=["linear", "upsample"],
        default="linear",
        help="linear: per-patch logits, bilinearly upsampled; upsample: two conv + 2x upsampling stages",
    )
    parser.add_argument("--epochs", type=int, default=30, help="decoder training epochs")
    parser.add_argument("--lr", type=float, default=1e-3, help="decoder learning rate")
    parser.add_argument("--pictures", type=int, default=4, help="overlay pictures of validation images")
    parser.add_argument("--output", default="outputs/segment", help="output folder")


def read_masked_sets(folders: list[str], mask_column: str) -> tuple[list[Path], list[Path], np.ndarray]:
    """(image, mask, patient) of every row with a mask in each folder's metadata.csv; patients namespaced by folder."""
    images, masks, patients = [], [], []
    for folder in map(Path, folders):
        table, root = load_table(str(folder))
        for row in table:
            if row.get(mask_column):
                images.append(root / row["file"])
                masks.append(root / row[mask_column])
                patients.append(f"{folder.name}/{row['patient']}")
    if not images:
        raise ValueError(f"No rows with a {mask_column!r} mask in {folders}")
    return images, masks, np.array(patients)


def run(options: Options, accelerator: Accelerator) -> dict | None:
    folders = [embedded_sample.require(folder, "--data") for folder in options.data]
    images, mask_files, patients = read_masked_sets(folders, options.mask_column)
    encoding = encode(options.encoder, images, accelerator, options.cache, patches=True)
    encoder, processor, seed = encoding.model, encoding.processor, options.split.seed
    masks = [mask_like_processor(str(path), processor, image) for path, image in zip(mask_files, images)]
    masks = torch.from_numpy(np.stack(masks))
    train, val = patient_split(patients, options.split.val_fraction, seed)
    logger.info("Segmentation: %d train / %d validation images, no patient in both", len(train), len(val))

    config = copy.deepcopy(encoder.config)
    config.num_labels, config.segmentation_decoder = len(CLASS_NAMES), options.decoder
    config.id2label = dict(enumerate(CLASS_NAMES))
    config.label2id = {name: index for index, name in enumerate(CLASS_NAMES)}
    torch.manual_seed(seed)
    model = RadDinoForSemanticSegmentation(config)
    model.dinov2.load_state_dict(encoder.state_dict())
    patch = encoding.features["patch"]
    output = Path(options.output)
    metrics_path = fresh_training_log(output / "loss_curve.jsonl", accelerator)
    start = time.perf_counter()
    # Every process holds all features: the decoder trains data-parallel, then the main process scores and writes.
    losses = train_decoder(
        model,
        patch[train],
        masks[train],
        options.epochs,
        options.lr,
        seed=seed,
        accelerator=accelerator,
        metrics_path=metrics_path,
    )
    train_seconds = time.perf_counter() - start
    if not accelerator.is_main_process:
        return None
    predictions = predict(model.eval(), patch[val], tuple(masks.shape[-2:]))
    results = foreground_dice(predictions, masks[val].numpy(), seed=seed)
    results.update(
        model=encoding.name,
        decoder=options.decoder,
        epochs=options.epochs,
        final_train_loss=losses[-1],
        train_seconds=round(train_seconds, 1),
        features_from_cache=encoding.from_cache,
        n_train=int(len(train)),
    )
    model.save_pretrained(output / "model")
    processor.save_pretrained(output / "model")
    for position, index in enumerate(val[: options.pictures]):
        view = encoder_view(processor, processor(str(images[index]), return_tensors="pt")["pixel_values"])
        plot_segmentation_overlay(
            (view * 255).astype(np.uint8),
            predictions[position],
            masks[index].numpy(),
            output / f"overlay_{images[index].stem}.png",
            class_names=CLASS_NAMES,
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
