#!/usr/bin/env python
"""Features-job benchmark: the embeddings job (rad_dino_hf/embeddings.py) vs the bare model forward, on the same images.

One run, on N synthetic radiograph-like PNGs (default 64, larger than the crop so resizing is real work):

- bare forward: images/s of `RadDinoModel` on already-preprocessed pixels, batches of --batch-size, fp32;
- the job (read + preprocess in DataLoader workers, batched forward, Parquet shards): images/s with 0 / 1 / 2
  workers, and its ratio to the bare forward (goal >= 0.9);
- bf16: the job with --dtype bf16, images/s and the cosine of its CLS tokens to the fp32 job's (mean and min);
- peak RSS of the job (a fresh process each, workers included) for N and 4N images with shards of N / 4 rows:
  memory should not grow with the number of images (goal: growth < 10 %).

Default: full-size random ViT-B/14 at 518 px (slow on a CPU: minutes). --quick: a tiny model at 56 px on 8 images,
a smoke test in seconds. Results are printed as a table and written to --output-json.

Examples:
  python benchmarks/bench_features.py                     # full size, 64 images
  python benchmarks/bench_features.py --images 256 --batch-size 32 --output-json /tmp/bench_features.json
  python benchmarks/bench_features.py --quick
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO_ROOT = Path(__file__).resolve().parent.parent

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image  # noqa: E402

from configuration_rad_dino import RadDinoConfig  # noqa: E402
from image_processing_rad_dino import RadDinoImageProcessor  # noqa: E402
from modeling_rad_dino import RadDinoModel  # noqa: E402
from rad_dino_hf.embeddings import (  # noqa: E402
    EmbeddingSettings,
    files_source,
    list_images,
    read_embeddings,
    vectors,
    write_embeddings,
)

TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=56)


def build(quick: bool) -> tuple[RadDinoModel, RadDinoImageProcessor, int]:
    """A random encoder, its processor and the side of the synthetic images."""
    torch.manual_seed(0)
    if quick:
        processor = RadDinoImageProcessor(size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56})
        return RadDinoModel(RadDinoConfig(**TINY)).eval(), processor, 80
    return RadDinoModel(RadDinoConfig()).eval(), RadDinoImageProcessor(), 640


def write_images(folder: Path, count: int, side: int) -> Path:
    """`count` grey PNGs: a smooth gradient and an ellipse (thorax-like) plus noise, different per image."""
    folder.mkdir(parents=True, exist_ok=True)
    rows, columns = np.mgrid[0:side, 0:side] / side
    for index in range(count):
        generator = np.random.default_rng(index)
        ellipse = ((rows - 0.5) / 0.35) ** 2 + ((columns - 0.5) / (0.25 + 0.1 * generator.random())) ** 2 < 1
        image = 60 + 120 * rows + 50 * ellipse + generator.normal(0, 12, (side, side))
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(folder / f"image_{index:05d}.png")
    return folder


@torch.inference_mode()
def bare_forward(model, processor, files: list[Path], batch_size: int) -> float:
    """Images/s of the model alone on preprocessed pixels (one warm-up batch first)."""
    pixels = processor([str(path) for path in files], return_tensors="pt")["pixel_values"]
    model(pixels[:batch_size])
    start = time.perf_counter()
    for offset in range(0, len(pixels), batch_size):
        model(pixels[offset : offset + batch_size])
    return len(pixels) / (time.perf_counter() - start)


def job(model, processor, folder: Path, output: Path, settings: EmbeddingSettings) -> float:
    """Images/s of the embeddings job, writing a fresh dataset at `output`."""
    start = time.perf_counter()
    summary = write_embeddings(model, processor, files_source(list_images(folder), folder), output, settings)
    return summary["rows"] / (time.perf_counter() - start)


def peak_rss_child(arguments: argparse.Namespace) -> None:
    """In a fresh process: run the job once and print the peak RSS (MiB) of this process and its workers."""
    model, processor, _ = build(arguments.quick)
    folder = Path(arguments.rss_child)
    count = len(list_images(folder))
    settings = EmbeddingSettings(
        batch_size=arguments.batch_size,
        shard_size=max(1, arguments.images // 4),
        num_workers=arguments.rss_workers,
        progress=False,
    )
    with tempfile.TemporaryDirectory() as output:
        job(model, processor, folder, Path(output), settings)
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps({"images": count, "peak_rss_mib": own, "peak_worker_rss_mib": workers}))


def peak_rss(arguments: argparse.Namespace, folder: Path, workers: int) -> dict:
    command = [sys.executable, __file__, "--rss-child", str(folder), "--rss-workers", str(workers)]
    command += ["--images", str(arguments.images), "--batch-size", str(arguments.batch_size)]
    command += ["--quick"] if arguments.quick else []
    run = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(run.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=64, help="N (the RSS check also runs 4N)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="DataLoader worker counts")
    parser.add_argument("--quick", action="store_true", help="tiny model at 56 px on 8 images: a smoke test")
    parser.add_argument("--output-json", help="also write the results here")
    parser.add_argument("--rss-child", help=argparse.SUPPRESS)
    parser.add_argument("--rss-workers", type=int, default=0, help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.quick and arguments.rss_child is None:
        arguments.images, arguments.batch_size = 8, 4
    if arguments.rss_child:
        peak_rss_child(arguments)
        return
    model, processor, side = build(arguments.quick)
    results = {"images": arguments.images, "batch_size": arguments.batch_size, "threads": torch.get_num_threads()}
    results["model"] = "tiny (56 px)" if arguments.quick else "random ViT-B/14 (518 px)"
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        small = write_images(scratch / "n", arguments.images, side)
        large = write_images(scratch / "4n", 4 * arguments.images, side)
        bare = bare_forward(model, processor, list_images(small), arguments.batch_size)
        rows = [("bare forward (preprocessed pixels), fp32", bare, None)]
        for workers in arguments.workers:
            settings = EmbeddingSettings(batch_size=arguments.batch_size, num_workers=workers, progress=False)
            speed = job(model, processor, small, scratch / f"fp32_{workers}", settings)
            rows.append((f"features job, fp32, {workers} workers", speed, None))
        best = max(arguments.workers, key=lambda w: rows[1 + arguments.workers.index(w)][1])
        settings = EmbeddingSettings(batch_size=arguments.batch_size, num_workers=best, dtype="bf16", progress=False)
        speed = job(model, processor, small, scratch / "bf16", settings)
        fp32 = torch.from_numpy(vectors(read_embeddings(scratch / f"fp32_{best}"), "cls").copy())
        bf16 = torch.from_numpy(vectors(read_embeddings(scratch / "bf16"), "cls").copy())
        cosine = F.cosine_similarity(fp32, bf16, dim=1)
        rows.append((f"features job, bf16, {best} workers", speed, cosine))
        memory = {count: peak_rss(arguments, folder, best) for count, folder in (("N", small), ("4N", large))}

    print(
        f"\n{results['model']}, {arguments.images} images, batch {arguments.batch_size}, {results['threads']} threads"
    )
    print(f"{'run':<44} {'images/s':>9} {'vs bare':>8}  cosine to fp32 CLS (mean / min)")
    results["rows"] = []
    for name, speed, cos in rows:
        agreement = f"{cos.mean():.5f} / {cos.min():.5f}" if cos is not None else ""
        print(f"{name:<44} {speed:>9.2f} {speed / bare:>7.2f}x  {agreement}")
        results["rows"].append(
            {
                "run": name,
                "images_per_second": speed,
                "vs_bare": speed / bare,
                **({"cosine_mean": float(cos.mean()), "cosine_min": float(cos.min())} if cos is not None else {}),
            }
        )
    growth = memory["4N"]["peak_rss_mib"] / memory["N"]["peak_rss_mib"] - 1
    for label, measured in memory.items():
        print(
            f"peak RSS, {measured['images']:>5} images ({label}): main {measured['peak_rss_mib']:.0f} MiB, "
            f"largest worker {measured['peak_worker_rss_mib']:.0f} MiB"
        )
    print(f"peak RSS growth N -> 4N: {100 * growth:+.1f} %")
    results.update(peak_rss=memory, rss_growth=growth)
    if arguments.output_json:
        Path(arguments.output_json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
