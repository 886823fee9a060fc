"""Downstream evaluation metrics: classification, segmentation and demographics (age, sex), with bootstrap CIs.

Design (one implementation, no copies). The classification and segmentation math lives in numpy-only files shipped
with the `evaluate` modules of this repository:

    rad_dino_hf/evaluate_metrics/classification/classification_core.py   <- imported relatively by classification.py
    rad_dino_hf/evaluate_metrics/segmentation/segmentation_core.py       <- imported relatively by segmentation.py

`evaluate.load(path)` copies a local metric script into its modules cache and imports it there, so the script cannot
import `rad_dino_hf` reliably (that depends on the working directory / `sys.path`). It does, however, copy
same-directory modules named in relative imports (`from .classification_core import ...`) along with the script
(and hashes them, so edits are picked up). This module loads those same core files by path with `importlib`,
which needs neither `evaluate` (a slow import) nor any particular working directory, and re-exports their functions.
Regression and sex metrics, which no `evaluate` module wraps, are defined here and reuse the core's bootstrap and
AUROC.

    classification_metrics(labels, scores, class_names=None, multilabel=False, n_bootstrap=1000, seed=0)
    segmentation_metrics(predictions, targets, num_classes=None, ignore_index=255, include_background=True)
    regression_metrics(targets, predictions, n_bootstrap=1000, seed=0)          # age: MAE, Pearson r
    binary_auroc_metrics(labels, scores, n_bootstrap=1000, seed=0)              # sex: AUROC
    demographics_metrics(age_targets=..., age_predictions=..., sex_labels=..., sex_scores=...)
    load_evaluate_metric("classification" | "segmentation", config_name=None)  # the evaluate modules

All results are JSON-serialisable dicts (`None`, never NaN, for undefined values). Confidence intervals are percentile
bootstrap intervals over resampled cases (`np.random.default_rng(seed)`), `{"value", "ci_low", "ci_high"}`.
"""

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
from scipy.stats import pearsonr

METRICS_DIR = Path(__file__).resolve().parent / "evaluate_metrics"


def _load_core(name: str) -> ModuleType:
    module_name = f"rad_dino_hf._{name}_core"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, METRICS_DIR / name / f"{name}_core.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


_classification = _load_core("classification")
_segmentation = _load_core("segmentation")

auroc = _classification.auroc
auprc = _classification.auprc
bootstrap = _classification.bootstrap
interval = _classification.interval
classification_metrics = _classification.classification_metrics
confusion_matrix = _segmentation.confusion_matrix
dice_iou_from_counts = _segmentation.dice_iou_from_counts
segmentation_counts = _segmentation.segmentation_counts
segmentation_metrics = _segmentation.segmentation_metrics


def _bootstrap_info(n_bootstrap: int, n_used: int, seed: int, confidence: float) -> dict:
    return {
        "n_requested": int(n_bootstrap),
        "n_used": int(n_used),
        "seed": int(seed),
        "confidence": float(confidence),
        "method": "percentile",
    }


def _pearson(targets: np.ndarray, predictions: np.ndarray) -> float:
    """`scipy.stats.pearsonr` statistic; NaN when either input is constant (undefined)."""
    if np.ptp(targets) == 0 or np.ptp(predictions) == 0:
        return float("nan")
    return float(pearsonr(targets, predictions).statistic)


def regression_metrics(
    targets: np.ndarray, predictions: np.ndarray, n_bootstrap: int = 1000, seed: int = 0, confidence: float = 0.95
) -> dict:
    """Mean absolute error and Pearson r (e.g. age in years), each with a percentile-bootstrap interval.

    `targets`, `predictions`: `(N,)`. Resamples with a constant target or prediction (r undefined) are skipped.
    Returns `{"n", "bootstrap", "mae": {"value", "ci_low", "ci_high"}, "pearson_r": {...}}`.
    """
    targets, predictions = np.asarray(targets, np.float64).ravel(), np.asarray(predictions, np.float64).ravel()
    if targets.shape != predictions.shape:
        raise ValueError(f"{targets.shape[0]} targets for {predictions.shape[0]} predictions")

    def statistic(t: np.ndarray, p: np.ndarray) -> np.ndarray:
        return np.array([np.mean(np.abs(t - p)), _pearson(t, p)])

    point = statistic(targets, predictions)
    samples = bootstrap(statistic, [targets, predictions], n_bootstrap, seed, keep=lambda v: bool(np.isfinite(v[1])))
    return {
        "n": int(targets.size),
        "bootstrap": _bootstrap_info(n_bootstrap, len(samples), seed, confidence),
        "mae": interval(point[0], samples[:, 0], confidence),
        "pearson_r": interval(point[1], samples[:, 1], confidence),
    }


def binary_auroc_metrics(
    labels: np.ndarray, scores: np.ndarray, n_bootstrap: int = 1000, seed: int = 0, confidence: float = 0.95
) -> dict:
    """AUROC of a binary target (e.g. sex), with a percentile-bootstrap interval.

    `labels` `(N,)` {0, 1}; `scores` `(N,)` probability of label 1. Resamples lacking either label are skipped.
    Returns `{"n", "n_positive", "bootstrap", "auroc": {"value", "ci_low", "ci_high"}}`.
    """
    labels, scores = np.asarray(labels).ravel(), np.asarray(scores, np.float64).ravel()
    if not np.isin(labels, (0, 1)).all():
        raise ValueError("binary labels must be 0 or 1")
    if labels.shape != scores.shape:
        raise ValueError(f"{labels.shape[0]} labels for {scores.shape[0]} scores")

    def statistic(y: np.ndarray, s: np.ndarray) -> np.ndarray:
        return np.array([auroc(y, s)])

    samples = bootstrap(statistic, [labels, scores], n_bootstrap, seed, keep=lambda v: bool(np.isfinite(v[0])))
    return {
        "n": int(labels.size),
        "n_positive": int(labels.sum()),
        "bootstrap": _bootstrap_info(n_bootstrap, len(samples), seed, confidence),
        "auroc": interval(auroc(labels, scores), samples[:, 0], confidence),
    }


def demographics_metrics(
    age_targets: np.ndarray | None = None,
    age_predictions: np.ndarray | None = None,
    sex_labels: np.ndarray | None = None,
    sex_scores: np.ndarray | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict:
    """`{"age": regression_metrics(...), "sex": binary_auroc_metrics(...)}` for whichever inputs are given."""
    results = {}
    if age_targets is not None:
        results["age"] = regression_metrics(age_targets, age_predictions, n_bootstrap, seed, confidence)
    if sex_labels is not None:
        results["sex"] = binary_auroc_metrics(sex_labels, sex_scores, n_bootstrap, seed, confidence)
    return results


def load_evaluate_metric(name: str, config_name: str | None = None, **kwargs):
    """`evaluate.load` of this package's `evaluate_metrics/<name>` module ("classification" or "segmentation"),
    offline."""
    import evaluate  # slow import; only when asked for

    return evaluate.load(str(METRICS_DIR / name), config_name, **kwargs)
