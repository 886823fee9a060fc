"""Frozen-feature linear probes (logistic and ridge regression), regularisation chosen by patient-grouped CV."""

import logging
from collections.abc import Sequence

import numpy as np
from sklearn.linear_model import LogisticRegressionCV, RidgeCV
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from rad_dino_hf.metrics import classification_metrics
from rad_dino_hf.tables import patient_folds

logger = logging.getLogger(__name__)

REGULARISATION_GRID = (0.001, 0.01, 0.1, 1.0, 10.0)
RIDGE_GRID = tuple(10.0**power for power in range(-2, 7))


def fit_linear_probe(
    features: np.ndarray, labels: np.ndarray, patients: np.ndarray, seed: int = 0, scoring: str = "accuracy"
) -> Pipeline:
    """Standardised (multinomial) logistic regression on `(N, F)` features; C by 5-fold patient-grouped CV.

    `scoring`: the sklearn scorer that picks C, e.g. `"roc_auc"` for a binary target.
    """
    classifier = make_pipeline(
        StandardScaler(),
        LogisticRegressionCV(
            Cs=list(REGULARISATION_GRID),
            cv=patient_folds(patients),
            scoring=scoring,
            l1_ratios=(0.0,),
            use_legacy_attributes=False,
            max_iter=5000,
            random_state=seed,
        ),
    )
    return classifier.fit(features, labels)


def fit_ridge_probe(features: np.ndarray, targets: np.ndarray, patients: np.ndarray) -> Pipeline:
    """Standardised ridge regression of `(N,)` targets on `(N, F)` features; alpha by 5-fold patient-grouped CV.

    Alpha minimises the cross-validated mean absolute error over `RIDGE_GRID`; read it as `pipeline[-1].alpha_`.
    """
    regressor = make_pipeline(
        StandardScaler(),
        RidgeCV(alphas=RIDGE_GRID, cv=patient_folds(patients), scoring="neg_mean_absolute_error"),
    )
    return regressor.fit(features, targets)


def per_label_probabilities(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    train_groups: np.ndarray,
    val_features: np.ndarray,
    class_names: Sequence[str],
    seed: int = 0,
) -> tuple[np.ndarray, dict[str, float | None]]:
    """Multi-label probe: one `fit_linear_probe` per label of `(N, C)` 0/1 `train_labels`.

    Returns the validation probabilities `(N_val, C)` and each label's chosen C. A label with one value in the
    training split cannot be fitted: it is skipped with a warning, predicted at its training prevalence (C `None`).
    """
    columns, chosen = [], {}
    for name, targets in zip(class_names, train_labels.T):
        if np.unique(targets).size < 2:
            logger.warning("Label %r is %d for every training image: predicting its prevalence", name, targets[0])
            columns.append(np.full(len(val_features), float(targets.mean())))
            chosen[name] = None
            continue
        classifier = fit_linear_probe(train_features, targets, train_groups, seed)
        columns.append(classifier.predict_proba(val_features)[:, 1])
        chosen[name] = float(classifier[-1].C_)
    return np.stack(columns, axis=1), chosen


def linear_probe(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    train_groups: np.ndarray,
    val_features: np.ndarray,
    val_labels: np.ndarray,
    class_names: Sequence[str] | None = None,
    seed: int = 0,
    multilabel: bool = False,
) -> dict:
    """Fit on the training split, score the validation split.

    Labels are `(N,)` class indices (one multinomial regression), or `(N, C)` 0/1 with `multilabel` (one binary
    regression per label, `per_label_probabilities`). Returns `rad_dino_hf.metrics.classification_metrics` on the
    validation split (accuracy, AUROC, AUPRC with 95 % bootstrap intervals), the chosen C (per label when
    `multilabel`), and the validation probabilities `(N_val, C)` as `probabilities`.
    """
    if multilabel:
        names = [str(c) for c in range(train_labels.shape[1])] if class_names is None else class_names
        probabilities, regularisation = per_label_probabilities(
            train_features, train_labels, train_groups, val_features, names, seed
        )
    else:
        classifier = fit_linear_probe(train_features, train_labels, train_groups, seed)
        probabilities, regularisation = classifier.predict_proba(val_features), float(classifier[-1].C_)
    metrics = classification_metrics(
        val_labels, probabilities, class_names=class_names, multilabel=multilabel, seed=seed
    )
    metrics["C"] = regularisation
    metrics["n_train"] = int(len(train_labels))
    metrics["probabilities"] = probabilities
    return metrics
