"""Frozen-encoder feature extraction: image files in, CLS embeddings and patch-token maps out."""

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from configuration_rad_dino import RadDinoConfig
from image_processing_rad_dino import RadDinoImageProcessor
from modeling_rad_dino import RadDinoModel
from rad_dino_hf.embeddings import (
    ERRORS_FILE,
    METADATA_FILE,
    SHARD_GLOB,
    EmbeddingSettings,
    files_source,
    read_embeddings,
    read_metadata,
    vectors,
    write_embeddings,
)
from rad_dino_hf.errors import UserError
from rad_dino_hf.fingerprint import files_digest, parameter_digest

logger = logging.getLogger(__name__)

RELEASED_MODEL_ID = "microsoft/rad-dino"
RANDOM_INIT = "random"


def load_encoder(
    name_or_path: str, random_fallback: bool | None = None
) -> tuple[RadDinoModel, RadDinoImageProcessor, str]:
    """Load an encoder and its processor from a Hub id or directory, or build a random full-size one.

    `name_or_path="random"` builds a randomly initialised RAD-DINO. With `random_fallback`, a Hub id that cannot be
    loaded (offline, no cache) falls back to random weights with a warning instead of failing; the returned name
    says which happened. By default (None) only the released model, every command's default, falls back: a
    mistyped path or id the user gave still fails.
    """
    if random_fallback is None:
        random_fallback = name_or_path == RELEASED_MODEL_ID
    if name_or_path == RANDOM_INIT:
        torch.manual_seed(0)
        return RadDinoModel(RadDinoConfig()).eval(), RadDinoImageProcessor(), RANDOM_INIT
    try:
        model = RadDinoModel.from_pretrained(name_or_path).eval()
        processor = RadDinoImageProcessor.from_pretrained(name_or_path)
        return model, processor, name_or_path
    except OSError as error:  # no such directory or id, no weights in it, offline without a cache
        if not random_fallback:
            reason = " ".join(str(error).split())
            raise UserError(f"--model {name_or_path}: cannot load an encoder ({reason})") from error
        logger.warning(
            "Could not load %s (%s). Using a RANDOMLY INITIALISED RAD-DINO instead: the pipeline runs, but the "
            "features mean nothing. Connect to the Hub once or pass --model DIR to use real weights.",
            name_or_path,
            str(error).splitlines()[0],
        )
        return load_encoder(RANDOM_INIT)


@torch.inference_mode()
def extract_features(
    model: RadDinoModel,
    processor: RadDinoImageProcessor,
    files: Sequence[Path],
    batch_size: int = 4,
    progress: bool = True,
    cls_blocks: int = 0,
) -> dict[str, torch.Tensor]:
    """Encode `files` with `model` in memory (small sets; `rad_dino_hf.embeddings` writes large ones to disk).

    Returns `cls` `(N, D)` and `patch` `(N, D, H/p, W/p)` float32 CPU tensors, in the order of `files`. With
    `cls_blocks` n > 0 also `cls_blocks` `(N, n D)`: the CLS token after each of the last n blocks, each through the
    final layer norm, earliest first (DINOv2's linear evaluation, `get_intermediate_layers(n, norm=True)`).
    """
    if not 0 <= cls_blocks <= model.config.num_hidden_layers:
        raise ValueError(f"cls_blocks must be 0 to {model.config.num_hidden_layers}, got {cls_blocks}")
    device = next(model.parameters()).device
    cls_batches, patch_batches, block_batches = [], [], []
    with tqdm(total=len(files), desc="Encoding", unit="img", disable=not progress) as bar:
        for start in range(0, len(files), batch_size):
            batch_files = files[start : start + batch_size]
            # Paths, not arrays: the processor reads them and applies the DICOM / 16-bit conversion itself.
            pixels = processor([str(path) for path in batch_files], return_tensors="pt")["pixel_values"]
            output = model(pixels.to(device), output_hidden_states=cls_blocks > 0)
            cls_batches.append(output.cls_embeddings.float().cpu())
            patch_batches.append(output.patch_embeddings.float().cpu())
            if cls_blocks:
                # hidden_states holds the embeddings and then every block's output, before the final norm.
                block_cls = [model.layernorm(hidden[:, 0]) for hidden in output.hidden_states[-cls_blocks:]]
                block_batches.append(torch.cat(block_cls, dim=1).float().cpu())
            bar.update(len(batch_files))
    features = {"cls": torch.cat(cls_batches), "patch": torch.cat(patch_batches)}
    if cls_blocks:
        features["cls_blocks"] = torch.cat(block_batches)
    return features


def cached_features(
    model: RadDinoModel,
    processor: RadDinoImageProcessor,
    files: Sequence[Path],
    cache_dir: str | Path,
    batch_size: int = 4,
    progress: bool = True,
    accelerator: Accelerator | None = None,
    patches: bool = True,
    embeddings: Sequence[str | Path] = (),
) -> tuple[dict[str, torch.Tensor], bool]:
    """Features of `files` from the embeddings datasets in `cache_dir`, encoding only the files none holds.

    The cache keeps one folder per encoder (weights, config, preprocessing) holding fp32 embeddings datasets
    (`rad_dino_hf.embeddings`), one per set of newly encoded files; a file's row is found by its resolved path, size
    and modification time. Returns `cls` `(N, D)`, `mean_patch` `(N, D)` and, with `patches`, `patch`
    `(N, D, h, w)` float32 tensors in the order of `files`, and whether every file came from the cache (then the
    encoder did not run). Under several processes each encodes its shards; all read the result back from disk.
    Unreadable files are an error naming them. Rows are also looked up in the `embeddings` datasets (written by the
    features command from image folders) made with the same weights and preprocessing in fp32.
    """
    digest = parameter_digest(model)
    key = hashlib.sha256(
        "|".join([digest, model.config.to_json_string(), processor.to_json_string()]).encode()
    ).hexdigest()[:32]
    root = Path(cache_dir) / key
    wanted = [_file_key(path) for path in files]
    grid = [model.config.hidden_size] + [
        processor.crop_size[side] // model.config.patch_size for side in ("height", "width")
    ]
    sources = [Path(folder) for folder in embeddings if _same_encoder(Path(folder), digest, processor)]
    found = _cached_rows([*sources, root], set(wanted), grid if patches else None)
    missing = sorted({path for path, key in zip(files, wanted) if key not in found}, key=str)
    if accelerator is not None:
        accelerator.wait_for_everyone()  # everyone has looked before anyone writes
    if missing:
        world_size = accelerator.num_processes if accelerator else 1
        settings = EmbeddingSettings(
            batch_size=batch_size,
            shard_size=min(CACHE_SHARD_SIZE, -(-len(missing) // world_size)),
            patches="fp32" if patches else None,
            progress=progress,
        )
        part = root / f"part-{files_digest(missing)[:16]}-{'patches' if patches else 'vectors'}"
        summary = write_embeddings(model, processor, files_source(missing), part, settings, accelerator=accelerator)
        if summary["errors"]:
            errors = (part / ERRORS_FILE).read_text().splitlines()[:5]
            raise ValueError(f"{summary['errors']} unreadable images, e.g. {'; '.join(errors)}")
        found = _cached_rows([*sources, root], set(wanted), grid if patches else None)
    else:
        logger.info("Features of %d images from the cache %s", len(files), root)
    rows = [found[key] for key in wanted]
    features = {name: torch.from_numpy(np.stack([row[name] for row in rows])) for name in ("cls", "mean_patch")}
    if patches:
        features["patch"] = torch.from_numpy(np.stack([row["patch"] for row in rows]))
    return features, not missing


CACHE_SHARD_SIZE = 256


def _file_key(path: str | Path) -> tuple[str, int, int]:
    stat = Path(path).stat()
    return str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns


def _same_encoder(folder: Path, digest: str, processor: RadDinoImageProcessor) -> bool:
    """Whether the embeddings dataset at `folder` was made in fp32 by weights of `digest` with `processor`'s
    settings, from files (whose size and modification time it records)."""
    metadata = read_metadata(folder)
    same = metadata["weights_sha256"] == digest and metadata["dtype"] == "fp32"
    same = same and metadata["processor"] == json.loads(json.dumps(processor.to_dict(), default=str))
    if not same:
        logger.warning("Not reading %s: made by other weights, preprocessing or dtype", folder)
    return same


def _cached_rows(
    folders: Sequence[Path], wanted: set[tuple[str, int, int]], patch_shape: list[int] | None
) -> dict[tuple[str, int, int], dict]:
    """The vectors (`cls`, `mean_patch`, and with a `patch_shape` `(D, h, w)` the fp32 `patch` maps) of the `wanted`
    files' current versions, from the complete shards of the embeddings datasets in `folders` (or in their
    `part-*` sub-folders: the cache) that store what is asked for."""
    found = {}
    parts = [part for folder in folders for part in [folder, *sorted(folder.glob("part-*"))]]
    for part in parts:
        if not (part / METADATA_FILE).is_file() or not any(part.glob(SHARD_GLOB)):
            continue
        metadata = read_metadata(part)
        if patch_shape and (metadata["patches"] != "fp32" or metadata["patch_shape"] != patch_shape):
            continue
        if "file_size" not in pq.read_schema(next(part.glob(SHARD_GLOB))).names:  # made from a table, not files
            continue
        table = read_embeddings(part, ["path", "file_size", "file_mtime_ns"])
        keys = list(zip(*(table.column(name).to_pylist() for name in ("path", "file_size", "file_mtime_ns"))))
        rows = [row for row, key in enumerate(keys) if key in wanted and key not in found]
        if not rows:
            continue
        columns = ["cls", "mean_patch"] + (["patch"] if patch_shape else [])
        table = read_embeddings(part, columns).take(rows)
        arrays = {name: vectors(table, name) for name in columns}
        for position, row in enumerate(rows):
            found[keys[row]] = {name: arrays[name][position] for name in columns}
            if patch_shape:
                found[keys[row]]["patch"] = found[keys[row]]["patch"].reshape(patch_shape)
    return found
