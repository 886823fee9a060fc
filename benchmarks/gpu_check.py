#!/usr/bin/env python
"""One-command GPU check: pretraining (DDP and FSDP2), inference and report generation, as one table.

On one GPU (under 8 minutes on an H100):
  1. Pretraining ViT-B/14 with the DINOv2 ViT-B recipe (`configs/rad_dino_vitb14.yaml`: 2 x 224 + 8 x 98 crops,
     batch 40, random init), bf16, `--steps` iterations through `accelerate launch train_pretrain.py`, once with DDP
     (`configs/accelerate/ddp.yaml`) and once with FSDP2 (`configs/accelerate/fsdp.yaml`), 1 process each.
     Checks: every logged loss finite, no skipped step; the checkpoint of iteration N-1, resumed in a fresh run,
     gives the straight run's iteration N (same loss; same weights: bitwise, or on CUDA within `RESUME_WEIGHT_ATOL`,
     since cuBLAS / attention backward kernels need not be deterministic); the export loads as a plain
     `transformers.Dinov2Model`. Measured: images/s and step time (median over the iterations after the first
     `WARMUP_STEPS`, data loading included), peak GPU memory (the trainer's `peak_gpu_memory_gib`).
  2. Inference of ViT-B/14 at 518 px, batch 32 and 64: HF `Dinov2Model` and `RadDinoModel` on the same random
     weights, fp32 and bf16 autocast, and `torch.compile(RadDinoModel)` (fp32): images/s, peak GPU memory and max |Δ|
     of `last_hidden_state` against HF fp32 on the same input.
  3. Report generation: one LoRA training step (stage 2) of a generator with the full-size encoder (518 px, image
     tokens pooled 2 x 2) and a small Llama built from config, gradient checkpointing on, bf16; then greedy
     generation of exactly `GENERATED_TOKENS` tokens (end token held off) for two images.

`--dry-run` runs the same paths on the CPU with tiny configs in about a minute (the test suite runs it): the DDP
launch (Accelerate runs one CPU process without a DDP wrapper, and the table says so), resume and export checks,
inference fp32 against `Dinov2Model`, the report step and generation. GPU-only parts (FSDP2, CUDA autocast,
`torch.compile` timing, peak CUDA memory) are listed as skipped with the reason. Timings of a dry run mean nothing.

The project must be installed (README); on a GPU machine that already has torch and the other dependencies,
`pip install --no-deps --no-build-isolation -e .` in the repository is enough.

Examples:
  python benchmarks/gpu_check.py --output outputs/gpu_check.json
  python benchmarks/gpu_check.py --dry-run
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO_ROOT = Path(__file__).resolve().parent.parent

import torch  # noqa: E402
import transformers  # noqa: E402
from PIL import Image  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

# A sibling script: Python puts the folder of the script it runs first on sys.path.
from bench_inference import CompileTimeout, alarm, build_model, median_time, variant_context  # noqa: E402
from configuration_rad_dino import RadDinoConfig  # noqa: E402
from modeling_rad_dino import RadDinoModel  # noqa: E402
from rad_dino_hf.run_log import METRICS_FILENAME, read_records  # noqa: E402

SAMPLE_IMAGES = REPO_ROOT / "data" / "sample" / "images"
RECIPE = REPO_ROOT / "configs" / "rad_dino_vitb14.yaml"
LAUNCH_CONFIGS = {"DDP": "configs/accelerate/ddp.yaml", "FSDP2": "configs/accelerate/fsdp.yaml"}
WARMUP_STEPS = 5  # pretraining iterations left out of the throughput median (allocator, cuDNN autotune, workers)
RESUME_LOSS_RTOL = 1e-5  # resumed vs straight loss of iteration N on CUDA (CPU: must be equal)
RESUME_WEIGHT_ATOL = 1e-5  # resumed vs straight exported teacher weights on CUDA (CPU: bitwise)
SAME_OUTPUT_ATOL = 1e-3  # fp32 RadDinoModel (eager or compiled) vs HF Dinov2Model, max |Δ| of last_hidden_state
GENERATED_TOKENS = 16
# Report texts for the tokenizer and the training batch (the check measures, it does not learn them).
REPORTS = [
    "Lungs are clear. No effusion.",
    "Left basal atelectasis; heart size normal.",
    "Perihilar opacities, possibly viral pneumonia.",
    "Nasogastric tube tip below the diaphragm.",
]

# The tiny model of the dry run: the recipe's structure (two global + local crops, DINO + iBOT heads) at toy size.
DRY_RUN_RECIPE = [
    "student.hidden_size=64",
    "student.num_hidden_layers=2",
    "student.num_attention_heads=2",
    "crops.global_crops_size=56",
    "crops.local_crops_size=28",
    "crops.local_crops_number=2",
    "dino.head_n_prototypes=64",
    "dino.head_hidden_size=32",
    "dino.head_bottleneck_size=16",
    "ibot.head_n_prototypes=64",
    "ibot.head_hidden_size=32",
    "ibot.head_bottleneck_size=16",
]


def skipped(reason: str) -> str:
    return f"skipped: {reason}"


def failed(reason: str) -> str:
    return f"failed: {reason}"


def row(part: str, case: str, status: str = "ok", **values) -> dict:
    """One table row: `status` is "ok", "failed: why" or "skipped: why"; `values` are its measurements."""
    return {"part": part, "case": case, "status": status, **values}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0][:160]}" if text else type(error).__name__


# ----------------------------------------------------------------------------------------------------------------
# 1. Pretraining through `accelerate launch`
# ----------------------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as handle:
        handle.bind(("127.0.0.1", 0))
        return handle.getsockname()[1]


def prepare_images(args, workdir: Path) -> tuple[Path, int]:
    """The image folder and files per stream shard: `--data`, or the embedded sample (the GPU run links it
    `--sample-copies` times, so that the stream has a shard per data worker and its layout stays small)."""
    if args.data:
        return Path(args.data), 64
    if args.dry_run:
        return SAMPLE_IMAGES, len(list(SAMPLE_IMAGES.iterdir()))  # one shard: no worker, quick to lay out
    folder = workdir / "images"
    folder.mkdir(parents=True, exist_ok=True)
    files = sorted(SAMPLE_IMAGES.glob("*.png"))
    for copy in range(args.sample_copies):
        for path in files:
            target = folder / f"{copy:03d}_{path.name}"
            if not target.exists():
                target.symlink_to(path.resolve())
    return folder, max(1, len(files) * args.sample_copies // args.num_workers)


def launch(args, mode: str, images: Path, files_per_shard: int, output: Path, resume: str) -> tuple[int, str]:
    """`accelerate launch --config_file <mode's config> --num_processes 1 train_pretrain.py ...`; (rc, log)."""
    precision = "no" if args.dry_run else "bf16"
    overrides = [
        "student.pretrained=random",
        f"train.max_iterations={args.steps}",
        f"train.checkpoint_every={args.steps - 1}",
        "train.keep_checkpoints=2",
        "train.log_every=1",
        f"train.mixed_precision={precision}",
        f"train.files_per_shard={files_per_shard}",
        f"train.num_workers={0 if args.dry_run else args.num_workers}",
    ]
    if args.batch_size:
        overrides.append(f"train.batch_size_per_gpu={args.batch_size}")
    if args.dry_run:
        overrides += [*DRY_RUN_RECIPE, "train.batch_size_per_gpu=4"]
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(REPO_ROOT / LAUNCH_CONFIGS[mode]),
        "--num_processes",
        "1",
        "--main_process_port",
        str(free_port()),
        "--mixed_precision",
        precision,
        str(REPO_ROOT / "train_pretrain.py"),
        "--config",
        str(RECIPE),
        "--no-progress",
        "--data",
        str(images),
        "--output-dir",
        str(output),
        "--resume",
        resume,
        "--set",
        *overrides,
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    try:
        result = subprocess.run(
            command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=args.launch_timeout
        )
    except subprocess.TimeoutExpired as error:
        tail = error.stderr.decode(errors="replace") if isinstance(error.stderr, bytes) else error.stderr or ""
        return -1, f"timeout after {args.launch_timeout} s\n{tail}"
    return result.returncode, result.stdout + result.stderr


def read_metrics(run_dir: Path) -> list[dict]:
    return read_records(run_dir / METRICS_FILENAME)


def max_weight_difference(first: Path, second: Path) -> float:
    """Max |Δ| over all tensors of two `model.safetensors` with the same names."""
    a, b = load_file(first), load_file(second)
    if a.keys() != b.keys():
        return math.inf
    return max(((a[k].float() - b[k].float()).abs().max().item() for k in a), default=0.0)


def export_is_plain_dinov2(export: Path, image_size: int) -> bool:
    """The export loads through `AutoModel` as a stock `Dinov2Model` (no remote code) and runs."""
    model = transformers.AutoModel.from_pretrained(export).eval()
    pixels = torch.randn(1, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        output = model(pixels).last_hidden_state
    return type(model) is transformers.Dinov2Model and bool(torch.isfinite(output).all())


def pretraining_row(args, mode: str, device: torch.device, workdir: Path) -> dict:
    """Straight run of `--steps` iterations, then a fresh run resumed from its checkpoint of iteration N-1."""
    case = f"ViT-B/14 recipe, {mode}, 1 process" if not args.dry_run else f"tiny ViT/14, {mode}, 1 process"
    if mode == "FSDP2" and device.type != "cuda":
        return row("pretrain", case, skipped("FSDP2 needs a GPU (Accelerate enables FSDP only on GPU-class devices)"))
    if args.steps < 2:
        return row("pretrain", case, failed("--steps must be at least 2 (checkpoint at N-1, resume to N)"))
    images, files_per_shard = prepare_images(args, workdir)
    straight_dir, resumed_dir = workdir / f"{mode.lower()}-straight", workdir / f"{mode.lower()}-resumed"
    started = time.perf_counter()
    rc, log = launch(args, mode, images, files_per_shard, straight_dir, "never")
    if rc != 0:
        return row("pretrain", case, failed(f"straight run exited {rc}"), log_tail=log[-3000:])
    checkpoint = straight_dir / "checkpoints" / f"step-{args.steps - 1:08d}"
    rc, resumed_log = launch(args, mode, images, files_per_shard, resumed_dir, str(checkpoint))
    if rc != 0:
        return row("pretrain", case, failed(f"resumed run exited {rc}"), log_tail=resumed_log[-3000:])
    seconds = time.perf_counter() - started

    summary = json.loads((straight_dir / "summary.json").read_text())
    resumed_summary = json.loads((resumed_dir / "summary.json").read_text())
    metrics, resumed_metrics = read_metrics(straight_dir), read_metrics(resumed_dir)
    launched = re.search(r"(\d+) process\(es\), (\S+) on (\S+), mixed precision (\S+)", log)
    losses = [m["loss/total"] for m in metrics]
    losses_finite = len(losses) == args.steps and all(map(math.isfinite, losses)) and summary["skipped_nan_steps"] == 0
    last, resumed_last = metrics[-1], resumed_metrics[-1]
    loss_difference = abs(resumed_last["loss/total"] - last["loss/total"])
    weight_difference = max_weight_difference(
        straight_dir / "export" / "model.safetensors", resumed_dir / "export" / "model.safetensors"
    )
    bitwise = (
        resumed_summary["replica_digests"] == summary["replica_digests"]
        and resumed_summary["teacher_digests"] == summary["teacher_digests"]
    )
    if device.type == "cuda":
        resume_equal = (
            resumed_last["step"] == last["step"] == args.steps
            and loss_difference <= RESUME_LOSS_RTOL * abs(last["loss/total"])
            and weight_difference <= RESUME_WEIGHT_ATOL
        )
    else:
        resume_equal = resumed_last["step"] == last["step"] and loss_difference == 0 and bitwise
    export_ok = export_is_plain_dinov2(Path(summary["export_dir"]), 56 if args.dry_run else 224)

    timed = [m["images_per_second"] for m in metrics[min(WARMUP_STEPS, len(metrics) - 1) :]]
    images_per_s = statistics.median(timed)
    batch = summary["images_seen"] / summary["step"]
    checks = {"losses_finite": losses_finite, "resume_equals_straight": resume_equal, "export_is_dinov2": export_ok}
    notes = [
        launched.expand(r"accelerate: \2 on \3, mixed precision \4") if launched else "",
        f"{args.steps} it. x {batch:.0f} img",
        f"loss {losses[0]:.3f} -> {losses[-1]:.3f}",
        f"resume: loss Δ {loss_difference:.1e}, weights {'bitwise' if bitwise else f'max |Δ| {weight_difference:.1e}'}",
    ]
    if launched and launched.group(2) == "NO":
        notes.append("one CPU process runs without a DDP wrapper")
    status = "ok" if all(checks.values()) else failed(", ".join(name for name, ok in checks.items() if not ok))
    return row(
        "pretrain",
        case,
        status,
        images_per_s=images_per_s,
        step_ms=1000 * batch / images_per_s,
        peak_gpu_gib=summary.get("peak_gpu_memory_gib"),
        max_abs_diff=weight_difference,
        seconds=seconds,
        checks=checks,
        losses=losses,
        distributed_type=launched.group(2) if launched else None,
        run_dirs=[str(straight_dir), str(resumed_dir)],
        notes="; ".join(note for note in notes if note),
    )


# ----------------------------------------------------------------------------------------------------------------
# 2. Inference against HF Dinov2Model
# ----------------------------------------------------------------------------------------------------------------


def inference_config(args) -> RadDinoConfig:
    if args.dry_run:
        return RadDinoConfig(image_size=112, hidden_size=64, num_hidden_layers=2, num_attention_heads=4)
    return RadDinoConfig(image_size=518)


def inference_rows(args, device: torch.device) -> list[dict]:
    """HF `Dinov2Model` and `RadDinoModel` (same weights) at fp32 and bf16 autocast, `torch.compile(RadDinoModel)`."""
    config = inference_config(args)
    size = config.image_size
    torch.manual_seed(0)
    state_dict = RadDinoModel._from_config(config).state_dict()
    kinds = ("Dinov2Model", "RadDinoModel")
    models = {kind: build_model(kind, "sdpa", config, state_dict).to(device) for kind in kinds}
    label = {"Dinov2Model": "HF Dinov2Model", "RadDinoModel": "RadDinoModel"}
    rows = []
    for batch in args.inference_batches:
        pixels = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(batch)).to(device)
        with torch.inference_mode():
            reference = models["Dinov2Model"](pixels).last_hidden_state.float()
        cases = [(kind, "fp32") for kind in models] + [(kind, "bf16-autocast") for kind in models]
        cases.append(("RadDinoModel", "compile"))
        for kind, variant in cases:
            case = f"{label[kind]} {size} px, batch {batch}, {variant}"
            if variant == "bf16-autocast" and device.type != "cuda":
                rows.append(row("inference", case, skipped("CUDA autocast needs a GPU (bench_inference.py: CPU bf16)")))
                continue
            if variant == "compile" and args.skip_compile:
                rows.append(row("inference", case, skipped("--skip-compile")))
                continue
            if variant == "compile" and device.type != "cuda":
                rows.append(row("inference", case, skipped("torch.compile is timed on a GPU only (minutes on a CPU)")))
                continue
            rows.append(time_inference(args, models[kind], pixels, reference, variant, device, case))
            if variant == "compile":
                torch._dynamo.reset()  # frees the compiled graph before the next batch size compiles its own
    return rows


def time_inference(args, model, pixels, reference, variant: str, device: torch.device, case: str) -> dict:
    forward, notes = model, []
    if variant == "compile":
        forward = torch.compile(model, dynamic=False)
        started = time.perf_counter()
        try:
            with alarm(args.compile_timeout), torch.inference_mode():
                forward(pixels)
                synchronize(device)
        except CompileTimeout as error:
            return row("inference", case, failed(str(error)))
        except Exception as error:  # noqa: BLE001 - reported in the table instead of stopping the other checks
            return row("inference", case, failed(first_line(error)))
        notes.append(f"compile {time.perf_counter() - started:.0f} s")

    def call():
        with torch.inference_mode(), variant_context(variant, device.type):
            output = forward(pixels)
        synchronize(device)
        return output

    reset_peak_memory(device)
    output = call()
    seconds, _ = median_time(call, args.warmup, args.repeats)
    difference = (output.last_hidden_state.float() - reference).abs().max().item()
    status = "ok"
    if variant == "bf16-autocast":
        notes.append("not the same outputs (bf16)")
    elif difference > SAME_OUTPUT_ATOL:
        status = failed(f"max |Δ| {difference:.2e} > {SAME_OUTPUT_ATOL:g}")
    batch = pixels.shape[0]
    return row(
        "inference",
        case,
        status,
        images_per_s=batch / seconds,
        step_ms=1000 * seconds,
        peak_gpu_gib=peak_memory_gib(device),
        max_abs_diff=difference,
        notes="; ".join(notes),
    )


# ----------------------------------------------------------------------------------------------------------------
# 3. Report generation
# ----------------------------------------------------------------------------------------------------------------


def report_rows(args, device: torch.device) -> list[dict]:
    """One stage-2 (LoRA) step with gradient checkpointing, then greedy generation, for a generator built from a
    random RAD-DINO encoder and a small Llama (no download)."""
    from accelerate import Accelerator
    from torch.utils.data import DataLoader

    from image_processing_rad_dino import RadDinoImageProcessor
    from rad_dino_hf.report.builder import build_generator
    from rad_dino_hf.report.data import ReportCollator, ReportPair
    from rad_dino_hf.report.generation import GenerationSettings, generate_reports
    from rad_dino_hf.report.tiny_lm import tiny_llama, train_tokenizer
    from rad_dino_hf.report.training import LoraSettings, add_lora, train_loop

    if args.dry_run:
        config, size, pooling, lm_size, batch = inference_config(args), 56, 1, (32, 2, 2), 2
    else:
        config, size, pooling, lm_size, batch = RadDinoConfig(image_size=518), 518, 2, (256, 4, 4), 8
    torch.manual_seed(0)
    encoder = RadDinoModel(config)
    processor = RadDinoImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    tokenizer = train_tokenizer(REPORTS * 3, vocab_size=300)
    hidden, layers, heads = lm_size
    language_model = tiny_llama(tokenizer, hidden_size=hidden, num_layers=layers, num_heads=heads)
    model, llava_processor = build_generator(encoder, processor, language_model, tokenizer, pooling)
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    model = add_lora(model, LoraSettings())
    files = sorted(SAMPLE_IMAGES.glob("*.png"))
    pairs = [
        ReportPair(str(i), Image.open(files[i % len(files)]).convert("L"), REPORTS[i % len(REPORTS)], str(i))
        for i in range(batch)
    ]
    loader = DataLoader(pairs, batch_size=batch, collate_fn=ReportCollator(llava_processor, "Describe the findings."))
    lora_before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_B" in n}
    accelerator = Accelerator(mixed_precision="bf16" if device.type == "cuda" else "no", cpu=device.type != "cuda")
    case = f"{config.num_hidden_layers}-layer {config.hidden_size}-wide encoder {size} px + Llama {hidden}x{layers}"
    reset_peak_memory(device)
    started = time.perf_counter()
    losses = train_loop(model, loader, accelerator, epochs=1, lr=1e-3, warmup_fraction=0.0, description="report step")
    synchronize(device)
    step_seconds = time.perf_counter() - started
    after = {n: p.detach().cpu() for n, p in model.named_parameters() if n in lora_before}
    changed = any(not torch.equal(lora_before[n], after[n]) for n in lora_before)
    checks = {"loss_finite": all(map(math.isfinite, losses)) and len(losses) == 1, "lora_updated": changed}
    step_row = row(
        "report",
        f"train step (LoRA, grad. checkpointing), {case}, batch {batch}",
        "ok" if all(checks.values()) else failed(", ".join(k for k, ok in checks.items() if not ok)),
        images_per_s=batch / step_seconds,
        step_ms=1000 * step_seconds,
        peak_gpu_gib=peak_memory_gib(device),
        checks=checks,
        notes=f"loss {losses[0]:.3f}; {model.get_nb_trainable_parameters()[0] / 1e6:.2f} M trainable; first step "
        f"(includes warm-up)",
    )

    model.to(device)
    reset_peak_memory(device)
    started = time.perf_counter()
    # A random language model may end a report at once; the fixed length makes the time that of GENERATED_TOKENS.
    settings = GenerationSettings(max_new_tokens=GENERATED_TOKENS, min_new_tokens=GENERATED_TOKENS, batch_size=2)
    generated = generate_reports(model, llava_processor, pairs[:2], "Describe the findings.", settings, progress=False)
    synchronize(device)
    seconds = time.perf_counter() - started
    tokens = [r["tokens"] for r in generated]
    generate_row = row(
        "report",
        f"greedy generation, {GENERATED_TOKENS} new tokens, 2 images",
        "ok" if tokens == [GENERATED_TOKENS] * 2 else failed(f"{tokens} tokens, {GENERATED_TOKENS} each expected"),
        images_per_s=len(generated) / seconds,
        step_ms=1000 * seconds,
        peak_gpu_gib=peak_memory_gib(device),
        checks={"reports": len(generated), "tokens": tokens},
        notes=f"generated tokens {tokens}",
    )
    return [step_row, generate_row]


# ----------------------------------------------------------------------------------------------------------------
# Table and main
# ----------------------------------------------------------------------------------------------------------------

COLUMNS = [
    ("part", "part"),
    ("case", "case"),
    ("status", "status"),
    ("images_per_s", "images/s"),
    ("step_ms", "ms / step or batch"),
    ("peak_gpu_gib", "peak GPU GiB"),
    ("max_abs_diff", "max |Δ|"),
    ("notes", "notes"),
]


def cell(key: str, value) -> str:
    if value is None:
        return "-"
    if key == "max_abs_diff":
        return f"{value:.1e}"
    if isinstance(value, float):
        return f"{value:.3g}" if value < 100 else f"{value:.0f}"
    return str(value)


def format_table(rows: list[dict]) -> str:
    lines = [[title for _, title in COLUMNS]]
    lines += [[cell(key, r.get(key)) for key, _ in COLUMNS] for r in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(COLUMNS))]
    text = ["| " + " | ".join(c.ljust(w) for c, w in zip(line, widths)) + " |" for line in lines]
    text.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(text)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="tiny configs on the CPU; GPU-only parts skipped")
    parser.add_argument("--steps", type=int, default=None, help="pretraining iterations (default 30; dry run 4)")
    parser.add_argument("--batch-size", type=int, default=None, help="pretraining batch per GPU (default: recipe, 40)")
    parser.add_argument("--data", help="pretraining image folder (default: the embedded sample, linked)")
    parser.add_argument("--sample-copies", type=int, default=20, help="links of the sample per image (GPU run)")
    parser.add_argument("--num-workers", type=int, default=min(10, max(1, (os.cpu_count() or 2) - 2)))
    parser.add_argument("--inference-batches", type=int, nargs="+", default=None, help="default 32 64 (dry run 2)")
    parser.add_argument("--repeats", type=int, default=5, help="timed forwards per inference row (median)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed forwards per inference row")
    parser.add_argument("--skip-compile", action="store_true")
    parser.add_argument("--compile-timeout", type=int, default=240, help="seconds before a compile is given up")
    parser.add_argument("--launch-timeout", type=int, default=300, help="seconds per accelerate launch")
    parser.add_argument("--parts", nargs="+", default=["pretrain", "inference", "report"])
    parser.add_argument("--launch-modes", nargs="+", choices=list(LAUNCH_CONFIGS), default=list(LAUNCH_CONFIGS))
    parser.add_argument("--workdir", type=Path, help="keep the runs here (default: a temporary folder, removed)")
    parser.add_argument("--output", type=Path, help="write the rows as JSON here")
    args = parser.parse_args(argv)
    args.steps = args.steps or (4 if args.dry_run else 30)
    args.inference_batches = args.inference_batches or ([2] if args.dry_run else [32, 64])
    if args.dry_run:
        args.repeats, args.warmup = min(args.repeats, 2), min(args.warmup, 1)
    return args


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        return f"{properties.name} ({properties.total_memory / 2**30:.0f} GiB), CUDA {torch.version.cuda}"
    return f"CPU ({os.cpu_count()} logical cores)"


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.dry_run else "cpu")
    if not args.dry_run and device.type != "cuda":
        print("No CUDA device: run with --dry-run on a CPU.", file=sys.stderr)
        return 2
    started = time.perf_counter()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="gpu_check_"))
    workdir.mkdir(parents=True, exist_ok=True)
    header = (
        f"# RAD-DINO GPU check{' (DRY RUN: tiny configs, CPU; timings mean nothing)' if args.dry_run else ''}\n"
        f"device: {describe_device(device)} | torch {torch.__version__} | transformers {transformers.__version__}"
    )
    print(header, flush=True)
    rows: list[dict] = []
    try:
        if "pretrain" in args.parts:
            for mode in args.launch_modes:
                print(f"[{time.perf_counter() - started:5.0f} s] pretraining, {mode}", flush=True)
                rows.append(pretraining_row(args, mode, device, workdir))
        if "inference" in args.parts:
            print(f"[{time.perf_counter() - started:5.0f} s] inference", flush=True)
            rows += inference_rows(args, device)
        if "report" in args.parts:
            print(f"[{time.perf_counter() - started:5.0f} s] report generation", flush=True)
            rows += report_rows(args, device)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    total = time.perf_counter() - started
    print()
    print(format_table(rows))
    print(
        "\nimages/s and ms: pretraining = median over iterations after the first "
        f"{WARMUP_STEPS} (data loading included); inference = median of {args.repeats} forwards of one batch; "
        "report = one step / one generate call. max |Δ|: pretraining = exported teacher, resumed vs straight run; "
        "inference = last_hidden_state vs HF Dinov2Model fp32. "
        + ("peak GPU GiB: '-', no CUDA device (dry run)." if device.type != "cuda" else "")
    )
    for r in rows:
        if "log_tail" in r:
            print(f"\n--- {r['case']}: log tail ---\n{r['log_tail']}")
    print(f"\ntotal wall time {total:.0f} s")
    if args.output:
        payload = {
            "dry_run": args.dry_run,
            "device": describe_device(device),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "command": " ".join(["python", "benchmarks/gpu_check.py", *(argv if argv is not None else sys.argv[1:])]),
            "rows": rows,
            "total_seconds": total,
        }
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(payload, indent=2, default=str))
        print(f"wrote {args.output}")
    return 0 if not any(r["status"].startswith("failed") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
