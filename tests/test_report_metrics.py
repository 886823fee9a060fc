"""Report labeler and text metrics against hand-written labels, hand-computed values and independent re-derivations
(an LCS dynamic program for ROUGE-L, the BLEU formula and nltk for BLEU-4, scikit-learn for F1)."""

import json
import math
from collections import Counter

import numpy as np
import pytest
from nltk.translate.bleu_score import corpus_bleu as nltk_corpus_bleu
from sklearn.metrics import f1_score

from rad_dino_hf.report.labeler import OBSERVATIONS, label_report, label_reports
from rad_dino_hf.report.text_metrics import FIVE_FINDINGS, bleu4, finding_f1, report_metrics, rouge_l

NOT_FINDINGS = ("No Finding", "Support Devices")


@pytest.mark.parametrize(
    "text, expected",
    [
        ("No pleural effusion.", {"Pleural Effusion": 0}),
        ("Possible small left effusion.", {"Pleural Effusion": -1}),
        ("Cardiomegaly is present.", {"Cardiomegaly": 1}),
        ("No pleural effusion or pneumothorax.", {"Pleural Effusion": 0, "Pneumothorax": 0}),
        ("The heart is enlarged. No pneumothorax.", {"Cardiomegaly": 1, "Pneumothorax": 0}),
        ("Pneumonia cannot be excluded.", {"Pneumonia": -1}),
        ("Right lower lobe consolidation, concerning for pneumonia.", {"Consolidation": 1, "Pneumonia": -1}),
        ("Endotracheal tube in place.", {"Support Devices": 1}),
        ("Pneumothorax has resolved.", {"Pneumothorax": 0}),
        ("Bilateral pleural effusions.", {"Pleural Effusion": 1}),
        ("Bilateral pneumothoraces.", {"Pneumothorax": 1}),
        ("Bibasilar atelectatic changes.", {"Atelectasis": 1}),
        ("Patchy opacities in both lungs.", {"Lung Opacity": 1}),
        ("Multifocal patchy opacities can be seen in both lungs.", {"Lung Opacity": 1}),  # "can" is not a hedge
        ("Multiple pulmonary nodules.", {"Lung Lesion": 1}),
        ("No evidence of pneumothorax.", {"Pneumothorax": 0}),
        ("No effusion, but there is consolidation.", {"Pleural Effusion": 0, "Consolidation": 1}),
        ("No effusion, possible pneumonia.", {"Pleural Effusion": 0, "Pneumonia": -1}),
        ("No focal consolidation, pleural effusion, or pneumothorax.", {"Consolidation": 0, "Pleural Effusion": 0}),
        ("Atelectasis versus pneumonia.", {"Atelectasis": -1, "Pneumonia": -1}),
        ("Left lower lobe opacity may represent atelectasis.", {"Lung Opacity": 1, "Atelectasis": -1}),
        ("Small effusion with no pneumothorax or consolidation.", {"Pleural Effusion": 1, "Pneumothorax": 0}),
        ("No change in moderate cardiomegaly.", {"Cardiomegaly": 1}),
        ("No definite effusion.", {"Pleural Effusion": 0}),
        ("Heart size is normal.", {"Cardiomegaly": 0}),
        ("The heart is not enlarged.", {"Cardiomegaly": 0}),
        ("Mild pulmonary vascular congestion.", {"Edema": -1}),
        ("Small pericardial effusion.", {"Pleural Effusion": None}),
        ("The chest tube has been removed.", {"Support Devices": 0}),
        ("Widened mediastinum.", {"Enlarged Cardiomediastinum": 1}),
        ("Healed right rib fractures.", {"Fracture": 1}),
        ("? left lower lobe pneumonia", {"Pneumonia": -1}),
    ],
)
def test_labeler_sentences(text: str, expected: dict[str, int | None]) -> None:
    labels = label_report(text)
    assert list(labels) == list(OBSERVATIONS)
    assert {name: labels[name] for name in expected} == expected


@pytest.mark.parametrize(
    "text",
    [
        "No acute cardiopulmonary process.",
        "The lungs are clear. Heart size is normal. No pleural effusion or pneumothorax.",
        "Endotracheal tube in place. No pneumothorax.",
    ],
)
def test_labeler_no_finding(text: str) -> None:
    labels = label_report(text)
    assert labels["No Finding"] == 1
    assert all(labels[name] not in (1, -1) for name in OBSERVATIONS if name not in NOT_FINDINGS)


@pytest.mark.parametrize(
    "text",
    [
        "Moderate cardiomegaly. No pleural effusion.",
        "No pneumothorax. Possible left basilar pneumonia.",
        "No acute process. Calcified granuloma in the left upper lobe.",
    ],
)
def test_labeler_finding_blocks_no_finding(text: str) -> None:
    assert label_report(text)["No Finding"] is None


@pytest.mark.parametrize("text", ["The patient was seen in clinic yesterday.", ""])
def test_labeler_unrelated_text_is_unlabelled(text: str) -> None:
    assert all(value is None for value in label_report(text).values())


def test_label_reports_encoding() -> None:
    texts = ["Cardiomegaly. No effusion. Possible pneumonia.", "Unrelated text."]
    array = label_reports(texts)
    assert array.shape == (2, len(OBSERVATIONS)) and array.dtype == np.float64
    column = OBSERVATIONS.index
    assert array[0, column("Cardiomegaly")] == 1
    assert array[0, column("Pleural Effusion")] == 0
    assert array[0, column("Pneumonia")] == -1
    assert np.isnan(array[0, column("Fracture")]) and np.isnan(array[1]).all()


def _lcs(a: list[str], b: list[str]) -> int:
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            table[i + 1][j + 1] = table[i][j] + 1 if x == y else max(table[i][j + 1], table[i + 1][j])
    return table[-1][-1]


def _rouge_l_f(reference: str, prediction: str) -> float:
    # Words of at most 3 lower-case letters: rouge_score neither stems nor splits them.
    ref, pred = reference.split(), prediction.split()
    lcs = _lcs(ref, pred)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(pred), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


def test_rouge_l_hand_computed() -> None:
    # LCS 5: precision 5/5, recall 5/6, F = 2 * (5/6) / (11/6) = 10/11.
    assert rouge_l(["the cat sat on the mat"], ["the cat on the mat"]) == pytest.approx(10 / 11, abs=1e-12)
    assert rouge_l(["no new"], [""]) == 0.0


def test_rouge_l_matches_lcs_reference() -> None:
    rng = np.random.default_rng(0)
    vocabulary = ["a", "the", "cat", "dog", "sat", "on", "mat", "big", "red", "ran", "far", "up"]
    references = [" ".join(rng.choice(vocabulary, rng.integers(3, 12))) for _ in range(20)]
    predictions = [" ".join(rng.choice(vocabulary, rng.integers(1, 12))) for _ in range(20)]
    expected = np.mean([_rouge_l_f(r, p) for r, p in zip(references, predictions)])
    assert rouge_l(references, predictions) == pytest.approx(expected, abs=1e-9)
    for reference, prediction in zip(references[:5], predictions[:5]):
        assert rouge_l([reference], [prediction]) == pytest.approx(_rouge_l_f(reference, prediction), abs=1e-9)


def _corpus_bleu_formula(references: list[str], predictions: list[str]) -> float:
    """Corpus BLEU-4 in [0, 100] from its definition (Papineni et al. 2002), one reference per prediction."""
    matches, totals = [0] * 4, [0] * 4
    for reference, prediction in zip(references, predictions):
        ref, pred = reference.split(), prediction.split()
        for n in range(1, 5):
            pred_ngrams = Counter(tuple(pred[i : i + n]) for i in range(len(pred) - n + 1))
            ref_ngrams = Counter(tuple(ref[i : i + n]) for i in range(len(ref) - n + 1))
            matches[n - 1] += sum(min(count, ref_ngrams[gram]) for gram, count in pred_ngrams.items())
            totals[n - 1] += sum(pred_ngrams.values())
    ref_length = sum(len(reference.split()) for reference in references)
    pred_length = sum(len(prediction.split()) for prediction in predictions)
    brevity = 1.0 if pred_length >= ref_length else math.exp(1 - ref_length / pred_length)
    return 100 * brevity * math.exp(sum(math.log(m / t) for m, t in zip(matches, totals)) / 4)


BLEU_REFERENCES = [
    "the heart size is normal and the lungs are clear",
    "there is a small left pleural effusion with adjacent atelectasis",
    "no pneumothorax is seen",
]
BLEU_PREDICTIONS = [
    "the heart size is normal and lungs are clear",
    "there is a left pleural effusion",
    "no pneumothorax is present",  # at least 4 words: nltk counts 1 n-gram for a sentence too short to have any
]


def test_bleu4_hand_computed() -> None:
    # Precisions 5/6, 4/5, 3/4, 2/3, no brevity penalty: BLEU = 100 * (1/3) ** (1/4).
    assert bleu4(["the cat sat on the mat"], ["the cat sat on the rug"]) == pytest.approx(100 * 3**-0.25, abs=1e-6)


def test_bleu4_matches_formula_and_nltk() -> None:
    # The predictions are shorter than the references, so the brevity penalty is exercised.
    assert sum(len(p.split()) for p in BLEU_PREDICTIONS) < sum(len(r.split()) for r in BLEU_REFERENCES)
    expected = _corpus_bleu_formula(BLEU_REFERENCES, BLEU_PREDICTIONS)
    assert bleu4(BLEU_REFERENCES, BLEU_PREDICTIONS) == pytest.approx(expected, abs=1e-6)
    nltk_value = nltk_corpus_bleu([[r.split()] for r in BLEU_REFERENCES], [p.split() for p in BLEU_PREDICTIONS])
    assert bleu4(BLEU_REFERENCES, BLEU_PREDICTIONS) == pytest.approx(100 * nltk_value, abs=1e-6)


def _labels(*reports: dict[str, int]) -> np.ndarray:
    array = np.full((len(reports), len(OBSERVATIONS)), np.nan)
    for row, report in enumerate(reports):
        for name, value in report.items():
            array[row, OBSERVATIONS.index(name)] = value
    return array


REFERENCE_LABELS = _labels({"Cardiomegaly": 1, "Edema": 1}, {"Pleural Effusion": 1}, {"Atelectasis": 1})
GENERATED_LABELS = _labels(
    {"Cardiomegaly": 1, "Edema": -1}, {"Pleural Effusion": 1, "Pneumothorax": 1}, {"Atelectasis": 0}
)


def test_finding_f1_hand_computed() -> None:
    # Uncertain is negative: TP cardiomegaly + effusion, FP pneumothorax, FN edema + atelectasis.
    result = finding_f1(REFERENCE_LABELS, GENERATED_LABELS)
    assert result["micro_f1"] == pytest.approx(4 / 7)  # P = 2/3, R = 1/2
    assert result["macro_f1"] == pytest.approx(0.5)  # cardiomegaly 1, edema 0, effusion 1, atelectasis 0
    assert result["micro_f1_5"] == pytest.approx(2 / 3)  # P = 1, R = 1/2
    assert result["macro_f1_5"] == pytest.approx(0.5)
    assert result["macro_observations"] == ["Cardiomegaly", "Edema", "Atelectasis", "Pleural Effusion"]
    assert result["per_observation"]["Pneumothorax"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert result["per_observation"]["Pleural Effusion"]["support"] == 1
    # Uncertain is positive: edema becomes a TP.
    result = finding_f1(REFERENCE_LABELS, GENERATED_LABELS, uncertain_as_positive=True)
    assert result["micro_f1"] == pytest.approx(3 / 4)
    assert result["macro_f1"] == pytest.approx(3 / 4)
    assert result["micro_f1_5"] == pytest.approx(6 / 7)  # P = 1, R = 3/4


def test_finding_f1_matches_sklearn() -> None:
    rng = np.random.default_rng(1)
    reference = rng.choice([1.0, 0.0, -1.0, np.nan], size=(40, len(OBSERVATIONS)))
    generated = rng.choice([1.0, 0.0, -1.0, np.nan], size=(40, len(OBSERVATIONS)))
    for uncertain_as_positive in (False, True):
        positive = (1.0, -1.0) if uncertain_as_positive else (1.0,)
        truth, predicted = np.isin(reference, positive).astype(int), np.isin(generated, positive).astype(int)
        result = finding_f1(reference, generated, uncertain_as_positive)
        assert result["micro_f1"] == pytest.approx(f1_score(truth, predicted, average="micro"))
        for index, name in enumerate(OBSERVATIONS):
            expected = f1_score(truth[:, index], predicted[:, index], zero_division=0)
            assert result["per_observation"][name]["f1"] == pytest.approx(expected)
        five = [OBSERVATIONS.index(name) for name in FIVE_FINDINGS]
        expected_5 = np.mean([f1_score(truth[:, i], predicted[:, i], zero_division=0) for i in five])
        assert result["macro_f1_5"] == pytest.approx(expected_5)  # every column has positives at this size


def test_finding_f1_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError):
        finding_f1(np.zeros((2, 13)), np.zeros((2, 13)))
    with pytest.raises(ValueError):
        finding_f1(np.zeros((2, 14)), np.zeros((3, 14)))


REPORTS = [
    "Moderate cardiomegaly. Small bilateral pleural effusions. No pneumothorax.",
    "Endotracheal tube in place. Right lower lobe consolidation, concerning for pneumonia.",
    "No acute cardiopulmonary process.",
]


def test_report_metrics_identical() -> None:
    result = report_metrics(REPORTS, REPORTS)
    assert result["rouge_l"] == pytest.approx(1.0)
    assert result["bleu4"] == pytest.approx(100.0)
    assert result["finding_f1"]["micro_f1"] == pytest.approx(1.0)
    assert result["finding_f1"]["macro_f1"] == pytest.approx(1.0)
    assert result["finding_f1"]["macro_observations"] == [
        "No Finding",
        "Cardiomegaly",
        "Consolidation",
        "Pleural Effusion",
        "Support Devices",
    ]
    json.dumps(result, allow_nan=False)


def test_report_metrics_empty_prediction() -> None:
    result = report_metrics(REPORTS, ["", "", ""])
    assert result["rouge_l"] == 0.0 and result["bleu4"] == 0.0
    assert result["finding_f1"]["micro_f1"] == 0.0
    json.dumps(result, allow_nan=False)
    with pytest.raises(ValueError):
        report_metrics(REPORTS, REPORTS[:2])
