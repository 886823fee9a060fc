"""How often `rad_dino_hf.report.labeler` labels the CheXpert labeler's own vocabulary as the CheXpert labeler does.

The test set: every mention phrase of the CheXpert labeler (`labeler_phrases/mention/*.txt`, 14 files; the
No Finding file lists the other findings that block No Finding) in five plain report sentences, with the label the
CheXpert labeler gives the phrase's observation:

    "There is X."            positive
    "No X."                  negative
    "No evidence of X."      negative
    "Possible X."            uncertain
    "X cannot be excluded."  uncertain

Two exceptions follow the CheXpert labeler's rules: the phrases its post-negation-uncertainty patterns hedge on their
own (vascular congestion, pulmonary congestion, indistinctness, vascular prominence) are uncertain in "There is X.";
for a No Finding phrase the label checked is No Finding itself, set (1) when the blocking finding is negated and unset
(None) when it is reported or hedged. A sentence agrees when the labeler gives the phrase's observation exactly the
expected label; other observations are not checked (several phrases name two, e.g. "cardiac contour").

Labelling the 740 sentences takes about 0.2 s on one CPU core, so `phrase_agreement` is computed on demand (and
cached) rather than stored as a constant that could drift from the labeler.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

from rad_dino_hf.report.labeler import (
    NEGATIVE,
    NO_FINDING,
    OBSERVATIONS,
    POSITIVE,
    UNCERTAIN,
    label_report,
    peer_phrases,
)

SENTENCE_FORMS: tuple[tuple[str, int], ...] = (
    ("There is {}.", POSITIVE),
    ("No {}.", NEGATIVE),
    ("No evidence of {}.", NEGATIVE),
    ("Possible {}.", UNCERTAIN),
    ("{} cannot be excluded.", UNCERTAIN),
)
# Mentions that CheXpert's post_negation_uncertainty.txt makes uncertain with no cue ("{lemma:/congestion/} > {}
# {lemma:/vascular/}", "{lemma:/indistinctness/}", ...).
PEER_HEDGED_PHRASES = frozenset(
    {"vascular congestion", "pulmonary congestion", "indistinctness", "vascular prominence"}
)


@dataclass(frozen=True)
class PhraseCase:
    sentence: str
    phrase: str
    observation: str  # the observation whose label is checked
    expected: int | None


def _expected(phrase: str, observation: str, label: int) -> int | None:
    if observation == NO_FINDING:
        return POSITIVE if label == NEGATIVE else None
    if label == POSITIVE and phrase in PEER_HEDGED_PHRASES:
        return UNCERTAIN
    return label


def _sentence(form: str, phrase: str) -> str:
    sentence = form.format(phrase)
    return sentence[0].upper() + sentence[1:]


def phrase_cases() -> list[PhraseCase]:
    """Every CheXpert mention phrase in the five `SENTENCE_FORMS`, with the label CheXpert gives it."""
    return [
        PhraseCase(_sentence(form, phrase), phrase, observation, _expected(phrase, observation, label))
        for observation, phrases in peer_phrases("mention").items()
        for phrase in phrases
        for form, label in SENTENCE_FORMS
    ]


@dataclass(frozen=True)
class Agreement:
    per_observation: dict[str, tuple[int, int]]  # observation -> (sentences agreeing, sentences)
    misses: list[tuple[PhraseCase, int | None]]  # (case, the label given)

    @property
    def overall(self) -> float:
        agreeing = sum(right for right, _ in self.per_observation.values())
        return agreeing / sum(total for _, total in self.per_observation.values())

    def fraction(self, observation: str) -> float:
        right, total = self.per_observation[observation]
        return right / total


def agreement(cases: Sequence[PhraseCase]) -> Agreement:
    """Label each case's sentence and count, per observation, how many get exactly the expected label."""
    counts = {name: [0, 0] for name in OBSERVATIONS}
    misses = []
    for case in cases:
        given = label_report(case.sentence)[case.observation]
        counts[case.observation][1] += 1
        if given == case.expected:
            counts[case.observation][0] += 1
        else:
            misses.append((case, given))
    return Agreement({name: (right, total) for name, (right, total) in counts.items() if total}, misses)


@cache
def phrase_agreement() -> Agreement:
    """`agreement` over `phrase_cases()`, computed once per process."""
    return agreement(phrase_cases())


def markdown_table(result: Agreement) -> str:
    """Per-observation agreement as a markdown table, overall last."""
    rows = ["| Observation | Phrases | Sentences | Agreement |", "|---|---:|---:|---:|"]
    for name, (right, total) in result.per_observation.items():
        rows.append(f"| {name} | {total // len(SENTENCE_FORMS)} | {total} | {100 * right / total:.1f} % |")
    total = sum(count for _, count in result.per_observation.values())
    rows.append(f"| **All** | {total // len(SENTENCE_FORMS)} | {total} | {100 * result.overall:.1f} % |")
    return "\n".join(rows)
