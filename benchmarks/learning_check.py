"""Does pretraining learn? Pretrain a small ViT on real CXRs, then compare it with baselines on a held-out split.

1. Split the pediatric pneumonia set (normal / bacterial / viral) by patient into probe-train and probe-val.
2. Pretrain (train_pretrain's recipe, configs/cpu_small.yaml by default) on the probe-train pediatric images plus
   the adult sets (hannover-covid, covid-chestxray), never on probe-val images.
3. Encode all pediatric images with the exported teacher and with the same architecture at random init.
4. Score on probe-val, accuracy and macro AUROC with 95 % bootstrap intervals, same split for every row:
   - linear probe (standardised logistic regression, C by patient-grouped CV) on CLS + mean patch token, as DINOv2's
     linear evaluation, for the pretrained encoder and its random-init twin;
   - the same probe on raw pixels: the processor's image (the encoder's input) area-averaged to the encoder's patch
     grid and to 16 x 16, what any encoder has to beat;
   - DINO's weighted k-NN (k = 20, T = 0.07) on the CLS token, which tests the DINO objective directly.

Reported, not timed: results go to benchmarks/README.md and the model card by hand. A quick end-to-end check:

    python benchmarks/learning_check.py --minutes 30 --seed 0
    python benchmarks/learning_check.py --minutes 2 --iterations 90 --max-images 90   # smoke test
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from image_processing_rad_dino import RadDinoImageProcessor  # noqa: E402
from modeling_rad_dino import RadDinoModel  # noqa: E402
from rad_dino_hf.features import extract_features  # noqa: E402
from rad_dino_hf.knn import knn_classify  # noqa: E402
from rad_dino_hf.metrics import classification_metrics  # noqa: E402
from rad_dino_hf.probe import linear_probe  # noqa: E402
from rad_dino_hf.recipe import RecipeConfig, apply_overrides  # noqa: E402
from rad_dino_hf.tables import patient_split  # noqa: E402
from rad_dino_hf.trainer import RunOptions, pretrain  # noqa: E402

logger = logging.getLogger("learning_check")
REPO = Path(__file__).resolve().parents[1]


def encoder_features(model: RadDinoModel, processor: RadDinoImageProcessor, files: list[Path]) -> dict:
    """`cls` `(N, D)` for k-NN and `probe` `(N, 2D)` = CLS ⊕ mean patch token for the linear probe."""
    features = extract_features(model, processor, files, batch_size=16, progress=False)
    probe = torch.cat([features["cls"], features["patch"].mean(dim=(2, 3))], dim=1)
    return {"cls": features["cls"].numpy(), "probe": probe.numpy()}


def raw_pixels(processor: RadDinoImageProcessor, files: list[Path], sides: list[int]) -> dict[int, np.ndarray]:
    """The processor's normalised image (the encoder's input, grey), area-averaged to `side x side`: `(N, side**2)`."""
    grids: dict[int, list[torch.Tensor]] = {side: [] for side in sides}
    for start in range(0, len(files), 32):
        pixels = processor([str(f) for f in files[start : start + 32]], return_tensors="pt")["pixel_values"]
        grey = pixels.mean(dim=1, keepdim=True)  # R = G = B for radiographs
        for side in sides:
            grids[side].append(F.adaptive_avg_pool2d(grey, side).flatten(1))
    return {side: torch.cat(chunks).numpy() for side, chunks in grids.items()}


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
    lines = (output_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    last = json.loads(lines[-1])
    keys = ("loss/dino", "loss/ibot", "mi/dino", "mi/ibot")
    return {key: last[key] for key in keys if key in last} | {"ln_K": float(np.log(n_prototypes))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data"), help="the shared data folder")
    parser.add_argument("--config", default=str(REPO / "configs" / "cpu_small.yaml"))
    parser.add_argument("--set", nargs="*", default=[], help="extra recipe overrides")
    parser.add_argument("--minutes", type=float, default=15.0, help="pretraining time budget")
    parser.add_argument("--iterations", type=int, default=600, help="planned iterations (schedule length)")
    parser.add_argument("--output", default="outputs/learning_check")
    parser.add_argument("--seed", type=int, default=0, help="split, pretraining, random twin and probe seed")
    parser.add_argument("--max-images", type=int, default=None, help="a random subset of the pediatric images")
    parser.add_argument(
        "--pediatric-only", action="store_true", help="pretrain on probe-train pediatric images only (no adult sets)"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    data, output = Path(args.data), Path(args.output)
    output.mkdir(parents=True, exist_ok=True)

    rows = list(csv.DictReader(open(data / "pediatric-pneumonia" / "train.csv", encoding="utf-8")))
    files = [data / "pediatric-pneumonia" / row["file"] for row in rows]
    classes = sorted({row["label"] for row in rows})
    labels = np.array([classes.index(row["label"]) for row in rows])
    patients = np.array([row["patient"] for row in rows])
    if args.max_images is not None and args.max_images < len(rows):
        keep = np.sort(np.random.default_rng(args.seed).choice(len(rows), args.max_images, replace=False))
        files, labels, patients = [files[i] for i in keep], labels[keep], patients[keep]
    train_index, val_index = patient_split(patients, val_fraction=0.25, seed=args.seed)
    assert not set(patients[train_index]) & set(patients[val_index])

    # Links only: probe-val images stay out of pretraining. Recreated (with the run folder) so that no link or metric
    # of an earlier run with another split or seed is left in.
    pretrain_folder, run_folder = output / "pretrain_images", output / "pretrain"
    for folder in (pretrain_folder, run_folder):
        shutil.rmtree(folder, ignore_errors=True)
    pretrain_folder.mkdir()
    sources = [files[i] for i in train_index]
    if not args.pediatric_only:
        sources += sorted((data / "hannover-covid" / "images").glob("*.png"))
        sources += sorted((data / "covid-chestxray" / "images").glob("*.jpg"))
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

    export = Path(summary["export_dir"])
    processor = RadDinoImageProcessor.from_pretrained(export)
    pretrained = RadDinoModel.from_pretrained(export).eval()
    torch.manual_seed(args.seed)
    random_twin = RadDinoModel(pretrained.config).eval()

    started = time.perf_counter()
    encoded = {"pretrained": encoder_features(pretrained, processor, files)}
    encode_seconds = time.perf_counter() - started
    encoded["random twin"] = encoder_features(random_twin, processor, files)
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

    def knn(features: np.ndarray) -> dict:
        probabilities = knn_classify(features[train_index], labels[train_index], features[val_index], len(classes))
        metrics = classification_metrics(labels[val_index], probabilities.numpy(), classes, seed=args.seed)
        return row(metrics, features=features.shape[1])

    results = {
        "pretrained (linear probe)": probe(encoded["pretrained"]["probe"]),
        "random twin (linear probe)": probe(encoded["random twin"]["probe"]),
        f"raw pixels {grid}x{grid} (linear probe)": probe(pixels[grid]),
        "raw pixels 16x16 (linear probe)": probe(pixels[16]),
        "pretrained (k-NN on CLS)": knn(encoded["pretrained"]["cls"]),
        "random twin (k-NN on CLS)": knn(encoded["random twin"]["cls"]),
    }
    report = {
        "seed": args.seed,
        "command": {"config": args.config, "set": args.set, "pediatric_only": args.pediatric_only},
        "pretraining": {key: summary[key] for key in ("step", "images_seen", "skipped_samples", "skipped_nan_steps")}
        | {"minutes": round(pretrain_minutes, 1), "images": len(sources), "image_size": pretrained.config.image_size}
        | {"images_per_second_encoding": len(files) / encode_seconds},
        "end_of_training": training_end(Path(recipe.train.output_dir), recipe.dino.head_n_prototypes),
        "split": {"probe_train": len(train_index), "probe_val": len(val_index), "classes": classes},
        "results": results,
    }
    (output / "learning_check.json").write_text(json.dumps(report, indent=2))
    print(f"\nPretraining: {report['pretraining']}")
    print(f"End of training: {report['end_of_training']}")
    split = f"probe-train {len(train_index)} images, probe-val {len(val_index)} images"
    print(f"\nSeed {args.seed}, patient-held-out split: {split}")
    print("\n| features | accuracy (95% CI) | macro AUROC (95% CI) |")
    print("|---|---|---|")
    for name, r in results.items():
        print(
            f"| {name} | {r['accuracy']:.3f} ({r['accuracy_ci'][0]:.3f}–{r['accuracy_ci'][1]:.3f}) | "
            f"{r['auroc']:.3f} ({r['auroc_ci'][0]:.3f}–{r['auroc_ci'][1]:.3f}) |"
        )
    print(f"\nWritten: {output / 'learning_check.json'}")


if __name__ == "__main__":
    main()
