"""The supervised training loop on HuggingFace Accelerate, shared by fine-tuning, the report generator's stages and
the segmentation decoder.

What is stepped when (`G` = `accelerator.gradient_accumulation_steps`):

- every batch: `compute_loss` and `accelerator.backward` (gradients add up inside `accelerator.accumulate`);
- every optimiser update (every `G`-th batch and the last batch of each epoch, where `accelerator.sync_gradients`
  is true): gradient clipping, one AdamW step, one scheduler step, one metrics record;
- every epoch: the `on_epoch_end` callback (e.g. validation) and one metrics record.

The schedule is linear warmup then a half cosine to zero, over `epochs * ceil(len(loader) / G)` updates, with
`len(loader)` read after `accelerator.prepare` (the shard of one process), so it ends on the last update on any
world size; the scheduler is stepped by hand once per update, not through Accelerate's wrapper (which steps once
per process).

SIGTERM, SIGUSR1 or SIGINT, to the process or its whole group (the loader's workers ignore them), stop the loop at
the end of the current update on every process (the flag travels with the loss in the update's all-reduce): the loop
keeps no checkpoint, so it says that nothing was saved since the command started and exits with 143 (130 for SIGINT).
"""

import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from rad_dino_hf.plots import plot_loss_curves
from rad_dino_hf.preemption import Stopped, StopRequest, chain_worker_init, workers_shut_down
from rad_dino_hf.run_log import append_record, read_records

logger = logging.getLogger(__name__)

LossFunction = Callable[[nn.Module, Any], torch.Tensor]
EpochCallback = Callable[[int, nn.Module], dict | None]
# Keys of every epoch record; anything else in one came from the epoch callback and is plotted.
EPOCH_BOOKKEEPING = {"phase", "epoch", "train_loss", "seconds"}


def model_loss(model: nn.Module, batch: dict) -> torch.Tensor:
    """The default `compute_loss`: a transformers model's own loss on a dict batch (`labels` included)."""
    return model(**batch).loss


@dataclass
class LoopSettings:
    """`warmup_fraction`: share of the updates with a linear warmup from 0; `max_grad_norm`: clip the global
    gradient norm to this before every update (0: no clipping); `description`: names the progress bar, the log lines
    and the `phase` of the metrics records; `metrics_path`: a JSONL file the main process appends records to (none
    if `None`), with a loss-curve picture next to it (same name, `.png`: one panel per phase in the file)."""

    epochs: int
    warmup_fraction: float = 0.0
    max_grad_norm: float = 0.0
    description: str = "train"
    metrics_path: Path | None = None


@dataclass
class TrainingLog:
    """`update_losses`: the mean loss of every optimiser update (over its batches and the processes);
    `epochs`: one record per epoch (`epoch`, `train_loss`: mean batch loss, `seconds`, and the callback's values)."""

    update_losses: list[float] = field(default_factory=list)
    epochs: list[dict] = field(default_factory=list)


def updates_per_epoch(accelerator: Accelerator, loader: DataLoader) -> int:
    """Optimiser updates in one pass over a prepared `loader`: Accelerate also syncs on the last batch."""
    return math.ceil(len(loader) / accelerator.gradient_accumulation_steps)


def train(
    accelerator: Accelerator,
    model: nn.Module,
    param_groups: Iterable[dict],
    loader: DataLoader,
    settings: LoopSettings,
    compute_loss: LossFunction = model_loss,
    on_epoch_end: EpochCallback | None = None,
) -> TrainingLog:
    """Train `model` with AdamW over `param_groups` (each with its `params`, `lr` and `weight_decay`; the `lr` is
    the peak of the schedule) on `loader`'s batches, `compute_loss(prepared_model, batch)` -> scalar loss.

    `model` and `loader` are prepared here (device, DDP, mixed precision; the caller's objects train in place).
    `on_epoch_end(epoch, prepared_model)` runs on every process after each epoch (1-based), the model in train
    mode; the dict of numbers it returns joins that epoch's record. The model is left in eval mode.
    """
    if settings.epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {settings.epochs}")
    optimizer = torch.optim.AdamW(param_groups)
    loader.worker_init_fn = chain_worker_init(loader.worker_init_fn)  # copied into the prepared loader
    model, prepared_optimizer, loader = accelerator.prepare(model, optimizer, loader)
    total = settings.epochs * updates_per_epoch(accelerator, loader)
    scheduler = get_cosine_schedule_with_warmup(optimizer, round(settings.warmup_fraction * total), total)
    parameters = [parameter for group in optimizer.param_groups for parameter in group["params"]]
    write = settings.metrics_path is not None and accelerator.is_main_process
    phase = {"phase": settings.description}  # tags every record, since phases of one run share a log
    log, window = TrainingLog(), []
    bar = tqdm(total=total, desc=settings.description, disable=not accelerator.is_local_main_process)
    with StopRequest() as stop:
        for epoch in range(1, settings.epochs + 1):
            model.train()
            start, epoch_losses = time.perf_counter(), []
            with workers_shut_down(iter(loader)) as batches:
                for batch in batches:
                    with accelerator.accumulate(model):
                        loss = compute_loss(model, batch)
                        accelerator.backward(loss)
                        update = {}
                        if accelerator.sync_gradients and settings.max_grad_norm > 0:
                            norm = accelerator.clip_grad_norm_(parameters, settings.max_grad_norm)
                            update["grad_norm"] = float(norm)
                        prepared_optimizer.step()  # a no-op until the gradients are synced
                        prepared_optimizer.zero_grad()
                    mean_loss, stop_requested = _mean_loss_and_any_stop(accelerator, loss, stop.requested)
                    epoch_losses.append(mean_loss)
                    window.append(mean_loss)
                    if not accelerator.sync_gradients:
                        continue
                    lr = scheduler.get_last_lr()[0]  # the lr this update used (first group)
                    scheduler.step()
                    log.update_losses.append(sum(window) / len(window))
                    window = []
                    if write:
                        record = {"update": len(log.update_losses), "epoch": epoch, "loss": log.update_losses[-1]}
                        append_record(settings.metrics_path, phase | record | {"lr": lr} | update)
                    bar.update(1)
                    bar.set_postfix(loss=f"{log.update_losses[-1]:.4f}", epoch=epoch)
                    if stop_requested:
                        bar.close()
                        _stop_on_signal(stop.signal_name, settings.description, epoch, len(log.update_losses), total)
            record = {"epoch": epoch, "train_loss": sum(epoch_losses) / len(epoch_losses)}
            if on_epoch_end is not None:
                record.update(on_epoch_end(epoch, model) or {})
            record["seconds"] = round(time.perf_counter() - start, 1)
            log.epochs.append(record)
            if write:
                append_record(settings.metrics_path, phase | record)
            logger.info(
                "%s epoch %d/%d: %s",
                settings.description,
                epoch,
                settings.epochs,
                ", ".join(f"{key} {value:.4g}" for key, value in record.items() if key != "epoch"),
            )
    bar.close()
    model.eval()
    if write:
        plot_phases(settings.metrics_path)
    return log


def _mean_loss_and_any_stop(accelerator: Accelerator, loss: torch.Tensor, requested: bool) -> tuple[float, bool]:
    """The batch loss averaged over the processes, and whether any process was asked to stop: one all-reduce."""
    values = torch.stack([loss.detach().float(), torch.tensor(float(requested), device=loss.device)])
    summed = accelerator.reduce(values, reduction="sum")
    return float(summed[0]) / accelerator.num_processes, bool(summed[1] > 0)


def _stop_on_signal(signal_name: str | None, description: str, epoch: int, update: int, total: int) -> None:
    """Every process stops together after an update; this loop keeps no checkpoint, and says so."""
    signal_name = signal_name or "SIGTERM"  # asked on another process
    logger.warning(
        "%s received: stopped %s at epoch %d after update %d of %d. Nothing was saved since the command started "
        "(this training keeps no checkpoint): run the command again to train from the start.",
        signal_name,
        description,
        epoch,
        update,
        total,
    )
    raise Stopped(signal_name, update, None)


def fresh_training_log(path: Path, accelerator: Accelerator) -> Path:
    """`path` for a run's `metrics_path`, with a previous run's log and picture there removed (the loop appends, so
    that several phases of one run share a file). Every process waits until the main one has cleared it."""
    if accelerator.is_main_process:
        path.unlink(missing_ok=True)
        path.with_suffix(".png").unlink(missing_ok=True)
    accelerator.wait_for_everyone()
    return path


def plot_phases(metrics_path: Path) -> Path:
    """The update losses of every phase in a metrics JSONL, one panel each, and the numbers the epoch callbacks
    returned (e.g. validation accuracy), one panel each, as `metrics_path` with `.png`."""
    curves: dict[str, list[float]] = {}
    epoch_values: dict[str, list[float]] = {}
    for record in read_records(metrics_path):
        if "update" in record:
            curves.setdefault(record["phase"], []).append(record["loss"])
            continue
        for key, value in record.items():
            if key not in EPOCH_BOOKKEEPING and isinstance(value, (int, float)):
                epoch_values.setdefault(f"{record['phase']}: {key}", []).append(value)
    return plot_loss_curves(curves, metrics_path.with_suffix(".png"), epoch_values=epoch_values)
