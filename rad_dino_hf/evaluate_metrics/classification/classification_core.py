"""Classification metrics with percentile-bootstrap confidence intervals (numpy only).

This file is the single implementation. It is used two ways, without copies of the code:

* `rad_dino_hf.metrics` loads it by file path (no `evaluate` import needed), and
* the `evaluate` module `classification.py` next to it imports it relatively (`from .classification_core import`);
  `evaluate.load` copies such same-directory imports into its modules cache together with the script.

It may therefore import only numpy and the standard library.

Definitions (as in the RAD-DINO paper: accuracy, macro AUROC, macro AUPRC):

* multi-class: `labels` `(N,)` int in `[0, C)`, `scores` `(N, C)` class probabilities. Accuracy is
  `mean(argmax(scores) == labels)`; AUROC and AUPRC are one-vs-rest per class (class `c` positive).
* multi-label: `labels` `(N, C)` in {0, 1}, `scores` `(N, C)` per-label probabilities. Accuracy is subset (exact
  match) accuracy with `scores >= threshold` (0.5) predicted positive, as `sklearn.metrics.accuracy_score`; AUROC and
  AUPRC are per label.
* AUROC is the trapezoidal area under the ROC curve with ties grouped (equal to `sklearn.metrics.roc_auc_score`);
  AUPRC is average precision, `sum_k (R_k - R_{k-1}) P_k` over decreasing distinct thresholds (equal to
  `sklearn.metrics.average_precision_score`).
* A class is *evaluable* when it has at least one positive and one negative case; for other classes AUROC and AUPRC
  are undefined (reported as `None`) and left out of the macro means, which average the evaluable classes equally.
* Bootstrap: cases are resampled with replacement `n_bootstrap` times with `np.random.default_rng(seed)`; a resample
  in which a class that is evaluable on the full set is not evaluable (no positive or no negative) is skipped, and the
  number used is reported. Intervals are the `(1 - confidence) / 2` and `(1 + confidence) / 2` percentiles (linear
  interpolation, `np.percentile`) of the statistics over the used resamples.

Results are plain dicts of Python floats, ints, strings and `None` (no NaN), so `json.dumps(..., allow_nan=False)`
accepts them.
"""

from collections.abc import Callable, Sequence

import numpy as np

__all__ = [
    "auprc",
    "auroc",
    "binary_curve",
    "bootstrap",
    "classification_metrics",
    "interval",
]


def binary_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cumulative true and false positives at each distinct threshold, thresholds decreasing.

    `labels` `(N,)` {0, 1} or bool, `scores` `(N,)`. Returns `(true_positives, false_positives, thresholds)`, each
    with one entry per distinct score (tied scores form one threshold), as sklearn's `_binary_clf_curve`.
    """
    labels = np.asarray(labels).astype(bool).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    order = np.argsort(scores, kind="mergesort")[::-1]
    sorted_scores, sorted_labels = scores[order], labels[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(sorted_scores)), sorted_scores.size - 1]
    true_positives = np.cumsum(sorted_labels)[last_of_tie]
    false_positives = last_of_tie + 1 - true_positives
    return true_positives.astype(np.float64), false_positives.astype(np.float64), sorted_scores[last_of_tie]


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Binary AUROC (trapezoidal, ties count one half); NaN without both positives and negatives."""
    true_positives, false_positives, _ = binary_curve(labels, scores)
    positives, negatives = true_positives[-1], false_positives[-1]
    if positives == 0 or negatives == 0:
        return float("nan")
    tpr = np.r_[0.0, true_positives / positives]
    fpr = np.r_[0.0, false_positives / negatives]
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))


def auprc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Binary average precision `sum_k (R_k - R_{k-1}) P_k`; NaN without positives."""
    true_positives, false_positives, _ = binary_curve(labels, scores)
    if true_positives[-1] == 0:
        return float("nan")
    precision = true_positives / (true_positives + false_positives)
    recall = true_positives / true_positives[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def bootstrap(
    statistic: Callable[..., np.ndarray],
    arrays: Sequence[np.ndarray],
    n_bootstrap: int = 1000,
    seed: int = 0,
    keep: Callable[[np.ndarray], bool] | None = None,
) -> np.ndarray:
    """Statistics of case resamples: `statistic(*[a[index] for a in arrays])` for `n_bootstrap` resamples.

    All arrays are indexed along their first axis with the same indices `rng.integers(0, N, N)` from
    `np.random.default_rng(seed)`, drawn in order, so results depend only on `seed`. `statistic` returns a 1-D array;
    a resample whose statistics fail `keep` (if given) is skipped. Returns the kept statistics, `(n_used, K)`.
    """
    arrays = [np.asarray(array) for array in arrays]
    count = len(arrays[0])
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n_bootstrap):
        index = rng.integers(0, count, count)
        value = np.asarray(statistic(*[array[index] for array in arrays]), dtype=np.float64).ravel()
        if keep is None or keep(value):
            rows.append(value)
    if not rows:
        return np.empty((0, np.asarray(statistic(*arrays)).size))
    return np.stack(rows)


def _finite_or_none(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def interval(value: float, samples: np.ndarray, confidence: float = 0.95) -> dict:
    """`{"value", "ci_low", "ci_high"}` from a point estimate and bootstrap samples of it (percentile method)."""
    samples = np.asarray(samples, dtype=np.float64)
    samples = samples[np.isfinite(samples)]
    if not np.isfinite(value) or samples.size == 0:
        low = high = float("nan")
    else:
        low, high = np.percentile(samples, [100 * (1 - confidence) / 2, 100 * (1 + confidence) / 2])
    return {"value": _finite_or_none(value), "ci_low": _finite_or_none(low), "ci_high": _finite_or_none(high)}


def _validate(labels: np.ndarray, scores: np.ndarray, multilabel: bool) -> tuple[np.ndarray, np.ndarray]:
    labels, scores = np.asarray(labels), np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2:
        raise ValueError(f"scores must be (N, C); got shape {scores.shape}")
    if multilabel:
        if labels.shape != scores.shape:
            raise ValueError(f"multi-label labels must be (N, C) like scores {scores.shape}; got {labels.shape}")
        if not np.isin(labels, (0, 1)).all():
            raise ValueError("multi-label labels must be 0 or 1")
        return labels.astype(np.int64), scores
    if labels.ndim != 1 or len(labels) != len(scores):
        raise ValueError(f"multi-class labels must be (N,) with N = {len(scores)}; got shape {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= scores.shape[1] or not np.all(labels == labels.round())):
        raise ValueError(f"multi-class labels must be integers in [0, {scores.shape[1]})")
    return labels.astype(np.int64), scores


def _one_hot(labels: np.ndarray, num_classes: int, multilabel: bool) -> np.ndarray:
    return labels if multilabel else (labels[:, None] == np.arange(num_classes)).astype(np.int64)


def _statistics(labels: np.ndarray, scores: np.ndarray, multilabel: bool, threshold: float) -> np.ndarray:
    """`[accuracy, macro AUROC, macro AUPRC, AUROC per class..., AUPRC per class...]` (NaN where undefined)."""
    num_classes = scores.shape[1]
    if multilabel:
        accuracy = np.mean(np.all((scores >= threshold) == labels.astype(bool), axis=1))
    else:
        accuracy = np.mean(scores.argmax(axis=1) == labels)
    targets = _one_hot(labels, num_classes, multilabel)
    aurocs = np.array([auroc(targets[:, c], scores[:, c]) for c in range(num_classes)])
    auprcs = np.array([auprc(targets[:, c], scores[:, c]) for c in range(num_classes)])
    evaluable = np.isfinite(aurocs)
    auprcs[~evaluable] = np.nan  # same classes in both macro means
    macro_auroc = aurocs[evaluable].mean() if evaluable.any() else np.nan
    macro_auprc = auprcs[evaluable].mean() if evaluable.any() else np.nan
    return np.r_[accuracy, macro_auroc, macro_auprc, aurocs, auprcs]


def classification_metrics(
    labels: np.ndarray,
    scores: np.ndarray,
    class_names: Sequence[str] | None = None,
    multilabel: bool = False,
    n_bootstrap: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    threshold: float = 0.5,
) -> dict:
    """Accuracy, macro and per-class AUROC and AUPRC, each with a percentile-bootstrap interval.

    `labels`: `(N,)` int class indices (multi-class) or `(N, C)` {0, 1} (`multilabel=True`); `scores`: `(N, C)`
    probabilities. `threshold` only enters multi-label accuracy. Returns

    `{"task", "n", "n_classes", "class_names", "excluded_classes", "bootstrap": {"n_requested", "n_used", "seed",
    "confidence", "method"}, "accuracy": {"value", "ci_low", "ci_high"}, "auroc": {"macro": {...},
    "per_class": {name: {...}}}, "auprc": {...}}`.

    `excluded_classes` lists classes without both positives and negatives (undefined, out of the macro means).
    """
    labels, scores = _validate(labels, scores, multilabel)
    count, num_classes = scores.shape
    if class_names is None:
        class_names = [str(c) for c in range(num_classes)]
    class_names = [str(name) for name in class_names]
    if len(class_names) != num_classes:
        raise ValueError(f"{len(class_names)} class names for {num_classes} score columns")

    point = _statistics(labels, scores, multilabel, threshold)
    evaluable = np.isfinite(point[3 : 3 + num_classes])

    def statistic(resampled_labels: np.ndarray, resampled_scores: np.ndarray) -> np.ndarray:
        return _statistics(resampled_labels, resampled_scores, multilabel, threshold)

    def keep(value: np.ndarray) -> bool:
        # skip resamples in which a class evaluable on the full set has no positive or no negative
        return bool(np.isfinite(value[3 : 3 + num_classes][evaluable]).all())

    samples = bootstrap(statistic, [labels, scores], n_bootstrap=n_bootstrap, seed=seed, keep=keep)

    def summary(column: int) -> dict:
        return interval(point[column], samples[:, column], confidence)

    return {
        "task": "multilabel" if multilabel else "multiclass",
        "n": int(count),
        "n_classes": int(num_classes),
        "class_names": class_names,
        "excluded_classes": [name for name, ok in zip(class_names, evaluable) if not ok],
        "bootstrap": {
            "n_requested": int(n_bootstrap),
            "n_used": int(len(samples)),
            "seed": int(seed),
            "confidence": float(confidence),
            "method": "percentile",
        },
        "accuracy": summary(0),
        "auroc": {
            "macro": summary(1),
            "per_class": {name: summary(3 + c) for c, name in enumerate(class_names)},
        },
        "auprc": {
            "macro": summary(2),
            "per_class": {name: summary(3 + num_classes + c) for c, name in enumerate(class_names)},
        },
    }
