"""How Accelerate should treat the processes it was launched with."""

import os

import torch


def launched_without_accelerator() -> bool:
    """Several processes and no GPU: Accelerate builds a gloo group only when told to run on the CPU."""
    several = int(os.environ.get("WORLD_SIZE", "1")) > 1
    has_xpu = hasattr(torch, "xpu") and torch.xpu.is_available()
    return several and not (torch.cuda.is_available() or has_xpu)
