"""How Accelerate should treat the processes it was launched with."""

import dataclasses
import datetime
import logging
import os

import torch
from accelerate import Accelerator
from accelerate.utils import InitProcessGroupKwargs


@dataclasses.dataclass
class AcceleratorOptions:
    """What the entry point's `Accelerator` is built with (`make_accelerator`); tasks that train expose them as
    command-line arguments."""

    mixed_precision: str = "no"
    gradient_accumulation_steps: int = 1


def launched_without_accelerator() -> bool:
    """Several processes and no GPU: Accelerate builds a gloo group only when told to run on the CPU."""
    several = int(os.environ.get("WORLD_SIZE", "1")) > 1
    has_xpu = hasattr(torch, "xpu") and torch.xpu.is_available()
    return several and not (torch.cuda.is_available() or has_xpu)


def make_accelerator(collective_timeout_minutes: float | None = None, **options) -> Accelerator:
    """An `Accelerator` (options as its own) that runs on the CPU when launched there, where only the main process
    logs at INFO: the others only warn, so a multi-process run reads like a single one.

    `collective_timeout_minutes`: how long a collective waits for the other processes before it fails with an
    error (PyTorch's default otherwise: 10 min for NCCL, 30 for gloo); processes out of step then stop instead of
    hanging."""
    if collective_timeout_minutes is not None:
        timeout = datetime.timedelta(minutes=collective_timeout_minutes)
        options["kwargs_handlers"] = [*options.get("kwargs_handlers", []), InitProcessGroupKwargs(timeout=timeout)]
    accelerator = Accelerator(cpu=launched_without_accelerator(), **options)
    if not accelerator.is_main_process:
        logging.getLogger().setLevel(logging.WARNING)
    return accelerator
