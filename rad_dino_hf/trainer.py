"""The DINOv2 / RAD-DINO pretraining loop on Accelerate (single process, DDP or FSDP).

One iteration: read a multi-crop batch from the stream, draw iBOT masks, set this iteration's lr / weight decay,
compute DINO + iBOT + KoLeo, step the student, move the teacher towards it (EMA). Non-finite steps are skipped
(centers restored, no optimizer step) and counted; too many in a row stop the run with a clear error. So does a data
source that yields nothing readable (`UnreadableSourceGuard`); a batch with nothing readable is replaced by the next
one, so no rank ever skips a step. SIGTERM / SIGUSR1 (exit 143) and Ctrl-C (exit 130) stop the run after the current
step with a checkpoint on every rank (`rad_dino_hf.preemption`).

Every decision that leads a rank into or out of a collective is taken by all ranks together: the step's one
all-reduce (`_joint_flags`, after the backward) carries a non-finite loss, a failed data source, a stop signal and
the time budget (the main process's clock) of every rank, and each is acted on when any rank raised it.
"""

import gc
import json
import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator, DistributedType
from accelerate.utils import fsdp2_prepare_model, gather_object, set_seed
from safetensors.torch import load_file
from torchdata.stateful_dataloader import StatefulDataLoader
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from configuration_rad_dino import RadDinoConfig
from rad_dino_hf.augment import MultiCropAugmentation
from rad_dino_hf.checkpoint import (
    CheckpointError,
    TrainState,
    checkpoint_world_size,
    latest_checkpoint,
    resumable_checkpoint,
    save_checkpoint,
    verify_checkpoint,
)
from rad_dino_hf.pretraining_data import (
    DataSource,
    MultiCropMapper,
    UnreadableSourceError,
    UnreadableSourceGuard,
    build_stream,
    collate_crops,
    parse_source,
    sample_seed,
)
from rad_dino_hf.distributed import make_accelerator
from rad_dino_hf.errors import UserError
from rad_dino_hf.export import export_teacher, push_to_hub
from rad_dino_hf.fingerprint import parameter_digest
from rad_dino_hf.masking import sample_batch_masks
from rad_dino_hf.plots import plot_training_curves
from rad_dino_hf.preemption import (
    INTERRUPTED_EXIT_CODE,
    Stopped,
    StopRequest,
    quiet_worker_init,
    workers_shut_down,
)
from rad_dino_hf.recipe import RecipeConfig
from rad_dino_hf.run_log import METRICS_FILENAME, append_record, keep_records_until
from rad_dino_hf.schedules import apply_schedules, build_schedules, fuse_param_groups, param_groups
from rad_dino_hf.ssl_model import (
    SelfDistillationNetwork,
    SelfDistillationObjective,
    ema_update,
    initial_student,
    make_teacher,
    reshard_after_each_forward,
)

logger = logging.getLogger(__name__)

TENSORBOARD_DIRNAME = "tensorboard"
CURVES_FILENAME = "loss_curves.png"
MODEL_CONFIG_FILENAME = "model_config.json"  # the student's architecture (heads included), written at the start


class NonFiniteLossError(RuntimeError):
    """Raised after `train.max_consecutive_nan` non-finite steps in a row."""


@dataclass
class StepResult:
    """What `Pretrainer.train_step` returns: the logged `values` after an optimizer step (None after an
    accumulation step or a skipped non-finite one), the step's joint decisions (`flags`: name -> any rank raised it)
    and whether it ended an optimizer step (`synced`, where stop decisions are acted on)."""

    values: dict | None
    flags: dict[str, bool]
    synced: bool


@dataclass
class RunOptions:
    """What a run does besides the recipe."""

    resume: str = "auto"  # "auto": latest checkpoint in output_dir if any; "never"; or a checkpoint folder
    export_dir: str | None = None  # default: output_dir/export
    push_to_hub: str | None = None
    progress: bool = True


def build_dataloader(
    recipe: RecipeConfig,
    rank: int,
    world_size: int,
    sources: list[DataSource] | None = None,
    seed: int | None = None,
) -> StatefulDataLoader:
    """Stream -> decode + multi-crop (in workers) -> batches; the loader's `state_dict()` is the data position.

    `sources`: the parsed `recipe.train.data_sources` (parsed here when not given); `seed`: of the stream's order,
    the crops and the loader (default `recipe.train.seed`). The workers leave stop signals to the main process.
    """
    sources = sources or [parse_source(spec) for spec in recipe.train.data_sources]
    seed = recipe.train.seed if seed is None else seed
    samples_needed = recipe.total_iterations * recipe.train.global_batch_size(world_size)
    folder_files = min((len(s.folder_files) for s in sources if s.resolved_kind() == "folder"), default=1)
    folder_epochs = math.ceil(samples_needed / max(folder_files, 1)) + world_size
    stream = build_stream(sources, seed, rank, world_size, recipe.train.files_per_shard, folder_epochs=folder_epochs)
    mapper = MultiCropMapper(MultiCropAugmentation.from_config(recipe.crops), seed, rank)
    stream = stream.map(mapper, with_indices=True, remove_columns=["image"])
    workers = min(recipe.train.num_workers, stream.num_shards)
    return StatefulDataLoader(
        stream,
        batch_size=recipe.train.batch_size_per_gpu,
        num_workers=workers,
        collate_fn=collate_crops,
        prefetch_factor=2 if workers else None,
        persistent_workers=False,
        worker_init_fn=quiet_worker_init,
        # Its own generator: starting an iterator must not draw from the global RNG that drop path uses and that
        # a resumed run has just restored.
        generator=torch.Generator().manual_seed(seed),
    )


def _tensorboard_writer(folder: Path, resumed_at: int):
    """A TensorBoard writer when the `tensorboard` package is installed, else None (metrics.jsonl has it all).

    Resumed at iteration `resumed_at` > 0, it purges the events a crashed run logged after that iteration, which
    this run logs again (as `run_log.keep_records_until` does for metrics.jsonl)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(folder), purge_step=resumed_at + 1 if resumed_at else None)


def _all_finite(module: torch.nn.Module) -> bool:
    """This rank's parameters (under FSDP2 its own shards) are all finite; combine ranks with `_any_rank`."""
    return all(torch.isfinite(p.to_local() if hasattr(p, "to_local") else p).all() for p in module.parameters())


def clip_grad_norms(parts: dict[str, torch.nn.Module], max_norm: float) -> dict[str, float]:
    """Clip each part's gradient to norm `max_norm` on its own, as DINOv2's `do_train`
    (`for v in model.student.values(): v.clip_grad_norm_(clip_grad)`); `max_norm <= 0` measures without clipping.

    Gradients must already be unscaled (fp16) and synchronised (DDP). Under FSDP2 the gradients are DTensors and
    `clip_grad_norm_` reduces each part's norm over the shards. Returns each part's norm before clipping.
    """
    norms = {}
    for name, part in parts.items():
        norm = torch.nn.utils.clip_grad_norm_(part.parameters(), max_norm if max_norm > 0 else math.inf)
        norms[name] = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
    return norms


def shard_teacher_fsdp2(accelerator: Accelerator, teacher: torch.nn.Module) -> torch.nn.Module:
    """Shard the teacher with the student's FSDP2 plan, so that the EMA pairs matching shards (as DINOv2 shards
    both with FSDP), and checkpoint it as the accelerator's second model (`pytorch_model_fsdp_1`), as FSDP1 does.

    `Accelerator.prepare` takes exactly one model (with its optimizer) under FSDP2 and the teacher has no optimizer,
    so it is sharded with the same `fsdp2_prepare_model` that `prepare` applies to the student, and resharded after
    each forward (`reshard_after_each_forward`: it has no backward to do that). Adding it to
    `_models` (accelerate has no public call for this) makes `save_state` / `load_state` write and read its shards
    like the student's, in the same order as the FSDP1 path.
    """
    teacher = fsdp2_prepare_model(accelerator, teacher)
    reshard_after_each_forward(teacher)
    accelerator._models.append(teacher)
    return teacher


class Pretrainer:
    """Builds everything from a recipe and runs it; `run()` returns a summary dict."""

    def __init__(self, recipe: RecipeConfig, options: RunOptions) -> None:
        if not recipe.train.data_sources:
            raise ValueError("No data: set train.data_sources (or pass --data)")
        self.options = options
        self.accelerator = make_accelerator(
            collective_timeout_minutes=recipe.train.collective_timeout_minutes,
            gradient_accumulation_steps=recipe.train.gradient_accumulation_steps,
            mixed_precision=recipe.train.mixed_precision,
        )
        logger.info(
            "%d process(es), %s on %s, mixed precision %s",
            self.accelerator.num_processes,
            self.accelerator.distributed_type.value,
            self.accelerator.device,
            self.accelerator.mixed_precision,
        )
        self.recipe = recipe
        self.output_dir = Path(recipe.train.output_dir)
        set_seed(recipe.train.seed)  # identical initial weights on every rank
        self.student = initial_student(recipe)
        self.teacher = make_teacher(self.student)
        self.config = self.student.config
        self.objective = SelfDistillationObjective(recipe, self.config)
        groups = param_groups(
            self.student,
            recipe.optim.weight_decay,
            layerwise_decay=recipe.optim.layerwise_decay,
            patch_embed_lr_mult=recipe.optim.patch_embed_lr_mult,
        )
        optimizer = torch.optim.AdamW(
            fuse_param_groups(groups), betas=(recipe.optim.adamw_beta1, recipe.optim.adamw_beta2)
        )
        self.teacher_is_sharded = self.accelerator.distributed_type == DistributedType.FSDP
        if self.teacher_is_sharded and self.accelerator.is_fsdp2:
            self.student, self.optimizer = self.accelerator.prepare(self.student, optimizer)
            self.teacher = shard_teacher_fsdp2(self.accelerator, self.teacher)
        elif self.teacher_is_sharded:  # shard the teacher like the student so EMA pairs matching shards
            self.student, self.teacher, self.optimizer = self.accelerator.prepare(self.student, self.teacher, optimizer)
        else:  # checkpoint layout: see `load_checkpoint_networks`
            self.student, self.optimizer = self.accelerator.prepare(self.student, optimizer)
            self.teacher.to(self.accelerator.device)
            self.accelerator.register_for_checkpointing(self.teacher)
        self.objective.to(self.accelerator.device)
        self.state = TrainState()
        self.accelerator.register_for_checkpointing(self.objective, self.state)
        set_seed(recipe.train.seed + self.accelerator.process_index)  # per-rank drop path
        self.mask_rng = random.Random(recipe.train.seed * 1000 + self.accelerator.process_index)
        self.sources = [parse_source(spec) for spec in recipe.train.data_sources]  # each folder is listed once
        self.dataloader = build_dataloader(
            recipe, self.accelerator.process_index, self.accelerator.num_processes, self.sources
        )
        self.source_guard = UnreadableSourceGuard(self.sources, recipe.train.max_consecutive_unreadable)
        self.stop_request = StopRequest()
        self.started = time.perf_counter()  # the time budget's start (reset by `run`)
        self.schedules = build_schedules(recipe, self.accelerator.num_processes)
        self.stop_at = min(recipe.total_iterations, recipe.train.max_iterations or recipe.total_iterations)
        self.checkpoint_root = self.output_dir / "checkpoints"
        self.tensorboard = None  # opened by `run` once it knows the iteration it resumes at

    # -- state ----------------------------------------------------------------------------------------------

    def resume(self) -> None:
        if self.options.resume == "never":
            return
        if self.options.resume == "auto":
            checkpoint = resumable_checkpoint(self.checkpoint_root, self.accelerator)
        else:
            checkpoint = Path(self.options.resume)
            problem = verify_checkpoint(checkpoint)
            if problem is not None:
                raise CheckpointError(f"--resume {checkpoint}: {problem}")
        if checkpoint is None:
            return
        saved_world_size = checkpoint_world_size(checkpoint)
        if saved_world_size != self.accelerator.num_processes and self.teacher_is_sharded:
            raise CheckpointError(
                f"{checkpoint} holds FSDP shards of {saved_world_size} process(es); this run has "
                f"{self.accelerator.num_processes}. Resume it with {saved_world_size}, or use DDP (whose checkpoints "
                "resume on any number of processes)."
            )
        self.accelerator.load_state(str(checkpoint))
        if saved_world_size == self.accelerator.num_processes:
            self._restore_rank_state()
        else:
            self._restart_rank_state(saved_world_size)
        logger.info("Resumed from %s at iteration %d", checkpoint, self.state.step)
        if self.accelerator.is_main_process:
            dropped = keep_records_until(self.output_dir / METRICS_FILENAME, self.state.step)
            if dropped:
                logger.info("Dropped %d log records past iteration %d: this run repeats them", dropped, self.state.step)

    def _restore_rank_state(self) -> None:
        """This process's own data position, mask RNG and counters (saved by rank in `TrainState.ranks`)."""
        if self.state.data_seed not in (None, self.recipe.train.seed):  # a stream restarted by an earlier resume
            self._rebuild_dataloader(self.state.data_seed)
        mine = self.state.ranks[self.accelerator.process_index]
        self.dataloader.load_state_dict(mine["dataloader_state"])
        self.mask_rng.setstate(mine["mask_rng_state"])
        self.state.images_seen, self.state.skipped_samples = mine["images_seen"], mine["skipped_samples"]

    def _restart_rank_state(self, saved_world_size: int) -> None:
        """Resume on another number of processes: what the checkpoint holds once for all (weights, optimizer,
        teacher, centers, iteration, hence every schedule) is exact; each process's data position and RNGs are not
        (the stream is split by rank), so the stream restarts in a new order seeded by the iteration, and so do the
        mask and drop-path RNGs. The counters keep their totals, carried by the main process."""
        rank, step = self.accelerator.process_index, self.state.step
        data_seed = sample_seed(self.recipe.train.seed, "resumed", step) % 2**31
        self._rebuild_dataloader(data_seed)
        self.mask_rng.seed(sample_seed(data_seed, "masks", rank))
        torch.manual_seed(sample_seed(data_seed, "drop path", rank))
        totals = {key: sum(entry[key] for entry in self.state.ranks) for key in ("images_seen", "skipped_samples")}
        self.state.images_seen = totals["images_seen"] if rank == 0 else 0
        self.state.skipped_samples = totals["skipped_samples"] if rank == 0 else 0
        logger.warning(
            "Resuming at iteration %d on %d process(es) from a checkpoint of %d: weights, optimizer, teacher, "
            "centers and the schedules (by iteration) carry over exactly; the data stream restarts in a new order "
            "(images seen before may come again before unseen ones), and the learning rate follows the new global "
            "batch of %d.",
            step,
            self.accelerator.num_processes,
            saved_world_size,
            self.recipe.train.global_batch_size(self.accelerator.num_processes),
        )

    def _rebuild_dataloader(self, data_seed: int) -> None:
        self.state.data_seed = data_seed
        self.dataloader = build_dataloader(
            self.recipe, self.accelerator.process_index, self.accelerator.num_processes, self.sources, data_seed
        )

    def save(self) -> Path:
        if self._any_rank(not (_all_finite(self.student) and _all_finite(self.teacher))):
            raise NonFiniteLossError("Refusing to checkpoint non-finite weights")
        mine = {
            "images_seen": self.state.images_seen,
            "skipped_samples": self.state.skipped_samples,
            "dataloader_state": self.dataloader.state_dict(),
            "mask_rng_state": self.mask_rng.getstate(),
        }
        self.state.ranks = gather_object([mine]) if self.accelerator.num_processes > 1 else [mine]
        self.state.world_size = self.accelerator.num_processes
        return save_checkpoint(
            self.accelerator, self.checkpoint_root, self.state.step, self.recipe.train.keep_checkpoints
        )

    # -- one step -------------------------------------------------------------------------------------------

    def _any_rank(self, flag: bool) -> bool:
        return self._joint_flags(flag=flag)["flag"]

    def _joint_flags(self, **flags: bool) -> dict[str, bool]:
        """Each flag true when it is true on any rank: one all-reduce for all of them."""
        values = torch.tensor([float(value) for value in flags.values()], device=self.accelerator.device)
        summed = self.accelerator.reduce(values, reduction="sum")
        return {name: bool(value > 0) for name, value in zip(flags, summed.tolist())}

    def _budget_spent(self) -> bool:
        """The time budget, on the main process's clock (other ranks' clocks start later and may drift)."""
        minutes = self.recipe.train.max_minutes
        return (
            self.accelerator.is_main_process
            and minutes is not None
            and time.perf_counter() - self.started > 60 * minutes
        )

    def _next_batch(self, data) -> tuple[dict, UnreadableSourceError | None]:
        """This rank's next batch with a readable image, and None; a batch with none is replaced by the next one
        from the stream, so this rank never skips a step its peers take.

        A source the guard finds unreadable gives a stand-in batch (one black image of each crop) and the error:
        the rank still takes part in the step, whose flags then stop every rank with the error."""
        while True:
            batch = next(data)
            self.state.skipped_samples += batch["n_skipped"]
            try:
                self.source_guard.update(batch["read"])
            except UnreadableSourceError as error:
                return self._stand_in_batch(), error
            if batch["global_crops"] is not None:
                return batch, None

    def _stand_in_batch(self) -> dict:
        """`global_crops` `(2, 1, 3, G, G)` and `local_crops` `(n_local, 1, 3, L, L)` (or None) of zeros."""
        crops = self.recipe.crops
        global_crops = torch.zeros(crops.global_crops_number, 1, 3, crops.global_crops_size, crops.global_crops_size)
        local_crops = None
        if crops.local_crops_number:
            local_crops = torch.zeros(crops.local_crops_number, 1, 3, crops.local_crops_size, crops.local_crops_size)
        return {"global_crops": global_crops, "local_crops": local_crops}

    def train_step(self, batch: dict, data_error: UnreadableSourceError | None = None) -> "StepResult":
        """One micro-step on `batch` (`_next_batch`); `data_error`: this rank's data source failed (the batch is a
        stand-in). Returns the logged values after an optimizer step (None after an accumulation step or a skipped
        one) and the decisions all ranks took together."""
        recipe, iteration = self.recipe, self.state.step
        device = self.accelerator.device
        global_crops = batch["global_crops"].to(device)
        local_crops = batch["local_crops"].to(device) if batch["local_crops"] is not None else None
        n_global, batch_size = global_crops.shape[:2]
        grid = global_crops.shape[-1] // self.config.patch_size
        masks = sample_batch_masks(
            n_global * batch_size,
            (grid, grid),
            recipe.ibot.mask_sample_probability,
            recipe.ibot.mask_ratio_min_max,
            generator=self.mask_rng,
        ).to(device)
        lr = self.schedules["lr"][iteration]
        wd = self.schedules["wd"][iteration]
        apply_schedules(self.optimizer, lr, wd, self.schedules["last_layer_lr"][iteration])
        teacher_temp = self.schedules["teacher_temp"][iteration]
        centers = {name: value.clone() for name, value in self.objective.state_dict().items()}

        with self.accelerator.accumulate(self.student):
            with self.accelerator.autocast():
                terms = self.objective(self.student, self.teacher, global_crops, local_crops, masks, teacher_temp)
            self.accelerator.backward(terms.total)  # always: DDP ranks must stay in lockstep
            flags = self._joint_flags(
                non_finite=not torch.isfinite(terms.total.detach()),
                data_failed=data_error is not None,
                preempted=self.stop_request.signal_name in ("SIGTERM", "SIGUSR1"),
                interrupted=self.stop_request.signal_name == "SIGINT",
                budget_spent=self._budget_spent(),
            )
            non_finite = flags["non_finite"]
            grad_norms = {}
            if self.accelerator.sync_gradients:
                # Once for all parts: fp16's GradScaler refuses a second unscale_ before its next update().
                self.accelerator.unscale_gradients()
                parts = self.accelerator.unwrap_model(self.student).parts
                grad_norms = clip_grad_norms(parts, recipe.optim.clip_grad)
                non_finite = non_finite or not all(map(math.isfinite, grad_norms.values()))
            if not (non_finite or flags["data_failed"]):
                self.optimizer.step()
            elif self.accelerator.scaler is not None and grad_norms:
                self.accelerator.scaler.update()  # lowers the fp16 loss scale after inf/nan gradients
            self.optimizer.zero_grad(set_to_none=True)

        if flags["data_failed"]:
            self._stop_together()
            raise data_error or UnreadableSourceError(
                "Another process stopped on an unreadable data source; its error names the source."
            )
        synced = self.accelerator.sync_gradients
        if non_finite:
            self.objective.load_state_dict(centers)
            self.state.skipped_nan_steps += 1
            self.consecutive_nan += 1
            logger.warning(
                "Non-finite loss or gradient at iteration %d (%d in a row, %d in all): step skipped",
                iteration,
                self.consecutive_nan,
                self.state.skipped_nan_steps,
            )
            if self.consecutive_nan >= recipe.train.max_consecutive_nan:
                raise NonFiniteLossError(
                    f"{self.consecutive_nan} non-finite steps in a row at iteration {iteration}; stopping. "
                    "Lower the learning rate, check the data, or resume from the last checkpoint."
                )
            return StepResult(None, flags, synced)
        self.consecutive_nan = 0
        if not synced:
            return StepResult(None, flags, synced)
        momentum = self.schedules["momentum"][iteration]
        ema_update(self.teacher, self.accelerator.unwrap_model(self.student), momentum)
        self.state.step += 1
        information = {name: float(value) for name, value in terms.target_information.items()}
        self._watch_collapse(information)
        values = {
            **{f"loss/{name}": value for name, value in terms.as_floats().items()},
            **{f"mi/{name}": value for name, value in information.items()},
            "lr": lr,
            "wd": wd,
            "momentum": momentum,
            "teacher_temp": teacher_temp,
            **{f"grad_norm/{name}": value for name, value in grad_norms.items()},
        }
        return StepResult(values, flags, synced)

    def _watch_collapse(self, information: dict[str, float]) -> None:
        """Warn once per run when a head's teacher target stays (nearly) independent of the image.

        `information`: this iteration's mutual information (nats) between sample and target per head; a head
        counts as collapsed after `train.collapse_warning_iterations` iterations in a row below
        `train.collapse_information_nats` (NaN, a batch without masked patches, does not count).
        """
        train, teacher, state = self.recipe.train, self.recipe.teacher, self.state
        counts = state.low_information_iterations  # in the checkpoint, so a resumed run keeps counting
        for name, value in information.items():
            counts[name] = counts[name] + 1 if value < train.collapse_information_nats else 0
        patience = train.collapse_warning_iterations
        stuck = [name for name, count in counts.items() if count >= patience]
        if state.collapse_warned or patience <= 0 or not stuck:
            return
        state.collapse_warned = True
        if not self.accelerator.is_main_process:
            return
        warmup = self.recipe.optim.warmup_epochs * train.official_epoch_length
        logger.warning(
            "Collapse: the teacher's %s targets have carried less than %g nats of information about the image for %d "
            "iterations (now %s): every image gets the same target, and the student learns nothing from it. "
            "Usual causes from scratch: LayerScale so small that all images' CLS tokens are equal (raise "
            "student.layerscale_value, e.g. to 0.1-1.0); targets too flat (lower teacher.teacher_temp and "
            "teacher.warmup_teacher_temp, e.g. to 0.02); a teacher slower than the warmup (EMA time constant "
            "1 / (1 - teacher.momentum_teacher) = %.0f iterations vs %d warmup iterations: lower the momentum or "
            "lengthen optim.warmup_epochs).",
            " and ".join(name.upper() if name == "dino" else "iBOT" for name in stuck),
            train.collapse_information_nats,
            patience,
            ", ".join(f"{name} {information[name]:.3g}" for name in stuck),
            1 / max(1 - teacher.momentum_teacher, 1e-12),
            warmup,
        )

    # -- the run --------------------------------------------------------------------------------------------

    def run(self) -> dict:
        accelerator, recipe = self.accelerator, self.recipe
        self.output_dir.mkdir(parents=True, exist_ok=True)
        if accelerator.is_main_process:
            recipe.to_yaml(self.output_dir / "recipe.yaml")
            self.config.to_json_file(self.output_dir / MODEL_CONFIG_FILENAME)
        self.resume()
        if accelerator.is_main_process:
            self.tensorboard = _tensorboard_writer(self.output_dir / TENSORBOARD_DIRNAME, self.state.step)
        self.consecutive_nan = 0
        metrics_path = self.output_dir / METRICS_FILENAME
        self.started = time.perf_counter()
        progress = tqdm(
            total=self.stop_at,
            initial=self.state.step,
            desc="Pretraining",
            unit="it",
            disable=not (accelerator.is_main_process and self.options.progress),
        )
        # Log lines print above the bar instead of breaking it; stop signals are recorded from before the workers
        # start, and honoured in the loop; the workers are shut down however the loop ends.
        try:
            with logging_redirect_tqdm(), self.stop_request, workers_shut_down(iter(self.dataloader)) as data:
                budget_spent = self._loop(data, progress, metrics_path)
        except KeyboardInterrupt:  # a second Ctrl-C (`StopRequest`)
            latest = latest_checkpoint(self.checkpoint_root)
            logger.warning(
                "Interrupted again: stopped at once during iteration %d; nothing saved since %s.",
                self.state.step + 1,
                f"checkpoint {latest}" if latest else "the run started",
            )
            raise SystemExit(INTERRUPTED_EXIT_CODE) from None
        finally:  # also on an error: its message then starts on a line of its own
            progress.close()
        if budget_spent:
            logger.info("Time budget of %.1f min spent at iteration %d", recipe.train.max_minutes, self.state.step)
        self.save()
        return self._finish(time.perf_counter() - self.started, metrics_path)

    def _loop(self, data, progress: tqdm, metrics_path: Path) -> bool:
        """Iterate until the last iteration or the time budget; returns whether the budget ran out."""
        accelerator, recipe = self.accelerator, self.recipe
        window_start, window_images = time.perf_counter(), 0
        while self.state.step < self.stop_at:
            batch, data_error = self._next_batch(data)
            result = self.train_step(batch, data_error)
            batch_images = batch["global_crops"].shape[1]
            window_images += batch_images
            self.state.images_seen += batch_images
            if not result.synced:
                continue
            flags, step = result.flags, self.state.step
            if result.values is not None:
                progress.update(1)
                values = result.values
                if step % recipe.train.log_every == 0 or step == self.stop_at or flags["budget_spent"]:
                    elapsed = time.perf_counter() - window_start
                    values["images_per_second"] = accelerator.num_processes * window_images / max(elapsed, 1e-9)
                    values.update(
                        step=step,
                        skipped_samples=self.state.skipped_samples,
                        skipped_nan_steps=self.state.skipped_nan_steps,
                    )
                    self._log(values, metrics_path)
                    progress.set_postfix(loss=f"{values['loss/total']:.3f}", img_s=f"{values['images_per_second']:.1f}")
                    window_start, window_images = time.perf_counter(), 0
            if flags["preempted"] or flags["interrupted"]:  # every rank decides at the same step
                self._stop_on_signal(flags)
            if flags["budget_spent"]:
                return True
            if result.values is not None and step % recipe.train.checkpoint_every == 0 and step < self.stop_at:
                self.save()
        return False

    def _stop_on_signal(self, flags: dict[str, bool]) -> None:
        """Checkpoint on every rank, leave the process group together, raise `Stopped` (exit 143, or 130 when the
        only signal was SIGINT)."""
        checkpoint = self.save()
        decided = "SIGTERM" if flags["preempted"] else "SIGINT"  # what the ranks decided together
        signal_name = self.stop_request.signal_name or decided
        logger.warning(
            "%s received%s: stopped after iteration %d with checkpoint %s. Run the same command again to resume.",
            signal_name,
            "" if self.stop_request.requested else " (by another process)",
            self.state.step,
            checkpoint,
        )
        self._stop_together()
        raise Stopped(decided, self.state.step, str(checkpoint))

    def _stop_together(self) -> None:
        """Leave the process group with every rank (all of them are here, by a joint decision)."""
        if self.tensorboard is not None:
            self.tensorboard.close()
        self._release_process_group_users()
        self.accelerator.end_training()

    def _log(self, values: dict, metrics_path: Path) -> None:
        if not self.accelerator.is_main_process:
            return
        append_record(metrics_path, values)
        if self.tensorboard is not None:
            for name, value in values.items():
                if name != "step":
                    self.tensorboard.add_scalar(name, value, values["step"])
        logger.info(
            "it %d | loss %.4f (dino %.4f ibot %.4f koleo %.4f) | MI dino %.3f ibot %.3f | lr %.2e wd %.3f mom %.4f "
            "T %.3f | %.1f img/s",
            values["step"],
            values["loss/total"],
            values["loss/dino"],
            values["loss/ibot"],
            values["loss/koleo"],
            values["mi/dino"],
            values["mi/ibot"],
            values["lr"],
            values["wd"],
            values["momentum"],
            values["teacher_temp"],
            values["images_per_second"],
        )

    def _finish(self, seconds: float, metrics_path: Path) -> dict:
        accelerator = self.accelerator
        digests = gather_object([parameter_digest(accelerator.unwrap_model(self.student))])
        teacher_digests = gather_object([parameter_digest(self.teacher)])
        steps = gather_object([self.state.step])
        summary = {
            **self.state.state_dict(),
            "seconds": round(seconds, 1),
            "world_size": accelerator.num_processes,
            "replica_digests": digests,
            "teacher_digests": teacher_digests,
            "replica_steps": steps,  # each process's last iteration: equal unless the processes fell out of step
            # This process's peak since it started (CUDA only): what a GPU needs to hold this recipe.
            "peak_gpu_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None,
        }
        for per_rank in ("ranks", "data_seed"):
            summary.pop(per_rank)
        for counter in ("images_seen", "skipped_samples"):  # per process in the state; totals in the summary
            summary[counter] = sum(gather_object([summary[counter]]))
        if len(set(digests)) > 1 or len(set(teacher_digests)) > 1:
            logger.error("Replicas differ across ranks: student %s, teacher %s", digests, teacher_digests)
        export_dir = Path(self.options.export_dir or self.output_dir / "export")
        teacher_state = accelerator.get_state_dict(self.teacher) if self.teacher_is_sharded else None
        if accelerator.is_main_process:
            teacher = self.teacher
            if teacher_state is not None:  # gather the FSDP shards into a plain copy for export
                teacher = SelfDistillationNetwork(accelerator.unwrap_model(self.teacher).config)
                teacher.load_state_dict(teacher_state)
            export_teacher(teacher, export_dir, self.recipe, summary, self.sources, self.options.push_to_hub)
            if metrics_path.exists():
                plot_training_curves(metrics_path, self.output_dir / CURVES_FILENAME)
            summary["export_dir"] = str(export_dir)
            (self.output_dir / "summary.json").write_text(json.dumps(summary, indent=2))
            logger.info(
                "Done: %d iterations, %d images (%d unreadable skipped, %d non-finite steps skipped) in %.1f min. "
                "Model: %s  Curves: %s  Metrics: %s",
                summary["step"],
                summary["images_seen"],
                summary["skipped_samples"],
                summary["skipped_nan_steps"],
                seconds / 60,
                export_dir,
                self.output_dir / CURVES_FILENAME,
                metrics_path,
            )
            if self.options.push_to_hub:
                push_to_hub(export_dir, self.options.push_to_hub)
        if self.tensorboard is not None:
            self.tensorboard.close()
        self._release_process_group_users()
        accelerator.end_training()
        return summary

    def _release_process_group_users(self) -> None:
        """Free the DDP wrapper while every rank is still alive.

        Its gradient reducer holds the process group; destroyed later (at garbage collection, after a peer has
        exited), gloo's destructor waits for that peer forever.
        """
        self.accelerator.wait_for_everyone()
        self.student = self.accelerator.unwrap_model(self.student)
        self.optimizer = None
        self.accelerator.free_memory()
        gc.collect()
        self.accelerator.wait_for_everyone()


@dataclass
class CheckpointNetworks:
    """What a run's checkpoint holds for analysis: its recipe, both networks (eval mode) and the loss centers."""

    recipe: RecipeConfig
    student: SelfDistillationNetwork
    teacher: SelfDistillationNetwork
    centers: dict[str, torch.Tensor]  # the objective's buffers, e.g. "dino_loss.center" (1, K)


def load_checkpoint_networks(run: str | Path) -> CheckpointNetworks:
    """Read the student, the teacher and the centers of a single-process or DDP run's last checkpoint.

    `save_state` writes the prepared model (the student) as `model.safetensors` and the registered objects in
    registration order: the teacher (`custom_checkpoint_0.pkl`), the objective (`_1`), the loop state (`_2`). An
    FSDP run shards the teacher into `pytorch_model_fsdp_1` instead; it is refused with a clear error.
    """
    run = Path(run)
    if not (run / "recipe.yaml").is_file():
        raise UserError(f"{run} is not a train_pretrain.py output folder: it has no recipe.yaml")
    recipe = RecipeConfig.from_yaml(run / "recipe.yaml")
    checkpoint = latest_checkpoint(run / "checkpoints")
    if checkpoint is None:
        raise UserError(f"{run / 'checkpoints'} holds no checkpoint")
    if (checkpoint / "pytorch_model_fsdp_1").exists():
        raise UserError(f"{checkpoint} is an FSDP checkpoint (networks sharded); give a single-process or DDP run")
    # Built from the run's own architecture file, not from `student.pretrained`: the checkpoint holds every weight,
    # and the pretrained source (a Hub id, a file) may be unreachable or gone. Runs older than that file have only
    # the recipe, which reloads the source.
    architecture = run / MODEL_CONFIG_FILENAME
    if architecture.is_file():
        student = SelfDistillationNetwork(RadDinoConfig.from_json_file(architecture))
    else:
        student = initial_student(recipe)
    teacher = make_teacher(student)
    student.load_state_dict(load_file(checkpoint / "model.safetensors"))
    teacher.load_state_dict(torch.load(checkpoint / "custom_checkpoint_0.pkl", map_location="cpu"))
    centers = torch.load(checkpoint / "custom_checkpoint_1.pkl", map_location="cpu")
    return CheckpointNetworks(recipe, student.eval(), teacher.eval(), centers)


def pretrain(recipe: RecipeConfig, options: RunOptions | None = None) -> dict:
    """Build a `Pretrainer` from `recipe` and run it; returns the run summary."""
    return Pretrainer(recipe, options or RunOptions()).run()
