"""A rule-based CheXpert-style labeler for chest X-ray reports (regular expressions, no parser).

In the spirit of the CheXpert labeler (Irvin et al., AAAI 2019, https://github.com/stanfordmlgroup/chexpert-labeler),
itself built on NegBio (Peng et al. 2018). Each report gets one label per CheXpert observation (`OBSERVATIONS`):
1 positive, 0 negative, -1 uncertain, None not mentioned. The mention phrase lists below are adapted from that
repository's `phrases/mention`, `phrases/unmention` and `phrases/mention/no_finding.txt` files, and the cue lists from
its `patterns/negation.txt`, `pre_negation_uncertainty.txt` and `post_negation_uncertainty.txt` (dependency-graph
patterns there, rewritten here as surface phrases).

Pipeline, per report:

1. Lower-case; split into sentences at ".", "!" or a word-final "?" followed by white space, and at line breaks.
2. Split each sentence into clauses at scope breakers: ";", ":", "but", "however", "although", "though", "whereas",
   "while", "except", "other than", "aside from", "apart from", "there is/are/was/were/has been/have been", and
   "and" followed by "the"/"a"/"an". Cues never act across a clause boundary.
3. Find mentions per observation with word-bounded regular expressions (plural and variant forms); a mention that
   overlaps an "unmention" phrase of the same observation (e.g. "pericardial effusion") is dropped.
4. Find cues, highest priority first, never overlapping: pseudo-cues ("no change", "no increase", "to suggest") only
   mask the words they cover; "pre-negation uncertainty" ("cannot exclude", "cannot be ruled out", "no new");
   negation ("no", "without", "negative for", "free of", "clear of", "absence of", "resolution of", "removal of",
   "is not seen", "has resolved", "is absent", "has been removed", "has been ruled out"); uncertainty ("possible",
   "probable", "likely", "may", "might", "could", "questionable", "suspicious for", "concerning for", "suggestive of",
   "differential", "equivocal", "borderline", "rule out", "is suspected", "?", "or", "versus").
5. Scope, within the clause: a forward cue covers every later mention until a forward cue of another kind starts
   ("no effusion, possible pneumonia": the "no" stops at "possible"), so "no pleural effusion or pneumothorax"
   negates both. A backward cue ("... has resolved") covers earlier mentions with no comma between mention and cue.
   "or", "and/or", "versus", "vs" and "?" cover the whole clause in both directions, unless a forward negation cue
   precedes them in the clause ("no effusion or pneumothorax" is a negated list, not a hedge).
6. Mention label, CheXpert's precedence: uncertain if a pre-negation-uncertainty cue covers it, else negative if a
   negation cue does, else uncertain if an uncertainty cue does, else positive. Hence "no definite effusion" is
   negative, as in CheXpert. Hedged mentions (vascular/pulmonary congestion, vascular prominence, indistinctness,
   cephalization and Kerley lines, for Edema, as CheXpert's post-negation-uncertainty patterns do) turn positive into
   uncertain.
   Statements about the heart and mediastinum ("heart size is normal", "normal cardiomediastinal silhouette",
   "cardiac and mediastinal contours are within normal limits", "heart is not enlarged") give Cardiomegaly and/or
   Enlarged Cardiomediastinum a fixed 0 ("borderline heart size": -1), standing in for CheXpert's "normal" patterns.
7. Aggregate, as CheXpert: positive if any mention is positive, else uncertain if any is uncertain, else negative if
   any is negative, else None. "No Finding" is 1 when no observation other than No Finding and Support Devices, and
   no "other finding" (emphysema, scoliosis, granuloma, calcification, hernia, ... from CheXpert's no_finding
   list), is positive or uncertain, and never 0 (as in CheXpert's output). Unlike CheXpert, which also labels an empty
   or irrelevant report No Finding, it additionally needs some evidence that the chest was described: a mention of
   any kind (a negated one, a support device) or a normal-study phrase ("no acute cardiopulmonary process", "normal
   chest", "the lungs are clear"); otherwise No Finding is None.

Choices. As in CheXpert: "vascular congestion" is an uncertain, not a positive, Edema mention; "no new X" is
uncertain (old X may persist); "CHF" and "heart failure" are Edema mentions. Unlike CheXpert: "rule out X", "to exclude
X" and "evaluate for X" are uncertain (CheXpert negates "rule out X"), while "X has been ruled out" and "X is excluded"
are negative; CHF does not also make Cardiomegaly uncertain. Support Devices covers tubes, lines (minus anatomical
lines: pleural, skin fold, septal, Kerley, junction, paraspinal), catheters, ports, pacemakers, ICDs, wires (sternotomy
wires included), drains, stents, prosthetic valves, cannulas, coils, prostheses, plates, screws, hardware and devices.

LIMITATIONS. This is a surface-pattern approximation, not a reimplementation of CheXpert or NegBio: there is no
dependency parse, so negation and uncertainty scope is sentence- and clause-bounded by the breakers above and can be
wrong for long or telegraphic sentences ("no pneumothorax, stable cardiomegaly" negates the cardiomegaly; "cardiomegaly
with atelectasis or pneumonia" makes the cardiomegaly uncertain). No coreference ("it has resolved" does not reach an
earlier sentence's mention), no temporal reasoning (a finding "unchanged from prior" is positive; "no new" is
uncertain), no section handling (an indication such as "evaluate for pneumonia" is labelled like the findings), no
spelling correction, English only. The phrase lists are tuned to radiology-report style; case reports, clinical notes
or free text generated by a language model can use words it does not know, or known words in other senses ("line",
"port", "collapse", "mass" outside the chest), and the unmention lists only catch the common ones. It has not been
validated against CheXpert's or CheXbert's labels on a labelled report set: finding F1 computed with it is indicative,
not comparable with published CheXbert F1.
"""

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

OBSERVATIONS: tuple[str, ...] = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Lesion",
    "Lung Opacity",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)
NO_FINDING = "No Finding"
SUPPORT_DEVICES = "Support Devices"
# Abnormalities outside the 14 that still rule out No Finding (CheXpert's phrases/mention/no_finding.txt, trimmed).
OTHER_FINDING = "_other finding"

POSITIVE, NEGATIVE, UNCERTAIN = 1, 0, -1

CueKind = Literal["pseudo", "preneg_uncertain", "negation", "uncertain"]
Direction = Literal["forward", "backward", "both"]


def _alternation(patterns: Sequence[str]) -> re.Pattern[str]:
    return re.compile("|".join(f"(?:{pattern})" for pattern in patterns))


# Plain mentions: labelled by the cues around them.
_MENTIONS: dict[str, list[str]] = {
    "Enlarged Cardiomediastinum": [
        r"\bwidened (?:superior )?mediastinum\b",
        r"\bwidening of the (?:superior )?mediastinum\b",
        r"\b(?:cardio)?mediastinal (?:widening|enlargement)\b",
        r"\benlarged (?:cardio)?mediastin(?:um|al (?:silhouettes?|contours?))\b",
        r"\b(?:superior )?mediastinum (?:is |appears |remains )?"
        r"(?:(?:again|still|slightly|mildly|moderately|markedly) )*(?:widened|wide|enlarged)\b",
        r"\b(?:cardio)?mediastinal (?:silhouettes?|contours?) (?:is |are |appears? |remains? )?"
        r"(?:(?:again|still|slightly|mildly|moderately|markedly) )*(?:widened|enlarged)\b",
    ],
    "Cardiomegaly": [
        r"\bcardiomegaly\b",
        r"\bcardiac enlargement\b",
        r"\benlarged (?:heart|cardiac (?:silhouette|size|shadow|contour))\b",
        r"\benlargement of the (?:heart|cardiac (?:silhouette|shadow|contour))\b",
        r"\b(?:increased|large) (?:heart|cardiac) size\b",
        r"\b(?:heart|cardiac (?:silhouette|size|shadow|contour))(?: size)? (?:is |appears |remains |seems )?"
        r"(?:(?:again|still|now|stably|slightly|mildly|moderately|markedly|severely|minimally|massively) )*"
        r"(?:enlarged|increased|large)\b",
    ],
    "Lung Lesion": [
        r"\bnodul\w*",
        r"\bmass(?:es)?\b",
        r"\blesions?\b",
        r"\blumps?\b",
        r"\bcarcinomas?\b",
        r"\bneoplas\w*",
        r"\btumou?rs?\b",
        r"\bmalignan\w*",
    ],
    "Lung Opacity": [
        r"\bopaci\w*",
        r"\binfiltra\w*",
        r"\bhaz(?:y|iness)\b",
        r"\bground[- ]glass\b",
        r"\bair[- ]?space (?:disease|process)\b",
        r"\bincreased densit(?:y|ies)\b",
        r"\bdecreased translucency\b",
        r"\binterstitial (?:markings?|pattern|prominence|thickening|abnormalit(?:y|ies)|(?:lung )?disease)\b",
        r"\breticul\w*",
        r"\bscar(?:s|ring|red)?\b",
        r"\bperibronchial (?:thickening|cuffing)\b",
        r"\bbronchial wall thickening\b",
    ],
    "Edema": [
        r"\bedema(?:tous)?\b",
        r"\bchf\b",
        r"\bheart failure\b",
        r"\b(?:fluid|volume) overload\b",
    ],
    "Consolidation": [r"\bconsolidat\w*"],
    "Pneumonia": [r"\b(?:broncho)?pneumonias?\b", r"\binfect(?:ion|ions|ious)(?: process)?\b"],
    "Atelectasis": [r"\batelecta\w*", r"\bcollapsed?\b"],
    "Pneumothorax": [r"\b(?:hydro)?pneumothora(?:x|xes|ces)\b", r"\bptx\b"],
    "Pleural Effusion": [r"\b(?:pleural )?effusions?\b", r"\bpleural fluid\b", r"\bhydrothora(?:x|ces)\b"],
    "Pleural Other": [
        r"\bpleural (?:thickening|plaques?|scar\w*|calcifications?|fibrosis)\b",
        r"\bthickening of the pleura\b",
        r"\bfibrothorax\b",
        r"\bpleur(?:o|al)[- ]?(?:parenchymal|pericardial) (?:scar\w*|thickening)\b",
    ],
    "Fracture": [r"\bfractur\w*", r"\bfx\b"],
    "Support Devices": [
        r"\btubes?\b",
        r"\blines?\b",
        r"\bcatheters?\b",
        r"\bpicc\b",
        r"\b(?:port-?a-?cath|portacath|mediport|port)s?\b",
        r"\bpac(?:er|emaker)s?\b",
        r"\ba?icds?\b",
        r"\bdefibrillators?\b",
        r"\bwires?\b",
        r"\bdrains?\b",
        r"\bstents?\b",
        r"\bcannula\w*",
        r"\bcoils?\b",
        r"\bvalve (?:replacement|prosthesis)\b",
        r"\bprosthetic (?:\w+ )?valve\b",
        r"\b(?:avr|mvr|tavr|tavi|ecmo|iabp|impella|lvad)\b",
        r"\bballoon pump\b",
        r"\bhardware\b",
        r"\bdevices?\b",
        r"\bapparatus\b",
        r"\bequipment\b",
        r"\bscrews?\b",
        r"\bplates?\b",
        r"\barthroplast\w*",
        r"\bprosthes[ie]s\b",
    ],
    OTHER_FINDING: [
        r"\bemphysema\w*",
        r"\bhyper(?:inflat|expan)\w*",
        r"\b(?:kypho)?scoliosis\b",
        r"\bkypho(?:sis|tic)\b",
        r"\bgranulom\w*",
        r"\bcalcifi\w*",
        r"\bhernia\w*",
        r"\bcopd\b",
        r"\bbronchi(?:tis|olitis|ectasis|ectatic)\b",
        r"\bpneumo(?:mediastinum|peritoneum|pericardium)\b",
        r"\batheroscler\w*",
        r"\bosteopeni\w*",
        r"\bmetasta\w*",
        r"\bhemorrhag\w*",
        r"\bhematomas?\b",
        r"\baspiration\b",
        r"\bcontusions?\b",
        r"\bvolume loss\b",
        r"\belevat(?:ed|ion)\b",
        r"\beventration\b",
        r"\bdegenerat\w*",
        r"\bdeformit(?:y|ies)\b",
        r"\bbull(?:a|ae|ous)\b",
        r"\bblunt(?:ing|ed)\b",
        r"\bosteophyt\w*",
        r"\barthropath\w*",
        r"\bpulmonary (?:arterial )?hypertension\b",
    ],
}

# Mentions whose unnegated, unhedged reading is still only uncertain (CheXpert's post-negation-uncertainty patterns).
_HEDGED_MENTIONS: dict[str, list[str]] = {
    "Edema": [
        r"\b(?:pulmonary )?(?:vascular|venous) (?:congestion|prominence|engorgement|redistribution)\b",
        r"\bpulmonary congestion\b",
        r"\bindistinct(?:ness)?\b",
        r"\bcephalization\b",
        r"\bkerley(?: b)? lines\b",
    ],
}

# Phrases that look like a mention but are not one; overlapping mentions of the same observation are dropped.
_UNMENTIONS: dict[str, list[str]] = {
    "Pleural Effusion": [r"\b(?:pericardial|joint) effusions?\b"],
    "Lung Lesion": [
        r"\bcalcified (?:granulom\w*|nodul\w*)",
        r"\b(?:osseous|bony|bone|lytic|sclerotic|blastic|skin|cutaneous|soft[- ]tissue) (?:lesions?|mass(?:es)?)\b",
        r"\bmass effect\b",
    ],
    "Lung Opacity": [r"\bpleur(?:o|al)(?:[- ]?(?:parenchymal|pericardial))? scar\w*"],
    "Edema": [r"\b(?:subcutaneous|soft[- ]tissue|chest wall) edema\b"],
    "Atelectasis": [r"\bvertebral (?:body )?collapse\b"],
    "Support Devices": [
        r"\b(?:pleural|skin|skin fold|fold|septal|kerley(?: b)?|fissural|paratracheal|paraspinal|paraspinous|junction|"
        r"azygo-?esophageal|mid-?clavicular|mid-?axillary|tram[- ]?track) lines?\b",
        r"\bplate[- ]?like\b",
    ],
}

# Statements about the heart and mediastinum with a fixed label; the subject decides which observations they label.
_STRUCTURE = r"(?:heart|cardiac|cardiomediastinal|mediastinal|mediastinum|hilar)(?: (?:size|silhouettes?|contours?))?"
_SUBJECT = rf"(?P<subject>(?:the )?{_STRUCTURE}(?:(?:,| and|, and) (?:the )?{_STRUCTURE})*)"
_VERB = r"(?: (?:is|are|appears?|remains?|seems?))?(?: (?:again|still|now|stably|otherwise|grossly))?"
_NORMAL = (
    r"(?:normal|unremarkable|within normal limits|not (?:enlarged|widened)|at (?:the )?upper limits? of normal|"
    r"top[- ]normal)"
)
_STRUCTURE_STATEMENTS: list[tuple[re.Pattern[str], int]] = [
    (re.compile(rf"\b{_SUBJECT}{_VERB} {_NORMAL}(?: in size)?\b"), NEGATIVE),
    (re.compile(rf"\b(?:normal|unremarkable|top[- ]normal) {_SUBJECT}"), NEGATIVE),
    (re.compile(rf"\b{_SUBJECT}{_VERB} borderline(?: enlarged| in size)?\b"), UNCERTAIN),
    (re.compile(rf"\bborderline (?:enlarged )?{_SUBJECT}"), UNCERTAIN),
]

# Whole-study normal statements: evidence for No Finding, not a mention of any observation.
_NORMAL_STUDY = _alternation(
    [
        r"\bno (?:radiographic )?(?:evidence of )?(?:acute|active) (?:(?:cardiopulmonary|cardiothoracic|intrathoracic|"
        r"thoracic|chest|pulmonary|lung|osseous) )?(?:process(?:es)?|abnormalit(?:y|ies)|disease|findings?|pathology|"
        r"changes?)\b",
        r"\b(?:normal|unremarkable) (?:chest|study|exam(?:ination)?|radiograph|film)\b",
        r"\b(?:chest|study|exam(?:ination)?|radiograph) (?:is |appears )?"
        r"(?:normal|unremarkable|within normal limits)\b",
        r"\blungs (?:are |appear |remain )?(?:otherwise |now |well[- ]expanded and )?clear\b",
        r"\bclear lungs\b",
        r"\bno (?:significant |focal )?abnormalit(?:y|ies)\b",
    ]
)

# Cues in priority order: earlier entries claim their words first, so "cannot be excluded" is not read as negation
# and "no change" not as "no".
_CUES: list[tuple[str, CueKind, Direction]] = [
    (
        r"\bno (?:significant |appreciable |substantial |interval |definite |major |other )?"
        r"(?:change|increase|worsening|improvement|difference)s?\b",
        "pseudo",
        "forward",
    ),
    # "no consolidation to suggest pneumonia" negates both (CheXpert's "no NN to suggest XXX").
    (
        r"\bnot only\b|\bwithout (?:significant |interval )?change\b|\bnot (?:significantly )?changed\b|"
        r"\bto (?:suggest|indicate|explain)\b",
        "pseudo",
        "forward",
    ),
    (
        r"\b(?:cannot|can ?not|can't|could not|couldn't) (?:be )?(?:entirely |completely |definitely )?"
        r"(?:excluded|ruled out)\b|\bnot (?:be )?(?:entirely |completely |definitely )?(?:excluded|ruled out)\b",
        "preneg_uncertain",
        "backward",
    ),
    (
        r"\b(?:cannot|can ?not|can't|could not|couldn't|difficult to) (?:entirely |completely |definitely )?"
        r"(?:exclude|rule out)\b|\bno new\b",
        "preneg_uncertain",
        "forward",
    ),
    (
        r"\b(?:(?:is|are|was|were|has been|have been) )?(?:not|no longer) "
        r"(?:(?:definitely|convincingly|again|currently|now) )?(?:seen|identified|visuali[sz]ed|visible|appreciated|"
        r"demonstrated|present|evident|detected|noted|apparent|enlarged|widened)\b",
        "negation",
        "backward",
    ),
    (
        r"\b(?:(?:has|have) )?(?:since |nearly |almost |completely |interval(?:ly)? )?(?:resolved|cleared)\b|"
        r"\b(?:(?:has|have) been |was |were )?removed\b|\b(?:(?:is|are|now) )?absent\b|"
        r"\b(?:is|are|was|were|has been|have been) (?:excluded|ruled out)\b",
        "negation",
        "backward",
    ),
    (
        r"\bno\b|\bnot\b|\bwithout\b|\bnegative for\b|\bfree of\b|\bclear of\b|\babsence of\b|\brather than\b|"
        r"\bneither\b|\bnor\b|\b(?:interval )?(?:resolution|removal|disappearance|clearing) of\b|\bresolved\b",
        "negation",
        "forward",
    ),
    (
        r"\b(?:(?:is|are|was|were) )?(?:not well|not clearly|poorly|incompletely) (?:seen|visuali[sz]ed|evaluated|"
        r"assessed)\b|\b(?:is|are) (?:likely|possible|probable|suspected|questioned|favou?red|questionable)\b|"
        r"\bsuspected\b|\b(?:may|might|could|possibly) (?:also )?(?:be )?(?:present|seen|noted|identified)\b",
        "uncertain",
        "backward",
    ),
    (
        r"\bpossib(?:le|ly)\b|\bprobabl[ey]\b|\blikely\b|\bpresum(?:ed|ably)\b|\bquestionabl[ey]\b|\bquestion of\b|"
        r"\bsuspicious (?:for|of)\b|\bsuspicion (?:for|of)\b|\bsuspect\b|\bconcern(?:ing)? for\b|\bworrisome\b|"
        r"\bsuggest\w*|\bmay\b|\bmight\b|\bcould\b|\bwould\b|\bcan represent\b|\bdifferential\b|\bconsider\w*|"
        r"\bequivocal\b|\bindeterminate\b|\buncertain\b|\bborderline\b|\brule out\b|\br/o\b|\bto exclude\b|"
        r"\b(?:evaluate|evaluation|assess|assessment) for\b|\bcorrelat\w* (?:clinically )?for\b",
        "uncertain",
        "forward",
    ),
    (r"\band/or\b|\bor\b|\bversus\b|\bvs\b|\?", "uncertain", "both"),
]
_COMPILED_CUES = [(re.compile(pattern), kind, direction) for pattern, kind, direction in _CUES]

_CLAUSE_BREAK = re.compile(
    r"[;:]|\b(?:but|however|although|though|whereas|while|except|other than|aside from|apart from)\b|"
    r"\bthere (?:is|are|was|were|has been|have been)\b|\band (?=(?:the|a|an)\b)"
)
# "?" ends a sentence only right after a word ("pneumonia? no effusion"); a leading "? pneumonia" stays a cue.
_SENTENCE_END = re.compile(r"(?<=[.!])\s+|(?<=\w\?)\s+|\n+")

_MENTION_PATTERNS = {observation: _alternation(patterns) for observation, patterns in _MENTIONS.items()}
_HEDGED_PATTERNS = {observation: _alternation(patterns) for observation, patterns in _HEDGED_MENTIONS.items()}
_UNMENTION_PATTERNS = {observation: _alternation(patterns) for observation, patterns in _UNMENTIONS.items()}


@dataclass(frozen=True)
class _Span:
    start: int
    end: int


@dataclass(frozen=True)
class _Cue(_Span):
    kind: CueKind
    direction: Direction
    clause: int


@dataclass(frozen=True)
class _Mention(_Span):
    observation: str
    clause: int
    hedged: bool = False
    fixed_label: int | None = None


def _overlaps(a: _Span, b: _Span) -> bool:
    return a.start < b.end and b.start < a.end


def _clause_starts(sentence: str) -> list[int]:
    """Start offsets of the clauses; a span belongs to the last clause starting at or before it."""
    return [0] + [match.end() for match in _CLAUSE_BREAK.finditer(sentence)]


def _clause_of(position: int, starts: list[int]) -> int:
    return sum(start <= position for start in starts) - 1


def _find_cues(sentence: str, starts: list[int]) -> list[_Cue]:
    cues: list[_Cue] = []
    for pattern, kind, direction in _COMPILED_CUES:
        for match in pattern.finditer(sentence):
            cue = _Cue(match.start(), match.end(), kind, direction, _clause_of(match.start(), starts))
            if not any(_overlaps(cue, taken) for taken in cues):
                cues.append(cue)
    return sorted(cues, key=lambda cue: cue.start)


def _structure_observations(subject: str) -> list[str]:
    observations = []
    if re.search(r"\b(?:heart|cardiac)\b", subject):
        observations.append("Cardiomegaly")
    if "mediastin" in subject:
        observations.append("Enlarged Cardiomediastinum")
    return observations


def _find_mentions(sentence: str, starts: list[int]) -> list[_Mention]:
    mentions: list[_Mention] = []
    for pattern, label in _STRUCTURE_STATEMENTS:
        for match in pattern.finditer(sentence):
            for observation in _structure_observations(match.group("subject")):
                mentions.append(
                    _Mention(match.start(), match.end(), observation, _clause_of(match.start(), starts), False, label)
                )
    for hedged, patterns in ((True, _HEDGED_PATTERNS), (False, _MENTION_PATTERNS)):
        for observation, pattern in patterns.items():
            unmention = _UNMENTION_PATTERNS.get(observation)
            excluded = [_Span(*match.span()) for match in unmention.finditer(sentence)] if unmention else []
            for match in pattern.finditer(sentence):
                mention = _Mention(match.start(), match.end(), observation, _clause_of(match.start(), starts), hedged)
                # One stretch of text is one mention of an observation (fixed statements and hedged forms win).
                same = [other for other in mentions if other.observation == observation]
                if not any(_overlaps(mention, other) for other in excluded + same):
                    mentions.append(mention)
    return mentions


def _applies(cue: _Cue, mention: _Mention, clause_cues: list[_Cue], sentence: str) -> bool:
    if cue.kind == "pseudo":
        return False
    if cue.direction == "forward":
        if cue.end > mention.start:
            return False
        # ConText-style termination: a later forward cue of another kind ends this cue's scope.
        return not any(
            other.direction == "forward"
            and other.kind not in ("pseudo", cue.kind)
            and cue.end <= other.start
            and other.end <= mention.start
            for other in clause_cues
        )
    if cue.direction == "backward":
        return cue.start >= mention.end and "," not in sentence[mention.end : cue.start]
    # "or"/"versus"/"?": a hedge over the clause, except inside a negated list ("no effusion or pneumothorax").
    return not any(
        other.kind == "negation" and other.direction == "forward" and other.end <= cue.start for other in clause_cues
    )


def _mention_label(mention: _Mention, cues: list[_Cue], sentence: str) -> int:
    if mention.fixed_label is not None:
        return mention.fixed_label
    clause_cues = [cue for cue in cues if cue.clause == mention.clause]
    kinds = {cue.kind for cue in clause_cues if _applies(cue, mention, clause_cues, sentence)}
    if "preneg_uncertain" in kinds:
        return UNCERTAIN
    if "negation" in kinds:
        return NEGATIVE
    if "uncertain" in kinds or mention.hedged:
        return UNCERTAIN
    return POSITIVE


def _sentences(text: str) -> list[str]:
    # "vs." would otherwise end a sentence in "atelectasis vs. pneumonia".
    text = re.sub(r"\bvs\.", "vs", text.lower())
    sentences = (re.sub(r"\s+", " ", part).strip() for part in _SENTENCE_END.split(text))
    return [sentence for sentence in sentences if sentence]


def _aggregate(labels: list[int]) -> int | None:
    for label in (POSITIVE, UNCERTAIN, NEGATIVE):
        if label in labels:
            return label
    return None


def label_report(text: str) -> dict[str, int | None]:
    """Label one report.

    Returns a dict with the 14 `OBSERVATIONS` as keys (in CheXpert order) and values 1 (positive), 0 (negative),
    -1 (uncertain) or None (not mentioned). "No Finding" is only ever 1 or None. See the module docstring.
    """
    mention_labels: dict[str, list[int]] = {}
    normal_study = False
    for sentence in _sentences(text):
        starts = _clause_starts(sentence)
        cues = _find_cues(sentence, starts)
        for mention in _find_mentions(sentence, starts):
            mention_labels.setdefault(mention.observation, []).append(_mention_label(mention, cues, sentence))
        normal_study = normal_study or _NORMAL_STUDY.search(sentence) is not None

    labels: dict[str, int | None] = {name: _aggregate(mention_labels.get(name, [])) for name in OBSERVATIONS}
    abnormal = any(
        label in (POSITIVE, UNCERTAIN)
        for name, values in mention_labels.items()
        if name != SUPPORT_DEVICES
        for label in values
    )
    labels[NO_FINDING] = POSITIVE if (mention_labels or normal_study) and not abnormal else None
    return labels


def label_reports(texts: Sequence[str]) -> np.ndarray:
    """Label N reports: float array of shape (N, 14), columns in `OBSERVATIONS` order, values 1.0 / 0.0 / -1.0
    and NaN for not mentioned (the encoding of CheXpert's output CSV)."""
    array = np.full((len(texts), len(OBSERVATIONS)), np.nan)
    for row, text in enumerate(texts):
        labels = label_report(text)
        array[row] = [np.nan if labels[name] is None else labels[name] for name in OBSERVATIONS]
    return array
