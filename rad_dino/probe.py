"""Frozen-feature linear probes with patient-level splits."""

from collections.abc import Sequence

import numpy as np
from sklearn.linear_model import LogisticRegressionCV
from sklearn.model_selection import GroupKFold, GroupShuffleSplit
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from rad_dino.metrics import classification_metrics

REGULARISATION_GRID = (0.001, 0.01, 0.1, 1.0, 10.0)


def patient_split(patients: Sequence[str], val_fraction: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Indices of a train/validation split in which no patient appears on both sides."""
    splitter = GroupShuffleSplit(n_splits=1, test_size=val_fraction, random_state=seed)
    train, val = next(splitter.split(np.zeros(len(patients)), groups=np.asarray(patients)))
    return np.sort(train), np.sort(val)


def fit_linear_probe(features: np.ndarray, labels: np.ndarray, patients: np.ndarray, seed: int = 0) -> Pipeline:
    """Standardised multinomial logistic regression on `(N, F)` features; C by 5-fold patient-grouped CV."""
    folds = list(GroupKFold(n_splits=5).split(features, labels, groups=patients))
    classifier = make_pipeline(
        StandardScaler(),
        LogisticRegressionCV(
            Cs=list(REGULARISATION_GRID),
            cv=folds,
            scoring="accuracy",
            l1_ratios=(0.0,),
            use_legacy_attributes=False,
            max_iter=5000,
            random_state=seed,
        ),
    )
    return classifier.fit(features, labels)


def linear_probe(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    train_groups: np.ndarray,
    val_features: np.ndarray,
    val_labels: np.ndarray,
    class_names: Sequence[str] | None = None,
    seed: int = 0,
) -> dict:
    """Fit on the training split, score the validation split.

    Returns `rad_dino.metrics.classification_metrics` on the validation split (accuracy, AUROC, AUPRC with 95 %
    bootstrap intervals), the chosen C, and the validation probabilities `(N_val, C)` as `probabilities`.
    """
    classifier = fit_linear_probe(train_features, train_labels, train_groups, seed)
    probabilities = classifier.predict_proba(val_features)
    metrics = classification_metrics(val_labels, probabilities, class_names=class_names, seed=seed)
    metrics["C"] = float(classifier[-1].C_)
    metrics["n_train"] = int(len(train_labels))
    metrics["probabilities"] = probabilities
    return metrics
