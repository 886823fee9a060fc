"""Labelled image tables for the downstream tasks, read through HuggingFace `datasets`, and patient-level splits.

A table is a `.csv`, `.parquet` or `.jsonl` / `.json` file, a folder holding a `metadata.csv` (as `data/sample`),
or a Hub dataset id. Its image column holds file paths; relative paths resolve from an image root (default: the
table's folder). One label column gives a multi-class target (the sorted distinct values are the classes); several
give a multi-label target, one 0/1 label per column.

Label policy: rows blank in every label column are unlabelled images and are left out (with a warning). Multi-label
values are 1 / 0 (also `true` / `false`, `yes` / `no`, any case, and 1.0 / 0.0); CheXpert's -1 (uncertain) is read
as `uncertain_as` ("negative": U-Zeros, or "positive": U-Ones); any other value, or a blank in some of a row's label
columns, is an error naming the row, the file and the column. Image paths must be text: embedded images (an `Image`
feature, or image bytes) are not read. A multi-class label column needs two classes or more, and every listed image
must exist. Faults in a table are `UserError`s naming the table and the column or file.
"""

import csv
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from datasets import ClassLabel, Dataset, Features, Value, load_dataset
from sklearn.model_selection import GroupKFold, GroupShuffleSplit

from rad_dino_hf.errors import UserError

logger = logging.getLogger(__name__)

BUILDERS = {".csv": "csv", ".parquet": "parquet", ".jsonl": "json", ".json": "json"}
UNCERTAIN_POLICIES = ("negative", "positive")
POSITIVE, NEGATIVE, UNCERTAIN = {"1", "1.0", "true", "yes"}, {"0", "0.0", "false", "no"}, {"-1", "-1.0"}
MISSING_FILES_SHOWN = 3  # missing images named in the error; the rest are counted


@dataclass
class LabelledTable:
    """Image `files`, `labels` (`(N,)` class indices, or `(N, C)` 0/1 when `multilabel`), `patients` `(N,)` and the
    `classes` (sorted label values, or the label column names when `multilabel`)."""

    files: list[Path]
    labels: np.ndarray
    patients: np.ndarray
    classes: list[str]
    multilabel: bool


def patient_split(patients: Sequence[str], val_fraction: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Indices of a train/validation split in which no patient appears on both sides."""
    splitter = GroupShuffleSplit(n_splits=1, test_size=val_fraction, random_state=seed)
    train, val = next(splitter.split(np.zeros(len(patients)), groups=np.asarray(patients)))
    return np.sort(train), np.sort(val)


def patient_folds(patients: np.ndarray, n_splits: int = 5) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, test) index pairs of `n_splits`-fold cross-validation in which no patient is on both sides."""
    return list(GroupKFold(n_splits=n_splits).split(np.zeros(len(patients)), groups=patients))


def load_table(source: str, split: str = "train") -> tuple[Dataset, Path | None]:
    """The table at `source` and the folder its relative paths resolve from (`None` for a Hub id).

    A Hub id (anything that is not a local file or folder) loads its `split`; a local file is one table.
    """
    path = Path(source)
    if path.is_dir():
        path = path / "metadata.csv"
        if not path.is_file():
            raise UserError(f"{source} is a folder without a metadata.csv")
    if not path.exists():
        if path.suffix.lower() in BUILDERS:
            raise UserError(f"Label table not found: {path} (pass --table)")
        try:
            return load_dataset(source, split=split), None
        except OSError as error:  # not found, offline (HF_HUB_OFFLINE) or unreachable
            raise UserError(
                f"Table {source}: neither a local file or folder nor a Hub dataset that can be reached "
                f"({' '.join(str(error).split())})"
            ) from error
    builder = BUILDERS.get(path.suffix.lower())
    if builder is None:
        raise UserError(f"{path}: unknown table format; use one of {sorted(BUILDERS)}")
    features = None
    if builder == "csv":  # every column as text, as written: no guessed numbers (patient "007" stays "007")
        with open(path, encoding="utf-8", newline="") as handle:
            features = Features({name: Value("string") for name in next(csv.reader(handle), [])})
    return load_dataset(builder, data_files=str(path), split="train", features=features), path.parent


def column_values(table: Dataset, column: str) -> list:
    """A column's values, with `ClassLabel` integers turned into their names."""
    feature = table.features[column]
    values = table[column]
    return [None if v is None else feature.int2str(v) for v in values] if isinstance(feature, ClassLabel) else values


def binary_label(value: object, uncertain_as: str = "negative") -> int | None:
    """1 or 0 for a yes/no value (see the module's policy), `None` for a blank or unreadable one."""
    text = "" if value is None else str(value).strip().lower()
    if text in UNCERTAIN:
        text = "1" if uncertain_as == "positive" else "0"
    return 1 if text in POSITIVE else 0 if text in NEGATIVE else None


def is_blank(value: object) -> bool:
    """Whether a cell is empty: missing (`None`, as `datasets` reads an empty CSV cell) or only whitespace."""
    return value is None or not str(value).strip()


def read_labelled_table(
    source: str,
    image_column: str,
    label_columns: list[str],
    patient_column: str,
    image_root: str | None = None,
    split: str = "train",
    uncertain_as: str = "negative",
) -> LabelledTable:
    """`source`'s labelled rows as a `LabelledTable`: multi-class with one of `label_columns`, multi-label with
    several. Rows blank in every label column (unlabelled images) are left out, with a warning."""
    if uncertain_as not in UNCERTAIN_POLICIES:
        raise UserError(f"uncertain_as must be one of {UNCERTAIN_POLICIES}, got {uncertain_as!r}")
    table, folder = load_table(source, split)
    wanted = [image_column, *label_columns, patient_column]
    missing = [name for name in dict.fromkeys(wanted) if name not in table.column_names]
    if missing:
        raise UserError(
            f"{source} lacks column(s) {missing}; columns: {table.column_names}. Name them with --image-column, "
            "--label-column and --patient-column"
        )
    feature = table.features[image_column]
    if not (isinstance(feature, Value) and "string" in feature.dtype):
        raise UserError(f"{source}: column {image_column!r} holds {feature}, not text; it must hold image file paths")
    values = {name: column_values(table, name) for name in dict.fromkeys(wanted)}
    rows = [i for i in range(table.num_rows) if not all(is_blank(values[c][i]) for c in label_columns)]
    if len(rows) < table.num_rows:
        logger.warning("%s: %d of %d rows have no label; left out", source, table.num_rows - len(rows), table.num_rows)

    def checked(column: str, parse: Callable[[object], object] = str) -> list:
        """The kept rows' values of `column`, parsed; a blank or unparsable value is an error naming its row."""
        parsed = []
        for row in rows:
            value = values[column][row]
            result = None if is_blank(value) else parse(value)
            if result is None:
                where = f"row {row + 1} ({values[image_column][row]})"
                raise UserError(f"{source}: {where}, column {column!r}: unusable value {value!r}")
            parsed.append(result)
        return parsed

    paths = checked(image_column)
    root = Path(image_root) if image_root else folder
    if root is None and not all(Path(p).is_absolute() for p in paths):
        raise UserError(f"{source} is a Hub dataset with relative image paths: pass --image-root")
    files = [Path(p) if root is None else root / p for p in paths]
    absent = [str(file) for file in files if not file.is_file()]
    if absent:
        shown = ", ".join(absent[:MISSING_FILES_SHOWN]) + (", ..." if len(absent) > MISSING_FILES_SHOWN else "")
        raise UserError(
            f"{source}: {len(absent)} of {len(files)} listed images do not exist ({shown}); check column "
            f"{image_column!r} and the image root ({root or 'absolute paths'}; --image-root sets it)"
        )
    patients = np.array(checked(patient_column))
    if len(label_columns) > 1:
        columns = [checked(c, lambda value: binary_label(value, uncertain_as)) for c in label_columns]
        labels, classes = np.array(columns, dtype=np.int64).T, list(label_columns)
    else:
        names = checked(label_columns[0])
        classes = sorted(set(names))
        if len(classes) < 2:
            raise UserError(
                f"{source}: label column {label_columns[0]!r} has a single class ({classes[0]!r}) in its "
                f"{len(names)} labelled rows; a classifier needs two or more"
            )
        index = {name: i for i, name in enumerate(classes)}
        labels = np.array([index[name] for name in names], dtype=np.int64)
    return LabelledTable(files, labels, patients, classes, len(label_columns) > 1)
