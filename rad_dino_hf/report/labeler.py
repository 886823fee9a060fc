"""A rule-based CheXpert-style labeler for chest X-ray reports (regular expressions, no parser).

A surface-pattern rewrite of the CheXpert labeler (Irvin et al., AAAI 2019, https://github.com/stanfordmlgroup/
chexpert-labeler), itself built on NegBio (Peng et al. 2018). Each report gets one label per CheXpert observation
(`OBSERVATIONS`): 1 positive, 0 negative, -1 uncertain, None not mentioned. Its vocabulary is CheXpert's own: the
`phrases/mention` and `phrases/unmention` files, copied unmodified into `labeler_phrases/` (MIT licence and source
commit in `labeler_phrases/LICENSE`), plus this module's own patterns (`_MENTIONS`, variant and plural forms, more
devices and other findings). CheXpert's dependency-graph cue patterns (`patterns/negation.txt`,
`pre_negation_uncertainty.txt`, `post_negation_uncertainty.txt`) are rewritten here as surface phrases (`_CUES`).
`rad_dino_hf.report.labeler_agreement` measures how often it labels CheXpert's phrases as CheXpert does.

Pipeline, per report:

1. Lower-case; split into sentences at ".", "!" or a word-final "?" followed by white space, and at line breaks.
2. Split each sentence into clauses at scope breakers: ";", ":", "but", "however", "although", "though", "whereas",
   "while", "except", "other than", "aside from", "apart from", "there is/are/was/were/has been/have been", "and"
   followed by "the"/"a"/"an", and a comma or "and" that starts a new finding: one followed by a size, severity,
   side or course word ("no pneumothorax, small left effusion"), unless "or"/"nor" later in the clause makes it a
   list ("no effusion, large consolidation or pneumothorax"). Cues never act across a clause boundary.
3. Find mentions per observation: CheXpert's phrases at a word start (a phrase continues to the end of its word, as
   CheXpert's substring match does, unless the phrase file ends it with "_"), and this module's patterns. A mention
   that overlaps an "unmention" of the same observation ("pericardial effusion", "calcified nodule", CheXpert's
   positional "over the heart", "tuberculosis" for "tube") is dropped.
4. Find cues, highest priority first, never overlapping: pseudo-cues ("no change", "no increase", "to suggest") only
   mask the words they cover; "pre-negation uncertainty" ("cannot exclude", "cannot be ruled out", "no new");
   negation ("no", "without", "negative for", "free of", "clear of", "absence of", "resolution of",
   "removal of", "is not seen", "has resolved", "is absent", "is normal", "has been removed", "has been ruled out");
   uncertainty ("possible", "probable", "likely", "unlikely", "less likely", "not favored", "may", "might", "could",
   "questionable", "suspicious for", "concerning for", "suggestive of", "secondary to", "differential", "equivocal",
   "borderline", "rule out", "is suspected", "obscuring", "is not appreciated", "?", "or", "versus").
5. Scope, within the clause: a forward cue covers every later mention until a forward cue of another kind starts
   ("no effusion, possible pneumonia": the "no" stops at "possible"), so "no pleural effusion or pneumothorax"
   negates both. A backward cue ("... has resolved") covers earlier mentions with no comma between mention and cue.
   "or", "and/or", "versus", "vs" and "?" hedge only their conjuncts, as NegBio's "conj:or" and "conj:versus"
   patterns do: the mentions on either side reached without a verb, relative pronoun or cue word in between
   ("opacity, which may represent atelectasis or pneumonia": atelectasis and pneumonia, not the opacity), and not
   inside a negated list ("no effusion or pneumothorax"). Only "or" reaches back through a list's commas
   ("atelectasis, aspiration, or pneumonia"); "?", "unlikely", "less likely" and "not favored" hedge the mention
   just before them ("pneumonia not favored") and every later one in the clause.
6. Mention label, CheXpert's precedence: uncertain if a pre-negation-uncertainty cue covers it, else negative if a
   negation cue does, else uncertain if an uncertainty cue does, else positive. Hence "no definite effusion" is
   negative, as in CheXpert. Hedged mentions (vascular/pulmonary congestion, vascular prominence, indistinctness,
   cephalization and Kerley lines, for Edema, as CheXpert's post-negation-uncertainty patterns do) turn positive into
   uncertain. Statements about the heart and mediastinum ("heart size is normal", "normal cardiomediastinal
   silhouette", "mediastinal contours are within normal limits", "heart is not enlarged") give Cardiomegaly and/or
   Enlarged Cardiomediastinum a fixed 0; "borderline heart size" and, as in CheXpert, "stable"/"unchanged"/"similar
   to prior" heart or mediastinal contours a fixed -1.
7. Aggregate, as CheXpert: positive if any mention is positive, else uncertain if any is uncertain, else negative if
   any is negative, else None; a positive or uncertain "CHF"/"heart failure" also adds an uncertain Cardiomegaly
   mention. "No Finding" is 1 when no observation other than No Finding and Support Devices, and no "other finding"
   (CheXpert's phrases/mention/no_finding.txt: emphysema, a density, hilar prominence, fluid in a fissure, aortic
   disease, bullet fragments, ...), is positive or uncertain, and never 0 (as in CheXpert's output). Unlike
   CheXpert, which also labels an empty or irrelevant report No Finding, it additionally needs some evidence that the
   chest was described: a mention of any kind (a negated one, a support device) or a normal-study phrase ("no acute
   cardiopulmonary process", "normal chest", "the lungs are clear"); otherwise No Finding is None.

Choices. As in CheXpert: "vascular congestion" is an uncertain, not a positive, Edema mention; "no new X" is uncertain
(old X may persist); bare structure words are mentions ("the heart", "heart size" for Cardiomegaly, "contour",
"mediastinum" for Enlarged Cardiomediastinum), labelled by their cues. Unlike CheXpert: "rule out X", "to exclude X" and
"evaluate for X" are uncertain (CheXpert negates "rule out X"), while "X has been ruled out" and "X is excluded" are
negative; "X is unlikely" is uncertain (CheXpert has a pattern for "less likely" only); "history of X" is positive
(CheXpert negates it, but in clinical notes its scope is hard to bound without a parse). Support Devices covers tubes,
lines (minus anatomical lines: pleural, skin fold, septal, Kerley, junction, paraspinal), catheters, ports, pacemakers,
ICDs, wires (sternotomy wires included), drains, stents, valves, cannulas, coils, markers, prostheses, plates, screws,
hardware and devices.

LIMITATIONS. This is a surface-pattern approximation, not a reimplementation of CheXpert or NegBio: there is no
dependency parse, so negation and uncertainty scope is sentence- and clause-bounded by the breakers above and can be
wrong for long or telegraphic sentences ("no pneumothorax, cardiomegaly" negates the cardiomegaly: without a modifier
the comma reads as a list). No coreference ("it has resolved" does not reach an earlier sentence's mention), no
temporal reasoning (a finding "unchanged from prior" is positive; "no new" is uncertain), no section handling (an
indication such as "evaluate for pneumonia" is labelled like the findings), no spelling correction, English only.
CheXpert's vocabulary is broad on purpose and so is this labeler's ("fibrosis" is Pleural Other, any "density" or
"prominence" blocks No Finding, "the heart" is a Cardiomegaly mention); case reports, clinical notes or free text
generated by a language model can use known words in other senses ("line", "port", "collapse", "mass" outside the
chest). It has been checked against CheXpert's phrase lists in plain sentences (`labeler_agreement`), not against
CheXpert's or CheXbert's labels on a labelled report set: finding F1 computed with it is indicative, not comparable
with published CheXbert F1.
"""

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
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
# Abnormalities outside the 14 that still rule out No Finding (CheXpert's phrases/mention/no_finding.txt and more).
OTHER_FINDING = "_other finding"

# CheXpert's phrase files, unmodified: labeler_phrases/{mention,unmention}/<observation>.txt.
PHRASE_DIR = Path(__file__).with_name("labeler_phrases")

POSITIVE, NEGATIVE, UNCERTAIN = 1, 0, -1

CueKind = Literal["pseudo", "preneg_uncertain", "negation", "uncertain"]
Direction = Literal["forward", "backward", "both"]


def _alternation(patterns: Sequence[str]) -> re.Pattern[str]:
    return re.compile("|".join(f"(?:{pattern})" for pattern in patterns))


def _peer_lines(kind: Literal["mention", "unmention"]) -> dict[str, list[str]]:
    """CheXpert's phrase files as observation -> raw lines ("_" marks a required space, as in CheXpert)."""
    phrases: dict[str, list[str]] = {}
    for path in sorted((PHRASE_DIR / kind).glob("*.txt")):
        observation = path.stem.replace("_", " ").title()
        lines = [line.rstrip("\n") for line in path.read_text().splitlines() if line.strip()]
        phrases[OTHER_FINDING if observation == NO_FINDING else observation] = lines
    return phrases


def peer_phrases(kind: Literal["mention", "unmention"]) -> dict[str, list[str]]:
    """CheXpert's phrases as observation -> readable phrases ("_mediastinum" -> "mediastinum"); the No Finding file
    (findings that block No Finding) is keyed "No Finding"."""
    return {
        NO_FINDING if observation == OTHER_FINDING else observation: [line.replace("_", " ").strip() for line in lines]
        for observation, lines in _peer_lines(kind).items()
    }


def _phrase_pattern(line: str) -> str:
    """A CheXpert phrase as a word-start regular expression: CheXpert matches substrings, so "atelecta" finds
    "atelectasis"; the phrase runs to the end of its word unless the file ends it with "_" ("drain_" is not
    "drainage"). A mid-word match ("mass" in "biomass") is not kept."""
    text = line.replace("_", " ")
    body = re.escape(text.strip()).replace(r"\ ", " ")
    return rf"\b{body}" + (r"\b" if text.endswith(" ") else r"\w*")


def _positional_unmentions(mentions: dict[str, list[str]]) -> dict[str, list[str]]:
    """CheXpert's generated unmentions (stages/extract.py, add_unmention_phrases): "over the heart", "in the left
    cardiac silhouette", ... are locations, not statements about the heart or mediastinum."""
    places = [
        f"{where} the{side}"
        for where in ("over", "overly", "overlying", "projecting over", "in")
        for side in ("", " superior", " left", " right")
    ]
    cardiac = [
        m.strip().replace("the ", "")
        for m in mentions["Cardiomegaly"]
        if m not in ("cardiomegaly", "cardiac enlargement")
    ]
    return {
        "Cardiomegaly": [rf"\b{place} {re.escape(phrase)}" for place in places for phrase in cardiac],
        "Enlarged Cardiomediastinum": [
            rf"\b{place} {re.escape(phrase.strip())}"
            for place in places
            for phrase in mentions["Enlarged Cardiomediastinum"]
        ],
    }


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
        r"\blumpectom\w*",
    ],
    "Lung Opacity": [r"\bpleur(?:o|al)(?:[- ]?(?:parenchymal|pericardial))? scar\w*"],
    "Edema": [r"\b(?:subcutaneous|soft[- ]tissue|chest wall) edema\b"],
    "Atelectasis": [r"\bvertebral (?:body )?collapse\b"],
    "Enlarged Cardiomediastinum": [
        r"\b(?:hemi)?diaphragm(?:atic)? contours?\b",
        r"\bcontours? of the (?:(?:left|right) )?(?:hemi)?diaphragms?\b",
    ],
    "Support Devices": [
        r"\b(?:pleural|skin|skin fold|fold|septal|kerley(?: b)?|fissural|paratracheal|paraspinal|paraspinous|junction|"
        r"azygo-?esophageal|mid-?clavicular|mid-?axillary|tram[- ]?track) lines?\b",
        r"\bplate[- ]?like\b",
        # CheXpert's "tube", "plate" and "support" are substrings of these.
        r"\btuber\w*",
        r"\bplatelets?\b|\bplateau\w*",
        r"\bsupportive\b|\b(?:to|would|could|may|might|can|does|do|which|that|findings?|in) (?:not )?support\w*",
        r"\b(?:aortic|mitral|tricuspid|pulmonic) valve (?:calcifications?|sclerosis|stenosis|regurgitation|disease)\b",
        r"\b(?:inflammatory|laboratory|lab|tumou?r|cardiac|serum|blood|bio|inflammation) markers?\b",
        r"\b(?:oxygen|ventilatory|respiratory|inotropic|vasopressor|hemodynamic|haemodynamic|nutritional) support\b",
    ],
}

# Statements about the heart and mediastinum with a fixed label; the subject decides which observations they label.
_STRUCTURE = (
    r"(?:(?:heart|cardiac|cardiomediastinal|cardiomediastinum|mediastinal|mediastinum|pericardial|hilar)"
    r"(?: (?:size|silhouettes?|contours?|configuration|shadow))?|contours?)"
)
_SUBJECT = rf"(?P<subject>(?:the )?{_STRUCTURE}(?:(?:,| and|, and) (?:the )?{_STRUCTURE})*)"
_VERB = r"(?: (?:is|are|appears?|remains?|seems?))?(?: (?:again|still|now|stably|otherwise|grossly))?"
_NORMAL = (
    r"(?:normal|unremarkable|within normal limits|not (?:enlarged|widened)|at (?:the )?upper limits? of normal|"
    r"top[- ]normal)"
)
_STRUCTURE_STATEMENTS: list[tuple[re.Pattern[str], int]] = [
    (re.compile(rf"\b{_SUBJECT}{_VERB} {_NORMAL}(?: in size)?\b"), NEGATIVE),
    (re.compile(rf"\b(?:normal|unremarkable|top[- ]normal) {_SUBJECT}"), NEGATIVE),
    (re.compile(rf"\bnormal (?:size|contours?|configuration|silhouette) of (?:the )?{_SUBJECT}"), NEGATIVE),
    (re.compile(rf"\b{_SUBJECT}{_VERB} of normal (?:size|contours?|configuration)\b"), NEGATIVE),
    (re.compile(rf"\b{_SUBJECT}{_VERB} borderline(?: enlarged| in size)?\b"), UNCERTAIN),
    (re.compile(rf"\bborderline (?:enlarged )?{_SUBJECT}"), UNCERTAIN),
    # CheXpert's post-negation uncertainty: a stable or unchanged silhouette may be a stably enlarged one.
    (
        re.compile(
            rf"\b{_SUBJECT}{_VERB} (?:stable|unchanged|similar (?:in appearance )?to (?:the )?(?:prior|previous)\w*)"
        ),
        UNCERTAIN,
    ),
    (re.compile(rf"\b(?:stable|unchanged) (?:appearance of (?:the )?)?{_SUBJECT}"), UNCERTAIN),
    (re.compile(rf"\bno (?:significant |interval )?change in (?:the )?{_SUBJECT}"), UNCERTAIN),
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
    # "unlikely", "less likely", "not favored" hedge (CheXpert: "less likely" is uncertain); before "not".
    # "findings are less likely to represent edema": the hedge reaches forward, to what the findings may represent.
    (r"\b(?:is|are|was|were) (?:unlikely|less likely) to (?:represent|reflect|be due to)\b", "uncertain", "forward"),
    (
        r"\b(?:is|are|was|were|seems?|appears?|felt|thought|considered)(?: to be)? "
        r"(?:unlikely|less likely|not (?:favou?red|likely))\b",
        "uncertain",
        "backward",
    ),
    (r"\bunlikely\b|\bless likely\b|\bnot favou?red\b", "uncertain", "both"),
    (
        r"\b(?:(?:is|are|was|were|has been|have been) )?(?:not|no longer) "
        r"(?:(?:definitely|convincingly|again|currently|now) )?(?:seen|identified|visuali[sz]ed|visible|"
        r"demonstrated|present|evident|detected|noted|apparent|enlarged|widened)\b",
        "negation",
        "backward",
    ),
    (
        r"\b(?:(?:has|have) )?(?:since |nearly |almost |completely |interval(?:ly)? )?(?:resolved|cleared)\b|"
        r"\b(?:(?:has|have) been |was |were )?removed\b|\b(?:(?:is|are|now) )?absent\b|"
        r"\b(?:is|are|was|were|has been|have been) (?:excluded|ruled out)\b|"
        r"\b(?:is|are|appears?|remains?)(?: (?:otherwise|again|still|now|grossly))? "
        r"(?:normal|unremarkable|within normal limits)\b",
        "negation",
        "backward",
    ),
    # Before the bare "not": "not clearly seen", "not appreciated" are hedges in CheXpert, not negations.
    (
        r"\b(?:(?:is|are|was|were) )?(?:not well|not clearly|poorly|incompletely) (?:seen|visuali[sz]ed|evaluated|"
        r"assessed|appreciated)\b|\b(?:(?:is|are|was|were) )?not (?:\w+ )?appreciated\b|"
        r"\b(?:is|are) (?:likely|possible|probable|suspected|questioned|favou?red|questionable)\b|"
        r"\b(?:is|are|was|were) (?:partially |partly )?obscured\b|"
        r"\bsuspected\b|\b(?:may|might|could|possibly) (?:also )?(?:be )?(?:present|seen|noted|identified)\b",
        "uncertain",
        "backward",
    ),
    (
        r"\bno\b|\bnot\b|\bwithout\b|\bnegative for\b|\bfree of\b|\bclear of\b|\babsence of\b|\brather than\b|"
        r"\bneither\b|\bnor\b|\b(?:interval )?(?:resolution|removal|disappearance|clearing) of\b|\bresolved\b",
        "negation",
        "forward",
    ),
    (
        r"\bpossib(?:le|ly)\b|\bprobabl[ey]\b|\blikely\b|\bpresum(?:ed|ably)\b|\bquestionabl[ey]\b|\bquestion of\b|"
        r"\bsuspicious (?:for|of)\b|\bsuspicion (?:for|of)\b|\bsuspect\b|\bconcern(?:ing)? for\b|\bworrisome\b|"
        r"\bsuggest\w*|\bmay\b|\bmight\b|\bcould\b|\bwould\b|\bcan represent\b|\bdifferential\b|\bconsider\w*|"
        r"\bequivocal\b|\bindeterminate\b|\buncertain\b|\bborderline\b|\brule out\b|\br/o\b|\bto exclude\b|"
        r"\b(?:evaluate|evaluation|assess|assessment) for\b|\bcorrelat\w* (?:clinically )?for\b|"
        r"\bsecondary to\b|\bmaybe\b|\bobscur(?:ing|ation of)\b|\bfavou?r(?:s|ing)?\b",
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
# A comma or "and" before one of these words starts a new finding ("no pneumothorax, small left effusion"), unless
# "or"/"nor" later in the clause makes the words a list ("no effusion, large consolidation or pneumothorax").
_NEW_FINDING = re.compile(
    r"(?:,|\band)\s*(?=(?:small|smaller|tiny|trace|minimal|minor|mild|mildly|moderate|moderately|large|larger|severe|"
    r"marked|markedly|massive|extensive|left|right|bilateral|bibasilar|bibasal|basilar|new|newly|stable|persistent|"
    r"persisting|unchanged|increased|increasing|decreased|decreasing|improved|improving|worsened|worsening|residual|"
    r"chronic|old|healed|healing|subsegmental|patchy|diffuse|multifocal|enlarged|widened|\d+)\b)"
)
_LIST_CONTINUES = re.compile(r"\b(?:or|nor)\b")
# Words that separate a mention from an "or"/"versus" it is not a conjunct of ("opacity, which may represent
# atelectasis or pneumonia"; "cardiomegaly with atelectasis or pneumonia").
_NOT_CONJUNCT = re.compile(
    r"\b(?:which|that|who|is|are|was|were|be|been|being|has|have|may|might|could|would|can|likely|probabl[ey]|"
    r"possibl[ey]|represent\w*|reflect\w*|suggest\w*|indicat\w*|concerning|consistent|compatible|due|secondary|"
    r"related|with|without|from|for|after|since|given)\b"
)
_COORDINATOR = re.compile(r"and/or|or|versus|vs")
_LIST_COORDINATOR = re.compile(r"and/or|or")  # "versus" opposes two findings, never a list
# "?" ends a sentence only right after a word ("pneumonia? no effusion"); a leading "? pneumonia" stays a cue.
_SENTENCE_END = re.compile(r"(?<=[.!])\s+|(?<=\w\?)\s+|\n+")


def _merged(own: dict[str, list[str]], *tables: dict[str, list[str]]) -> dict[str, re.Pattern[str]]:
    """One alternation per observation over this module's patterns and CheXpert's."""
    merged = {observation: list(patterns) for observation, patterns in own.items()}
    for table in tables:
        for observation, patterns in table.items():
            merged.setdefault(observation, []).extend(patterns)
    return {observation: _alternation(patterns) for observation, patterns in merged.items()}


def _peer_patterns(kind: Literal["mention", "unmention"]) -> dict[str, list[str]]:
    return {observation: [_phrase_pattern(line) for line in lines] for observation, lines in _peer_lines(kind).items()}


_MENTION_PATTERNS = _merged(_MENTIONS, _peer_patterns("mention"))
_HEDGED_PATTERNS = _merged(_HEDGED_MENTIONS)
_UNMENTION_PATTERNS = _merged(_UNMENTIONS, _peer_patterns("unmention"), _positional_unmentions(peer_phrases("mention")))


_HEART_FAILURE = re.compile(r"chf|heart failure")


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
    hard = [0] + [match.end() for match in _CLAUSE_BREAK.finditer(sentence)]
    soft = []
    for match in _NEW_FINDING.finditer(sentence):
        clause_end = min((start for start in hard if start > match.end()), default=len(sentence))
        if not _LIST_CONTINUES.search(sentence, match.end(), clause_end):
            soft.append(match.end())
    return sorted(hard + soft)


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
    # As CheXpert's phrases: "cardiac contour" names both, "cardiomediastinal silhouette" only the mediastinum.
    observations = []
    if re.search(r"\b(?:heart|cardiac)\b", subject):
        observations.append("Cardiomegaly")
    if re.search(r"mediastin|contour|pericardial|configuration", subject):
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
    # "or"/"versus"/"?"/"unlikely": a hedge over its conjuncts, except inside a negated list ("no effusion or
    # pneumothorax"). "or" reaches back through a list's commas ("atelectasis, aspiration, or pneumonia"); "versus",
    # "?" and "unlikely" reach only the adjacent mention before them; "?" and "unlikely" reach the rest of the clause.
    if any(
        other.kind == "negation" and other.direction == "forward" and other.end <= cue.start for other in clause_cues
    ):
        return False
    coordinator = _COORDINATOR.fullmatch(sentence, cue.start, cue.end) is not None
    if mention.start >= cue.end:
        return not coordinator or _NOT_CONJUNCT.search(sentence, cue.end, mention.start) is None
    gap = sentence[mention.end : cue.start]
    in_list = _LIST_COORDINATOR.fullmatch(sentence, cue.start, cue.end) is not None
    return (in_list or "," not in gap) and _NOT_CONJUNCT.search(gap) is None


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
            label = _mention_label(mention, cues, sentence)
            mention_labels.setdefault(mention.observation, []).append(label)
            # CheXpert's aggregator: heart failure reported or suspected makes Cardiomegaly uncertain.
            if label != NEGATIVE and _HEART_FAILURE.fullmatch(sentence, mention.start, mention.end):
                mention_labels.setdefault("Cardiomegaly", []).append(UNCERTAIN)
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
