"""Most similar images in an embeddings dataset (written by the features command): exact cosine search on the CLS
token or CLS ⊕ mean patch token, one shard in memory at a time. A query that is in the dataset (same file) uses its
stored vector; any other is encoded with the dataset's encoder (or --model). Prints a table and writes
neighbours.csv and a contact sheet (query, then its neighbours with their scores). With --duplicates, lists the
pairs of images in the dataset at or above --threshold instead (near-duplicates to remove before a patient split).
With no arguments, the index is the features command's default output and the query the embedded sample's first
image: run `features` first."""

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import torch

from accelerate import Accelerator

from rad_dino_hf.embeddings import (
    DTYPES,
    METADATA_FILE,
    encode_pixels,
    near_duplicates,
    nearest,
    read_embeddings,
    read_metadata,
    search_vectors,
)
from rad_dino_hf import embedded_sample
from rad_dino_hf.encoders import load_encoder
from rad_dino_hf.fingerprint import parameter_digest
from rad_dino_hf.errors import UserError
from rad_dino_hf.plots import save_contact_sheet
from rad_dino_hf.tasks.common import encoder_view, write_csv
from rad_dino_hf.tasks.features import DEFAULT_OUTPUT

logger = logging.getLogger("rad_dino_hf")


@dataclass
class Options:
    queries: list[str]
    index: str
    k: int
    features: str
    model: str | None
    duplicates: bool
    threshold: float
    output: str


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "queries",
        nargs="*",
        metavar="QUERY",
        help=f"image or DICOM files (default, without --duplicates: the embedded sample's "
        f"{embedded_sample.QUERY_IMAGE.name})",
    )
    parser.add_argument(
        "--index", default=DEFAULT_OUTPUT, help="embeddings dataset folder (the features command's --output)"
    )
    parser.add_argument("-k", "--k", type=int, default=8, help="neighbours per query")
    parser.add_argument(
        "--features", choices=["cls", "cls_mean"], default="cls_mean", help="CLS, or CLS ⊕ mean patch token"
    )
    parser.add_argument("--model", help="encoder for queries outside the dataset (default: the dataset's)")
    parser.add_argument("--duplicates", action="store_true", help="list near-duplicate pairs of the whole dataset")
    parser.add_argument("--threshold", type=float, default=0.98, help="cosine at or above which a pair is listed")
    parser.add_argument("--output", default="outputs/similar", help="output folder")


def query_vectors(options: Options, metadata: dict) -> tuple[torch.Tensor, object]:
    """`(M, F)` vectors of the queries (stored ones where the dataset has the file) and the processor used."""
    table = read_embeddings(options.index, ["path", "cls", "mean_patch"])
    stored = search_vectors(table, options.features)
    paths = table.column("path")
    model, processor, name = load_encoder(options.model or metadata["model"])
    if options.model is None and parameter_digest(model) != metadata["weights_sha256"]:
        raise ValueError(
            f"{metadata['model']} no longer has the weights {options.index} was encoded with: pass --model"
        )
    rows = []
    for query in options.queries:
        match = pc.index(paths, str(Path(query).resolve())).as_py()
        if match >= 0:
            rows.append(torch.from_numpy(stored[match]))
            continue
        pixels = processor(query, return_tensors="pt")["pixel_values"]
        encoded = encode_pixels(model, pixels, DTYPES[metadata["dtype"]])
        parts = [encoded["cls"]] + ([encoded["mean_patch"]] if options.features == "cls_mean" else [])
        rows.append(torch.cat(parts, dim=1)[0])
    return torch.stack(rows), processor


def view(processor, path: str | None) -> np.ndarray | None:
    """An image as the encoder saw it, or None for a row without a file."""
    return None if path is None else encoder_view(processor, processor(path, return_tensors="pt")["pixel_values"])


def run(options: Options, accelerator: Accelerator) -> dict | None:
    if not accelerator.is_main_process:
        return None
    if not (Path(options.index) / METADATA_FILE).is_file():
        raise UserError(
            f"{options.index} is not an embeddings dataset (no {METADATA_FILE}): run `python train_downstream.py "
            f"features --output {options.index}` first, or pass --index"
        )
    output = Path(options.output)
    output.mkdir(parents=True, exist_ok=True)
    if options.duplicates:
        pairs = near_duplicates(options.index, options.threshold, options.features)
        write_csv(
            output / "duplicates.csv",
            ["score", "id_a", "path_a", "id_b", "path_b"],
            [[score, a["id"], a["path"], b["id"], b["path"]] for score, a, b in pairs],
        )
        for score, a, b in pairs[:50]:
            print(f"{score:.4f}  {a['id']}  {b['id']}")
        logger.info("%d pairs at cosine >= %.3f; all in %s", len(pairs), options.threshold, output / "duplicates.csv")
        return {"duplicates": [(score, a["id"], b["id"]) for score, a, b in pairs]}
    if not options.queries:
        options.queries = [embedded_sample.require(embedded_sample.QUERY_IMAGE, "QUERY files")]
    metadata = read_metadata(options.index)
    queries, processor = query_vectors(options, metadata)
    scores, neighbours = nearest(options.index, queries, options.k, options.features)
    table, sheet = [], []
    for query, query_scores, rows in zip(options.queries, scores.tolist(), neighbours):
        sheet.append([(view(processor, query), f"query\n{Path(query).name}")])
        for rank, (score, row) in enumerate(zip(query_scores, rows), start=1):
            table.append([query, rank, score, row["id"], row["path"]])
            sheet[-1].append((view(processor, row["path"]), f"{rank}. {score:.3f}\n{row['id'][-24:]}"))
            print(f"{Path(query).name:<28} {rank:>3} {score:.4f}  {row['id']}")
    write_csv(output / "neighbours.csv", ["query", "rank", "cosine", "id", "path"], table)
    picture = save_contact_sheet(sheet, output / "contact_sheet.png")
    logger.info("Neighbours in %s, contact sheet %s", output / "neighbours.csv", picture)
    return {
        "neighbours": [
            [(row["id"], score) for row, score in zip(rows, s)] for rows, s in zip(neighbours, scores.tolist())
        ]
    }
