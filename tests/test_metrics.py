"""Downstream metrics against independent references: scikit-learn, scipy, numpy and hand-computed values."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import pearsonr
from sklearn.metrics import accuracy_score, average_precision_score, f1_score, jaccard_score, roc_auc_score

from rad_dino_hf.metrics import (
    METRICS_DIR,
    binary_auroc_metrics,
    classification_metrics,
    demographics_metrics,
    load_evaluate_metric,
    regression_metrics,
    segmentation_counts,
    segmentation_metrics,
)

REPO_ROOT = Path(__file__).resolve().parents[1]


def _multiclass(count: int, num_classes: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, count)
    logits = rng.normal(size=(count, num_classes)) + 1.2 * np.eye(num_classes)[labels]
    scores = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return labels, scores


def _multilabel(count: int = 80, num_labels: int = 4, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = (rng.random((count, num_labels)) < 0.35).astype(int)
    scores = np.clip(0.3 * labels + 0.7 * rng.random((count, num_labels)), 0, 1).round(1)  # rounding: many ties
    return labels, scores


def _values(block: dict) -> np.ndarray:
    return np.array([entry["value"] for entry in block["per_class"].values()])


# ---------------------------------------------------------------- classification


def test_multiclass_matches_sklearn():
    labels, scores = _multiclass(90, num_classes=4)
    result = classification_metrics(labels, scores, class_names=list("abcd"), n_bootstrap=50)
    assert result["accuracy"]["value"] == pytest.approx(accuracy_score(labels, scores.argmax(axis=1)), abs=1e-12)
    assert result["auroc"]["macro"]["value"] == pytest.approx(
        roc_auc_score(labels, scores, multi_class="ovr", average="macro"), abs=1e-12
    )
    assert result["auprc"]["macro"]["value"] == pytest.approx(
        average_precision_score(labels, scores, average="macro"), abs=1e-12
    )
    per_class_auroc = [roc_auc_score(labels == c, scores[:, c]) for c in range(4)]
    per_class_auprc = [average_precision_score(labels == c, scores[:, c]) for c in range(4)]
    np.testing.assert_allclose(_values(result["auroc"]), per_class_auroc, atol=1e-12)
    np.testing.assert_allclose(_values(result["auprc"]), per_class_auprc, atol=1e-12)
    assert list(result["auroc"]["per_class"]) == list("abcd")


def test_tied_scores_match_sklearn():
    labels, scores = _multiclass(70, num_classes=3, seed=5)
    scores = scores.round(1)  # ties within and across classes
    result = classification_metrics(labels, scores, n_bootstrap=0)
    np.testing.assert_allclose(
        _values(result["auroc"]), [roc_auc_score(labels == c, scores[:, c]) for c in range(3)], atol=1e-12
    )
    np.testing.assert_allclose(
        _values(result["auprc"]), [average_precision_score(labels == c, scores[:, c]) for c in range(3)], atol=1e-12
    )
    assert result["bootstrap"]["n_used"] == 0 and result["auroc"]["macro"]["ci_low"] is None


def test_multilabel_matches_sklearn():
    labels, scores = _multilabel()
    result = classification_metrics(labels, scores, multilabel=True, n_bootstrap=50)
    assert result["task"] == "multilabel"
    assert result["accuracy"]["value"] == pytest.approx(accuracy_score(labels, (scores >= 0.5).astype(int)))
    np.testing.assert_allclose(_values(result["auroc"]), roc_auc_score(labels, scores, average=None), atol=1e-12)
    np.testing.assert_allclose(
        _values(result["auprc"]), average_precision_score(labels, scores, average=None), atol=1e-12
    )
    assert result["auroc"]["macro"]["value"] == pytest.approx(roc_auc_score(labels, scores, average="macro"))
    assert result["auprc"]["macro"]["value"] == pytest.approx(average_precision_score(labels, scores, average="macro"))


def test_bootstrap_brackets_estimate_and_is_deterministic():
    labels, scores = _multiclass(120, num_classes=3)
    first = classification_metrics(labels, scores, n_bootstrap=200, seed=3)
    assert first == classification_metrics(labels, scores, n_bootstrap=200, seed=3)
    assert first != classification_metrics(labels, scores, n_bootstrap=200, seed=4)
    entries = [first["accuracy"]]
    for name in ("auroc", "auprc"):
        entries += [first[name]["macro"], *first[name]["per_class"].values()]
    for entry in entries:
        assert entry["ci_low"] <= entry["value"] <= entry["ci_high"]
        assert entry["ci_low"] < entry["ci_high"]
    json.dumps(first, allow_nan=False)


def test_bootstrap_narrows_with_more_data():
    small = classification_metrics(*_multiclass(60, seed=2), n_bootstrap=200)
    large = classification_metrics(*_multiclass(960, seed=2), n_bootstrap=200)
    for name in ("auroc", "auprc"):
        width = {
            key: r[name]["macro"]["ci_high"] - r[name]["macro"]["ci_low"] for key, r in (("s", small), ("l", large))
        }
        assert width["l"] < 0.6 * width["s"]
    width_accuracy = [r["accuracy"]["ci_high"] - r["accuracy"]["ci_low"] for r in (small, large)]
    assert width_accuracy[1] < 0.6 * width_accuracy[0]


def test_bootstrap_skips_resamples_missing_a_class_and_uses_percentiles():
    labels, scores = _multiclass(25, num_classes=3, seed=7)
    labels[:] = np.where(labels == 2, 0, labels)
    labels[[3, 11]] = 2  # class 2 is rare: many resamples lack it
    n_bootstrap, seed = 300, 11
    result = classification_metrics(labels, scores, n_bootstrap=n_bootstrap, seed=seed)

    rng = np.random.default_rng(seed)  # independent re-implementation of the documented procedure
    accuracies = []
    for _ in range(n_bootstrap):
        index = rng.integers(0, len(labels), len(labels))
        if len(np.unique(labels[index])) == 3:  # every class has positives and (with 3 classes) negatives
            accuracies.append(accuracy_score(labels[index], scores[index].argmax(axis=1)))
    assert 0 < result["bootstrap"]["n_used"] == len(accuracies) < n_bootstrap
    low, high = np.percentile(accuracies, [2.5, 97.5])
    assert result["accuracy"]["ci_low"] == pytest.approx(low) and result["accuracy"]["ci_high"] == pytest.approx(high)


def test_class_without_positives_is_excluded():
    labels, scores = _multilabel(60, 3)
    labels[:, 1] = 0
    result = classification_metrics(labels, scores, class_names=["x", "y", "z"], multilabel=True, n_bootstrap=30)
    assert result["excluded_classes"] == ["y"]
    assert result["auroc"]["per_class"]["y"] == {"value": None, "ci_low": None, "ci_high": None}
    kept = [0, 2]
    assert result["auroc"]["macro"]["value"] == pytest.approx(roc_auc_score(labels[:, kept], scores[:, kept]))
    assert result["bootstrap"]["n_used"] == 30
    json.dumps(result, allow_nan=False)


def test_classification_rejects_bad_shapes():
    with pytest.raises(ValueError):
        classification_metrics(np.array([0, 1, 3]), np.full((3, 3), 1 / 3), n_bootstrap=0)
    with pytest.raises(ValueError):
        classification_metrics(np.zeros((3, 2)), np.zeros((3, 3)), multilabel=True, n_bootstrap=0)


# ---------------------------------------------------------------- segmentation

IGNORE = 255
# Hand-computed, 4x4 with one ignored pixel (row 2, column 2) where the prediction says 2.
TARGET = np.array([[0, 0, 1, 1], [0, 1, 1, 1], [0, 0, IGNORE, 1], [2, 2, 0, 0]])
PREDICTION = np.array([[0, 1, 1, 1], [0, 1, 0, 1], [0, 0, 2, 1], [2, 0, 0, 0]])
# class 0: I=6 P=8 R=7 -> Dice 12/15, IoU 6/9; class 1: I=5 P=6 R=6 -> 10/12, 5/7; class 2: I=1 P=1 R=2 -> 2/3, 1/2
HAND_DICE = [12 / 15, 10 / 12, 2 / 3]
HAND_IOU = [6 / 9, 5 / 7, 1 / 2]


def test_dice_iou_hand_computed_with_ignore_and_absent_class():
    result = segmentation_metrics([PREDICTION], [TARGET], num_classes=4, include_background=False)
    for name, expected in (("dice", HAND_DICE), ("iou", HAND_IOU)):
        for aggregation in ("dataset", "per_image"):
            block = result[aggregation][name]
            np.testing.assert_allclose([block["per_class"][str(c)] for c in range(3)], expected, atol=1e-12)
            assert block["per_class"]["3"] is None  # absent from both: undefined, excluded
            assert block["mean"] == pytest.approx(np.mean(expected[1:]))  # background and class 3 excluded
    with_background = segmentation_metrics([PREDICTION], [TARGET], num_classes=4)
    assert with_background["dataset"]["dice"]["mean"] == pytest.approx(np.mean(HAND_DICE))
    np.testing.assert_array_equal(
        np.stack(segmentation_counts(PREDICTION, TARGET, 3)), [[6, 5, 1], [8, 6, 1], [7, 6, 2]]
    )
    json.dumps(result, allow_nan=False)


def test_dataset_versus_per_image_aggregation():
    second_target = np.array([[0, 1, 1], [0, 1, IGNORE]])
    second_prediction = np.array([[0, 1, 1], [0, 1, 1]])  # perfect on scored pixels; class 2 absent from both
    result = segmentation_metrics([PREDICTION, second_prediction], [TARGET, second_target], include_background=False)
    assert result["num_classes"] == 3
    # pooled: class 1 gets I=5+3, P=6+3, R=6+3
    assert result["dataset"]["dice"]["per_class"]["1"] == pytest.approx(16 / 18)
    assert result["dataset"]["dice"]["per_class"]["2"] == pytest.approx(2 / 3)
    # per image: class 1 is the mean of 10/12 and 1; class 2 only counts the first image
    assert result["per_image"]["dice"]["per_class"]["1"] == pytest.approx((10 / 12 + 1) / 2)
    assert result["per_image"]["dice"]["per_class"]["2"] == pytest.approx(2 / 3)
    # mean over images of each image's mean over its defined foreground classes: (3/4 + 1) / 2
    assert result["per_image"]["dice"]["mean"] == pytest.approx(7 / 8)
    assert result["dataset"]["dice"]["mean"] == pytest.approx((16 / 18 + 2 / 3) / 2)


def test_perfect_prediction_is_one_despite_garbage_under_ignore():
    rng = np.random.default_rng(0)
    targets = [rng.integers(0, 3, (16, 20)) for _ in range(3)]
    predictions = []
    for target in targets:
        target[rng.random(target.shape) < 0.2] = IGNORE
        prediction = target.copy()
        ignored = target == IGNORE
        prediction[ignored] = rng.choice([0, 1, 2, 7, IGNORE], size=ignored.sum())  # garbage, even out of range
        predictions.append(prediction)
    result = segmentation_metrics(predictions, targets, num_classes=4)
    for aggregation in ("dataset", "per_image"):
        for name in ("dice", "iou"):
            block = result[aggregation][name]
            assert [block["per_class"][str(c)] for c in range(3)] == [1.0, 1.0, 1.0]
            assert block["per_class"]["3"] is None and block["mean"] == 1.0


def test_dice_iou_relation_and_sklearn_on_random_masks():
    rng = np.random.default_rng(4)
    targets = [rng.integers(0, 4, (12, 9)) for _ in range(4)]
    for target in targets:
        target[rng.random(target.shape) < 0.1] = IGNORE
    predictions = [np.where(rng.random(t.shape) < 0.6, t, rng.integers(0, 4, t.shape)) for t in targets]
    predictions = [np.where(p == IGNORE, 0, p) for p in predictions]
    result = segmentation_metrics(predictions, targets, num_classes=4)
    dice = np.array(list(result["dataset"]["dice"]["per_class"].values()))
    iou = np.array(list(result["dataset"]["iou"]["per_class"].values()))
    np.testing.assert_allclose(dice, 2 * iou / (1 + iou), atol=1e-12)
    valid = np.concatenate([t.ravel() for t in targets]) != IGNORE
    flat_target = np.concatenate([t.ravel() for t in targets])[valid]
    flat_prediction = np.concatenate([p.ravel() for p in predictions])[valid]
    np.testing.assert_allclose(dice, f1_score(flat_target, flat_prediction, labels=range(4), average=None), atol=1e-12)
    np.testing.assert_allclose(
        iou, jaccard_score(flat_target, flat_prediction, labels=range(4), average=None), atol=1e-12
    )
    for prediction, target in zip(predictions, targets):  # per image too
        single = segmentation_metrics([prediction], [target], num_classes=4)["per_image"]
        image_dice = np.array(list(single["dice"]["per_class"].values()), dtype=float)
        image_iou = np.array(list(single["iou"]["per_class"].values()), dtype=float)
        np.testing.assert_allclose(image_dice, 2 * image_iou / (1 + image_iou), atol=1e-12)


def test_prediction_out_of_range_at_scored_pixel_is_an_error():
    prediction = PREDICTION.copy()
    prediction[0, 0] = 9
    with pytest.raises(ValueError):
        segmentation_metrics([prediction], [TARGET], num_classes=3)


# ---------------------------------------------------------------- regression and demographics


def test_regression_matches_numpy_and_scipy():
    rng = np.random.default_rng(8)
    ages = rng.uniform(20, 90, 150)
    predicted = ages + rng.normal(0, 8, 150)
    result = regression_metrics(ages, predicted, n_bootstrap=300, seed=1)
    assert result["mae"]["value"] == pytest.approx(np.mean(np.abs(ages - predicted)), abs=1e-12)
    assert result["pearson_r"]["value"] == pytest.approx(pearsonr(ages, predicted).statistic, abs=1e-12)
    for name in ("mae", "pearson_r"):
        assert result[name]["ci_low"] < result[name]["value"] < result[name]["ci_high"]
    assert result["bootstrap"]["n_used"] == 300
    assert result == regression_metrics(ages, predicted, n_bootstrap=300, seed=1)
    json.dumps(result, allow_nan=False)


def test_sex_auroc_and_demographics():
    rng = np.random.default_rng(9)
    sex = rng.integers(0, 2, 100)
    probability = np.clip(0.5 * sex + 0.6 * rng.random(100), 0, 1)
    result = binary_auroc_metrics(sex, probability, n_bootstrap=200)
    assert result["auroc"]["value"] == pytest.approx(roc_auc_score(sex, probability), abs=1e-12)
    assert result["auroc"]["ci_low"] < result["auroc"]["value"] < result["auroc"]["ci_high"]
    combined = demographics_metrics(
        age_targets=[30.0, 40, 50],
        age_predictions=[32.0, 41, 47],
        sex_labels=sex,
        sex_scores=probability,
        n_bootstrap=200,
    )
    assert combined["sex"] == result
    assert combined["age"]["mae"]["value"] == pytest.approx(2.0)
    assert combined["age"]["bootstrap"]["n_used"] < 200  # constant resamples (r undefined) skipped


# ---------------------------------------------------------------- evaluate modules


def test_evaluate_modules_load_offline_and_agree(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)  # loading must not depend on the working directory
    labels, scores = _multiclass(50, num_classes=3)
    metric = load_evaluate_metric("classification")
    assert metric.compute(predictions=scores, references=labels, class_names=["a", "b", "c"], n_bootstrap=40) == (
        classification_metrics(labels, scores, class_names=["a", "b", "c"], n_bootstrap=40)
    )

    import evaluate

    multilabel = evaluate.load(str(METRICS_DIR / "classification"), "multilabel")
    labels, scores = _multilabel(40, 3)
    metric_result = multilabel.compute(predictions=scores, references=labels, n_bootstrap=40, seed=2)
    assert metric_result == classification_metrics(labels, scores, multilabel=True, n_bootstrap=40, seed=2)

    segmentation = evaluate.load(str(METRICS_DIR / "segmentation"))
    second_target = np.array([[0, 1, 1], [0, 1, IGNORE]])
    masks = dict(predictions=[PREDICTION, np.array([[0, 1, 1], [0, 1, 1]])], references=[TARGET, second_target])
    for prediction, target in zip(masks["predictions"], masks["references"]):
        segmentation.add(prediction=prediction.tolist(), reference=target.tolist())
    assert segmentation.compute(num_classes=4, include_background=False) == segmentation_metrics(
        masks["predictions"], masks["references"], num_classes=4, include_background=False
    )


def test_importing_rad_dino_metrics_does_not_import_evaluate():
    code = "import sys, rad_dino_hf.metrics; assert 'evaluate' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, check=True)


# ---------------------------------------------------------------- plots


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_plot_roc_curves(tmp_path):
    from rad_dino_hf.plots import plot_roc_curves

    labels, scores = _multiclass(60, num_classes=3)
    path = plot_roc_curves(labels, scores, tmp_path / "roc" / "multiclass.png", class_names=["a", "b", "c"])
    assert path.stat().st_size > 5000 and _png_size(path) == (572, 550)  # 5.2 x 5.0 inches at 110 dpi
    labels, scores = _multilabel(40, 3)
    assert plot_roc_curves(labels, scores, tmp_path / "multilabel.png", multilabel=True).stat().st_size > 5000


def test_plot_confusion_matrix(tmp_path):
    from rad_dino_hf.plots import plot_confusion_matrix

    labels, scores = _multiclass(60, num_classes=4)
    path = plot_confusion_matrix(labels, scores.argmax(axis=1), tmp_path / "confusion.png", class_names=list("wxyz"))
    width, height = _png_size(path)
    assert path.stat().st_size > 5000 and width > height > 250


def test_plot_segmentation_overlay(tmp_path):
    import matplotlib.pyplot as plt

    from rad_dino_hf.plots import plot_segmentation_overlay

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (64, 64)).astype(np.uint8)
    target = np.zeros((64, 64), dtype=np.uint8)
    target[10:40, 8:30], target[10:40, 34:56], target[50:64, :] = 1, 2, IGNORE
    prediction = np.roll(target, 3, axis=1)
    prediction[55:60, :] = 7  # garbage under ignored reference pixels must not matter
    both = plot_segmentation_overlay(image, prediction, target, tmp_path / "overlay.png", class_names=["bg", "L", "R"])
    alone = plot_segmentation_overlay(image, prediction, None, tmp_path / "prediction_only.png")
    assert both.stat().st_size > 5000 and alone.stat().st_size > 5000
    assert _png_size(both)[0] == 2 * _png_size(alone)[0]  # two panels versus one
    pixels = plt.imread(both)[..., :3]
    magenta = (pixels[..., 0] > 0.75) & (pixels[..., 1] < 0.25) & (pixels[..., 2] > 0.75)
    assert magenta.sum() > 500  # ignored pixels are drawn distinctly
