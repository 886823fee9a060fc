"""Option groups shared by the downstream tasks: each a small dataclass and the function that adds its arguments.

A task's options are a dataclass composed of these groups and its own fields; `from_namespace` fills one from the
parsed command line by field name, so nothing below the entry point sees an argparse Namespace. Defaults live in
the arguments (they differ between tasks, e.g. the batch size), not in the dataclasses.
"""

import argparse
import dataclasses
import typing

from rad_dino_hf import embedded_sample
from rad_dino_hf.encoders import RELEASED_MODEL_ID
from rad_dino_hf.tables import UNCERTAIN_POLICIES

T = typing.TypeVar("T")


def from_namespace(cls: type[T], namespace: argparse.Namespace) -> T:
    """An instance of dataclass `cls` whose fields take the namespace's values of the same name; a field that is
    itself a dataclass is filled from the same namespace. A field the namespace lacks keeps its default."""
    types, values = typing.get_type_hints(cls), {}
    for field in dataclasses.fields(cls):
        if dataclasses.is_dataclass(types[field.name]):
            values[field.name] = from_namespace(types[field.name], namespace)
        elif hasattr(namespace, field.name):
            values[field.name] = getattr(namespace, field.name)
    return cls(**values)


@dataclasses.dataclass
class EncoderOptions:
    """The frozen encoder (`load_encoder`'s name or path) and how many images it encodes at once."""

    model: str
    batch_size: int


def add_encoder_arguments(parser: argparse.ArgumentParser, batch_size: int = 4) -> None:
    parser.add_argument(
        "--model",
        default=RELEASED_MODEL_ID,
        help="Hub id or directory, or 'random' (the released model falls back to random weights, with a warning, "
        "when offline without a cache)",
    )
    parser.add_argument("--batch-size", type=int, default=batch_size, help="images per batch")


@dataclasses.dataclass
class CacheOptions:
    """Folder of the frozen-feature cache (`rad_dino_hf.encoders.cached_features`) and embeddings datasets (the
    features command's) to read features from before encoding."""

    cache_dir: str
    embeddings: list[str]


def add_cache_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cache-dir", default="outputs/feature_cache", help="where computed features are kept")
    parser.add_argument(
        "--embeddings",
        nargs="+",
        default=[],
        metavar="DIR",
        help="embeddings datasets of image folders (features command, same model, fp32) to take features from",
    )


@dataclasses.dataclass
class SplitOptions:
    """Patient-level hold-out (`rad_dino_hf.tables.patient_split`) and the seed of everything random in a task."""

    val_fraction: float
    seed: int


def add_split_arguments(parser: argparse.ArgumentParser, val_fraction: float = 0.25) -> None:
    parser.add_argument("--val-fraction", type=float, default=val_fraction, help="share of patients held out")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split and of everything random after it")


@dataclasses.dataclass
class TableOptions:
    """A labelled image table, as `rad_dino_hf.tables.read_labelled_table` reads it."""

    table: str
    hub_split: str
    image_root: str | None
    image_column: str
    label_column: list[str]
    uncertain_as: str
    patient_column: str


def add_table_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--table",
        "--csv",
        dest="table",
        default=str(embedded_sample.TABLE),
        help="labelled images: a .csv, .parquet or .jsonl/.json file, a folder with a metadata.csv, or a Hub dataset "
        "id; image-path, label and patient columns. The default, the embedded sample, labels 36 pediatric radiographs "
        "normal, bacterial or viral; its unlabelled rows are left out",
    )
    parser.add_argument(
        "--split", dest="hub_split", metavar="SPLIT", default="train", help="the Hub dataset's split (Hub ids only)"
    )
    parser.add_argument(
        "--image-root",
        help="folder the image paths are relative to (default: the table's; required for a Hub id with relative paths)",
    )
    parser.add_argument("--image-column", default="file", help="column of image paths")
    parser.add_argument(
        "--label-column",
        nargs="+",
        default=["label"],
        help="one column: multi-class (its values are the classes); several: multi-label, one 0/1 label per column "
        "(1/0, true/false, yes/no; blank is an error)",
    )
    parser.add_argument(
        "--uncertain-as",
        choices=UNCERTAIN_POLICIES,
        default="negative",
        help="multi-label value -1 (CheXpert's uncertain) counts as this",
    )
    parser.add_argument("--patient-column", default="patient", help="no patient is in both splits")


def add_accelerator_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    parser.add_argument(
        "--mixed-precision", choices=["no", "bf16", "fp16"], default="no", help="Accelerate's autocast dtype"
    )
    parser.add_argument(
        "--gradient-accumulation-steps", "--grad-accum", type=int, default=1, help="batches per optimiser update"
    )


@dataclasses.dataclass
class FrozenTaskOptions:
    """An encoder whose features are cached and a patient split: what the tasks on frozen features share."""

    encoder: EncoderOptions
    cache: CacheOptions
    split: SplitOptions


def add_frozen_task_arguments(parser: argparse.ArgumentParser) -> None:
    add_encoder_arguments(parser)
    add_split_arguments(parser)
    add_cache_arguments(parser)


@dataclasses.dataclass
class LabelledTaskOptions:
    """An encoder, a labelled table and its patient split: what the classifiers (probe, k-NN, fine-tuning) share."""

    encoder: EncoderOptions
    table: TableOptions
    split: SplitOptions


def add_labelled_task_arguments(parser: argparse.ArgumentParser, batch_size: int = 4) -> None:
    add_encoder_arguments(parser, batch_size)
    add_table_arguments(parser)
    add_split_arguments(parser)
