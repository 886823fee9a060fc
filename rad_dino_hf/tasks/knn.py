"""Weighted k-nearest-neighbour classification of a labelled table (as linear-probe's) on cached frozen features,
as DINO's k-NN evaluation: cosine similarity, k = 20, votes weighted by exp(similarity / 0.07). Same patient split,
metrics and pictures as linear-probe; with no --table, the embedded sample's labelled images."""

import argparse
from dataclasses import dataclass
from pathlib import Path

from accelerate import Accelerator

from rad_dino_hf.weighted_knn import DEFAULT_K, DEFAULT_TEMPERATURE, knn_classify
from rad_dino_hf.metrics import classification_metrics
from rad_dino_hf.tasks import linear_probe
from rad_dino_hf.tasks.common import frozen_features, labelled_split, write_classification_outputs


@dataclass
class Options(linear_probe.Options):
    k: int
    temperature: float
    features: str


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """linear-probe's arguments (another output folder) and the vote's."""
    linear_probe.add_arguments(parser)
    parser.set_defaults(output="outputs/knn")
    parser.add_argument("--k", type=int, default=DEFAULT_K, help="neighbours that vote")
    parser.add_argument("--temperature", type=float, default=DEFAULT_TEMPERATURE, help="votes weigh exp(cosine / T)")
    parser.add_argument(
        "--features", choices=["cls", "cls_mean"], default="cls", help="CLS (as DINO) or CLS ⊕ mean patch"
    )


def run(options: Options, accelerator: Accelerator) -> dict | None:
    data = labelled_split(options.table, options.split, "k-NN")
    vectors, info = frozen_features(options.encoder, options.cache, data.files, accelerator, options.features)
    if not accelerator.is_main_process:
        return None
    probabilities = knn_classify(
        vectors[data.train],
        data.labels[data.train],
        vectors[data.val],
        len(data.classes),
        options.k,
        options.temperature,
    ).numpy()
    seed = options.split.seed
    results = classification_metrics(
        data.labels[data.val], probabilities, data.classes, multilabel=data.multilabel, seed=seed
    )
    results.update(info, k=options.k, temperature=options.temperature, features=options.features)
    results.update(n_train=len(data.train), table=str(options.table.table), seed=seed)
    return write_classification_outputs(Path(options.output), results, data, probabilities)
