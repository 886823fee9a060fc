"""Segmentation metrics: per-class Dice and IoU over integer masks with an ignore index (numpy only).

This file is the single implementation. `rad_dino_hf.metrics` loads it by file path, and the `evaluate` module
`segmentation.py` next to it imports it relatively (`evaluate.load` copies it into its modules cache with the script),
so it may import only numpy and the standard library.

Definitions, for class `c` and the pixels whose *reference* is not `ignore_index` ("valid" pixels; whatever the
prediction says at ignored pixels is not counted anywhere, in numerators or denominators):

    I = |pred == c  and  ref == c|,  P = |pred == c|,  R = |ref == c|      (valid pixels only)
    Dice = 2 I / (P + R),  IoU = I / (P + R - I),  so Dice = 2 IoU / (1 + IoU).

A prediction value outside `[0, num_classes)` at a valid pixel is an error. A class absent from both prediction and
reference (`P + R = 0`) has undefined Dice and IoU: NaN internally, `None` in the results, and it is left out of every
mean (it neither rewards nor penalises). Two aggregations are reported:

* `"dataset"`: I, P and R summed over all images first, then the ratios (pooled; large images weigh more).
  `per_class[c]` is that ratio; `mean` is the mean over the classes that are defined.
* `"per_image"`: ratios per image, then averaged. `per_class[c]` is the mean over the images in which `c` is defined;
  `mean` is the mean over images of each image's mean over its defined classes (images with no defined class are
  skipped), i.e. the usual "mean Dice per image".

`include_background=False` drops class 0 from the means (its per-class value is still reported).
Results contain Python floats, ints, strings and `None` only (no NaN).
"""

from collections.abc import Sequence

import numpy as np

__all__ = ["confusion_matrix", "dice_iou_from_counts", "segmentation_counts", "segmentation_metrics"]


def confusion_matrix(
    prediction: np.ndarray, target: np.ndarray, num_classes: int, ignore_index: int = 255
) -> np.ndarray:
    """`(K, K)` pixel counts over valid pixels (reference != `ignore_index`); rows reference, columns prediction."""
    prediction, target = np.asarray(prediction), np.asarray(target)
    if prediction.shape != target.shape:
        raise ValueError(f"prediction {prediction.shape} and target {target.shape} differ in shape")
    valid = target != ignore_index
    reference, predicted = target[valid].astype(np.int64), prediction[valid].astype(np.int64)
    for name, values in (("target", reference), ("prediction", predicted)):
        if values.size and (values.min() < 0 or values.max() >= num_classes):
            raise ValueError(f"{name} has values outside [0, {num_classes}) at non-ignored pixels")
    return np.bincount(reference * num_classes + predicted, minlength=num_classes**2).reshape(num_classes, num_classes)


def segmentation_counts(
    prediction: np.ndarray, target: np.ndarray, num_classes: int, ignore_index: int = 255
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class `(intersection, predicted_area, reference_area)`, each `(K,)`, over valid pixels of one image."""
    matrix = confusion_matrix(prediction, target, num_classes, ignore_index)
    return np.diag(matrix).copy(), matrix.sum(axis=0), matrix.sum(axis=1)


def dice_iou_from_counts(
    intersection: np.ndarray, predicted: np.ndarray, reference: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Dice and IoU per class from counts; NaN where `predicted + reference == 0`."""
    intersection, total = np.asarray(intersection, np.float64), np.asarray(predicted, np.float64) + reference
    with np.errstate(divide="ignore", invalid="ignore"):
        dice = np.where(total > 0, 2 * intersection / total, np.nan)
        iou = np.where(total > 0, intersection / (total - intersection), np.nan)
    return dice, iou


def _none_if_nan(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def _nanmean(values: np.ndarray) -> float:
    values = np.asarray(values, dtype=np.float64)
    return float(values[np.isfinite(values)].mean()) if np.isfinite(values).any() else float("nan")


def segmentation_metrics(
    predictions: Sequence[np.ndarray],
    targets: Sequence[np.ndarray],
    num_classes: int | None = None,
    ignore_index: int = 255,
    include_background: bool = True,
    class_names: Sequence[str] | None = None,
) -> dict:
    """Dice and IoU per class and mean, pooled over the dataset and averaged per image.

    `predictions`, `targets`: sequences of integer masks, pair `i` of equal shape (shapes may differ between pairs), or
    `(N, H, W)` arrays. `num_classes` defaults to 1 + the largest non-ignored label in either. Returns
    `{"num_classes", "ignore_index", "include_background", "n_images", "class_names", "dataset": {"dice": {"per_class",
    "mean"}, "iou": {...}}, "per_image": {...}}`; see the module docstring for the two aggregations.
    """
    if len(predictions) != len(targets):
        raise ValueError(f"{len(predictions)} predictions for {len(targets)} targets")
    if len(targets) == 0:
        raise ValueError("no masks")
    if num_classes is None:
        largest = [np.max(np.where(np.asarray(t) == ignore_index, -1, t), initial=-1) for t in targets]
        largest += [
            np.max(np.where(np.asarray(t) == ignore_index, -1, p), initial=-1) for p, t in zip(predictions, targets)
        ]
        num_classes = int(max(largest)) + 1
        if num_classes < 1:
            raise ValueError("every pixel is ignored; pass num_classes")
    if class_names is None:
        class_names = [str(c) for c in range(num_classes)]
    class_names = [str(name) for name in class_names]
    if len(class_names) != num_classes:
        raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
    counted = np.arange(num_classes) >= (0 if include_background else 1)

    counts = np.stack(
        [np.stack(segmentation_counts(p, t, num_classes, ignore_index)) for p, t in zip(predictions, targets)]
    )  # (N, 3, K): intersection, predicted, reference
    pooled = dice_iou_from_counts(*counts.sum(axis=0))
    per_image = dice_iou_from_counts(counts[:, 0], counts[:, 1], counts[:, 2])  # each (N, K)

    def per_class(values: np.ndarray) -> dict:
        return {name: _none_if_nan(value) for name, value in zip(class_names, values)}

    def summary_per_image(values: np.ndarray) -> dict:
        image_means = [_nanmean(row[counted]) for row in values]
        return {
            "per_class": per_class([_nanmean(column) for column in values.T]),
            "mean": _none_if_nan(_nanmean(image_means)),
        }

    return {
        "num_classes": int(num_classes),
        "ignore_index": int(ignore_index),
        "include_background": bool(include_background),
        "n_images": int(len(targets)),
        "class_names": class_names,
        "dataset": {
            name: {"per_class": per_class(values), "mean": _none_if_nan(_nanmean(values[counted]))}
            for name, values in zip(("dice", "iou"), pooled)
        },
        "per_image": {name: summary_per_image(values) for name, values in zip(("dice", "iou"), per_image)},
    }
