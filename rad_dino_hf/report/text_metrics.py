"""Report-generation metrics: ROUGE-L, BLEU-4 and clinical-finding F1 from the rule-based labeler.

Scales, as usually quoted in report-generation papers: ROUGE-L in [0, 1] (mean per-report F-measure), BLEU-4 in
[0, 100] (sacrebleu's corpus BLEU), finding F1 in [0, 1].

Finding F1 follows the CheXbert-F1 protocol of report-generation papers (e.g. LLaVA-Rad, MAIRA-2), with the
rule-based `rad_dino_hf.report.labeler` standing in for CheXbert: both the reference and the generated report are
labelled, each observation becomes a binary "positive" target (1 positive; 0 negative, -1 uncertain and not mentioned
are all "not positive", or uncertain counts as positive with `uncertain_as_positive=True`), and precision, recall and
F1 are computed per observation over reports. Because the labeler differs from CheXbert, the numbers are comparable
between models scored here, not with published CheXbert F1 values. What the F1 rests on is measured by
`rad_dino_hf.report.labeler_agreement.phrase_agreement()` (the labeler against the CheXpert labeler on CheXpert's own
phrase list; `benchmarks/labeler_agreement.py` prints it per observation, `report` logs it next to the F1).

    rouge_l(references, predictions) -> float
    bleu4(references, predictions) -> float
    finding_f1(reference_labels, generated_labels, uncertain_as_positive=False) -> dict
    report_metrics(references, predictions, uncertain_as_positive=False) -> dict
"""

from collections.abc import Sequence

import numpy as np
import sacrebleu
from rouge_score import rouge_scorer
from sklearn.metrics import precision_recall_fscore_support

from rad_dino_hf.report.labeler import OBSERVATIONS, label_reports

# The subset quoted as "5 findings" (CheXpert competition tasks) in report-generation papers.
FIVE_FINDINGS: tuple[str, ...] = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")


def _check_pairs(references: Sequence[str], predictions: Sequence[str]) -> None:
    if len(references) != len(predictions):
        raise ValueError(f"{len(references)} references but {len(predictions)} predictions")
    if not references:
        raise ValueError("no reports to score")


def rouge_l(references: Sequence[str], predictions: Sequence[str]) -> float:
    """Mean ROUGE-L F-measure over N (reference, prediction) pairs, in [0, 1].

    `rouge_score` with `use_stemmer=True` (lower-cases, keeps [a-z0-9] tokens, Porter-stems tokens longer than 3
    characters). An empty prediction scores 0.
    """
    _check_pairs(references, predictions)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    scores = [
        scorer.score(reference, prediction)["rougeL"].fmeasure for reference, prediction in zip(references, predictions)
    ]
    return float(np.mean(scores))


def bleu4(references: Sequence[str], predictions: Sequence[str]) -> float:
    """Corpus BLEU-4 over N pairs (one reference each), in [0, 100].

    `sacrebleu.corpus_bleu` with its defaults: 13a tokenisation, case-sensitive, exponential smoothing of zero n-gram
    counts, brevity penalty over the whole corpus. Not the mean of sentence BLEU.
    """
    _check_pairs(references, predictions)
    return float(sacrebleu.corpus_bleu(list(predictions), [list(references)]).score)


def _positive(labels: np.ndarray, uncertain_as_positive: bool) -> np.ndarray:
    # NaN (not mentioned) compares False to both, so it is "not positive".
    positive = labels == 1
    if uncertain_as_positive:
        positive |= labels == -1
    return positive.astype(int)


def _macro(f1: np.ndarray, support: np.ndarray) -> float:
    # Observations without a positive reference have no defined recall; averaging their F1 of 0 would only measure
    # how rare they are in this split, so they are left out (0.0 when none is left).
    return float(f1[support > 0].mean()) if (support > 0).any() else 0.0


def finding_f1(
    reference_labels: np.ndarray | Sequence[Sequence[float]],
    generated_labels: np.ndarray | Sequence[Sequence[float]],
    uncertain_as_positive: bool = False,
) -> dict:
    """Clinical-finding precision, recall and F1 between labelled reference and generated reports.

    Args:
        reference_labels, generated_labels: (N, 14) arrays in `OBSERVATIONS` order, as from `label_reports`:
            1 positive, 0 negative, -1 uncertain, NaN not mentioned.
        uncertain_as_positive: count -1 as positive on both sides (default: only 1 is positive).

    Returns a JSON-serialisable dict:
        micro_f1: F1 over all (report, observation) cells of the 14 observations, in [0, 1].
        macro_f1: mean per-observation F1 over the observations with at least one positive reference.
        micro_f1_5, macro_f1_5: the same over `FIVE_FINDINGS`.
        per_observation: {name: {precision, recall, f1, support}}; support = number of positive references.
        macro_observations: the observations averaged in macro_f1.
        n_reports, uncertain_as_positive.
    Precision, recall or F1 with a zero denominator are 0 (scikit-learn's `zero_division=0`).
    """
    reference = np.asarray(reference_labels, dtype=float)
    generated = np.asarray(generated_labels, dtype=float)
    expected = (reference.shape[0], len(OBSERVATIONS))
    if reference.ndim != 2 or reference.shape != expected or generated.shape != expected or reference.shape[0] == 0:
        raise ValueError(
            f"expected two (N, {len(OBSERVATIONS)}) arrays with N > 0, got {reference.shape}, {generated.shape}"
        )
    truth = _positive(reference, uncertain_as_positive)
    predicted = _positive(generated, uncertain_as_positive)
    five = [OBSERVATIONS.index(name) for name in FIVE_FINDINGS]

    precision, recall, f1, support = precision_recall_fscore_support(truth, predicted, average=None, zero_division=0)
    micro = precision_recall_fscore_support(truth, predicted, average="micro", zero_division=0)[2]
    micro_5 = precision_recall_fscore_support(truth[:, five], predicted[:, five], average="micro", zero_division=0)[2]
    return {
        "micro_f1": float(micro),
        "macro_f1": _macro(f1, support),
        "micro_f1_5": float(micro_5),
        "macro_f1_5": _macro(f1[five], support[five]),
        "per_observation": {
            name: {
                "precision": float(precision[index]),
                "recall": float(recall[index]),
                "f1": float(f1[index]),
                "support": int(support[index]),
            }
            for index, name in enumerate(OBSERVATIONS)
        },
        "macro_observations": [name for name, count in zip(OBSERVATIONS, support) if count > 0],
        "n_reports": int(reference.shape[0]),
        "uncertain_as_positive": uncertain_as_positive,
    }


def report_metrics(references: Sequence[str], predictions: Sequence[str], uncertain_as_positive: bool = False) -> dict:
    """ROUGE-L ([0, 1]), BLEU-4 ([0, 100]) and finding F1 (`finding_f1`, labeler on both sides) of N generated
    reports against N references. JSON-serialisable (plain floats and ints, no NaN); empty predictions are allowed."""
    _check_pairs(references, predictions)
    return {
        "n": len(references),
        "rouge_l": rouge_l(references, predictions),
        "bleu4": bleu4(references, predictions),
        "finding_f1": finding_f1(label_reports(references), label_reports(predictions), uncertain_as_positive),
    }
