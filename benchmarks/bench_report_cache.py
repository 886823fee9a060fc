"""Report-generator training with and without the frozen-encoder cache (`--vision-cache`), side by side.

Stage-1 training (projector only) of a generator built from a RAD-DINO encoder (default: random full size, 518 px)
and the tiny local Llama, on the first N image–text pairs of a folder with metadata.csv, for a few epochs: once
re-encoding every image every step, once with `FrozenTowerCache`. Prints seconds per epoch and the speed-up; the
losses of both runs are printed too (they must agree).

    python benchmarks/bench_report_cache.py --images 12 --epochs 3
"""

import argparse
import copy
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader

from bench_inference import cpu_info
from rad_dino_hf.encoders import load_encoder
from rad_dino_hf.report.builder import DEFAULT_INSTRUCTION, build_generator
from rad_dino_hf.report.data import ReportCollator, load_report_pairs
from rad_dino_hf.report.tiny_lm import tiny_llama, train_tokenizer
from rad_dino_hf.report.training import cached_vision_tower, freeze_all_but_projector, train_loop

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoder", default="random", help="encoder id or folder (default: random full size)")
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "covid-chestxray"))
    parser.add_argument("--images", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--pooling", type=int, default=2)
    args = parser.parse_args()
    if not Path(args.data).exists():  # the default is the project's shared data set, absent from a plain clone
        print(f"skipped: {args.data} is not here; pass --data with image-report pairs")
        return

    pairs = load_report_pairs(args.data)[: args.images]
    encoder, image_processor, name = load_encoder(args.encoder)
    tokenizer = train_tokenizer([pair.text for pair in pairs], vocab_size=500)
    torch.manual_seed(0)
    model, processor = build_generator(encoder, image_processor, tiny_llama(tokenizer), tokenizer, args.pooling)
    collator = ReportCollator(processor, DEFAULT_INSTRUCTION, max_report_tokens=64)
    loader = DataLoader(pairs, batch_size=args.batch_size, collate_fn=collator)

    rows = []
    for cache in (False, True):
        run = freeze_all_but_projector(copy.deepcopy(model))
        with cached_vision_tower(run, enabled=cache):
            start = time.perf_counter()
            losses = train_loop(run, loader, Accelerator(), args.epochs, lr=1e-3)
            rows.append((cache, (time.perf_counter() - start) / args.epochs, losses[-1]))

    machine = cpu_info()
    print(f"\nCPU: {machine['cpu_model']} | torch threads {machine['num_threads']} | torch {machine['torch']}")
    crop = image_processor.crop_size["height"]
    width = encoder.config.hidden_size
    print(f"encoder: {name} ({width}-wide, {crop} px), {len(pairs)} images, {args.epochs} epochs\n")
    print("| vision cache | s / epoch | last loss | speed-up |")
    print("|---|---|---|---|")
    for cache, seconds, loss in rows:
        print(f"| {'on' if cache else 'off'} | {seconds:.1f} | {loss:.4f} | {rows[0][1] / seconds:.2f}x |")


if __name__ == "__main__":
    main()
