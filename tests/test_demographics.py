"""Sex and age probes: value parsing, recovery on synthetic features, dropped missing values, the patient split,
and the demographics command."""

import csv
import json
import math

import numpy as np
import PIL.Image
import pytest

import rad_dino_hf.cli.downstream as train_downstream
from rad_dino_hf.demographic_probes import DemographicsTable, demographics_probe, parse_age, parse_sex
from rad_dino_hf.tables import patient_split


def test_parsing():
    assert [parse_sex(value) for value in ("M", "male", " F ", "Female", "f")] == [1.0, 1.0, 0.0, 0.0, 0.0]
    assert all(math.isnan(parse_sex(value)) for value in ("", None, "other", "U"))
    assert [parse_age(value) for value in ("52", "52.5", "052Y", " 7 ")] == [52.0, 52.5, 52.0, 7.0]
    assert all(math.isnan(parse_age(value)) for value in ("", None, "abc", "-3", "200", "40-50"))


def _synthetic(count: int = 300, images_per_patient: int = 2, noise: float = 1.0, seed: int = 0):
    """Features `(count, 12)`; age linear in them plus Gaussian noise; sex separable along feature 0."""
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(count, 12))
    sex = (vectors[:, 0] > 0).astype(float)
    vectors[:, 0] += np.where(sex == 1, 1.0, -1.0)  # a margin: perfectly separable
    age = 50 + vectors @ rng.normal(scale=5, size=12) + rng.normal(scale=noise, size=count)
    patients = np.array([f"p{index // images_per_patient}" for index in range(count)])
    return vectors, DemographicsTable([f"{index}.png" for index in range(count)], patients, sex, age)


def test_age_probe_reaches_the_noise_level_and_sex_probe_separates():
    vectors, table = _synthetic(noise=1.0)
    train, val = patient_split(table.patients, 0.3, seed=0)
    results, predictions = demographics_probe(vectors, table, train, val)
    # Gaussian noise of SD 1 has a mean absolute value of sqrt(2 / pi) = 0.80: the floor of any predictor.
    assert 0.6 < results["age"]["mae"]["value"] < 1.0
    assert results["age"]["pearson_r"]["value"] > 0.99
    assert results["sex"]["auroc"]["value"] == 1.0
    assert results["age"]["n"] == results["sex"]["n"] == len(val) and results["age"]["n_train"] == len(train)
    assert {"alpha", "mae"} <= set(results["age"]) and "C" in results["sex"]
    assert np.array_equal(predictions["age"].rows, val)


def test_missing_values_are_dropped_per_target_and_no_patient_crosses_the_split():
    vectors, table = _synthetic()
    table.sex[::5] = np.nan
    table.age[1::3] = np.nan
    train, val = patient_split(table.patients, 0.3, seed=1)
    results, predictions = demographics_probe(vectors, table, train, val)
    for name, values in (("sex", table.sex), ("age", table.age)):
        target = predictions[name]
        assert np.isfinite(values[target.rows]).all() and np.isfinite(values[target.train_rows]).all()
        assert results[name]["n"] == np.isfinite(values[val]).sum()
        assert results[name]["n_train"] == np.isfinite(values[train]).sum()
        assert not set(table.patients[target.train_rows]) & set(table.patients[target.rows])
    # Different rows per target: a row without an age still serves the sex probe.
    assert set(predictions["sex"].rows) != set(predictions["age"].rows)


def test_demographics_command(tiny_model_dir, tmp_path):
    data = tmp_path / "set"
    (data / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = []
    for index in range(24):
        PIL.Image.fromarray(rng.integers(0, 256, size=(60, 70), dtype=np.uint8)).save(data / f"images/{index}.png")
        sex = ["M", "f", "", "F", "male", "m"][index % 6]
        age = "" if index % 7 == 0 else ("n/a" if index % 11 == 0 else str(20 + 2 * index))
        rows.append({"file": f"images/{index}.png", "patient": f"p{index // 2}", "sex": sex, "age": age})
    with open(data / "metadata.csv", "w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["file", "patient", "sex", "age"])
        writer.writeheader()
        writer.writerows(rows)
    output = tmp_path / "out"
    arguments = ["demographics", "--model", str(tiny_model_dir), "--data", str(data), "--output", str(output)]
    results = train_downstream.main(arguments + ["--cache-dir", str(tmp_path / "cache")])
    assert results["n_images"] == 24 and results["model"] == str(tiny_model_dir)
    known_sex, known_age = 24 - 4, 24 - 4 - 2  # sex "" at 2, 8, 14, 20; age "" at 0, 7, 14, 21 and "n/a" at 11, 22
    assert results["sex"]["n"] + results["sex"]["n_train"] == known_sex
    assert results["age"]["n"] + results["age"]["n_train"] == known_age
    saved = json.loads((output / "metrics.json").read_text())
    assert set(saved["age"]["mae"]) == {"value", "ci_low", "ci_high"} and "auroc" in saved["sex"]
    assert (output / "age_scatter.png").stat().st_size > 1000 and (output / "sex_roc.png").stat().st_size > 1000
    lines = (output / "predictions.csv").read_text().splitlines()
    assert len(lines) == 1 + results["sex"]["n"] + results["age"]["n"]


def test_a_set_without_an_age_column_probes_sex_only():
    vectors, table = _synthetic(count=60)
    table.age[:] = np.nan
    train, val = patient_split(table.patients, 0.3, seed=0)
    results, predictions = demographics_probe(vectors, table, train, val)
    assert set(predictions) == {"sex"} and "auroc" in results["sex"]
    assert results["age"] == {"skipped": "0 training patients with a known age; the probe needs 5"}
    table.sex[:] = np.nan
    with pytest.raises(ValueError, match="Neither sex nor age"):
        demographics_probe(vectors, table, train, val)
