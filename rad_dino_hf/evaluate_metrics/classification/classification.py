"""`evaluate` module: accuracy, macro / per-class AUROC and AUPRC with bootstrap 95 % confidence intervals.

A thin wrapper. The math lives in `classification_core.py` beside this file (numpy only), which `evaluate.load`
copies into its modules cache with this script because of the relative import below; `rad_dino_hf.metrics` loads the
same file by path. See `classification_core.py` for the definitions.

    # multi-class: references (N,) int; multi-label ("multilabel" config): references (N, C) {0, 1}
    metric = evaluate.load("rad_dino_hf/evaluate_metrics/classification")
    metric = evaluate.load("rad_dino_hf/evaluate_metrics/classification", "multilabel")
    metric.compute(predictions=scores, references=labels, class_names=[...], n_bootstrap=1000, seed=0)
"""

import datasets
import evaluate

from .classification_core import classification_metrics

_DESCRIPTION = """Accuracy, macro and per-class AUROC and AUPRC (average precision), one-vs-rest for multi-class and per
label for multi-label, with percentile bootstrap confidence intervals over resampled cases (RAD-DINO evaluation)."""

_KWARGS_DESCRIPTION = """
Args:
    predictions: (N, C) class or label probabilities.
    references: (N,) int class indices, or (N, C) {0, 1} with the "multilabel" config.
    class_names: optional C names used as keys of the per-class results.
    n_bootstrap: number of resamples (default 1000). seed: seed of numpy.random.default_rng (default 0).
    confidence: interval level (default 0.95). threshold: multi-label accuracy threshold (default 0.5).
Returns:
    dict with "accuracy", "auroc" and "auprc" ({"value", "ci_low", "ci_high"}; the latter two with "macro" and
    "per_class"), and "bootstrap" with the number of resamples used.
"""

_CITATION = """@article{perezgarcia2025raddino,
  title={Exploring scalable medical image encoders beyond text supervision},
  author={P{\\'e}rez-Garc{\\'i}a, Fernando and others},
  journal={Nature Machine Intelligence},
  year={2025}
}"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Classification(evaluate.Metric):
    def _info(self):
        multilabel = self.config_name == "multilabel"
        reference = datasets.Sequence(datasets.Value("int64")) if multilabel else datasets.Value("int64")
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Sequence(datasets.Value("float64")), "references": reference}
            ),
        )

    def _compute(
        self, predictions, references, class_names=None, n_bootstrap=1000, seed=0, confidence=0.95, threshold=0.5
    ):
        return classification_metrics(
            references,
            predictions,
            class_names=class_names,
            multilabel=self.config_name == "multilabel",
            n_bootstrap=n_bootstrap,
            seed=seed,
            confidence=confidence,
            threshold=threshold,
        )
