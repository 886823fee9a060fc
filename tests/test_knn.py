"""Weighted k-NN classification (DINO's k-NN evaluation) against a brute-force reference, and the knn command."""

import json
import math

import numpy as np
import pytest
import torch

import rad_dino_hf.cli.downstream as train_downstream
from rad_dino_hf.weighted_knn import knn_classify


def _brute_force(train, labels, queries, num_classes, k, temperature):
    """One query at a time: cosine similarities, an explicit descending sort, exp(sim / T) votes, normalised."""
    result = np.zeros((len(queries), num_classes))
    for row, query in enumerate(queries):
        similarities = [
            (float(np.dot(query, sample) / (np.linalg.norm(query) * np.linalg.norm(sample))), int(label))
            for sample, label in zip(train, labels)
        ]
        similarities.sort(key=lambda pair: pair[0], reverse=True)
        for similarity, label in similarities[:k]:
            result[row, label] += math.exp(similarity / temperature)
        result[row] /= result[row].sum()
    return result


@pytest.mark.parametrize("k", [1, 5, 20])
def test_knn_matches_brute_force(k):
    rng = np.random.default_rng(k)
    train, queries = rng.normal(size=(60, 8)), rng.normal(size=(13, 8))
    labels = rng.integers(0, 3, size=60)
    ours = knn_classify(train, labels, queries, num_classes=3, k=k, batch_size=4).numpy()
    assert ours.shape == (13, 3)
    np.testing.assert_allclose(ours, _brute_force(train, labels, queries, 3, k, 0.07), atol=1e-5)
    np.testing.assert_allclose(ours.sum(axis=1), 1.0, atol=1e-6)


@pytest.mark.parametrize("k", [1, 7])
def test_multi_hot_targets_match_per_label_brute_force(k):
    """Each label's score: the weighted share of neighbours positive for it, i.e. the one-hot reference's
    probability of class 1 when the training labels are that label's 0/1 column."""
    rng = np.random.default_rng(k)
    train, queries = rng.normal(size=(50, 8)), rng.normal(size=(9, 8))
    targets = rng.integers(0, 2, size=(50, 4))
    ours = knn_classify(train, targets, queries, num_classes=4, k=k, batch_size=4).numpy()
    expected = np.stack([_brute_force(train, column, queries, 2, k, 0.07)[:, 1] for column in targets.T], axis=1)
    np.testing.assert_allclose(ours, expected, atol=1e-5)
    with pytest.raises(ValueError, match="multi-hot labels must be"):
        knn_classify(train, targets, queries, num_classes=3)


def test_k1_returns_the_nearest_neighbours_label():
    rng = np.random.default_rng(0)
    train = torch.from_numpy(rng.normal(size=(40, 16))).float()
    labels = torch.from_numpy(rng.integers(0, 4, size=40))
    queries = train[[3, 17, 29]] * 2.5 + 0.01 * torch.randn(3, 16)  # scaled copies: cosine ignores the norm
    probabilities = knn_classify(train, labels, queries, num_classes=4, k=1)
    assert torch.equal(probabilities, torch.nn.functional.one_hot(labels[[3, 17, 29]], 4).float())


def test_k_larger_than_the_training_set_uses_all_of_it():
    train, labels = np.eye(3), np.array([0, 1, 1])
    probabilities = knn_classify(train, labels, np.array([[1.0, 0.0, 0.0]]), num_classes=2, k=50).numpy()
    expected = _brute_force(train, labels, np.array([[1.0, 0.0, 0.0]]), 2, 3, 0.07)
    np.testing.assert_allclose(probabilities, expected, atol=1e-6)


def test_knn_command(tiny_model_dir, labelled_sample_csv, tmp_path):
    output = tmp_path / "knn"
    results = train_downstream.main(
        [
            "knn",
            "--model",
            str(tiny_model_dir),
            "--csv",
            str(labelled_sample_csv),
            "--val-fraction",
            "0.34",
            "--k",
            "3",
            "--cache-dir",
            str(tmp_path / "cache"),
            "--output",
            str(output),
        ]
    )
    assert results["k"] == 3 and results["n_images"] == 12 and results["n_train"] + results["n"] == 12
    saved = json.loads((output / "metrics.json").read_text())
    assert saved["class_names"] == ["bacterial", "normal", "viral"] and "ci_low" in saved["accuracy"]
    assert (output / "roc_curves.png").exists() and (output / "confusion_matrix.png").exists()
    rows = (output / "predictions.csv").read_text().splitlines()
    assert rows[0] == "file,patient,label,predicted,p_bacterial,p_normal,p_viral" and len(rows) == 1 + results["n"]


def test_invalid_k_or_temperature_is_refused():
    with pytest.raises(ValueError, match="k must be at least 1"):
        knn_classify(np.eye(2), np.array([0, 1]), np.eye(2), num_classes=2, k=0)
    with pytest.raises(ValueError, match="temperature positive"):
        knn_classify(np.eye(2), np.array([0, 1]), np.eye(2), num_classes=2, temperature=0.0)
