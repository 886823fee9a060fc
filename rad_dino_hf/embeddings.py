"""Embeddings datasets: a frozen encoder's features of many images, written as Parquet shards as they fill.

An embeddings dataset is a folder of `shard-NNNNN.parquet` files (`datasets.load_dataset("parquet",
data_files=...)` reads them) and `embeddings.json`, its metadata: the model (name, config, weights digest), the
processor's settings, the dtype, what patch maps are stored, the shard size and the input. One row per readable
image, in input order (`index`):

- `index` (int64, the input's row number), `id` (the path relative to the input folder, the table's image value, or
  the Hub row number), `path` (the file read; null for embedded images), then the input table's other columns;
- `cls` `(D,)` float32 CLS token and `mean_patch` `(D,)` float32 mean of the patch tokens;
- optionally `patch` `(D * h * w,)`, the patch-token map flattened channel-first (`embeddings.json` has its shape),
  in float16 (`--save-patches`) or float32 (the probes' cache), possibly average-pooled to a `grid x grid` map.

Shard `k` holds input rows `[k * shard_size, (k + 1) * shard_size)` minus the unreadable ones, which are listed in
`errors.jsonl` with their error. A shard is written to a temporary name and renamed, so a shard is complete when its
file exists: a rerun skips complete shards and a killed run loses at most the shards in progress. Under several
processes shard `k` belongs to process `k mod world_size`; every process writes its own shards and holds at most
one shard in memory, so the dataset is the one a single process writes (up to float rounding of other thread counts).

Reading, DICOM conversion and preprocessing run in DataLoader workers: each worker takes every `num_workers`-th
batch of the plan and the loader returns batches in plan order. A batch never spans two shards, so a resumed run
encodes exactly the batches of a straight one.

SIGTERM, SIGUSR1 or SIGINT, to the process or its whole group (the workers ignore them), stop the run when the next
batch arrives: complete shards are written and kept, the shard in progress is dropped, and the process exits with 143
(130 for SIGINT); a rerun skips the complete shards. A signal during the last batch lets the run finish.
"""

import dataclasses
import hashlib
import json
import logging
import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from datasets import Features, Value
from datasets import Image as ImageFeature
from datasets import load_dataset
from tqdm.auto import tqdm

from image_processing_rad_dino import RadDinoImageProcessor, UnreadableImageError
from modeling_rad_dino import RadDinoModel
from rad_dino_hf.pretraining_data import IMAGE_SUFFIXES, image_files
from rad_dino_hf.errors import UserError
from rad_dino_hf.preemption import Stopped, StopRequest, quiet_worker_init, workers_shut_down
from rad_dino_hf.fingerprint import parameter_digest
from rad_dino_hf.tables import BUILDERS, load_table

logger = logging.getLogger(__name__)

METADATA_FILE = "embeddings.json"
ERRORS_FILE = "errors.jsonl"
SHARD_GLOB = "shard-*.parquet"
SCHEMA_KEY = b"rad_dino_embeddings"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
PATCH_DTYPES = {"fp16": pa.float16(), "fp32": pa.float32()}
# Rows read from a table at a time (datasets' `.iter`, which, unlike iterating the dataset, does not split a
# streaming dataset between DataLoader workers: each worker walks the whole input and reads its own batches).
_TABLE_CHUNK = 64


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.parquet"


@dataclasses.dataclass
class Record:
    """One input image: its row number, id, what the processor reads (a path or encoded bytes), the file path
    (None for embedded images) and the table's other values."""

    index: int
    id: str
    image: str | bytes | None
    path: str | None
    metadata: dict


@dataclasses.dataclass
class InputSource:
    """Images to encode: a list of files or a table (`datasets.Dataset` or streaming `IterableDataset`) with an
    image column of paths or images. `metadata_features` are the table's other columns, copied into every row."""

    description: str
    files: list[Path] | None = None
    root: Path | None = None
    table: object = None
    image_column: str | None = None
    metadata_features: Features = dataclasses.field(default_factory=Features)

    def size(self) -> int | None:
        """Rows in the input; None for a stream."""
        if self.files is not None:
            return len(self.files)
        return len(self.table) if hasattr(self.table, "__len__") else None

    def records(self) -> Iterator[Record]:
        """Every input row, in order, without reading any image."""
        if self.files is not None:
            for index, path in enumerate(self.files):
                name = path.relative_to(self.root).as_posix() if self.root else str(path)
                try:
                    stat = path.stat()
                    facts = {"file_size": stat.st_size, "file_mtime_ns": stat.st_mtime_ns}
                except OSError:  # reported as unreadable when the worker tries to read it
                    facts = {"file_size": None, "file_mtime_ns": None}
                yield Record(index, name, str(path), str(path.resolve()), facts)
            return
        index = 0
        for chunk in self.table.iter(batch_size=_TABLE_CHUNK):
            for position in range(len(chunk[self.image_column])):
                value = chunk[self.image_column][position]
                metadata = {name: chunk[name][position] for name in self.metadata_features}
                yield self._record(index, value, metadata)
                index += 1

    def _record(self, index: int, value, metadata: dict) -> Record:
        if isinstance(value, dict):  # an Image feature left encoded: {"bytes", "path"}
            if value.get("bytes") is not None:
                return Record(index, str(index), value["bytes"], None, metadata)
            value = value.get("path")
        if not isinstance(value, str) or not value:
            return Record(index, str(index), None, None, metadata)
        path = Path(value) if self.root is None or Path(value).is_absolute() else self.root / value
        return Record(index, value, str(path), str(path), metadata)


FILE_FEATURES = Features({"file_size": Value("int64"), "file_mtime_ns": Value("int64")})


def list_images(folder: str | Path) -> list[Path]:
    """Image and DICOM files under `folder`, sorted, recursively."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"Image folder not found: {folder}")
    files = sorted(image_files(folder))
    if not files:
        raise UserError(f"No images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {folder}")
    return files


def files_source(files: Sequence[Path], root: Path | None = None) -> InputSource:
    """Image files (ids relative to `root`, or the paths themselves), with each file's size and modification time
    (what the probes' cache matches files by); `path` is the resolved path."""
    description = str(root) if root else f"{len(files)} files"
    return InputSource(description, files=[Path(path) for path in files], root=root, metadata_features=FILE_FEATURES)


def open_input(
    source: str,
    image_column: str = "file",
    split: str = "train",
    streaming: bool = False,
    image_root: str | None = None,
) -> InputSource:
    """What `source` names: a folder of images/DICOM (recursive), a table (CSV, parquet, JSON lines, or a folder
    with a metadata.csv; image paths relative to it or `image_root`) or a Hub dataset id (`split`, read as a stream
    with `streaming`, as is a local table file); a table's image column holds paths or images."""
    path = Path(source)
    if path.is_dir() and not (path / "metadata.csv").is_file():
        return files_source(list_images(path), path)
    if streaming and path.is_file() and path.suffix.lower() in BUILDERS:
        table = load_dataset(BUILDERS[path.suffix.lower()], data_files=str(path), split="train", streaming=True)
        root = path.parent
    elif streaming and not path.exists():
        table, root = load_dataset(source, split=split, streaming=True), None
    else:
        table, root = load_table(source, split)
    if table.features is None:  # some streaming builders only know their columns once a row is read
        table = table._resolve_features()
    features = table.features
    if image_column not in features:
        raise ValueError(f"{source} lacks column {image_column!r} (columns: {list(features)})")
    if isinstance(features[image_column], ImageFeature):  # keep the bytes: our reader decodes DICOM and 16-bit
        table = table.cast_column(image_column, ImageFeature(decode=False))
    metadata = Features(
        {name: feature for name, feature in features.items() if name != image_column and _is_scalar(feature)}
    )
    if image_root:
        root = Path(image_root)
    return InputSource(source, root=root, table=table, image_column=image_column, metadata_features=metadata)


def _is_scalar(feature) -> bool:
    """Metadata columns worth copying into every row: values and class labels, not images or nested data."""
    return hasattr(feature, "dtype") and not isinstance(feature, ImageFeature) and feature.dtype != "dict"


@dataclasses.dataclass
class EmbeddingSettings:
    """How to encode: `batch_size` images per forward, `shard_size` rows per shard, `num_workers` DataLoader
    workers, `dtype` of the forward (fp32 or bf16), patch maps stored as `patches` (None, fp16 or fp32) pooled to
    `patch_grid` x `patch_grid` (None: full), `compile` the model, stop after writing `max_shards` shards."""

    batch_size: int = 4
    shard_size: int = 1024
    num_workers: int = 0
    dtype: str = "fp32"
    patches: str | None = None
    patch_grid: int | None = None
    compile: bool = False
    max_shards: int | None = None
    progress: bool = True


def dataset_metadata(
    model: RadDinoModel, processor: RadDinoImageProcessor, name: str, settings: EmbeddingSettings, source: InputSource
) -> dict:
    """`embeddings.json`: what produced the vectors, and a fingerprint of everything that changes them or the
    shard layout (a rerun resumes only into a dataset with the same fingerprint)."""
    grid = (
        processor.crop_size["height"] // model.config.patch_size,
        processor.crop_size["width"] // model.config.patch_size,
    )
    if settings.patch_grid:
        grid = (settings.patch_grid, settings.patch_grid)
    metadata = {
        "model": name,
        "model_config": model.config.to_dict(),
        "weights_sha256": parameter_digest(model),
        "processor": processor.to_dict(),
        "dtype": settings.dtype,
        "hidden_size": model.config.hidden_size,
        "patches": settings.patches,
        "patch_shape": [model.config.hidden_size, *grid] if settings.patches else None,
        "shard_size": settings.shard_size,
        "input": source.description,
    }
    text = json.dumps(metadata, sort_keys=True, default=str)
    return {**metadata, "fingerprint": hashlib.sha256(text.encode()).hexdigest()[:32]}


def arrow_schema(metadata: dict, source: InputSource) -> pa.Schema:
    """The shards' schema, with `metadata` under `SCHEMA_KEY`."""
    fields = [pa.field("index", pa.int64()), pa.field("id", pa.string()), pa.field("path", pa.string())]
    fields += list(source.metadata_features.arrow_schema)
    size = metadata["hidden_size"]
    fields += [pa.field("cls", pa.list_(pa.float32(), size)), pa.field("mean_patch", pa.list_(pa.float32(), size))]
    if metadata["patches"]:
        fields.append(
            pa.field("patch", pa.list_(PATCH_DTYPES[metadata["patches"]], math.prod(metadata["patch_shape"])))
        )
    return pa.schema(fields, metadata={SCHEMA_KEY: json.dumps(metadata, default=str)})


class _Batches(torch.utils.data.IterableDataset):
    """This process's pending batches, read and preprocessed; worker `w` of `W` loads batches `w, w + W, ...` of
    the plan, so the DataLoader, which takes one batch from each worker in turn, returns them in plan order."""

    def __init__(self, source, processor, settings, rank: int, world_size: int, done: set[int]):
        self.source, self.processor, self.settings = source, processor, settings
        self.rank, self.world_size, self.done = rank, world_size, done

    def plan(self) -> Iterator[list[Record]]:
        size, batch = self.settings.shard_size, []
        for record in self.source.records():
            shard = record.index // size
            if shard % self.world_size != self.rank or shard in self.done:
                continue
            if batch and (batch[0].index // size != shard or len(batch) == self.settings.batch_size):
                yield batch
                batch = []
            batch.append(record)
        if batch:
            yield batch

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        for number, batch in enumerate(self.plan()):
            if number % workers == worker:
                yield self.load(batch)

    def load(self, batch: list[Record]) -> dict:
        pixels, rows, errors = [], [], []
        for record in batch:
            try:
                if record.image is None:
                    raise UnreadableImageError(f"row {record.index}: no image")
                pixels.append(self.processor(record.image, return_tensors="pt")["pixel_values"][0])
                rows.append(record)
            except (UnreadableImageError, OSError, ValueError) as error:
                errors.append({"index": record.index, "id": record.id, "path": record.path, "error": str(error)})
        return {
            "shard": batch[0].index // self.settings.shard_size,
            "rows": rows,
            "pixels": torch.stack(pixels) if pixels else None,
            "errors": errors,
            "count": len(batch),
        }


def _as_is(batch: dict) -> dict:
    """The loader's collate function: a batch is already assembled by `_Batches.load`."""
    return batch


@torch.inference_mode()
def encode_pixels(model, pixels: torch.Tensor, dtype: torch.dtype, patch_grid: int | None = None) -> dict:
    """`pixels` `(B, 3, H, W)` -> `cls` `(B, D)`, `mean_patch` `(B, D)` float32 and `patch` `(B, D, h, w)` float32
    (average-pooled to `patch_grid` x `patch_grid` if given). fp32 runs the model as is (RadDinoModel's outputs);
    bf16 under autocast."""
    with torch.autocast(pixels.device.type, dtype=dtype, enabled=dtype != torch.float32):
        output = model(pixels)
    patch = output.patch_embeddings.float()
    return {
        "cls": output.cls_embeddings.float(),
        "mean_patch": patch.mean(dim=(2, 3)),
        "patch": F.adaptive_avg_pool2d(patch, patch_grid) if patch_grid else patch,
    }


class _ShardWriter:
    """Rows of one shard, written with its errors to a temporary name and renamed when the shard is done."""

    def __init__(self, output: Path, schema: pa.Schema, index: int):
        self.output, self.schema, self.index = output, schema, index
        self.columns: dict[str, list] = {name: [] for name in schema.names}
        self.errors: list[dict] = []

    def add(self, rows: list[Record], vectors: dict, errors: list[dict]) -> None:
        for position, record in enumerate(rows):
            self.columns["index"].append(record.index)
            self.columns["id"].append(record.id)
            self.columns["path"].append(record.path)
            for name, value in record.metadata.items():
                self.columns[name].append(value)
        for name in ("cls", "mean_patch", "patch"):
            if name in self.columns and rows:
                array = vectors[name].flatten(1).cpu().numpy()
                dtype = np.float16 if self.schema.field(name).type.value_type == pa.float16() else np.float32
                self.columns[name].extend(array.astype(dtype))
        self.errors.extend(errors)

    def write(self) -> Path:
        arrays = []
        for field in self.schema:
            values = self.columns[field.name]
            if isinstance(field.type, pa.FixedSizeListType):
                size = field.type.list_size
                flat = np.concatenate(values) if values else np.zeros(0, dtype=field.type.value_type.to_pandas_dtype())
                arrays.append(pa.FixedSizeListArray.from_arrays(pa.array(flat, type=field.type.value_type), size))
            else:
                arrays.append(pa.array(values, type=field.type))
        path = self.output / shard_name(self.index)
        errors_path = path.with_suffix(".errors.jsonl")
        errors_path.write_text("".join(json.dumps(error) + "\n" for error in self.errors))
        temporary = path.with_suffix(".parquet.tmp")
        pq.write_table(pa.Table.from_arrays(arrays, schema=self.schema), temporary)
        temporary.replace(path)  # the shard exists only once complete
        return path


def _check_metadata(output: Path, metadata: dict) -> None:
    path = output / METADATA_FILE
    if path.is_file():
        existing = json.loads(path.read_text())
        if existing.get("fingerprint") != metadata["fingerprint"]:
            raise ValueError(
                f"{output} holds an embeddings dataset made with other settings (model, processor, dtype, patches, "
                f"shard size or input); use another --output or delete it"
            )


def _write_json(path: Path, value: dict) -> None:
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(value, indent=2, default=str))
    temporary.replace(path)


def write_embeddings(
    model: RadDinoModel,
    processor: RadDinoImageProcessor,
    source: InputSource,
    output: str | Path,
    settings: EmbeddingSettings,
    name: str = "",
    accelerator: Accelerator | None = None,
) -> dict:
    """Encode `source` into the embeddings dataset at `output` (module docstring), resuming one left there.

    Returns the dataset's summary (also in `embeddings.json`): rows, unreadable images, shards written by this
    run and skipped as complete, and whether the dataset is complete. Every process of `accelerator` calls this.
    """
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    rank, world_size = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
    metadata = dataset_metadata(model, processor, name, settings, source)
    _check_metadata(output, metadata)
    if rank == 0:
        _write_json(output / METADATA_FILE, {**metadata, "complete": False})
    schema = arrow_schema(metadata, source)
    done = {int(path.stem.split("-")[1]) for path in output.glob(SHARD_GLOB)}
    mine = {shard for shard in done if shard % world_size == rank}
    if mine:
        logger.info("Skipping %d complete shards in %s", len(mine), output)
    device = accelerator.device if accelerator else next(model.parameters()).device
    model = model.to(device).eval()
    forward = torch.compile(model) if settings.compile else model
    batches = _Batches(source, processor, settings, rank, world_size, done)
    loader = torch.utils.data.DataLoader(
        batches, batch_size=None, num_workers=settings.num_workers, collate_fn=_as_is, worker_init_fn=quiet_worker_init
    )
    total = source.size()
    pending_rows = None
    if total is not None:
        shards = range(math.ceil(total / settings.shard_size))
        pending_rows = sum(
            min(settings.shard_size, total - s * settings.shard_size)
            for s in shards
            if s % world_size == rank and s not in done
        )
    writer, written, stopped = None, 0, False
    stop = StopRequest()
    progress = tqdm(total=pending_rows, desc="Encoding", unit="img", disable=not settings.progress)
    with progress as bar, stop, workers_shut_down(iter(loader)) as loaded:
        for batch in loaded:
            if writer is not None and writer.index != batch["shard"]:
                writer.write()
                written += 1
                writer = None
                if settings.max_shards is not None and written >= settings.max_shards:
                    stopped = True
                    break
            if stop.requested:  # the shard in progress is dropped
                _stop_on_signal(stop.signal_name, output, written, len(mine))
            if writer is None:
                writer = _ShardWriter(output, schema, batch["shard"])
            vectors = {}
            if batch["pixels"] is not None:
                vectors = encode_pixels(
                    forward, batch["pixels"].to(device), DTYPES[settings.dtype], settings.patch_grid
                )
            writer.add(batch["rows"], vectors, batch["errors"])
            bar.update(batch["count"])
        if writer is not None and not stopped:
            writer.write()
            written += 1
    if accelerator is not None:
        accelerator.wait_for_everyone()
    summary = summarise(output, total, settings.shard_size)
    summary.update(written_shards=written, skipped_shards=len(mine), stopped_early=stopped)
    if rank == 0:
        _write_json(output / METADATA_FILE, {**metadata, **summary})
        with open(output / ERRORS_FILE, "w", encoding="utf-8") as handle:
            for errors in sorted(output.glob("shard-*.errors.jsonl")):
                handle.write(errors.read_text())
    if summary["errors"]:
        logger.warning("%d unreadable images skipped; listed in %s", summary["errors"], output / ERRORS_FILE)
    return summary


def _stop_on_signal(signal_name: str, output: Path, written: int, skipped: int) -> None:
    """Stop on a signal, keeping the complete shards (the one in progress is dropped; a rerun encodes it)."""
    logger.warning(
        "%s received: stopped with %d complete shard(s) kept in %s (%d written by this run); the shard in progress "
        "is dropped. Run the same command again to encode the rest.",
        signal_name,
        written + skipped,
        output,
        written,
    )
    raise Stopped(signal_name, written, None)


def summarise(output: Path, total: int | None, shard_size: int) -> dict:
    """Rows and unreadable images in the complete shards at `output`; complete when every shard of a sized input
    exists (a stream's length is unknown: None)."""
    shards = sorted(output.glob(SHARD_GLOB))
    rows = sum(pq.read_metadata(path).num_rows for path in shards)
    errors = sum(len(path.with_suffix(".errors.jsonl").read_text().splitlines()) for path in shards)
    complete = None if total is None else len(shards) == math.ceil(total / shard_size)
    return {"rows": rows, "errors": errors, "shards": len(shards), "complete": complete}


def read_metadata(folder: str | Path) -> dict:
    return json.loads((Path(folder) / METADATA_FILE).read_text())


def read_embeddings(folder: str | Path, columns: Sequence[str] | None = None) -> pa.Table:
    """The dataset's complete shards as one Arrow table, in input order."""
    shards = sorted(Path(folder).glob(SHARD_GLOB))
    if not shards:
        raise FileNotFoundError(f"No embeddings shards ({SHARD_GLOB}) in {folder}")
    return pa.concat_tables([pq.read_table(path, columns=columns) for path in shards])


def vectors(table: pa.Table, column: str) -> np.ndarray:
    """A fixed-size list column as an `(N, size)` array (float32 or float16, as stored)."""
    array = table.column(column).combine_chunks()
    return array.flatten().to_numpy(zero_copy_only=False).reshape(len(array), array.type.list_size)


def search_vectors(table: pa.Table, features: str) -> np.ndarray:
    """`(N, F)` float32 vectors to search by: the CLS token (`features="cls"`) or CLS ⊕ mean patch (`"cls_mean"`)."""
    parts = [vectors(table, "cls")] + ([vectors(table, "mean_patch")] if features == "cls_mean" else [])
    return np.concatenate(parts, axis=1).astype(np.float32)


@torch.no_grad()
def cosine_topk(queries: torch.Tensor, keys: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The `k` keys `(N, F)` of highest cosine similarity to each query `(M, F)`: `(M, min(k, N))` similarities,
    best first, and the keys' indices."""
    scores = F.normalize(queries.float(), dim=1) @ F.normalize(keys.float(), dim=1).T
    return scores.topk(min(k, keys.shape[0]), dim=1)


@torch.no_grad()
def nearest(
    folder: str | Path, queries: torch.Tensor, k: int, features: str = "cls"
) -> tuple[torch.Tensor, list[list[dict]]]:
    """Exact cosine search of `queries` `(M, F)` over the dataset at `folder`, one shard in memory at a time: each
    shard's top `k` are merged with the best so far.

    Returns the `(M, k')` cosine similarities, best first (`k' = min(k, rows)`), and for each query the matching
    rows' `index`, `id` and `path`."""
    best_scores = torch.full((len(queries), 0), -2.0)
    best_rows: list[list[dict]] = [[] for _ in queries]
    for shard in sorted(Path(folder).glob(SHARD_GLOB)):
        table = pq.read_table(shard, columns=["index", "id", "path", "cls", "mean_patch"])
        if not table.num_rows:
            continue
        scores, found = cosine_topk(queries, torch.from_numpy(search_vectors(table, features)), k)
        rows = table.select(["index", "id", "path"]).to_pylist()
        merged = torch.cat([best_scores, scores], dim=1)
        candidates = [previous + [rows[i] for i in found[q].tolist()] for q, previous in enumerate(best_rows)]
        best_scores, order = merged.topk(min(k, merged.shape[1]), dim=1)
        best_rows = [[candidates[q][i] for i in order[q].tolist()] for q in range(len(queries))]
    return best_scores, best_rows


@torch.no_grad()
def near_duplicates(
    folder: str | Path, threshold: float, features: str = "cls", chunk: int = 4096
) -> list[tuple[float, dict, dict]]:
    """Pairs of rows whose cosine similarity is at least `threshold`, most similar first, as `(score, row, row)`
    (rows: `index`, `id`, `path`). All vectors are held in memory; similarities `chunk` rows at a time."""
    table = read_embeddings(folder, ["index", "id", "path", "cls", "mean_patch"])
    matrix = F.normalize(torch.from_numpy(search_vectors(table, features)), dim=1)
    rows = table.select(["index", "id", "path"]).to_pylist()
    pairs = []
    for start in range(0, len(matrix), chunk):
        scores = matrix[start : start + chunk] @ matrix.T
        first, second = (scores >= threshold).nonzero(as_tuple=True)
        for a, b in zip((first + start).tolist(), second.tolist()):
            if a < b:  # each pair once, no self-pairs
                pairs.append((float(scores[a - start, b]), rows[a], rows[b]))
    return sorted(pairs, key=lambda pair: -pair[0])
