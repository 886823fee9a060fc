"""Crash-safe training checkpoints on top of `accelerator.save_state`.

A checkpoint is written into `checkpoints/.tmp-step-N`, flushed, renamed to `checkpoints/step-N`, and only then
named in the `checkpoints/latest` pointer (itself replaced atomically). A process killed at any moment therefore
leaves either the previous pointer and checkpoint, or the new ones: never a half-written "latest".
"""

import logging
import os
import shutil
from pathlib import Path

from accelerate import Accelerator

logger = logging.getLogger(__name__)

LATEST_POINTER = "latest"
_TMP_PREFIX = ".tmp-"
_STEP_PREFIX = "step-"


class TrainState:
    """Loop state that `save_state` does not know about: counters, the mask RNG and the data position."""

    def __init__(self) -> None:
        self.step = 0
        self.images_seen = 0
        self.skipped_samples = 0
        self.skipped_nan_steps = 0
        self.mask_rng_state: object = None
        self.dataloader_state: dict | None = None

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
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        _fsync_tree(tmp)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        _write_atomically(root / LATEST_POINTER, final.name)
        for old in sorted(root.glob(f"{_STEP_PREFIX}*"))[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
        logger.info("Saved checkpoint %s", final)
    accelerator.wait_for_everyone()
    return final


def latest_checkpoint(root: str | Path) -> Path | None:
    """The last completely written checkpoint under `root`, or None. Leftover temporary folders are ignored."""
    root = Path(root)
    pointer = root / LATEST_POINTER
    if not pointer.exists():
        return None
    checkpoint = root / pointer.read_text(encoding="utf-8").strip()
    if not checkpoint.is_dir():
        raise FileNotFoundError(f"{pointer} names {checkpoint.name}, which does not exist")
    return checkpoint
