"""Labelled tables through HF datasets (CSV, parquet, JSON lines, a folder's metadata.csv, a Hub id), multi-label
columns and their value policy, and the multi-label linear-probe and knn commands."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from datasets import Dataset, Features, Image, Value

import rad_dino_hf.cli.downstream as train_downstream
import rad_dino_hf.tables
from rad_dino_hf.probe import REGULARISATION_GRID, per_label_probabilities
from rad_dino_hf.tables import read_labelled_table
from rad_dino_hf.tasks.common import labelled_split

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample"
LABELS = ["pneumonia", "bacterial", "viral"]


def _read(source, labels=("label",), **options):
    return read_labelled_table(str(source), "file", list(labels), "patient", **options)


def _same(first, second) -> None:
    assert [Path(f).resolve() for f in first.files] == [Path(f).resolve() for f in second.files]
    assert first.classes == second.classes and first.multilabel == second.multilabel
    np.testing.assert_array_equal(first.labels, second.labels)
    np.testing.assert_array_equal(first.patients, second.patients)


@pytest.fixture
def multilabel_csv(labelled_sample_csv, tmp_path) -> Path:
    """The 12 labelled sample images with three yes/no columns in mixed spellings; 10 patients, two with 2 images."""
    with open(labelled_sample_csv, encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    spellings = [("1", "0"), ("yes", "no"), ("TRUE", "false")]
    for index, row in enumerate(rows):
        positive, negative = spellings[index % 3]
        flags = [row["label"] != "normal", row["label"] == "bacterial", row["label"] == "viral"]
        row.update({name: positive if flag else negative for name, flag in zip(LABELS, flags)})
        row["patient"] = f"p{index if index < 10 else index - 2}"  # rows 10 and 11 join patients 8 and 9
    path = tmp_path / "multilabel.csv"
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_parquet_jsonl_and_a_metadata_folder_read_like_the_csv(labelled_sample_csv, tmp_path):
    reference = _read(labelled_sample_csv)
    table = Dataset.from_csv(str(labelled_sample_csv))
    table.to_parquet(tmp_path / "probe.parquet")
    table.to_json(tmp_path / "probe.jsonl")
    for path in (tmp_path / "probe.parquet", tmp_path / "probe.jsonl"):
        _same(_read(path), reference)
    # The folder's metadata.csv: relative paths from the folder, every labelled row, the unlabelled ones left out.
    with open(SAMPLE / "metadata.csv", encoding="utf-8") as handle:
        labelled = [row for row in csv.DictReader(handle) if row["label"]]
    whole = tmp_path / "labelled.csv"
    with open(whole, "w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["file", "label", "patient"])
        writer.writeheader()
        writer.writerows(
            {"file": str(SAMPLE / row["file"]), **{k: row[k] for k in ("label", "patient")}} for row in labelled
        )
    folder = _read(SAMPLE)
    _same(folder, _read(whole))
    assert len(folder.files) == len(labelled) > len(reference.files)
    assert folder.classes == ["bacterial", "normal", "viral"] and not folder.multilabel


def test_multilabel_values_and_patient_split(multilabel_csv):
    table = _read(multilabel_csv, LABELS)
    assert table.multilabel and table.classes == LABELS and table.labels.shape == (12, 3)
    np.testing.assert_array_equal(table.labels.sum(axis=0), [8, 4, 4])
    np.testing.assert_array_equal(table.labels[:, 0], table.labels[:, 1] | table.labels[:, 2])
    arguments = ["knn", "--csv", str(multilabel_csv), "--label-column", *LABELS, "--val-fraction", "0.3"]
    for seed in range(5):
        _, options = train_downstream.parse_options(arguments + ["--seed", str(seed)])
        split = labelled_split(options.table, options.split, "test")
        assert not set(split.patients[split.train]) & set(split.patients[split.val])
        assert sorted(np.r_[split.train, split.val]) == list(range(12))


@pytest.mark.parametrize(
    ("value", "expected"), [("maybe", "row 3 .*column 'viral': unusable value 'maybe'"), ("", "row 3 .*'viral'")]
)
def test_bad_multilabel_values_are_clear_errors(multilabel_csv, value, expected):
    text = multilabel_csv.read_text().splitlines()
    cells = text[3].split(",")
    cells[-1] = value
    text[3] = ",".join(cells)
    multilabel_csv.write_text("\n".join(text) + "\n")
    with pytest.raises(ValueError, match=expected):
        _read(multilabel_csv, LABELS)


def test_uncertain_minus_one_follows_the_policy(tmp_path):
    path = tmp_path / "chexpert.csv"
    path.write_text("file,patient,edema,effusion\na.png,p1,-1,1\nb.png,p2,0,-1.0\nc.png,p3,,\n")
    for name in ("a.png", "b.png"):  # listed images must exist (c.png is unlabelled: not read)
        (tmp_path / name).touch()
    assert _read(path, ["edema", "effusion"]).labels.tolist() == [[0, 1], [0, 0]]  # c.png: unlabelled, left out
    assert _read(path, ["edema", "effusion"], uncertain_as="positive").labels.tolist() == [[1, 1], [0, 1]]


def test_a_label_constant_in_training_is_predicted_at_its_prevalence():
    rng = np.random.default_rng(0)
    labels = np.stack([rng.integers(0, 2, 30), np.ones(30, dtype=int)], axis=1)
    probabilities, chosen = per_label_probabilities(
        rng.normal(size=(30, 4)), labels, np.arange(30) % 10, rng.normal(size=(5, 4)), ["a", "b"]
    )
    assert probabilities.shape == (5, 2) and (probabilities[:, 1] == 1.0).all()
    assert chosen["b"] is None and chosen["a"] in REGULARISATION_GRID


def test_hub_ids_need_an_image_root_for_relative_paths_and_reject_embedded_images(monkeypatch, tmp_path):
    calls = []

    def fake_load_dataset(name, split):
        calls.append((name, split))
        if name == "someone/embedded":
            return Dataset.from_dict(
                {"file": [None], "label": ["a"], "patient": ["1"]},
                Features({"file": Image(), "label": Value("string"), "patient": Value("string")}),
            )
        return Dataset.from_dict({"file": ["x.png", "y.png"], "label": ["a", "b"], "patient": ["1", "2"]})

    monkeypatch.setattr(rad_dino_hf.tables, "load_dataset", fake_load_dataset)
    with pytest.raises(ValueError, match="pass --image-root"):
        _read("someone/cxr")
    (tmp_path / "x.png").touch(), (tmp_path / "y.png").touch()
    table = _read("someone/cxr", image_root=str(tmp_path), split="validation")
    assert table.files == [tmp_path / "x.png", tmp_path / "y.png"] and calls[-1] == ("someone/cxr", "validation")
    with pytest.raises(ValueError, match="must hold image file paths"):
        _read("someone/embedded")


@pytest.mark.parametrize("command", ["linear-probe", "knn"])
def test_multilabel_commands(command, tiny_model_dir, multilabel_csv, tmp_path):
    output = tmp_path / command
    arguments = [command, "--model", str(tiny_model_dir), "--table", str(multilabel_csv), "--label-column", *LABELS]
    arguments += ["--val-fraction", "0.3", "--cache-dir", str(tmp_path / "cache"), "--output", str(output)]
    results = train_downstream.main(arguments + (["--k", "3"] if command == "knn" else []))
    saved = json.loads((output / "metrics.json").read_text())
    assert saved["task"] == "multilabel" and saved["class_names"] == LABELS
    assert set(saved["auroc"]["per_class"]) == set(LABELS) and results["n"] + results["n_train"] == 12
    if command == "linear-probe":
        assert set(saved["C"]) == set(LABELS)
    assert (output / "roc_curves.png").exists() and not (output / "confusion_matrix.png").exists()
    with open(output / "predictions.csv", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    probabilities = np.array([[float(row[f"p_{name}"]) for name in LABELS] for row in rows])
    assert probabilities.shape == (results["n"], 3)
    assert all(set(row["label"].split(";")) <= {"", *LABELS} for row in rows)
    from sklearn.metrics import roc_auc_score

    compared = 0
    for column, name in enumerate(LABELS):  # metrics.json's per-label AUROC is that of predictions.csv
        truth = [name in row["label"].split(";") for row in rows]
        if len(set(truth)) == 2:
            expected = roc_auc_score(truth, probabilities[:, column])
            assert saved["auroc"]["per_class"][name]["value"] == pytest.approx(expected), name
            compared += 1
    assert compared >= 1
