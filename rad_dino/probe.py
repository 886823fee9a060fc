"""Frozen-feature linear probes with patient-level splits and bootstrap confidence intervals."""

from collections.abc import Callable, Sequence

import numpy as np
from sklearn.linear_model import LogisticRegressionCV
from sklearn.metrics import accuracy_score, roc_auc_score
from sklearn.model_selection import GroupKFold, GroupShuffleSplit
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler


def patient_split(patients: Sequence[str], val_fraction: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Indices of a train/validation split in which no patient appears on both sides."""
    splitter = GroupShuffleSplit(n_splits=1, test_size=val_fraction, random_state=seed)
    train, val = next(splitter.split(np.zeros(len(patients)), groups=np.asarray(patients)))
    return np.sort(train), np.sort(val)


def macro_auroc(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """One-vs-rest macro AUROC; `probabilities` `(N, C)`, or `(N,)` / `(N, 2)` for two classes."""
    if probabilities.ndim == 2 and probabilities.shape[1] == 2:
        probabilities = probabilities[:, 1]
    if probabilities.ndim == 1:
        return float(roc_auc_score(labels, probabilities))
    return float(roc_auc_score(labels, probabilities, multi_class="ovr", average="macro"))


def bootstrap_ci(
    metric: Callable[[np.ndarray, np.ndarray], float],
    labels: np.ndarray,
    scores: np.ndarray,
    n_resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval of `metric(labels, scores)` over resampled cases."""
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_resamples):
        index = rng.integers(0, len(labels), len(labels))
        if len(np.unique(labels[index])) < len(np.unique(labels)):
            continue  # AUROC needs every class present
        values.append(metric(labels[index], scores[index]))
    low, high = np.quantile(values, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(low), float(high)


def linear_probe(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    train_groups: np.ndarray,
    val_features: np.ndarray,
    val_labels: np.ndarray,
    seed: int = 0,
) -> dict:
    """Standardised logistic regression; C chosen by 5-fold patient-grouped CV on the training split.

    Returns accuracy and macro AUROC on the validation split with 95 % bootstrap intervals, and the chosen C.
    """
    folds = list(GroupKFold(n_splits=5).split(train_features, train_labels, groups=train_groups))
    classifier = make_pipeline(
        StandardScaler(),
        LogisticRegressionCV(Cs=[0.001, 0.01, 0.1, 1.0, 10.0], cv=folds, max_iter=5000, random_state=seed),
    )
    classifier.fit(train_features, train_labels)
    probabilities = classifier.predict_proba(val_features)
    predictions = classifier.classes_[probabilities.argmax(axis=1)]
    accuracy_of = lambda y, p: accuracy_score(y, classifier.classes_[p.argmax(axis=1)])  # noqa: E731
    return {
        "accuracy": float(accuracy_score(val_labels, predictions)),
        "accuracy_ci": bootstrap_ci(accuracy_of, val_labels, probabilities, seed=seed),
        "auroc": macro_auroc(val_labels, probabilities),
        "auroc_ci": bootstrap_ci(macro_auroc, val_labels, probabilities, seed=seed),
        "C": float(classifier[-1].C_[0]),
        "n_train": int(len(train_labels)),
        "n_val": int(len(val_labels)),
    }
