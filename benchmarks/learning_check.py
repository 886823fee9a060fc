"""Does pretraining learn? Pretrain a small ViT on real CXRs, then linear-probe it against its random-init twin.

1. Split the pediatric pneumonia set (normal / bacterial / viral) by patient into probe-train and probe-val.
2. Pretrain (train_pretrain's recipe, configs/cpu_small.yaml by default) on the probe-train pediatric images plus
   the adult sets (hannover-covid, covid-chestxray), never on probe-val images.
3. Encode all pediatric images with the exported teacher and with the same architecture at random init
   (CLS token and mean patch token, as DINOv2's linear evaluation).
4. Logistic regression on each (C by patient-grouped CV), accuracy and macro AUROC on probe-val with 95 % CIs.

Reported, not timed: results go to benchmarks/README.md and the model card by hand.

    python benchmarks/learning_check.py --minutes 15
"""

import argparse
import csv
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from image_processing_rad_dino import RadDinoImageProcessor  # noqa: E402
from modeling_rad_dino import RadDinoModel  # noqa: E402
from rad_dino_hf.features import extract_features  # noqa: E402
from rad_dino_hf.probe import linear_probe  # noqa: E402
from rad_dino_hf.recipe import RecipeConfig, apply_overrides  # noqa: E402
from rad_dino_hf.tables import patient_split  # noqa: E402
from rad_dino_hf.trainer import RunOptions, pretrain  # noqa: E402

logger = logging.getLogger("learning_check")
REPO = Path(__file__).resolve().parents[1]


def probe_features(model: RadDinoModel, processor: RadDinoImageProcessor, files: list[Path]) -> np.ndarray:
    features = extract_features(model, processor, files, batch_size=16)
    return torch.cat([features["cls"], features["patch"].mean(dim=(2, 3))], dim=1).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data"), help="the shared data folder")
    parser.add_argument("--config", default=str(REPO / "configs" / "cpu_small.yaml"))
    parser.add_argument("--set", nargs="*", default=[], help="extra recipe overrides")
    parser.add_argument("--minutes", type=float, default=15.0, help="pretraining time budget")
    parser.add_argument("--iterations", type=int, default=600, help="planned iterations (schedule length)")
    parser.add_argument("--output", default="outputs/learning_check")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    data, output = Path(args.data), Path(args.output)
    output.mkdir(parents=True, exist_ok=True)

    rows = list(csv.DictReader(open(data / "pediatric-pneumonia" / "train.csv", encoding="utf-8")))
    files = [data / "pediatric-pneumonia" / row["file"] for row in rows]
    classes = sorted({row["label"] for row in rows})
    labels = np.array([classes.index(row["label"]) for row in rows])
    patients = np.array([row["patient"] for row in rows])
    train_index, val_index = patient_split(patients, val_fraction=0.25, seed=args.seed)
    assert not set(patients[train_index]) & set(patients[val_index])

    pretrain_folder = output / "pretrain_images"  # links only: probe-val images stay out of pretraining
    pretrain_folder.mkdir(exist_ok=True)
    sources = [files[i] for i in train_index]
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
            f"train.output_dir={output / 'pretrain'}",
            f"train.max_minutes={args.minutes}",
            f"optim.epochs={max(1, round(args.iterations / epoch_length))}",
            f"train.checkpoint_every={10 * args.iterations}",
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

    results = {}
    for name, model in [("pretrained", pretrained), ("random init", random_twin)]:
        started = time.perf_counter()
        features = probe_features(model, processor, files)
        seconds = time.perf_counter() - started
        probe = linear_probe(
            features[train_index],
            labels[train_index],
            patients[train_index],
            features[val_index],
            labels[val_index],
            class_names=classes,
            seed=args.seed,
        )
        results[name] = {
            "accuracy": probe["accuracy"]["value"],
            "accuracy_ci": (probe["accuracy"]["ci_low"], probe["accuracy"]["ci_high"]),
            "auroc": probe["auroc"]["macro"]["value"],
            "auroc_ci": (probe["auroc"]["macro"]["ci_low"], probe["auroc"]["macro"]["ci_high"]),
            "C": probe["C"],
            "n_train": probe["n_train"],
            "n_val": probe["n"],
            "features_per_second": len(files) / seconds,
        }

    report = {
        "pretraining": {key: summary[key] for key in ("step", "images_seen", "skipped_samples", "skipped_nan_steps")}
        | {"minutes": round(pretrain_minutes, 1), "images": len(sources), "image_size": pretrained.config.image_size},
        "probe": results,
        "classes": classes,
    }
    (output / "learning_check.json").write_text(json.dumps(report, indent=2))
    print(f"\nPretraining: {report['pretraining']}")
    print("\n| encoder | accuracy (95% CI) | macro AUROC (95% CI) | C | features/s |")
    print("|---|---|---|---|---|")
    for name, r in results.items():
        print(
            f"| {name} | {r['accuracy']:.3f} ({r['accuracy_ci'][0]:.3f}–{r['accuracy_ci'][1]:.3f}) | "
            f"{r['auroc']:.3f} ({r['auroc_ci'][0]:.3f}–{r['auroc_ci'][1]:.3f}) | {r['C']:g} | "
            f"{r['features_per_second']:.1f} |"
        )
    print(f"\nprobe-train {results['pretrained']['n_train']} images, probe-val {results['pretrained']['n_val']} images")


if __name__ == "__main__":
    main()
