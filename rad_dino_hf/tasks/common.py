"""Steps several downstream tasks share: encoding files with a frozen encoder (shared between processes), the
patient-split labelled table, and the classification outputs (metrics, pictures, per-image predictions)."""

import csv
import dataclasses
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator

from image_processing_rad_dino import RadDinoImageProcessor
from modeling_rad_dino import RadDinoModel
from rad_dino_hf import embedded_sample
from rad_dino_hf.encoders import cached_features, load_encoder
from rad_dino_hf.plots import plot_confusion_matrix, plot_roc_curves
from rad_dino_hf.tables import LabelledTable, patient_split, read_labelled_table
from rad_dino_hf.tasks.arguments import CacheOptions, EncoderOptions, SplitOptions, TableOptions

logger = logging.getLogger("rad_dino_hf")


@dataclasses.dataclass
class Encoding:
    """A loaded encoder, its processor and name, and the `features` of some files (`cls` `(N, D)`, `mean_patch`
    `(N, D)`, maybe `patch` `(N, D, h, w)`) with whether they came from the cache and the seconds the encoding
    (or cache read) took."""

    model: RadDinoModel
    processor: RadDinoImageProcessor
    name: str
    features: dict[str, torch.Tensor]
    from_cache: bool
    seconds: float


def encode(
    encoder: EncoderOptions, files: list[Path], accelerator: Accelerator, cache: CacheOptions, patches: bool = False
) -> Encoding:
    """Load `encoder.model` and the features of `files` (`cls`, `mean_patch`, with `patches` the patch maps) from
    the embeddings datasets in `cache.cache_dir`, encoding the files they lack. Under `accelerate launch` the
    processes share the encoding; callers then let only the main process fit, score and write."""
    model, processor, name = load_encoder(encoder.model)
    logger.info("Features of %d images with %s", len(files), name)
    start = time.perf_counter()
    features, from_cache = cached_features(
        model,
        processor,
        files,
        cache.cache_dir,
        encoder.batch_size,
        accelerator=accelerator,
        patches=patches,
        embeddings=cache.embeddings,
    )
    return Encoding(model, processor, name, features, from_cache, time.perf_counter() - start)


def frozen_features(
    encoder: EncoderOptions, cache: CacheOptions, files: list[Path], accelerator: Accelerator, pooling: str = "cls_mean"
) -> tuple[np.ndarray, dict]:
    """`(N, F)` frozen features of `files` (CLS ⊕ mean patch token, or the CLS token alone with `pooling="cls"`),
    and the run's facts for metrics.json."""
    encoding = encode(encoder, files, accelerator, cache)
    parts = [encoding.features["cls"]]
    if pooling == "cls_mean":
        parts.append(encoding.features["mean_patch"])
    info = {
        "model": encoding.name,
        "n_images": len(files),
        "features_from_cache": encoding.from_cache,
        "encode_seconds": round(encoding.seconds, 2),
    }
    return torch.cat(parts, dim=1).numpy(), info


def encoder_view(processor: RadDinoImageProcessor, pixel_values: torch.Tensor) -> np.ndarray:
    """The radiograph as the encoder saw it: `(1, 3, H, W)` normalised pixels -> `(H, W)` grey in [0, 1]."""
    return (pixel_values[0, 0] * processor.image_std[0] + processor.image_mean[0]).clamp(0, 1).numpy()


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    """A CSV file with `header` and `rows` (floats at full precision)."""
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@dataclasses.dataclass
class LabelledSplit(LabelledTable):
    """A labelled table (`rad_dino_hf.tables.LabelledTable`) and the `train` / `val` indices of its patient split."""

    train: np.ndarray
    val: np.ndarray


def labelled_split(table: TableOptions, split: SplitOptions, task: str) -> LabelledSplit:
    """The table's labelled rows, split by patient."""
    data = read_labelled_table(
        embedded_sample.require(table.table, "--table"),
        table.image_column,
        table.label_column,
        table.patient_column,
        table.image_root,
        table.hub_split,
        table.uncertain_as,
    )
    train, val = patient_split(data.patients, split.val_fraction, split.seed)
    kind = f"{len(data.classes)} labels" if data.multilabel else f"{len(data.classes)} classes"
    logger.info("%s (%s): %d train / %d validation images, no patient in both", task, kind, len(train), len(val))
    return LabelledSplit(
        **{field.name: getattr(data, field.name) for field in dataclasses.fields(data)}, train=train, val=val
    )


def write_classification_outputs(output: Path, results: dict, data: LabelledSplit, probabilities: np.ndarray) -> dict:
    """metrics.json (`results`), ROC curves, a confusion matrix (multi-class only) and the validation predictions
    `(N_val, C)` per image (predictions.csv; multi-label: the positive labels, and those at probability >= 0.5,
    joined by ";"); logs accuracy and macro AUROC with their intervals. Returns `results`."""
    output.mkdir(parents=True, exist_ok=True)
    labels = data.labels[data.val]
    plot_roc_curves(labels, probabilities, output / "roc_curves.png", data.classes, multilabel=data.multilabel)
    if data.multilabel:
        logger.info("Multi-label: one ROC curve per label, no confusion matrix")
        names = np.array(data.classes)
        truth = [";".join(names[row == 1]) for row in labels]
        guesses = [";".join(names[row >= 0.5]) for row in probabilities]
    else:
        predicted = probabilities.argmax(axis=1)
        plot_confusion_matrix(labels, predicted, output / "confusion_matrix.png", class_names=data.classes)
        truth, guesses = [data.classes[i] for i in labels], [data.classes[i] for i in predicted]
    write_csv(
        output / "predictions.csv",
        ["file", "patient", "label", "predicted"] + [f"p_{name}" for name in data.classes],
        [
            [str(data.files[index]), data.patients[index], label, guess, *row.tolist()]
            for index, label, guess, row in zip(data.val, truth, guesses, probabilities)
        ],
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
