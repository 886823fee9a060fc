#!/usr/bin/env python
"""CPU inference benchmark: RadDinoModel vs transformers' Dinov2Model (same random weights).

Prints one table: images/s, ms/image, speed ratio vs HF `Dinov2Model` with the same attention and batch size,
max |Δ| of `last_hidden_state` vs the HF fp32 sdpa output on the same input, achieved GFLOP/s (analytic FLOPs)
and % of the CPU's fp32 matmul peak measured in the same run (fastest 2048^2 torch.mm at start and end).
Every row is timed alternately with an HF fp32 baseline of the same attention and batch (HF, row, HF, row, ...)
so that load from other processes on shared cores hits both alike; "vs HF" uses those interleaved medians.

Rows: {HF Dinov2Model, RadDinoModel} x {sdpa, eager} x batch sizes, plus RadDinoModel variants:
  compile           torch.compile (default inductor mode), fp32: same outputs up to rounding
  compile-freezing  torch.compile with inductor `freezing=True` (weights constant-folded / prepacked), fp32
  bf16-autocast     torch.autocast("cpu", dtype=torch.bfloat16): NOT the same outputs (see max |Δ|)
  matmul-medium     torch.set_float32_matmul_precision("medium"): fp32 matmuls may use bf16 internally
  mkldnn-off        torch.backends.mkldnn disabled (oneDNN is only used by the patch-embedding conv here)

Examples:
  python benchmarks/bench_inference.py                      # full size (ViT-B/14, 518 px), ~12-15 min on 2 idle cores
  python benchmarks/bench_inference.py --quick              # tiny config, smoke test in seconds
  python benchmarks/bench_inference.py --skip-compile --output-json /tmp/bench.json
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import json
import os
import platform
import signal
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO_ROOT = Path(__file__).resolve().parent.parent

import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import Dinov2Config, Dinov2Model  # noqa: E402

from configuration_rad_dino import RadDinoConfig  # noqa: E402
from modeling_rad_dino import RadDinoModel  # noqa: E402

ALL_VARIANTS = ["compile", "compile-freezing", "bf16-autocast", "matmul-medium", "mkldnn-off"]
DEFAULT_VARIANTS = ALL_VARIANTS
INTERESTING_FLAGS = ["avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16"]


# ----------------------------------------------------------------------------------------------------------------
# Machine description and peak
# ----------------------------------------------------------------------------------------------------------------


def cpu_info() -> dict:
    model_name, flags = platform.processor() or "unknown", set()
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and model_name in ("unknown", "", platform.processor()):
                    model_name = value.strip()
                elif key == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count()
    return {
        "cpu_model": model_name,
        "logical_cpus": os.cpu_count(),
        "usable_cpus": affinity,
        "flags": {flag: flag in flags for flag in INTERESTING_FLAGS},
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "num_threads": torch.get_num_threads(),
        "mkldnn_available": torch.backends.mkldnn.is_available(),
        "loadavg_start": os.getloadavg(),
    }


def median_time(fn, warmup: int, repeats: int) -> tuple[float, list[float]]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def matmul_peak(size: int, dtype: torch.dtype, repeats: int = 10) -> tuple[float, float]:
    """GFLOP/s of a square `torch.mm` (warmed up): (median, best)."""
    if dtype == torch.bfloat16 and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        raise RuntimeError("bf16 not supported by oneDNN on this CPU")
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator).to(dtype)
    b = torch.randn(size, size, generator=generator).to(dtype)
    seconds, times = median_time(lambda: torch.mm(a, b), warmup=3, repeats=repeats)
    return 2 * size**3 / seconds / 1e9, 2 * size**3 / min(times) / 1e9


# ----------------------------------------------------------------------------------------------------------------
# Model construction and FLOPs
# ----------------------------------------------------------------------------------------------------------------


def make_config(args) -> RadDinoConfig:
    if args.quick:
        return RadDinoConfig(
            image_size=args.image_size or 112,
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            patch_size=14,
        )
    return RadDinoConfig(image_size=args.image_size or 518)


def dinov2_config_from(config: RadDinoConfig) -> Dinov2Config:
    """The stock `Dinov2Config` with the same backbone fields (the head fields are RAD-DINO's only)."""
    fields = set(Dinov2Config().to_dict()) - {"model_type", "architectures", "transformers_version", "_name_or_path"}
    ours = config.to_dict()
    return Dinov2Config(**{key: ours[key] for key in fields if key in ours})


def analytic_flops_per_image(config, image_size: int) -> dict:
    """Multiply-adds x 2 of the ViT forward (matmuls and the patch conv; softmax/norms/GELU are not counted)."""
    patch, dim, channels = config.patch_size, config.hidden_size, config.num_channels
    grid = image_size // patch
    patches = grid * grid
    tokens = patches + 1  # CLS, no registers
    hidden = int(dim * config.mlp_ratio)
    patch_embed = 2 * patches * dim * channels * patch * patch
    per_layer = {
        "qkv": 2 * 3 * tokens * dim * dim,
        "attn_proj": 2 * tokens * dim * dim,
        "mlp": 2 * 2 * tokens * dim * hidden,
        "attention_scores_and_values": 2 * 2 * tokens * tokens * dim,  # QK^T and A@V
    }
    layer_total = sum(per_layer.values())
    total = patch_embed + config.num_hidden_layers * layer_total
    return {
        "tokens": tokens,
        "patch_embed": patch_embed,
        "per_layer": per_layer,
        "per_layer_total": layer_total,
        "total": total,
    }


def build_model(kind: str, attn: str, config: RadDinoConfig, state_dict: dict) -> torch.nn.Module:
    if kind == "RadDinoModel":
        model = RadDinoModel._from_config(config, attn_implementation=attn)
    else:
        model = Dinov2Model._from_config(dinov2_config_from(config), attn_implementation=attn)
    missing, unexpected = model.load_state_dict(state_dict, strict=True)
    assert not missing and not unexpected, (missing, unexpected)
    return model.eval()


# ----------------------------------------------------------------------------------------------------------------
# Timing one row
# ----------------------------------------------------------------------------------------------------------------


class CompileTimeout(Exception):
    pass


@contextlib.contextmanager
def alarm(seconds: int):
    """Raise `CompileTimeout` in the main thread after `seconds` (POSIX only; no-op elsewhere)."""
    if seconds <= 0 or not hasattr(signal, "SIGALRM"):
        yield
        return

    def handler(signum, frame):
        raise CompileTimeout(f"timeout after {seconds} s")

    previous = signal.signal(signal.SIGALRM, handler)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@contextlib.contextmanager
def variant_context(variant: str, device_type: str = "cpu"):
    """The numeric setting a variant runs under; `bf16-autocast` autocasts on `device_type` ("cpu" or "cuda")."""
    if variant == "bf16-autocast":
        with torch.autocast(device_type, dtype=torch.bfloat16):
            yield
    elif variant == "matmul-medium":
        previous = torch.get_float32_matmul_precision()
        torch.set_float32_matmul_precision("medium")
        try:
            yield
        finally:
            torch.set_float32_matmul_precision(previous)
    elif variant == "mkldnn-off":
        previous = torch._C._get_mkldnn_enabled()
        torch._C._set_mkldnn_enabled(False)
        try:
            yield
        finally:
            torch._C._set_mkldnn_enabled(previous)
    else:
        yield


def run_row(model, pixel_values, variant: str, args, baseline_model=None) -> dict:
    """Time the forward; returns seconds per batch (median), all repeats and the output.

    With `baseline_model`, its (plain fp32) forward is timed alternately with the variant's, so that load from other
    processes on shared cores hits both alike; its median is returned as `baseline_seconds`.
    """
    info: dict = {}
    forward = model
    if variant.startswith("compile"):
        import torch._inductor.config as inductor_config
        from torch._dynamo import reset as dynamo_reset

        dynamo_reset()
        inductor_config.freezing = variant == "compile-freezing"
        forward = torch.compile(model, dynamic=False)
        start = time.perf_counter()
        try:
            with alarm(args.compile_timeout), torch.inference_mode():
                forward(pixel_values)  # compiles
        except CompileTimeout as error:
            return {"status": f"failed: {error}"}
        except Exception as error:  # noqa: BLE001 - reported in the table instead of crashing
            message = str(error).strip().splitlines()[0][:120] if str(error).strip() else ""
            return {"status": f"failed: {type(error).__name__}: {message}"}
        finally:
            inductor_config.freezing = False
        info["compile_s"] = time.perf_counter() - start

    def call():
        with torch.inference_mode(), variant_context(variant):
            return forward(pixel_values)

    output = call()  # also counts as a warmup
    if baseline_model is None:
        seconds, times = median_time(call, max(args.warmup - 1, 0), args.repeats)
    else:
        with torch.inference_mode():
            for _ in range(max(args.warmup, 1)):
                baseline_model(pixel_values)
            for _ in range(max(args.warmup - 1, 0)):
                call()
            times, baseline_times = [], []
            for _ in range(args.repeats):
                begin = time.perf_counter()
                baseline_model(pixel_values)
                baseline_times.append(time.perf_counter() - begin)
                begin = time.perf_counter()
                call()
                times.append(time.perf_counter() - begin)
        seconds = statistics.median(times)
        info["baseline_seconds"] = statistics.median(baseline_times)
    last_hidden = output.last_hidden_state.float()
    if variant.startswith("compile"):
        dynamo_reset()
    return {"status": "ok", "seconds": seconds, "times": times, "last_hidden": last_hidden, **info}


# ----------------------------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------------------------


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--repeats", type=int, default=3, help="timed forwards per row (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed forwards per row before timing")
    parser.add_argument("--image-size", type=int, default=None, help="default 518 (112 with --quick)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--attentions", nargs="+", default=["sdpa", "eager"], choices=["sdpa", "eager"])
    parser.add_argument(
        "--variants",
        nargs="*",
        default=DEFAULT_VARIANTS,
        choices=ALL_VARIANTS,
        help=f"RadDinoModel variants to add (default: {' '.join(DEFAULT_VARIANTS)}; all: {' '.join(ALL_VARIANTS)})",
    )
    parser.add_argument("--variant-attention", default="sdpa", choices=["sdpa", "eager"])
    parser.add_argument(
        "--variant-batch-sizes", type=int, nargs="+", default=None, help="batch sizes for variants (default: all)"
    )
    parser.add_argument("--skip-compile", action="store_true", help="drop the torch.compile variants")
    parser.add_argument("--compile-timeout", type=int, default=360, help="seconds before a compile is given up")
    parser.add_argument("--peak-size", type=int, default=2048, help="square matmul size for the peak measurement")
    parser.add_argument("--peak-repeats", type=int, default=20, help="timed matmuls per peak measurement")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="tiny config (2 layers, hidden 64, 112 px)")
    parser.add_argument("--output-json", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.skip_compile:
        args.variants = [v for v in args.variants if not v.startswith("compile")]
    if args.variant_batch_sizes is None:
        args.variant_batch_sizes = args.batch_sizes
    return args


def format_table(rows: list[dict]) -> str:
    headers = [
        "model",
        "attn",
        "batch",
        "variant",
        "images/s",
        "ms/image",
        "vs HF",
        "max |Δ| vs HF fp32 sdpa",
        "GFLOP/s",
        "% fp32 peak",
        "notes",
    ]
    lines = []
    for row in rows:
        if row["status"] != "ok":
            cells = [
                row["model"],
                row["attn"],
                str(row["batch"]),
                row["variant"],
                "-",
                "-",
                "-",
                "-",
                "-",
                "-",
                row["status"],
            ]
        else:
            cells = [
                row["model"],
                row["attn"],
                str(row["batch"]),
                row["variant"],
                f"{row['images_per_s']:.3f}" if row["images_per_s"] < 10 else f"{row['images_per_s']:.1f}",
                f"{row['ms_per_image']:.1f}" if row["ms_per_image"] >= 10 else f"{row['ms_per_image']:.3f}",
                f"{row['ratio_vs_hf']:.2f}×" if row["ratio_vs_hf"] is not None else "-",
                f"{row['max_abs_diff']:.2e}",
                f"{row['gflops_per_s']:.1f}",
                f"{row['pct_fp32_peak']:.1f}%",
                row["notes"],
            ]
        lines.append(cells)
    widths = [max(len(h), *(len(c[i]) for c in lines)) for i, h in enumerate(headers)]
    right = {"batch", "images/s", "ms/image", "vs HF", "max |Δ| vs HF fp32 sdpa", "GFLOP/s", "% fp32 peak"}

    def fmt(cells):
        return (
            "| "
            + " | ".join(c.rjust(w) if h in right else c.ljust(w) for c, w, h in zip(cells, widths, headers))
            + " |"
        )

    sep = (
        "|" + "|".join(("-" * (w + 1) + ":") if h in right else ("-" * (w + 2)) for w, h in zip(widths, headers)) + "|"
    )
    return "\n".join([fmt(headers), sep, *(fmt(c) for c in lines)])


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    config = make_config(args)
    image_size = config.image_size if isinstance(config.image_size, int) else config.image_size[0]
    started = time.time()

    machine = cpu_info()
    print("# RAD-DINO inference benchmark (CPU)")
    print(f"date (local clock): {datetime.datetime.now().isoformat(timespec='seconds')}")
    print(
        f"CPU: {machine['cpu_model']} | logical CPUs {machine['logical_cpus']} (usable {machine['usable_cpus']})"
        f" | torch threads {machine['num_threads']} | torch CPU capability {machine['torch_cpu_capability']}"
    )
    print("flags: " + ", ".join(f"{k}={'yes' if v else 'no'}" for k, v in machine["flags"].items()))
    print(
        f"python {machine['python']} | torch {machine['torch']} | transformers {machine['transformers']}"
        f" | mkldnn {machine['mkldnn_available']} | loadavg at start {machine['loadavg_start']}"
    )
    print(
        f"config: {'QUICK tiny' if args.quick else 'full-size RAD-DINO'} | image {image_size} px | patch "
        f"{config.patch_size} | hidden {config.hidden_size} | layers {config.num_hidden_layers} | heads "
        f"{config.num_attention_heads} | repeats {args.repeats} | warmup {args.warmup}"
    )

    flops = analytic_flops_per_image(config, image_size)
    gflop = flops["total"] / 1e9
    print(
        f"analytic FLOPs/image: {gflop:.4g} GFLOP (N={flops['tokens']} tokens; patch-embed "
        f"{flops['patch_embed'] / 1e9:.2f} + {config.num_hidden_layers} layers x {flops['per_layer_total'] / 1e9:.2f}"
        f" [qkv {flops['per_layer']['qkv'] / 1e9:.2f}, proj {flops['per_layer']['attn_proj'] / 1e9:.2f}, mlp "
        f"{flops['per_layer']['mlp'] / 1e9:.2f}, "
        f"QK^T+AV {flops['per_layer']['attention_scores_and_values'] / 1e9:.2f}])"
    )

    native_bf16 = machine["flags"]["avx512_bf16"] or machine["flags"]["amx_bf16"]
    peaks: dict[str, list] = {"fp32": [], "bf16": []}

    def measure_peaks(when: str) -> None:
        """Peak = fastest of the repeats: on shared cores, other processes can only make a run slower."""
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            try:
                median, best = matmul_peak(args.peak_size, dtype, repeats=args.peak_repeats)
            except Exception as error:  # noqa: BLE001
                print(f"{when}: {name} matmul failed ({type(error).__name__}: {error})")
                continue
            peaks[name].append({"when": when, "median": median, "best": best})
        print(
            f"matmul peak at {when} ({args.peak_size}^2 torch.mm, {args.peak_repeats} runs, median [best]): "
            + " | ".join(
                f"{name} {p[-1]['median']:.1f} [{p[-1]['best']:.1f}] GFLOP/s"
                for name, p in peaks.items()
                if p and p[-1]["when"] == when
            )
            + (" (bf16: native avx512_bf16/amx)" if native_bf16 else " (bf16: no native bf16 flag)"),
            flush=True,
        )

    measure_peaks("start")
    print(flush=True)

    torch.manual_seed(args.seed)
    reference_model = RadDinoModel._from_config(config)
    state_dict = {k: v.clone() for k, v in reference_model.state_dict().items()}
    del reference_model

    def make_input(batch: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(args.seed + 1000 + batch)
        return torch.randn(batch, config.num_channels, image_size, image_size, generator=generator)

    inputs = {batch: make_input(batch) for batch in sorted(set(args.batch_sizes) | set(args.variant_batch_sizes))}
    references: dict[int, torch.Tensor] = {}
    rows: list[dict] = []
    baselines: dict[tuple[str, int], float] = {}

    def reference_for(batch: int) -> torch.Tensor:
        if batch not in references:
            model = build_model("Dinov2Model", "sdpa", config, state_dict)
            with torch.inference_mode():
                references[batch] = model(inputs[batch]).last_hidden_state.float()
        return references[batch]

    def record(kind, attn, batch, variant, result) -> dict:
        row = {"model": kind, "attn": attn, "batch": batch, "variant": variant, "status": result["status"]}
        if result["status"] != "ok":
            print(f"  {kind} {attn} b={batch} {variant}: {result['status']}", flush=True)
            rows.append(row)
            return row
        seconds = result["seconds"]
        baseline = result.get("baseline_seconds") or baselines.get((attn, batch))
        gflops_per_s = gflop * batch / seconds
        notes = []
        if result.get("compile_s") is not None:
            notes.append(f"compile {result['compile_s']:.0f} s")
        if variant == "bf16-autocast":
            notes.append("NOT same outputs (bf16)")
        spread = (max(result["times"]) - min(result["times"])) / seconds
        if spread > 0.10:
            notes.append(f"spread {100 * spread:.0f}%")
        row.update(
            seconds_per_batch=seconds,
            times=result["times"],
            images_per_s=batch / seconds,
            ms_per_image=1000 * seconds / batch,
            ratio_vs_hf=(baseline / seconds) if baseline else None,
            max_abs_diff=(result["last_hidden"] - reference_for(batch)).abs().max().item(),
            gflops_per_s=gflops_per_s,
            compile_s=result.get("compile_s"),
            baseline_seconds_paired=result.get("baseline_seconds"),
            notes="; ".join(notes),
        )
        print(
            f"  {kind} {attn} b={batch} {variant}: {row['ms_per_image']:.1f} ms/image, "
            f"max|Δ| {row['max_abs_diff']:.2e}",
            flush=True,
        )
        rows.append(row)
        return row

    # 1) HF Dinov2Model vs RadDinoModel, fp32, eager PyTorch. The two models of a pair are timed alternately
    #    (HF, Rad, HF, Rad, ...) so that load from other processes on the shared cores hits both alike.
    for attn in sorted(args.attentions, key=lambda a: a != "sdpa"):  # sdpa first: it is the reference
        pair = {
            "HF Dinov2Model": build_model("Dinov2Model", attn, config, state_dict),
            "RadDinoModel": build_model("RadDinoModel", attn, config, state_dict),
        }
        for batch in args.batch_sizes:
            print(
                f"[{time.time() - started:6.0f}s] fp32 attn={attn} batch={batch} (HF and RadDino alternating)",
                flush=True,
            )
            x = inputs[batch]
            outputs, times = {}, {kind: [] for kind in pair}
            with torch.inference_mode():
                for kind, model in pair.items():
                    outputs[kind] = model(x).last_hidden_state.float()
                    for _ in range(max(args.warmup - 1, 0)):
                        model(x)
                for _ in range(args.repeats):
                    for kind, model in pair.items():
                        begin = time.perf_counter()
                        model(x)
                        times[kind].append(time.perf_counter() - begin)
            if attn == "sdpa":
                references[batch] = outputs["HF Dinov2Model"]
            baselines[(attn, batch)] = statistics.median(times["HF Dinov2Model"])
            for kind in pair:
                record(
                    kind,
                    attn,
                    batch,
                    "fp32",
                    {
                        "status": "ok",
                        "seconds": statistics.median(times[kind]),
                        "times": times[kind],
                        "last_hidden": outputs[kind],
                    },
                )
        del pair
        gc.collect()

    # 2) RadDinoModel variants, each timed alternately with the HF fp32 baseline of the same attention and batch
    #    (ratio = HF median / variant median from these interleaved runs).
    if args.variants:
        model = build_model("RadDinoModel", args.variant_attention, config, state_dict)
        baseline_model = build_model("Dinov2Model", args.variant_attention, config, state_dict)
        for variant in args.variants:
            for batch in args.variant_batch_sizes:
                print(
                    f"[{time.time() - started:6.0f}s] RadDinoModel attn={args.variant_attention} batch={batch} "
                    f"variant={variant}",
                    flush=True,
                )
                result = run_row(model, inputs[batch], variant, args, baseline_model=baseline_model)
                record("RadDinoModel", args.variant_attention, batch, variant, result)
        del model, baseline_model
        gc.collect()

    # table order: per batch, baselines then RadDino, then variants
    order = {"fp32": 0, **{v: i + 1 for i, v in enumerate(ALL_VARIANTS)}}
    attn_order = {a: i for i, a in enumerate(args.attentions)}
    rows.sort(
        key=lambda r: (r["batch"], order[r["variant"]], attn_order.get(r["attn"], 9), r["model"] != "HF Dinov2Model")
    )

    measure_peaks("end")
    peak_fp32 = max(p["best"] for p in peaks["fp32"])
    peak_bf16 = max((p["best"] for p in peaks["bf16"]), default=None)
    for row in rows:
        if row["status"] == "ok":
            row["pct_fp32_peak"] = 100 * row["gflops_per_s"] / peak_fp32
            if row["variant"] == "bf16-autocast" and peak_bf16:
                row["pct_bf16_peak"] = 100 * row["gflops_per_s"] / peak_bf16
                row["notes"] = "; ".join([row["notes"], f"{row['pct_bf16_peak']:.1f}% of bf16 peak"]).strip("; ")

    total = time.time() - started
    print()
    print(format_table(rows))
    print()
    print(
        f"vs HF = median time of HF Dinov2Model (same attention, same batch, fp32; timed alternately with the "
        f"row's own runs) / median time of the row; max |Δ| on "
        f"last_hidden_state vs HF Dinov2Model fp32 sdpa on the same input; GFLOP/s from {gflop:.4g} GFLOP/image "
        f"(analytic); % fp32 peak = GFLOP/s / {peak_fp32:.1f} GFLOP/s, the fastest fp32 {args.peak_size}^2 "
        f"torch.mm of this run" + (f" (bf16: {peak_bf16:.1f} GFLOP/s)." if peak_bf16 else ".")
    )
    print(f"total wall time {total:.0f} s; loadavg at end {os.getloadavg()}")

    if args.output_json:
        machine["loadavg_end"] = os.getloadavg()
        payload = {
            "machine": machine,
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "image_size": image_size,
            "flops_per_image": flops,
            "peak_gflops": {"fp32": peak_fp32, "bf16": peak_bf16, "matmul_size": args.peak_size, "measurements": peaks},
            "rows": rows,
            "total_seconds": total,
        }
        args.output_json.parent.mkdir(parents=True, exist_ok=True)
        args.output_json.write_text(json.dumps(payload, indent=2, default=str))
        print(f"wrote {args.output_json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
