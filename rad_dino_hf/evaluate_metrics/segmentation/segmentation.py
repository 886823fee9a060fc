"""`evaluate` module: per-class and mean Dice and IoU over integer masks, with an ignore index (255).

A thin wrapper. The math lives in `segmentation_core.py` beside this file (numpy only), which `evaluate.load` copies
into its modules cache with this script because of the relative import below; `rad_dino_hf.metrics` loads the same file
by path. See `segmentation_core.py` for the definitions (pooled "dataset" and "per_image" aggregations, ignored pixels,
classes absent from both).

    metric = evaluate.load("rad_dino_hf/evaluate_metrics/segmentation")
    metric.compute(predictions=masks, references=masks, num_classes=2, ignore_index=255, include_background=False)
"""

import datasets
import evaluate
import numpy as np

from .segmentation_core import segmentation_metrics

_DESCRIPTION = """Dice and IoU per class, pooled over the dataset and averaged per image, over integer label masks;
reference pixels equal to ignore_index are excluded from numerators and denominators (RAD-DINO evaluation)."""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of (H, W) integer masks. references: list of (H, W) integer masks, same shapes pairwise.
    num_classes: number of classes (default: 1 + largest non-ignored label). ignore_index: default 255.
    include_background: whether class 0 enters the means (default True). class_names: optional names.
Returns:
    dict with "dataset" and "per_image", each with "dice" and "iou" ({"per_class", "mean"}); None where undefined.
"""

_CITATION = """@article{perezgarcia2025raddino,
  title={Exploring scalable medical image encoders beyond text supervision},
  author={P{\\'e}rez-Garc{\\'i}a, Fernando and others},
  journal={Nature Machine Intelligence},
  year={2025}
}"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Segmentation(evaluate.Metric):
    def _info(self):
        mask = datasets.Sequence(datasets.Sequence(datasets.Value("int64")))
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": mask, "references": mask}),
        )

    def _compute(
        self, predictions, references, num_classes=None, ignore_index=255, include_background=True, class_names=None
    ):
        return segmentation_metrics(
            [np.asarray(mask) for mask in predictions],
            [np.asarray(mask) for mask in references],
            num_classes=num_classes,
            ignore_index=ignore_index,
            include_background=include_background,
            class_names=class_names,
        )
