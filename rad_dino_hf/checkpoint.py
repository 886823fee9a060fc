"""Crash-safe training checkpoints on top of `accelerator.save_state`.

A checkpoint is written into `checkpoints/.tmp-step-N`, flushed, renamed to `checkpoints/step-N`, and only then
named in the `checkpoints/latest` pointer (itself replaced atomically). A process killed at any moment therefore
leaves either the previous pointer and checkpoint, or the new ones: never a half-written "latest".

Each checkpoint holds a `manifest.json`: every file's size and SHA-256 at save. `resumable_checkpoint` verifies it
and falls back, with a warning, from a checkpoint damaged since (a disk fault, a partial copy) to the newest one
that verifies. A failed write (e.g. a full disk) leaves the previous checkpoint and pointer as they were and stops
with a `CheckpointError`.
"""

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

from accelerate import Accelerator
from accelerate.utils import broadcast_object_list

from rad_dino_hf.errors import UserError

logger = logging.getLogger(__name__)

LATEST_POINTER = "latest"
_TMP_PREFIX = ".tmp-"
_STEP_PREFIX = "step-"
MANIFEST = "manifest.json"
_HASH_CHUNK = 1 << 20


class CheckpointError(UserError):
    """A checkpoint could not be written, or none could be read back intact."""


class TrainState:
    """Loop state that `save_state` does not know about: counters, the mask RNG and the data position.

    `save_state` writes the main process's copy alone, so what differs between processes (their data position,
    mask RNG and counters) is gathered into `ranks` (one dict per process, by rank) before each save, and every
    process takes its own entry back on resume (`ranks[process_index]`). `world_size` is the number of processes
    that wrote it; `data_seed` seeds the data stream (the recipe's seed until a resume on another number of
    processes restarts the stream)."""

    def __init__(self) -> None:
        self.step = 0
        self.images_seen = 0  # this process's
        self.skipped_samples = 0  # this process's
        self.skipped_nan_steps = 0
        # The collapse monitor's patience counts iterations in a row, across a resume.
        self.low_information_iterations = {"dino": 0, "ibot": 0}
        self.collapse_warned = False
        self.world_size = 1
        self.data_seed: int | None = None
        self.ranks: list[dict] = []  # per process: images_seen, skipped_samples, dataloader_state, mask_rng_state

    def state_dict(self) -> dict:
        return dict(vars(self))

    def load_state_dict(self, state: dict) -> None:
        unknown = set(state) - set(vars(self))
        if unknown:
            raise ValueError(f"Checkpoint train state has unknown fields {sorted(unknown)}")
        vars(self).update(state)


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(folder: Path, world_size: int = 1) -> None:
    """Record every file under `folder` (relative path -> size in bytes and SHA-256) and the number of processes
    that wrote them in `folder/manifest.json`."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)
    entries = {p.relative_to(folder).as_posix(): {"size": p.stat().st_size, "sha256": _sha256(p)} for p in files}
    _write_atomically(folder / MANIFEST, json.dumps({"world_size": world_size, "files": entries}, indent=1))


def checkpoint_world_size(folder: Path) -> int:
    """The number of processes that wrote the checkpoint at `folder` (from its manifest)."""
    return int(json.loads((folder / MANIFEST).read_text(encoding="utf-8")).get("world_size", 1))


def verify_checkpoint(folder: Path) -> str | None:
    """None if every file in `folder`'s manifest is there with its recorded size and SHA-256, else what is wrong."""
    try:
        entries = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        return f"no readable {MANIFEST} ({error})"
    for name, expected in entries.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != expected["size"]:
            return f"{name} has {path.stat().st_size} bytes, {expected['size']} when saved"
        if _sha256(path) != expected["sha256"]:
            return f"{name} differs from the saved file (SHA-256)"
    return None


def save_checkpoint(accelerator: Accelerator, root: str | Path, step: int, keep: int = 2) -> Path:
    """Save the full training state as `root/step-{step}` atomically; keep the newest `keep` checkpoints."""
    root = Path(root)
    final = root / f"{_STEP_PREFIX}{step:08d}"
    tmp = root / f"{_TMP_PREFIX}{_STEP_PREFIX}{step:08d}"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        for leftover in root.glob(f"{_TMP_PREFIX}*"):  # from a run killed while saving
            shutil.rmtree(leftover, ignore_errors=True)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(tmp))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            write_manifest(tmp, accelerator.num_processes)
            _fsync_tree(tmp)
    except OSError as error:  # e.g. ENOSPC: drop the partial copy, keep the previous checkpoint and pointer
        shutil.rmtree(tmp, ignore_errors=True)
        previous = _pointer_target(root)
        kept = f"the previous checkpoint {root / previous} is intact" if previous else "no earlier checkpoint exists"
        raise CheckpointError(
            f"Could not write checkpoint {final.name} under {root}: {error}; {kept}. "
            "Free disk space (or lower train.keep_checkpoints) and run again to resume."
        ) from error
    if accelerator.is_main_process:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        _write_atomically(root / LATEST_POINTER, final.name)
        for old in sorted(root.glob(f"{_STEP_PREFIX}*"))[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
        logger.info("Saved checkpoint %s", final)
    accelerator.wait_for_everyone()
    return final


def _pointer_target(root: Path) -> str | None:
    """The checkpoint folder name in `root/latest`, or None when there is no pointer."""
    pointer = root / LATEST_POINTER
    return pointer.read_text(encoding="utf-8").strip() if pointer.exists() else None


def latest_checkpoint(root: str | Path) -> Path | None:
    """The last completely written checkpoint under `root`, or None. Leftover temporary folders are ignored."""
    root = Path(root)
    name = _pointer_target(root)
    if name is None:
        return None
    checkpoint = root / name
    if not checkpoint.is_dir():
        raise FileNotFoundError(f"{root / LATEST_POINTER} names {name}, which does not exist")
    return checkpoint


def resumable_checkpoint(root: str | Path, accelerator: Accelerator | None = None) -> Path | None:
    """The newest checkpoint under `root` whose manifest verifies, or None if there is none to resume from.

    Starts from the `latest` pointer's checkpoint and goes back through older ones, warning about each that fails
    (named, with what is wrong); raises `CheckpointError` when checkpoints exist and none verifies. With an
    `accelerator`, the main process verifies and every process gets its choice.
    """
    if accelerator is not None and accelerator.num_processes > 1:
        choice = [_resumable_checkpoint(Path(root)) if accelerator.is_main_process else None]
        broadcast_object_list(choice)
        return choice[0]
    return _resumable_checkpoint(Path(root))


def _resumable_checkpoint(root: Path) -> Path | None:
    candidates = sorted(root.glob(f"{_STEP_PREFIX}*"), reverse=True)
    latest = _pointer_target(root)
    if latest is not None:  # nothing newer than the pointer: a newer folder would be one the pointer never named
        candidates = [c for c in candidates if c.name <= latest]
    if not candidates:
        return None
    for checkpoint in candidates:
        problem = verify_checkpoint(checkpoint)
        if problem is None:
            return checkpoint
        logger.warning("Checkpoint %s is damaged (%s); trying an older one", checkpoint, problem)
    raise CheckpointError(
        f"No checkpoint under {root} is intact ({', '.join(c.name for c in candidates)} all fail verification; "
        "see the warnings). Restore one, pass --resume with a good folder, or --resume never to start over."
    )
