"""Does pretraining learn? Pretrain a small ViT on real CXRs, then compare it with baselines on a held-out split.

1. Split the pediatric pneumonia set (normal / bacterial / viral) by patient into probe-train and probe-val.
2. Pretrain (train_pretrain's recipe, configs/cpu_small.yaml by default) on the probe-train pediatric images plus
   the adult sets (hannover-covid, covid-chestxray), never on probe-val images. `--pediatric-only` leaves the adult
   sets out; `--pretraining-images N` keeps a random N of all these, to tell the number of images from their source,
   and `--pretraining-fraction F` a random share F of them, the same share on every split.
3. Encode all pediatric images with the exported teacher, its student (last checkpoint) and the same architecture
   at random init.
4. Score on probe-val, accuracy and macro AUROC with 95 % bootstrap intervals, same split for every row:
   - linear probe (standardised logistic regression, C by patient-grouped CV) on CLS + mean patch token, as DINOv2's
     linear evaluation, for the pretrained encoder, its student and its random-init twin; and on the CLS tokens of
     the last 4 blocks + mean patch token, the other input DINOv2's linear evaluation tries;
   - the same probe on raw pixels: the processor's image (the encoder's input) area-averaged to the encoder's patch
     grid and to 16 x 16, what any encoder has to beat;
   - rows that tell apart what the raw-pixel grid and the pooled encoder features see: raw pixels without
     position (mean, standard deviation, intensity histogram), and the probe on CLS ⊕ the patch tokens kept on a
     4 x 4 grid, for the pretrained encoder and its twin;
   - DINO's weighted k-NN (k = 20, T = 0.07) on the CLS token, which tests the DINO objective directly;
   - the effective rank (RankMe) of the CLS and mean patch tokens of every encoder over all the task's images: how
     many directions the features use, low when they collapse dimensionally;
   - with `--finetune-epochs N`: both encoders fine-tuned end to end on probe-train's labels (every weight, same
     settings). From random init this is supervised training from scratch: what the architecture reaches on this
     data with labels, the reference for any self-supervised gain; from the pretrained weights it tests the
     encoder as an initialisation.

`--task shapes` runs the same steps on a synthetic control instead (`draw_shapes`: four shapes, pretraining on the
probe-train images only), where what there is to learn is known.

Reported, not timed: results go to benchmarks/README.md and docs/learning_check_log.md by hand. End to end:

    python benchmarks/learning_check.py --minutes 30 --iterations 3600 --seed 0 --finetune-epochs 30
    python benchmarks/learning_check.py --minutes 2 --iterations 90 --max-images 90   # smoke test
    python benchmarks/learning_check.py --seed 0 --score-only   # score outputs/learning_check/pretrain again
    python benchmarks/learning_check.py --seed 0 --score-only --eval-size 140   # the same run, encoded at 140 px

With runs in separate `--output` folders under outputs/learning_check, `benchmarks/learning_check_summary.py` pairs
each with the recipe's run on the same split and pretraining seed and plots every change against the seed's spread.
"""

import argparse
import csv
import json
import logging
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from PIL import Image, ImageDraw

from image_processing_rad_dino import RadDinoImageProcessor
from modeling_rad_dino import RadDinoModel
from rad_dino_hf.errors import reported_user_errors
from rad_dino_hf.encoders import extract_features
from rad_dino_hf.classifier_training import (
    FinetuneOptions,
    ImageDataset,
    augment_radiograph,
    classifier_from_encoder,
    finetune,
)
from rad_dino_hf.weighted_knn import knn_classify
from rad_dino_hf.metrics import classification_metrics
from rad_dino_hf.probe import linear_probe
from rad_dino_hf.rank import effective_rank
from rad_dino_hf.recipe import RecipeConfig, apply_overrides
from rad_dino_hf.run_log import METRICS_FILENAME, read_records
from rad_dino_hf.tables import patient_split
from rad_dino_hf.trainer import RunOptions, load_checkpoint_networks, pretrain

logger = logging.getLogger("learning_check")
REPO = Path(__file__).resolve().parents[1]


SHAPES = ("disk", "square", "triangle", "cross")
SPATIAL_GRID = 4  # the spatial probe's grid of area-averaged patch tokens
LINEAR_EVAL_BLOCKS = 4  # DINOv2's linear evaluation tries the CLS tokens of the last 1 and 4 blocks


def draw_shapes(folder: Path, count: int, side: int, seed: int) -> tuple[list[Path], np.ndarray]:
    """Draw `count` grey `side x side` PNGs into `folder`, one shape each (`SHAPES[i % 4]`), and return the files and
    their class indices `(count,)`.

    A control for the learning check: each shape has a random half-size (12-22 % of the side), position, and a
    brightness step of random sign (lighter or darker than its surround, 40-90 grey levels) on a flat grey
    background with Gaussian noise. The class is what the shape is, wherever it is and whichever its polarity, so a
    linear read of the pixels barely separates the classes, while crop-invariant self-supervision should. The
    background is flat because anything else that every crop of an image shares (a gradient of random direction,
    tried first) is what the DINO code learns instead of the shape.
    """
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    files, labels = [], []
    for index in range(count):
        label = index % len(SHAPES)
        half = side * rng.uniform(0.12, 0.22)
        cx, cy = rng.uniform(half, side - half, size=2)
        mask = Image.new("L", (side, side))
        draw = ImageDraw.Draw(mask)
        box = (cx - half, cy - half, cx + half, cy + half)
        if SHAPES[label] == "disk":
            draw.ellipse(box, fill=255)
        elif SHAPES[label] == "square":
            draw.rectangle(box, fill=255)
        elif SHAPES[label] == "triangle":
            draw.polygon([(cx, cy - half), (cx - half, cy + half), (cx + half, cy + half)], fill=255)
        else:
            arm = half / 3
            draw.rectangle((cx - half, cy - arm, cx + half, cy + arm), fill=255)
            draw.rectangle((cx - arm, cy - half, cx + arm, cy + half), fill=255)
        step = rng.choice([-1, 1]) * rng.uniform(40, 90)
        pixels = 128 + step * (np.asarray(mask) / 255) + rng.normal(0, 10, size=(side, side))
        file = folder / f"{index:05d}_{SHAPES[label]}.png"
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(file)
        files.append(file)
        labels.append(label)
    return files, np.array(labels)


def encoder_features(model: RadDinoModel, processor: RadDinoImageProcessor, files: list[Path], blocks: int) -> dict:
    """`cls` `(N, D)` for k-NN, `mean_patch` `(N, D)`, `probe` `(N, 2D)` = CLS ⊕ mean patch token for the linear
    probe (DINOv2's linear evaluation with its last block), `blocks` `(N, (n + 1) D)` = the CLS tokens of the last
    n = `blocks` blocks ⊕ mean patch token (its other setting), and `spatial` `(N, 17 D)` = CLS ⊕ the patch tokens
    area-averaged to a 4 x 4 grid, a probe that keeps where in the image each feature is, as the raw-pixel baseline
    does."""
    features = extract_features(model, processor, files, batch_size=16, progress=False, cls_blocks=blocks)
    cls, patch = features["cls"], features["patch"]
    mean_patch = patch.mean(dim=(2, 3))
    probe = torch.cat([cls, mean_patch], dim=1)
    last_blocks = torch.cat([features["cls_blocks"], mean_patch], dim=1)
    spatial = torch.cat([cls, F.adaptive_avg_pool2d(patch, SPATIAL_GRID).flatten(1)], dim=1)
    return {
        "cls": cls.numpy(),
        "mean_patch": mean_patch.numpy(),
        "probe": probe.numpy(),
        "blocks": last_blocks.numpy(),
        "spatial": spatial.numpy(),
    }


def raw_pixels(processor: RadDinoImageProcessor, files: list[Path], sides: list[int]) -> dict[int | str, np.ndarray]:
    """The processor's normalised image (the encoder's input, grey), area-averaged to `side x side`: `(N, side**2)`
    per side; and under `"position-free"` its mean, standard deviation and 16-bin intensity histogram `(N, 18)`,
    which say how bright and contrasted an image is but not where."""
    low, high = ((value - processor.image_mean[0]) / processor.image_std[0] for value in (0.0, 1.0))
    grids: dict[int | str, list[torch.Tensor]] = {side: [] for side in [*sides, "position-free"]}
    for start in range(0, len(files), 32):
        pixels = processor([str(f) for f in files[start : start + 32]], return_tensors="pt")["pixel_values"]
        grey = pixels.mean(dim=1, keepdim=True)  # R = G = B for radiographs
        for side in sides:
            grids[side].append(F.adaptive_avg_pool2d(grey, side).flatten(1))
        histograms = torch.stack([torch.histc(image, 16, low, high) / image.numel() for image in grey])
        grids["position-free"].append(
            torch.cat([grey.mean(dim=(1, 2, 3))[:, None], grey.std(dim=(1, 2, 3))[:, None], histograms], dim=1)
        )
    return {key: torch.cat(chunks).numpy() for key, chunks in grids.items()}


def finetuned_probabilities(
    encoder: RadDinoModel,
    processor: RadDinoImageProcessor,
    train: tuple[list[Path], np.ndarray],
    val: tuple[list[Path], np.ndarray],
    classes: list[str],
    epochs: int,
    seed: int,
) -> np.ndarray:
    """Fine-tune a copy of `encoder` with a new linear head (CLS ⊕ mean patch) end to end on `train` (files, labels)
    and return its last epoch's class probabilities `(N_val, C)` on `val`; no epoch is picked on `val`.

    One setting for both inits, so that only the initial weights differ: every weight trains (AdamW, lr 3e-4 for
    the encoder and 1e-3 for the head, cosine with 10 % warmup, batch 16), with `train_downstream.py finetune`'s
    augmentation (crops of 80-100 % of each side, contrast and brightness jitter, no flips).
    """
    model = classifier_from_encoder(encoder, classes, seed=seed)
    options = FinetuneOptions(method="full", epochs=epochs, lr=3e-4, head_lr=1e-3, seed=seed)
    train_set = ImageDataset(*train, processor, augment_radiograph)
    return finetune(Accelerator(), model, train_set, ImageDataset(*val, processor), options).probabilities


def row(metrics: dict, **extra) -> dict:
    """Accuracy and macro AUROC with their 95 % bootstrap intervals from `classification_metrics`' output."""
    macro = metrics["auroc"]["macro"]
    return {
        "accuracy": metrics["accuracy"]["value"],
        "accuracy_ci": (metrics["accuracy"]["ci_low"], metrics["accuracy"]["ci_high"]),
        "auroc": macro["value"],
        "auroc_ci": (macro["ci_low"], macro["ci_high"]),
        **extra,
    }


def training_end(output_dir: Path, n_prototypes: int) -> dict:
    """The last logged DINO / iBOT terms and image-target MI of the run, next to ln K (a uniform target's loss)."""
    last = read_records(output_dir / METRICS_FILENAME)[-1]
    keys = ("loss/dino", "loss/ibot", "mi/dino", "mi/ibot")
    return {key: last[key] for key in keys if key in last} | {"ln_K": float(np.log(n_prototypes))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data"), help="the shared data folder")
    parser.add_argument("--config", default=str(REPO / "configs" / "cpu_small.yaml"))
    parser.add_argument("--set", nargs="*", default=[], help="extra recipe overrides")
    parser.add_argument("--minutes", type=float, default=15.0, help="pretraining time budget")
    parser.add_argument(
        "--iterations",
        type=int,
        default=1800,
        help="planned iterations (schedule length); the default config runs about 100-130 a minute on one CPU "
        "thread, depending on the machine",
    )
    parser.add_argument("--output", default="outputs/learning_check")
    parser.add_argument("--seed", type=int, default=0, help="split, pretraining, random twin and probe seed")
    parser.add_argument(
        "--finetune-epochs",
        type=int,
        default=0,
        help="also fine-tune the pretrained encoder and its random twin end to end for this many epochs (0: skip)",
    )
    parser.add_argument(
        "--task",
        choices=("cxr", "shapes"),
        default="cxr",
        help="cxr: the pediatric pneumonia classes; shapes: a synthetic control pretraining must learn (draw_shapes)",
    )
    parser.add_argument("--shapes", type=int, default=1200, help="images drawn for --task shapes")
    parser.add_argument("--max-images", type=int, default=None, help="a random subset of the task's images")
    parser.add_argument(
        "--score-only",
        action="store_true",
        help="score the run already in OUTPUT/pretrain (same --seed and --task) instead of pretraining again",
    )
    parser.add_argument(
        "--pediatric-only", action="store_true", help="pretrain on probe-train pediatric images only (no adult sets)"
    )
    subset = parser.add_mutually_exclusive_group()
    subset.add_argument(
        "--pretraining-images",
        type=int,
        default=None,
        metavar="N",
        help="pretrain on a random N of the pretraining images (drawn with --seed; the probe split is unchanged): "
        "with N equal to --pediatric-only's count, it tells the number of images from where they come from",
    )
    subset.add_argument(
        "--pretraining-fraction",
        type=float,
        default=None,
        metavar="F",
        help="pretrain on a random fraction F (0 < F <= 1) of the pretraining images, rounded (drawn with --seed; "
        "the probe split is unchanged): the same share on every split, for a curve of the probe against data",
    )
    parser.add_argument(
        "--eval-size",
        type=int,
        default=None,
        help="encode the probe images at this side in pixels (position embeddings interpolated) instead of the "
        "export's global crop size; written to learning_check_<N>px.json so the default report is kept",
    )
    args = parser.parse_args()
    if args.task == "cxr" and not Path(args.data).is_dir():  # the shared data set is absent from a plain clone
        print(f"skipped: {args.data} is not here; pass --data or run the synthetic control with --task shapes")
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    data, output = Path(args.data), Path(args.output)
    output.mkdir(parents=True, exist_ok=True)

    if args.task == "shapes":
        files, labels = draw_shapes(output / "shapes", args.shapes, side=112, seed=args.seed)
        classes, patients = list(SHAPES), np.array([file.stem for file in files])
    else:
        rows = list(csv.DictReader(open(data / "pediatric-pneumonia" / "train.csv", encoding="utf-8")))
        files = [data / "pediatric-pneumonia" / row["file"] for row in rows]
        classes = sorted({row["label"] for row in rows})
        labels = np.array([classes.index(row["label"]) for row in rows])
        patients = np.array([row["patient"] for row in rows])
    if args.max_images is not None and args.max_images < len(files):
        keep = np.sort(np.random.default_rng(args.seed).choice(len(files), args.max_images, replace=False))
        files, labels, patients = [files[i] for i in keep], labels[keep], patients[keep]
    train_index, val_index = patient_split(patients, val_fraction=0.25, seed=args.seed)
    assert not set(patients[train_index]) & set(patients[val_index])

    sources = [files[i] for i in train_index]
    if args.task == "cxr" and not args.pediatric_only:
        sources += sorted((data / "hannover-covid" / "images").glob("*.png"))
        sources += sorted((data / "covid-chestxray" / "images").glob("*.jpg"))
    if args.pretraining_fraction is not None:
        if not 0 < args.pretraining_fraction <= 1:
            sys.exit(f"--pretraining-fraction {args.pretraining_fraction}: pick a share above 0 and at most 1")
        args.pretraining_images = max(1, round(args.pretraining_fraction * len(sources)))
    if args.pretraining_images is not None:
        if not 0 < args.pretraining_images <= len(sources):
            sys.exit(f"--pretraining-images {args.pretraining_images}: pick 1 to {len(sources)} (the images there are)")
        keep = np.random.default_rng(args.seed).choice(len(sources), args.pretraining_images, replace=False)
        sources = [sources[i] for i in np.sort(keep)]
    pretrain_folder, run_folder = output / "pretrain_images", output / "pretrain"
    if args.score_only:
        if not (run_folder / "summary.json").is_file():
            sys.exit(f"--score-only: {run_folder} holds no finished pretraining run (no summary.json)")
        recipe = RecipeConfig.from_yaml(run_folder / "recipe.yaml")
        summary = json.loads((run_folder / "summary.json").read_text(encoding="utf-8"))
        pretrain_minutes = summary["seconds"] / 60
    else:
        # Links only: probe-val images stay out of pretraining. Recreated (with the run folder) so that no link or
        # metric of an earlier run with another split or seed is left in.
        for folder in (pretrain_folder, run_folder):
            shutil.rmtree(folder, ignore_errors=True)
        pretrain_folder.mkdir()
        for source in sources:
            link = pretrain_folder / f"{source.parent.name}__{source.name}"
            if not link.exists():
                link.symlink_to(source.resolve())
        recipe = RecipeConfig.from_yaml(args.config)
        epoch_length = recipe.train.official_epoch_length
        recipe = apply_overrides(
            recipe,
            [
                f"train.data_sources=[{str(pretrain_folder)!r}]",
                f"train.output_dir={run_folder}",
                f"train.max_minutes={args.minutes}",
                f"optim.epochs={max(1, round(args.iterations / epoch_length))}",
                f"train.checkpoint_every={10 * args.iterations}",
                f"train.seed={args.seed}",
                *args.set,
            ],
        )
        started = time.perf_counter()
        summary = pretrain(recipe, RunOptions(resume="never", progress=False))
        pretrain_minutes = (time.perf_counter() - started) / 60
    scheduled = recipe.optim.epochs * recipe.train.official_epoch_length
    if summary["step"] < scheduled:
        logging.warning(
            "The time cap stopped pretraining at iteration %d of %d: its schedules (lr, teacher momentum and "
            "temperature) never finished, so it compares with no full-length run. Give it more --minutes.",
            summary["step"],
            scheduled,
        )

    export = Path(summary["export_dir"])
    # Trained on random-resized crops, a ViT may read the whole image better a little larger (FixRes).
    side = args.eval_size
    resize = {} if side is None else {"size": {"shortest_edge": side}, "crop_size": {"height": side, "width": side}}
    processor = RadDinoImageProcessor.from_pretrained(export, **resize)
    pretrained = RadDinoModel.from_pretrained(export).eval()
    torch.manual_seed(args.seed)
    random_twin = RadDinoModel(pretrained.config).eval()

    # A model with fewer than LINEAR_EVAL_BLOCKS blocks gives all of them; the rows name the number used.
    blocks = min(LINEAR_EVAL_BLOCKS, pretrained.config.num_hidden_layers)
    started = time.perf_counter()
    encoded = {"pretrained": encoder_features(pretrained, processor, files, blocks)}
    encode_seconds = time.perf_counter() - started
    encoded["random twin"] = encoder_features(random_twin, processor, files, blocks)
    # The export is the teacher, an EMA of the student: the student's row shows by how much the teacher lags.
    student = load_checkpoint_networks(run_folder).student.backbone
    encoded["student"] = encoder_features(student, processor, files, blocks)
    grid = pretrained.config.image_size // pretrained.config.patch_size
    pixels = raw_pixels(processor, files, sorted({grid, 16}))

    def probe(features: np.ndarray) -> dict:
        metrics = linear_probe(
            features[train_index],
            labels[train_index],
            patients[train_index],
            features[val_index],
            labels[val_index],
            class_names=classes,
            seed=args.seed,
        )
        return row(metrics, C=metrics["C"], features=features.shape[1])

    def scored(probabilities: np.ndarray, **extra) -> dict:
        return row(classification_metrics(labels[val_index], probabilities, classes, seed=args.seed), **extra)

    def knn(features: np.ndarray) -> dict:
        probabilities = knn_classify(features[train_index], labels[train_index], features[val_index], len(classes))
        return scored(probabilities.numpy(), features=features.shape[1])

    results = {
        "pretrained (linear probe)": probe(encoded["pretrained"]["probe"]),
        "random twin (linear probe)": probe(encoded["random twin"]["probe"]),
        "pretrained student (linear probe)": probe(encoded["student"]["probe"]),
        f"pretrained, CLS of the last {blocks} blocks + mean patch (linear probe)": probe(
            encoded["pretrained"]["blocks"]
        ),
        f"random twin, CLS of the last {blocks} blocks + mean patch (linear probe)": probe(
            encoded["random twin"]["blocks"]
        ),
        f"raw pixels {grid}x{grid} (linear probe)": probe(pixels[grid]),
        "raw pixels 16x16 (linear probe)": probe(pixels[16]),
        "raw pixels, position-free: mean, std, histogram (linear probe)": probe(pixels["position-free"]),
        f"pretrained, CLS + {SPATIAL_GRID}x{SPATIAL_GRID} patch grid (linear probe)": probe(
            encoded["pretrained"]["spatial"]
        ),
        f"random twin, CLS + {SPATIAL_GRID}x{SPATIAL_GRID} patch grid (linear probe)": probe(
            encoded["random twin"]["spatial"]
        ),
        "pretrained (k-NN on CLS)": knn(encoded["pretrained"]["cls"]),
        "random twin (k-NN on CLS)": knn(encoded["random twin"]["cls"]),
    }
    if args.finetune_epochs > 0:
        splits = [([files[i] for i in index], labels[index]) for index in (train_index, val_index)]
        for name, encoder in (("pretrained", pretrained), ("random twin", random_twin)):
            probabilities = finetuned_probabilities(
                encoder, processor, *splits, classes, epochs=args.finetune_epochs, seed=args.seed
            )
            results[f"{name} (fine-tuned end to end)"] = scored(probabilities, epochs=args.finetune_epochs)
    report = {
        "seed": args.seed,
        "command": {
            "config": args.config,
            "set": args.set,
            "pediatric_only": args.pediatric_only,
            "pretraining_images": args.pretraining_images,
            "pretraining_fraction": args.pretraining_fraction,
            "task": args.task,
            "finetune_epochs": args.finetune_epochs,
            "score_only": args.score_only,
            "eval_size": processor.crop_size["height"],
        },
        "pretraining": {key: summary[key] for key in ("step", "images_seen", "skipped_samples", "skipped_nan_steps")}
        | {"minutes": round(pretrain_minutes, 1), "images": len(sources), "image_size": pretrained.config.image_size}
        | {"images_per_second_encoding": len(files) / encode_seconds},
        "end_of_training": training_end(Path(recipe.train.output_dir), recipe.dino.head_n_prototypes),
        "split": {"probe_train": len(train_index), "probe_val": len(val_index), "classes": classes},
        "results": results,
        # How many directions the probe's features span over all the task's images (RankMe): a pretrained encoder
        # whose features collapse onto a few directions gives the probe little to read, whatever its loss.
        "effective_rank": {
            name: {
                "cls": effective_rank(features["cls"]),
                "mean_patch": effective_rank(features["mean_patch"]),
                "dimensions": features["cls"].shape[1],
            }
            for name, features in encoded.items()
        },
    }
    report_file = output / (
        "learning_check.json" if args.eval_size is None else f"learning_check_{args.eval_size}px.json"
    )
    report_file.write_text(json.dumps(report, indent=2))
    print(f"\nPretraining: {report['pretraining']}")
    print(f"End of training: {report['end_of_training']}")
    ranks = ", ".join(f"{name} {r['cls']:.1f} / {r['mean_patch']:.1f}" for name, r in report["effective_rank"].items())
    print(f"Effective rank (RankMe) of CLS / mean patch token, of {pretrained.config.hidden_size}: {ranks}")
    split = f"probe-train {len(train_index)} images, probe-val {len(val_index)} images"
    print(f"\nSeed {args.seed}, patient-held-out split: {split}")
    print("\n| features | accuracy (95% CI) | macro AUROC (95% CI) |")
    print("|---|---|---|")
    for name, r in results.items():
        print(
            f"| {name} | {r['accuracy']:.3f} ({r['accuracy_ci'][0]:.3f}–{r['accuracy_ci'][1]:.3f}) | "
            f"{r['auroc']:.3f} ({r['auroc_ci'][0]:.3f}–{r['auroc_ci'][1]:.3f}) |"
        )
    print(f"\nWritten: {report_file}")


if __name__ == "__main__":
    with reported_user_errors():
        main()
