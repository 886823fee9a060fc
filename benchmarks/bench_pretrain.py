"""Pretraining throughput: training-step images/s and peak memory vs the data pipeline's images/s, same cores.

Rows: a small ViT/14 (configs/cpu_small.yaml as it stands: since 2026-11-28 hidden 128, 4 layers, 112 px globals,
2 x 56 px locals) and ViT-B/14 (DINOv2 ViT-B recipe defaults: 2 x 224 px globals, 8 x 98 px locals, 65,536
prototypes), batch 8 each, fp32 and (where the CPU has bf16) bf16 autocast. The step is the trainer's real
`train_step` (teacher forward, student forward + backward, AdamW, EMA) on synthetic crops; the pipeline is the real
dataloader (read + decode + multi-crop in workers) on real radiographs. Each configuration runs in a fresh
subprocess so peak memory (max RSS) is its own.

    python benchmarks/bench_pretrain.py                 # full table (~10 min on 2 cores)
    python benchmarks/bench_pretrain.py --quick         # tiny smoke run
"""

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CONFIGS = {
    "ViT-small/14 (cpu_small)": ["--config", str(REPO / "configs" / "cpu_small.yaml")],
    "ViT-B/14 (DINOv2 ViT-B)": [
        "--config",
        "",
        "--set",
        "student.pretrained=random",
        "student.drop_path_rate=0.1",
    ],
    "tiny (smoke)": [
        "--config",
        str(REPO / "configs" / "cpu_small.yaml"),
        "--set",
        "student.hidden_size=32",
        "student.num_hidden_layers=2",
        "student.num_attention_heads=2",
        "crops.global_crops_size=56",
        "crops.local_crops_size=28",
        "crops.local_crops_number=2",
        "dino.head_n_prototypes=64",
        "ibot.head_n_prototypes=64",
    ],
}


def cpu_description() -> str:
    model = next(
        (line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?"
    )
    flags = next((line.split(":", 1)[1].split() for line in open("/proc/cpuinfo") if line.startswith("flags")), [])
    wanted = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    return f"{model}, {os.cpu_count()} logical CPUs, flags {' '.join(wanted)}, {platform.python_version()}"


def measure(args: argparse.Namespace) -> dict:
    """One configuration in this process: training steps, then the data pipeline."""
    import torch

    import rad_dino_hf.cli.pretrain as train_pretrain
    from rad_dino_hf.trainer import Pretrainer, RunOptions, build_dataloader

    torch.set_num_threads(args.threads)
    cli = train_pretrain.build_parser().parse_args(
        [*json.loads(args.config_args), "--data", args.images, "--output-dir", tempfile.mkdtemp()]
        + [
            "--set",
            f"train.batch_size_per_gpu={args.batch}",
            f"train.mixed_precision={args.precision}",
            "train.log_every=1000000",
            "train.checkpoint_every=1000000",
        ]
    )
    recipe = train_pretrain.resolve_recipe(cli)
    trainer = Pretrainer(recipe, RunOptions(resume="never", progress=False))
    trainer.consecutive_nan = 0
    crops = recipe.crops
    generator = torch.Generator().manual_seed(0)
    batch = {
        "global_crops": torch.randn(
            2, args.batch, 3, crops.global_crops_size, crops.global_crops_size, generator=generator
        ),
        "local_crops": torch.randn(
            crops.local_crops_number, args.batch, 3, crops.local_crops_size, crops.local_crops_size, generator=generator
        ),
    }
    for _ in range(args.warmup):
        trainer.train_step(batch)
    step_seconds = []
    for _ in range(args.steps):
        started = time.perf_counter()
        trainer.train_step(batch)
        step_seconds.append(time.perf_counter() - started)
    step_seconds.sort()
    median_step = step_seconds[len(step_seconds) // 2]
    peak_rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2

    pipeline = {}
    for workers in args.workers:
        recipe.train.num_workers = workers
        loader = iter(build_dataloader(recipe, 0, 1))
        next(loader)  # start-up (workers spawn) is not throughput
        started, images = time.perf_counter(), 0
        while images < args.pipeline_images:
            images += next(loader)["global_crops"].shape[1]
        pipeline[workers] = images / (time.perf_counter() - started)
    parameters = sum(p.numel() for p in trainer.student.parameters())
    return {
        "step_seconds": median_step,
        "train_images_per_second": args.batch / median_step,
        "peak_rss_gb": peak_rss_gb,
        "pipeline_images_per_second": pipeline,
        "student_parameters_m": parameters / 1e6,
        "crops": f"2x{crops.global_crops_size} + {crops.local_crops_number}x{crops.local_crops_size}",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--images",
        default=str(REPO.parent / "shared" / "data" / "pediatric-pneumonia" / "train"),
        help="real radiographs for the pipeline (default: shared pediatric set)",
    )
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--pipeline-images", type=int, default=96)
    parser.add_argument("--precisions", nargs="+", default=["no", "bf16"])
    parser.add_argument("--configs", nargs="+", default=["ViT-small/14 (cpu_small)", "ViT-B/14 (DINOv2 ViT-B)"])
    parser.add_argument("--quick", action="store_true", help="tiny model, 2 steps: a smoke test")
    parser.add_argument("--output-json")
    parser.add_argument("--single", help=argparse.SUPPRESS)
    parser.add_argument("--config-args", help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="no", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.single:
        print("RESULT " + json.dumps(measure(args)))
        return
    if args.quick:
        args.configs, args.steps, args.pipeline_images, args.precisions = ["tiny (smoke)"], 2, 16, ["no"]
        args.images = str(REPO / "data" / "sample" / "images")
    if not Path(args.images).is_dir():  # the default is the project's shared data set, absent from a plain clone
        print(f"skipped: {args.images} is not here; pass --images FOLDER (e.g. data/sample/images) or --quick")
        return

    print(
        f"# bench_pretrain on {cpu_description()}; batch {args.batch}, {args.threads} threads, median of "
        f"{args.steps} steps after {args.warmup} warm-up"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    rows = []
    for name in args.configs:
        for precision in args.precisions:
            command = [
                sys.executable,
                __file__,
                "--single",
                name,
                "--config-args",
                json.dumps(CONFIGS[name]),
                "--precision",
                precision,
                "--images",
                args.images,
                "--batch",
                str(args.batch),
                "--steps",
                str(args.steps),
                "--warmup",
                str(args.warmup),
                "--threads",
                str(args.threads),
                "--pipeline-images",
                str(args.pipeline_images),
                "--workers",
                *map(str, args.workers),
            ]
            result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO)
            line = next((out for out in result.stdout.splitlines() if out.startswith("RESULT ")), None)
            if line is None:
                rows.append({"config": name, "precision": precision, "error": result.stderr.strip().splitlines()[-1]})
                continue
            result = json.loads(line[len("RESULT ") :])
            result["pipeline_images_per_second"] = {int(w): v for w, v in result["pipeline_images_per_second"].items()}
            rows.append({"config": name, "precision": precision, **result})

    workers = args.workers
    header = (
        "| model | crops | precision | params (M) | train img/s | s/step | peak RSS (GB) | "
        + " | ".join(f"pipeline img/s ({w} workers)" for w in workers)
        + " | pipeline ÷ train (best) |"
    )
    print(header)
    print("|" + "---|" * (8 + len(workers)))
    for row in rows:
        if "error" in row:
            print(f"| {row['config']} | | {row['precision']} | failed: {row['error']} |")
            continue
        pipe = row["pipeline_images_per_second"]
        best = max(pipe.values())
        print(
            f"| {row['config']} | {row['crops']} | {row['precision']} | {row['student_parameters_m']:.1f} | "
            f"{row['train_images_per_second']:.2f} | {row['step_seconds']:.2f} | {row['peak_rss_gb']:.2f} | "
            + " | ".join(f"{pipe[w]:.1f}" for w in workers)
            + f" | {best / row['train_images_per_second']:.1f}× |"
        )
    if args.output_json:
        Path(args.output_json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
