"""Sex and age from frozen features: metadata parsing and the two probes, on a patient-level split.

Sex is coded 1 = male, 0 = female (`m`, `male`, `f`, `female`, any case), so the reported AUROC is that of the
"male" score; anything else (empty, `other`, `unknown`) is missing. Age is in years (`52`, `52.5`, `052Y` as in DICOM
PatientAge); empty, unparseable, negative or over 130 is missing. A row missing one target still serves the other.
A target with too few known values to fit and score (see `skip_reason`) is skipped, and says why.
"""

import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rad_dino_hf.errors import UserError
from rad_dino_hf.metrics import demographics_metrics
from rad_dino_hf.probe import fit_linear_probe, fit_ridge_probe
from rad_dino_hf.tables import load_table

logger = logging.getLogger(__name__)

SEX_CODES = {"m": 1.0, "male": 1.0, "f": 0.0, "female": 0.0}
AGE_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*[yY]?\s*$")
MAX_AGE = 130.0
MIN_TRAIN_PATIENTS = 5  # the regularisation is chosen by 5-fold patient-grouped CV: one patient a fold at least
MIN_VALIDATION_IMAGES = 2  # Pearson r and AUROC need two values


def parse_sex(value: str | None) -> float:
    """1.0 male, 0.0 female, NaN when missing or not one of `SEX_CODES` (case-insensitive)."""
    return SEX_CODES.get((value or "").strip().lower(), math.nan)


def parse_age(value: str | None) -> float:
    """Age in years, NaN when missing, unparseable or outside [0, 130]."""
    match = AGE_PATTERN.match(value or "")
    age = float(match.group(1)) if match else math.nan
    return age if age <= MAX_AGE else math.nan


@dataclass
class DemographicsTable:
    """One row per image: `files`, `patients` `(N,)` (namespaced `folder/patient`), `sex` and `age` `(N,)` floats
    with NaN where unknown."""

    files: list[Path]
    patients: np.ndarray
    sex: np.ndarray
    age: np.ndarray


def read_demographics(folders: Sequence[str | Path], sex_column: str, age_column: str) -> DemographicsTable:
    """Every row of each folder's `metadata.csv` (`file`, `patient` and, where present, the sex and age columns).

    A folder without one of the columns has that target missing for all its rows (hannover-covid has no age).
    """
    files, patients, sex, age = [], [], [], []
    for folder in map(Path, folders):
        table, root = load_table(str(folder))
        for row in table:
            files.append(root / row["file"])
            patients.append(f"{folder.name}/{row['patient']}")
            sex.append(parse_sex(row.get(sex_column)))
            age.append(parse_age(row.get(age_column)))
    if not files:
        raise ValueError(f"No rows in the metadata.csv of {list(folders)}")
    return DemographicsTable(files, np.array(patients), np.array(sex), np.array(age))


@dataclass
class TargetPredictions:
    """Validation predictions of one target: table `rows` `(M,)`, true `targets` `(M,)` and `predictions` `(M,)`
    (age in years, or the probability of male); `train_rows` are the rows the probe was fitted on."""

    rows: np.ndarray
    targets: np.ndarray
    predictions: np.ndarray
    train_rows: np.ndarray


def _known(values: np.ndarray, indices: np.ndarray, name: str, split: str) -> np.ndarray:
    """The `indices` whose value is known; logs how many were dropped."""
    kept = indices[np.isfinite(values[indices])]
    if len(kept) < len(indices):
        logger.info(
            "%s: dropped %d of %d %s rows with no usable value", name, len(indices) - len(kept), len(indices), split
        )
    return kept


def skip_reason(name: str, values: np.ndarray, train: np.ndarray, val: np.ndarray, patients: np.ndarray) -> str | None:
    """Why target `name` cannot be probed with the known `values` of rows `train` and `val`, or None if it can."""
    n_patients = len(set(patients[train]))
    if n_patients < MIN_TRAIN_PATIENTS:
        return f"{n_patients} training patients with a known {name}; the probe needs {MIN_TRAIN_PATIENTS}"
    if len(val) < MIN_VALIDATION_IMAGES:
        return f"{len(val)} validation images with a known {name}; scoring needs {MIN_VALIDATION_IMAGES}"
    if name == "sex":
        for split, rows in (("training", train), ("validation", val)):
            if len(set(values[rows])) < 2:
                return f"one sex only in the {split} split"
    return None


def demographics_probe(
    vectors: np.ndarray, table: DemographicsTable, train: np.ndarray, val: np.ndarray, seed: int = 0
) -> tuple[dict, dict[str, TargetPredictions]]:
    """Fit the sex (logistic, C by patient-grouped CV on AUROC) and age (ridge, alpha by patient-grouped CV on MAE)
    probes on `(N, F)` `vectors[train]` and score `vectors[val]`, each on the rows where its target is known.

    Returns `rad_dino_hf.metrics.demographics_metrics` (sex AUROC, age MAE and Pearson r with 95 % bootstrap intervals)
    plus each target's chosen regularisation and train/validation counts, or `{"skipped": reason}` for a target with
    too few known values; and the validation predictions per probed target.
    """
    predictions, regularisation, skipped = {}, {}, {}
    for name, values in (("sex", table.sex), ("age", table.age)):
        train_rows, val_rows = _known(values, train, name, "training"), _known(values, val, name, "validation")
        reason = skip_reason(name, values, train_rows, val_rows, table.patients)
        if reason:
            logger.warning("%s probe skipped: %s", name, reason)
            skipped[name] = {"skipped": reason}
            continue
        features, patients = vectors[train_rows], table.patients[train_rows]
        if name == "sex":
            model = fit_linear_probe(features, values[train_rows], patients, seed, scoring="roc_auc")
            predicted = model.predict_proba(vectors[val_rows])[:, list(model.classes_).index(1.0)]
            regularisation[name] = {"C": float(np.ravel(model[-1].C_)[0])}
        else:
            model = fit_ridge_probe(features, values[train_rows], patients)
            predicted = model.predict(vectors[val_rows])
            regularisation[name] = {"alpha": float(model[-1].alpha_)}
        predictions[name] = TargetPredictions(val_rows, values[val_rows], predicted, train_rows)
    if not predictions:
        reasons = "; ".join(f"{name}: {value['skipped']}" for name, value in skipped.items())
        raise UserError(f"Neither sex nor age could be probed ({reasons})")
    inputs = {}
    if "age" in predictions:
        inputs.update(age_targets=predictions["age"].targets, age_predictions=predictions["age"].predictions)
    if "sex" in predictions:
        inputs.update(sex_labels=predictions["sex"].targets.astype(int), sex_scores=predictions["sex"].predictions)
    results = demographics_metrics(**inputs, seed=seed)
    for name, target in predictions.items():
        results[name].update(regularisation[name], n_train=int(len(target.train_rows)))
    return results | skipped, predictions
