"""Content fingerprints: of a model's weights and of a list of files."""

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import torch


def parameter_digest(module: torch.nn.Module) -> str:
    """SHA-256 of all parameters' bytes, in order: equal digests mean bitwise-equal weights."""
    digest = hashlib.sha256()
    for parameter in module.parameters():
        tensor = parameter.detach()
        if hasattr(tensor, "full_tensor"):  # an FSDP2 shard: gather it (collective, every rank calls this)
            tensor = tensor.full_tensor()
        digest.update(tensor.float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def files_digest(files: Sequence[str | os.PathLike]) -> str:
    """SHA-256 over each file's resolved path, size and modification time (cheap; changes when a file does)."""
    digest = hashlib.sha256()
    for path in files:
        stat = Path(path).stat()
        digest.update(f"{Path(path).resolve()}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()
