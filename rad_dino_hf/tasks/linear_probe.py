"""Logistic regression on frozen features (CLS ⊕ mean patch token) of the images listed in a table with an
image-path, a label and a patient column (--table: CSV, parquet or JSON lines file, a folder with a metadata.csv, or
a Hub dataset id, read with HF datasets). Several --label-column's make a multi-label task (0/1 columns, one binary
regression per label). Patient-level split; C by patient-grouped 5-fold CV; accuracy, AUROC and AUPRC with 95 %
bootstrap intervals, ROC curves, a confusion matrix (multi-class) and per-image predictions. Features are cached,
so reruns skip the encoder. With no --table it runs on the embedded sample's 36 labelled pediatric radiographs
(normal, bacterial, viral; 36 patients)."""

import argparse
from dataclasses import dataclass
from pathlib import Path

from accelerate import Accelerator

from rad_dino_hf.probe import linear_probe
from rad_dino_hf.tasks.arguments import (
    CacheOptions,
    LabelledTaskOptions,
    add_cache_arguments,
    add_labelled_task_arguments,
)
from rad_dino_hf.tasks.common import frozen_features, labelled_split, write_classification_outputs


@dataclass
class Options(LabelledTaskOptions):
    cache: CacheOptions
    output: str


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_labelled_task_arguments(parser)
    add_cache_arguments(parser)
    parser.add_argument("--output", default="outputs/linear_probe", help="output folder")


def run(options: Options, accelerator: Accelerator) -> dict | None:
    data = labelled_split(options.table, options.split, "Probe")
    vectors, info = frozen_features(options.encoder, options.cache, data.files, accelerator)
    if not accelerator.is_main_process:
        return None
    train, val, seed = data.train, data.val, options.split.seed
    results = linear_probe(
        vectors[train],
        data.labels[train],
        data.patients[train],
        vectors[val],
        data.labels[val],
        data.classes,
        seed,
        multilabel=data.multilabel,
    )
    probabilities = results.pop("probabilities")
    results.update(info, table=str(options.table.table), seed=seed)
    return write_classification_outputs(Path(options.output), results, data, probabilities)
