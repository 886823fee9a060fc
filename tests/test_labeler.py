"""The report labeler against the CheXpert labeler: every CheXpert mention phrase in five plain sentences (expected
labels from CheXpert's rules), and hand-written report snippets for each scope rule, with the labels CheXpert/NegBio
give them."""

import time

import pytest

from rad_dino_hf.report.labeler import OBSERVATIONS, PHRASE_DIR, label_report, peer_phrases
from rad_dino_hf.report.labeler_agreement import SENTENCE_FORMS, agreement, markdown_table, phrase_cases

# The 14 CheXpert observations (No Finding: its file lists the findings that block No Finding).
PHRASE_FILES = {name.lower().replace(" ", "_") for name in OBSERVATIONS}


def test_phrase_files_are_chexperts() -> None:
    """The shipped vocabulary is CheXpert's, whole: 14 mention files, 3 unmention files, with the licence."""
    assert {path.stem for path in (PHRASE_DIR / "mention").glob("*.txt")} == PHRASE_FILES
    assert {path.stem for path in (PHRASE_DIR / "unmention").glob("*.txt")} == {
        "lung_lesion",
        "lung_opacity",
        "pleural_effusion",
    }
    licence = (PHRASE_DIR / "LICENSE").read_text()
    assert "MIT License" in licence and "Stanford Machine Learning Group" in licence
    assert "stanfordmlgroup/chexpert-labeler" in licence and "44ddeb363149aa657296237f18b5472a73c1756f" in licence
    mentions = peer_phrases("mention")
    # Spot checks against CheXpert's files (underscores stand for required spaces there).
    assert "mediastinum" in mentions["Enlarged Cardiomediastinum"] and "line" in mentions["Support Devices"]
    assert "retrocardiac" not in mentions["No Finding"] and "density" in mentions["No Finding"]
    assert sum(len(phrases) for phrases in mentions.values()) == 148


def test_phrase_agreement_thresholds() -> None:
    """>= 99 % overall and >= 95 % per observation, over every phrase in every form, in seconds."""
    cases = phrase_cases()
    assert len(cases) == 148 * len(SENTENCE_FORMS)
    start = time.perf_counter()
    result = agreement(cases)
    seconds = time.perf_counter() - start
    table = markdown_table(result)
    misses = "\n".join(
        f"{case.sentence!r} {case.observation}: {given} != {case.expected}" for case, given in result.misses
    )
    assert result.overall >= 0.99, table + "\n" + misses
    assert all(result.fraction(name) >= 0.95 for name in result.per_observation), table + "\n" + misses
    assert set(result.per_observation) == set(OBSERVATIONS)
    assert seconds < 10


def test_reported_finding_blocks_no_finding() -> None:
    """ "There is X." for every finding phrase (all but Support Devices) leaves No Finding unset, as in CheXpert."""
    findings = [case for case in phrase_cases() if case.observation not in ("No Finding", "Support Devices")]
    reported = [case.sentence for case in findings if case.sentence.startswith("There is ")]
    assert len(reported) == 148 - 53 - 23
    assert [sentence for sentence in reported if label_report(sentence)["No Finding"] is not None] == []


@pytest.mark.parametrize(
    "phrase, observation, expected",
    [
        # Expected labels of the five forms, written out for a few phrases (the generator is checked, not trusted).
        ("widened cardiomediastinum", "Enlarged Cardiomediastinum", [1, 0, 0, -1, -1]),
        ("vascular congestion", "Edema", [-1, 0, 0, -1, -1]),
        ("retrocardiac density", "No Finding", [None, 1, 1, None, None]),
    ],
)
def test_phrase_forms(phrase: str, observation: str, expected: list[int | None]) -> None:
    sentences = [form.format(phrase) for form, _ in SENTENCE_FORMS]
    assert [label_report(sentence)[observation] for sentence in sentences] == expected


# (report, expected labels of the observations named; others unchecked), one group per scope rule.
NEW_FINDING_ENDS_SCOPE = [
    ("No pneumothorax, small left effusion.", {"Pneumothorax": 0, "Pleural Effusion": 1, "No Finding": None}),
    ("No pleural effusion, mild cardiomegaly.", {"Pleural Effusion": 0, "Cardiomegaly": 1}),
    ("No focal consolidation and small bilateral pleural effusions.", {"Consolidation": 0, "Pleural Effusion": 1}),
    ("No evidence of pneumothorax, left basilar atelectasis.", {"Pneumothorax": 0, "Atelectasis": 1}),
    ("Possible left lower lobe pneumonia, small right effusion.", {"Pneumonia": -1, "Pleural Effusion": 1}),
    ("Pneumonia cannot be excluded, moderate effusion.", {"Pneumonia": -1, "Pleural Effusion": 1}),
    (
        "Endotracheal tube in place. No pneumothorax, stable mild cardiomegaly.",
        {"Support Devices": 1, "Pneumothorax": 0, "Cardiomegaly": 1},
    ),
    # A list stays a list: no size word, or "or"/"nor" later in the clause.
    (
        "No focal consolidation, pleural effusion, or pneumothorax.",
        {"Consolidation": 0, "Pleural Effusion": 0, "Pneumothorax": 0, "No Finding": 1},
    ),
    ("No pleural effusion, large consolidation or pneumothorax.", {"Pleural Effusion": 0, "Consolidation": 0}),
    ("No effusion, pneumothorax.", {"Pleural Effusion": 0, "Pneumothorax": 0}),
]
DIFFERENTIAL_HEDGES_ITS_CONJUNCTS = [
    (
        "Right lower lobe opacity, which may represent atelectasis or pneumonia.",
        {"Lung Opacity": 1, "Atelectasis": -1, "Pneumonia": -1},
    ),
    ("Left basilar opacity, atelectasis versus pneumonia.", {"Lung Opacity": 1, "Atelectasis": -1, "Pneumonia": -1}),
    (
        "Bibasilar opacities may reflect atelectasis, aspiration, or pneumonia.",
        {"Lung Opacity": 1, "Atelectasis": -1, "Pneumonia": -1},
    ),
    ("Cardiomegaly with atelectasis or effusion.", {"Cardiomegaly": 1, "Atelectasis": -1, "Pleural Effusion": -1}),
    ("Atelectasis vs. pneumonia in the left lower lobe.", {"Atelectasis": -1, "Pneumonia": -1}),
    ("Patchy opacity in the right lower lobe, likely atelectasis.", {"Lung Opacity": 1, "Atelectasis": -1}),
    (
        "Opacity at the left base could represent pneumonia or atelectasis; small left effusion.",
        {"Lung Opacity": 1, "Pneumonia": -1, "Atelectasis": -1, "Pleural Effusion": 1},
    ),
    ("No pleural effusion or pneumothorax.", {"Pleural Effusion": 0, "Pneumothorax": 0}),
    ("? left lower lobe pneumonia", {"Pneumonia": -1}),
]
NO_FINDING_BLOCKED = [
    (f"No acute cardiopulmonary process. {finding}", {"No Finding": None})
    for finding in (
        "There is a retrocardiac density.",
        "Chronic asthma changes.",
        "Aortic disease.",
        "Small airways disease.",
        "Renal osteodystrophy.",
        "Irregular lucency in the right humerus.",
        "Fluid in the minor fissure.",
        "Hilar prominence.",
        "Bullet fragments over the left chest.",
        "Radiopaque foreign body in the stomach.",
        "Aerophagia.",
        "Mild CHF.",
    )
] + [
    ("No acute cardiopulmonary process. No retrocardiac density.", {"No Finding": 1}),
    ("The lungs are clear. Heart size is normal. No fracture.", {"No Finding": 1, "Cardiomegaly": 0, "Fracture": 0}),
    ("Endotracheal tube in place. No acute process.", {"No Finding": 1, "Support Devices": 1}),
]
UNLIKELY_AND_FAVORED = [
    ("Pneumonia is unlikely.", {"Pneumonia": -1}),
    ("Atelectasis is favored; pneumonia is less likely.", {"Atelectasis": -1, "Pneumonia": -1}),
    ("Left basilar opacity, pneumonia not favored.", {"Lung Opacity": 1, "Pneumonia": -1}),
    ("Left basilar opacity, unlikely to represent pneumonia.", {"Lung Opacity": 1, "Pneumonia": -1}),
    ("Findings are less likely to represent edema.", {"Edema": -1}),
    ("Pneumothorax is not favored.", {"Pneumothorax": -1}),
]
CHEXPERT_RULES = [
    ("Mild CHF.", {"Edema": 1, "Cardiomegaly": -1}),
    ("Mild pulmonary vascular congestion.", {"Edema": -1}),
    ("Heart size is stable.", {"Cardiomegaly": -1}),
    ("Normal cardiomediastinal contours.", {"Enlarged Cardiomediastinum": 0}),
    ("Widened mediastinal contour.", {"Enlarged Cardiomediastinum": 1}),
    ("Enlarged pericardial silhouette.", {"Enlarged Cardiomediastinum": 1}),
    ("The cardiac contour is within normal limits.", {"Cardiomegaly": 0, "Enlarged Cardiomediastinum": 0}),
    ("Pacer leads over the heart. No effusion.", {"Support Devices": 1, "Cardiomegaly": None}),
    ("Old healed left rib fracture.", {"Fracture": 1}),
    ("This demonstrated a normal size of the heart.", {"Cardiomegaly": 0}),
    ("Raised inflammatory markers; on oxygen support.", {"Support Devices": None}),
    ("The findings support a diagnosis of pneumonia.", {"Support Devices": None, "Pneumonia": 1}),
    ("Mild tuberculosis scarring.", {"Support Devices": None, "Lung Opacity": 1}),
]


@pytest.mark.parametrize(
    "text, expected",
    NEW_FINDING_ENDS_SCOPE
    + DIFFERENTIAL_HEDGES_ITS_CONJUNCTS
    + NO_FINDING_BLOCKED
    + UNLIKELY_AND_FAVORED
    + CHEXPERT_RULES,
)
def test_scope_snippets(text: str, expected: dict[str, int | None]) -> None:
    labels = label_report(text)
    assert {name: labels[name] for name in expected} == expected


def test_issue_examples_as_chexpert() -> None:
    """The two sentences of the issue, every observation checked."""
    unmentioned = dict.fromkeys(OBSERVATIONS)
    assert label_report("No pneumothorax, small left effusion.") == {
        **unmentioned,
        "Pneumothorax": 0,
        "Pleural Effusion": 1,
    }
    assert label_report("Right lower lobe opacity, which may represent atelectasis or pneumonia.") == {
        **unmentioned,
        "Lung Opacity": 1,
        "Atelectasis": -1,
        "Pneumonia": -1,
    }
