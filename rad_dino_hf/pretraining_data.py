"""Streaming radiograph sources for pretraining, on HuggingFace Datasets.

A source is a Hub dataset id, a local folder of images and/or DICOM files, parquet files, or WebDataset tar shards.
Sources are repeated forever and mixed with weights (`interleave_datasets`), as RAD-DINO mixed five public CXR sets,
then split across ranks (`split_dataset_by_node`); HF shards split further across dataloader workers. Every stage
keeps `state_dict()`, so a run resumes at the exact sample it stopped at.

Samples that cannot be decoded are not fatal: `decode_or_none` returns None, the multi-crop step marks the sample
`ok=False`, and the collate function drops it and counts it. A source that yields nothing readable is fatal:
`UnreadableSourceGuard` stops the run once a source's last `train.max_consecutive_unreadable` samples (or, for a
folder with fewer files, as many samples as it has files) were all unreadable.

Source spec on the command line: `[kind:]location[@weight]`, kind one of hub, folder, parquet, webdataset
(guessed when omitted), e.g. `data/sample/images@2` or `hub:someone/cxr-dataset@0.5`.
"""

import functools
import glob
import hashlib
import io
import itertools
import logging
import math
import random
import re
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from datasets import Features, IterableDataset, Value, interleave_datasets, load_dataset
from datasets import Image as ImageFeature
from datasets.distributed import split_dataset_by_node

from image_processing_rad_dino import UnreadableImageError, read_image, to_uint8
from rad_dino_hf.errors import UserError

logger = logging.getLogger(__name__)

SOURCE_KINDS = ("hub", "folder", "parquet", "webdataset")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".dcm", ".dicom")
# Column names that hold the image in Hub/parquet tables, and the per-extension columns of WebDataset samples.
IMAGE_COLUMN_CANDIDATES = ("image", "img", "pixel_values", "dicom") + tuple(s.lstrip(".") for s in IMAGE_SUFFIXES)
# What every source yields, so that sources of different kinds can be interleaved: the encoded image (file bytes
# or a path, never decoded here) and a key naming the sample in logs.
STREAM_FEATURES = Features({"image": {"bytes": Value("binary"), "path": Value("string")}, "key": Value("string")})
# Stream samples also carry the index of their source in the mix, so that unreadable samples are counted per source.
TAGGED_STREAM_FEATURES = Features({**STREAM_FEATURES, "source": Value("int32")})
# A location that names a Hub dataset (`name` or `owner/name`); anything else that does not exist is a missing path.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
# Tar members read from the first WebDataset shard to find how its samples name their image files.
_WEBDATASET_SCAN_MEMBERS = 256


@dataclass
class DataSource:
    """One pretraining source. `weight` is its relative sampling probability in the mix."""

    location: str
    kind: str = "auto"
    weight: float = 1.0
    split: str = "train"
    image_column: str | None = None

    def resolved_kind(self) -> str:
        """`kind`, or for "auto" what `location` is (looked at once: telling a folder apart walks its tree)."""
        return self._kind

    @functools.cached_property
    def folder_files(self) -> list[str]:
        """A folder source's image files (`folder_images`), listed once: the stream, the epoch count and the
        unreadable-sample guard all need them, and a large folder takes long to walk."""
        return folder_images(self.location)

    @functools.cached_property
    def _kind(self) -> str:
        if self.kind != "auto":
            if self.kind not in SOURCE_KINDS:
                raise UserError(f"Unknown source kind {self.kind!r}; choose from {', '.join(SOURCE_KINDS)}")
            return self.kind
        path = Path(self.location)
        if path.suffix == ".parquet" or (path.is_dir() and any(path.rglob("*.parquet"))):
            return "parquet"
        if path.suffix == ".tar" or "*.tar" in self.location or (path.is_dir() and any(path.glob("*.tar"))):
            return "webdataset"
        if path.is_dir():
            return "folder"
        if path.exists():
            raise UserError(f"Cannot tell what kind of source {self.location} is; prefix it with kind:")
        if not _HUB_ID.match(self.location):
            raise UserError(f"Data source {self.location}: no such folder or file")
        return "hub"


def parse_source(spec: str) -> DataSource:
    """Parse `[kind:]location[@weight]` into a `DataSource`."""
    kind, location, weight = "auto", spec, 1.0
    prefix, _, rest = spec.partition(":")
    if rest and prefix in SOURCE_KINDS:
        kind, location = prefix, rest
    if "@" in location:
        location, _, weight_text = location.rpartition("@")
        try:
            weight = float(weight_text)
        except ValueError as error:
            raise UserError(f"Bad weight in source {spec!r}: expected location@number") from error
    if not math.isfinite(weight) or weight <= 0:  # nan and inf would break the mixing probabilities
        raise UserError(f"Source weight must be positive: {spec!r}")
    return DataSource(location=location, kind=kind, weight=weight)


def image_files(folder: str | Path) -> Iterator[Path]:
    """The image and DICOM files (`IMAGE_SUFFIXES`, any case) under `folder`, recursively, in no set order."""
    return (path for path in Path(folder).rglob("*") if path.suffix.lower() in IMAGE_SUFFIXES)


def folder_images(location: str | Path) -> list[str]:
    """The image and DICOM files under a folder source, sorted as strings (the stream's shard order depends on
    it, so that order is kept); an empty folder is a `UserError`."""
    files = sorted(str(path) for path in image_files(location))
    if not files:
        raise UserError(f"Data source {location}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
    return files


def _folder_units(units: list[tuple[int, int]], shards: list[list[str]], seed: int):
    for epoch, shard_index in units:
        files = list(shards[shard_index])
        random.Random(sample_seed(seed, epoch, shard_index)).shuffle(files)
        for path in files:
            yield {"image": {"bytes": None, "path": path}, "key": path}


def _open_folder(
    source: DataSource, seed: int, files_per_shard: int, epochs: int, world_size: int = 1
) -> IterableDataset:
    """Files as `epochs` passes of (epoch, shard) units, each in a fresh seeded order.

    HF's shuffle buffer neither reshuffles between repeats nor resumes exactly; units do both: the stream state is
    a unit index plus a position inside it, and every epoch visits shards and files in a new, reproducible order.

    The files are cut into equal shards of at most `files_per_shard` files, their number rounded up to a multiple
    of `world_size` (when there are enough files): `split_dataset_by_node` then deals every epoch's shards out to
    the ranks, so within an epoch the ranks read disjoint files that together cover the folder.
    """
    files = source.folder_files
    n_shards = math.ceil(len(files) / files_per_shard)
    if world_size > 1 and len(files) >= world_size:
        n_shards = math.ceil(n_shards / world_size) * world_size
        if n_shards > len(files):  # no empty shards
            n_shards = len(files) // world_size * world_size
    shards = [files[len(files) * i // n_shards : len(files) * (i + 1) // n_shards] for i in range(n_shards)]
    units = []
    for epoch in range(epochs):
        order = list(range(len(shards)))
        random.Random(sample_seed(seed, epoch)).shuffle(order)
        units += [(epoch, shard_index) for shard_index in order]
    generator = functools.partial(_folder_units, shards=shards, seed=seed)
    return IterableDataset.from_generator(generator, features=STREAM_FEATURES, gen_kwargs={"units": units})


def _image_columns(dataset: IterableDataset, source: DataSource) -> list[str]:
    columns = list(dataset.features)
    if source.image_column:
        if columns and source.image_column not in columns:
            raise UserError(f"{source.location}: no column {source.image_column!r} (columns: {columns})")
        return [source.image_column]
    found = [c for c in columns if isinstance(dataset.features[c], ImageFeature)]
    # By name; WebDataset fields by their last extension too (`image.png`, `PNG`).
    found += [c for c in columns if c.rsplit(".", 1)[-1].lower() in IMAGE_COLUMN_CANDIDATES and c not in found]
    if not found:
        raise UserError(f"{source.location}: no image column among {columns}; pass image_column")
    return found


def _webdataset_field(member_name: str) -> str | None:
    """The field of a tar member as WebDataset (and HF's builder) names it: all after the first dot of the name."""
    match = re.match(r"^((?:.*/|)[^.]+)[.]([^/]*)$", member_name)
    return match.group(2) if match else None


def _webdataset_features(files: list[str], image_column: str | None) -> Features:
    """An explicit schema for HF's WebDataset builder: `__key__`, `__url__` and every image field as raw bytes.

    Left to itself the builder infers the schema from the first 5 samples of the first shard: it refuses shards
    whose samples mix extensions (`.png` and `.jpg`), and silently drops fields those 5 samples lack (a `.dcm`
    sample further on comes out with no image). With this schema, fields a sample lacks are None and other
    fields (`.json`, `.cls`, ...) are dropped. Image fields are the usual suffixes, `image_column`, and the image
    fields found among the first members of the first local shard (e.g. `image.png`, `PNG`).
    """
    fields = {suffix.lstrip(".") for suffix in IMAGE_SUFFIXES}
    if image_column:
        fields.add(image_column)
    local = [p for f in files for p in (sorted(glob.glob(f)) if glob.has_magic(f) else [f]) if Path(p).is_file()]
    if local:
        try:
            with tarfile.open(local[0]) as tar:
                for member in itertools.islice(tar, _WEBDATASET_SCAN_MEMBERS):
                    field = _webdataset_field(member.name) if member.isfile() else None
                    if field and Path(f"x.{field}").suffix.lower() in IMAGE_SUFFIXES:
                        fields.add(field)
        except (OSError, tarfile.TarError) as error:
            logger.warning("Cannot list %s to find its image fields: %s", local[0], error)
    binary = {field: Value("binary") for field in sorted(fields)}
    return Features({"__key__": Value("string"), "__url__": Value("string"), **binary})


def _as_image_value(value) -> dict | None:
    """A table cell as a `STREAM_FEATURES["image"]` value: `{"bytes", "path"}`, the file left encoded."""
    if value is None or isinstance(value, dict):
        return None if value is None else {"bytes": value.get("bytes"), "path": value.get("path")}
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"bytes": bytes(value), "path": None}
    if isinstance(value, str):
        return {"bytes": None, "path": value}
    if isinstance(value, (PIL.Image.Image, np.ndarray, list)):  # decoded pixels: re-encode losslessly as TIFF
        try:
            if isinstance(value, PIL.Image.Image):
                image = value
            else:
                array = np.asarray(value)
                if array.dtype == bool or (array.dtype.kind in "iu" and array.dtype != np.uint8):
                    array = array.astype(np.int32)  # TIFF mode I; read_image gives uint16 back where it fits
                elif array.dtype.kind == "f":
                    array = array.astype(np.float32)
                image = PIL.Image.fromarray(array)
            buffer = io.BytesIO()
            image.save(buffer, format="TIFF")
            return {"bytes": buffer.getvalue(), "path": None}
        except (TypeError, ValueError, OSError) as error:
            logger.warning("Cannot re-encode a decoded image of type %s: %s", type(value).__name__, error)
    return None


def _open_table(source: DataSource, kind: str) -> IterableDataset:
    if kind == "hub":
        try:
            dataset = load_dataset(source.location, split=source.split, streaming=True)
        except OSError as error:  # not found, offline (HF_HUB_OFFLINE) or unreachable
            raise UserError(
                f"Data source {source.location}: neither a local folder nor a Hub dataset that can be reached "
                f"({' '.join(str(error).split())}). Check the path, or the id and your connection."
            ) from error
    else:
        path = Path(source.location)
        pattern = "*.parquet" if kind == "parquet" else "*.tar"
        files = sorted(str(p) for p in path.rglob(pattern)) if path.is_dir() else [source.location]
        features = _webdataset_features(files, source.image_column) if kind == "webdataset" else None
        dataset = load_dataset(kind, data_files={"train": files}, split="train", streaming=True, features=features)
    if dataset.features is None:  # some builders (JSON, CSV) only know the columns once an example is read
        dataset = dataset._resolve_features()
    columns = _image_columns(dataset, source)
    for column in columns:  # keep encoded bytes: our reader decodes (16-bit, DICOM) and reports failures
        if isinstance(dataset.features[column], ImageFeature):
            dataset = dataset.cast_column(column, ImageFeature(decode=False))
    prefix = source.location

    def to_image_and_key(example: dict, index: int) -> dict:
        column = next((c for c in columns if example.get(c) is not None), None)
        value = _as_image_value(example[column]) if column else None
        if "__key__" in example:  # WebDataset: the member read, `shard.tar/key.ext`, unique across shards
            key = f"{example.get('__url__') or prefix}/{example['__key__']}" + (f".{column}" if column else "")
        else:
            key = (value or {}).get("path") or f"{prefix}#{index}"
        return {"image": value, "key": key}

    return dataset.map(
        to_image_and_key, with_indices=True, remove_columns=list(dataset.features), features=STREAM_FEATURES
    )


def open_source(
    source: DataSource, seed: int = 0, files_per_shard: int = 64, epochs: int = 1, world_size: int = 1
) -> IterableDataset:
    """A streaming dataset of `{"image": {"bytes", "path"}, "key": str}` (`STREAM_FEATURES`) for one source.

    Folders come as `epochs` reshuffled passes (their shard count a multiple of `world_size` where possible);
    tables (Hub, parquet, WebDataset) as one pass in stored order. The image stays encoded (`decode_or_none`).
    """
    kind = source.resolved_kind()
    if kind == "folder":
        return _open_folder(source, seed, files_per_shard, epochs, world_size)
    return _open_table(source, kind)


def build_stream(
    sources: list[DataSource],
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    files_per_shard: int = 64,
    folder_epochs: int = 1,
) -> IterableDataset:
    """Endless weighted mix of `sources`, this rank's part of it.

    `folder_epochs` reshuffled passes are laid out for folder sources (enough for the run; after them, and for
    table sources after one pass, the stream repeats in the same order). HF splits the mix by shards when its
    shard count (the smallest of its sources') is a multiple of `world_size`, and otherwise lets every rank read
    the whole mix and keep every `world_size`-th example. Folder shard counts are rounded up to a multiple of
    `world_size`, so that a folder alone is split by shards, each epoch dealt out to the ranks.
    """
    if not sources:
        raise ValueError("No data sources given")
    streams = [
        open_source(source, seed, files_per_shard, folder_epochs, world_size)
        .map(functools.partial(_tag_source, index=index), features=TAGGED_STREAM_FEATURES)
        .repeat(None)
        for index, source in enumerate(sources)
    ]
    if len(streams) == 1:
        stream = streams[0]
    else:
        total = sum(source.weight for source in sources)
        stream = interleave_datasets(streams, probabilities=[s.weight / total for s in sources], seed=seed)
    return split_dataset_by_node(stream, rank=rank, world_size=world_size) if world_size > 1 else stream


def _tag_source(example: dict, index: int) -> dict:
    return {"source": index}


def decode_or_none(value, key: str) -> np.ndarray | None:
    """Decode one stream value to a grey `(H, W)` uint8 radiograph, or None (logged) if it is unreadable.

    16-bit and DICOM inputs are min-max scaled to [0, 255] as RAD-DINO's preprocessing does; colour is averaged
    (8-bit colour stays on its 8-bit scale, like 8-bit grey, and is not stretched).
    """
    try:
        if isinstance(value, dict):
            value = value.get("bytes") or value.get("path")
        if isinstance(value, PIL.Image.Image):
            value = np.asarray(value)
        if value is None:
            raise UnreadableImageError(f"{key}: sample has no image")
        array = read_image(value, name=key)
    except (UnreadableImageError, OSError, ValueError) as error:
        logger.warning("Skipping unreadable sample %s: %s", key, error)
        return None
    if array.ndim == 3:
        grey = array.mean(axis=-1)
        array = np.rint(grey).astype(np.uint8) if array.dtype == np.uint8 else grey
    return array if array.dtype == np.uint8 else to_uint8(array)


def sample_seed(*parts) -> int:
    """A stable 63-bit seed from any printable parts (Python's `hash` is salted per process)."""
    digest = hashlib.blake2b("|".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class MultiCropMapper:
    """`IterableDataset.map` function: decode a sample and cut its crops with a per-sample seeded generator.

    The seed depends on (run seed, rank, dataloader worker, position in that worker's stream), so crops are the
    same whether a run goes straight through or resumes, and do not depend on where the data lives.
    """

    def __init__(self, augmentation: Callable, seed: int, rank: int = 0) -> None:
        self.augmentation = augmentation
        self.seed = seed
        self.rank = rank

    def __call__(self, example: dict, index: int) -> dict:
        worker = torch.utils.data.get_worker_info()
        worker_id = worker.id if worker is not None else 0
        image = decode_or_none(example["image"], example["key"])
        source = example.get("source", 0)
        if image is None:
            return {"ok": False, "key": example["key"], "source": source, "global_crops": None, "local_crops": None}
        generator = torch.Generator().manual_seed(sample_seed(self.seed, self.rank, worker_id, index))
        crops = self.augmentation(torch.from_numpy(image.copy()).unsqueeze(0), generator=generator)
        return {
            "ok": True,
            "key": example["key"],
            "source": source,
            "global_crops": torch.stack(crops["global_crops"]),
            "local_crops": torch.stack(crops["local_crops"]) if crops["local_crops"] else None,
        }


def collate_crops(samples: list[dict]) -> dict:
    """Stack good samples and count the skipped ones.

    Returns `global_crops` `(n_global, B, 3, G, G)`, `local_crops` `(n_local, B, 3, L, L)` or None,
    `n_skipped` int, `keys` of the good samples and `read`: (source index, key, readable) of every sample, in order.
    """
    good = [s for s in samples if s["ok"]]
    batch = {
        "n_skipped": len(samples) - len(good),
        "keys": [s["key"] for s in good],
        "read": [(s.get("source", 0), s["key"], s["ok"]) for s in samples],
    }
    if not good:
        return {**batch, "global_crops": None, "local_crops": None}
    batch["global_crops"] = torch.stack([s["global_crops"] for s in good], dim=1)
    has_local = good[0]["local_crops"] is not None
    batch["local_crops"] = torch.stack([s["local_crops"] for s in good], dim=1) if has_local else None
    return batch


class UnreadableSourceError(UserError):
    """A data source whose recent samples were all unreadable."""


class UnreadableSourceGuard:
    """Stops a run that would otherwise skip unreadable samples forever.

    Counts, per source, the unreadable samples since its last readable one (on this rank) and raises
    `UnreadableSourceError` naming the source when the count reaches its limit: `limit`, or for a folder with fewer
    image files, the number of files (a whole pass over it read nothing; `limit <= 0` means no limit but a folder's
    file count).
    """

    def __init__(self, sources: list[DataSource], limit: int) -> None:
        self.sources = sources
        self.limits = []
        for source in sources:
            size = len(source.folder_files) if source.resolved_kind() == "folder" else None
            bounds = [n for n in (limit if limit > 0 else None, size) if n is not None]
            self.limits.append(min(bounds) if bounds else math.inf)
        self.unreadable = [0] * len(sources)

    def update(self, read: list[tuple[int, str, bool]]) -> None:
        """Count a batch's `read` entries (collate_crops: source index, key, readable) in order."""
        for source, key, ok in read:
            self.unreadable[source] = 0 if ok else self.unreadable[source] + 1
            if self.unreadable[source] >= self.limits[source]:
                raise UnreadableSourceError(
                    f"Data source {self.sources[source].location}: the last {self.unreadable[source]} samples read "
                    f"from it (the latest {key}) were all unreadable; see the 'Skipping unreadable sample' "
                    "warnings for why. Fix or remove the source (train.max_consecutive_unreadable sets the limit)."
                )
