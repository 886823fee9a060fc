"""Sex (logistic regression, AUROC) and age (ridge regression, MAE and Pearson r) on frozen features of the images
in folders with a metadata.csv (default: the embedded sample, where 30 adults have a sex and only 2 an age, too few
for the age probe). Rows missing a value are dropped for that target only; a target with too few known values is
skipped, with the reason in the log and in metrics.json. Patient-level split; 95 % bootstrap intervals, an age
scatter plot, a sex ROC curve and per-image predictions."""

import argparse
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from accelerate import Accelerator

from rad_dino_hf.demographic_probes import demographics_probe, read_demographics
from rad_dino_hf.plots import plot_regression_scatter, plot_roc_curves
from rad_dino_hf.tables import patient_split
from rad_dino_hf import embedded_sample
from rad_dino_hf.tasks.arguments import FrozenTaskOptions, add_frozen_task_arguments
from rad_dino_hf.tasks.common import frozen_features, write_csv

logger = logging.getLogger("rad_dino_hf")


@dataclass
class Options(FrozenTaskOptions):
    data: list[str]
    sex_column: str
    age_column: str
    output: str


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_frozen_task_arguments(parser)
    parser.add_argument(
        "--data",
        nargs="+",
        default=[str(embedded_sample.SAMPLE_DIR)],
        help="folders with metadata.csv (file, patient, sex and age columns); by default the embedded sample",
    )
    parser.add_argument("--sex-column", default="sex", help="m/male -> male (1), f/female -> female (0)")
    parser.add_argument("--age-column", default="age", help="years (52, 52.5 or 052Y)")
    parser.add_argument("--output", default="outputs/demographics", help="output folder")


def run(options: Options, accelerator: Accelerator) -> dict | None:
    folders = [embedded_sample.require(folder, "--data") for folder in options.data]
    table = read_demographics(folders, options.sex_column, options.age_column)
    vectors, info = frozen_features(options.encoder, options.cache, table.files, accelerator)
    if not accelerator.is_main_process:
        return None
    seed = options.split.seed
    train, val = patient_split(table.patients, options.split.val_fraction, seed)
    logger.info("Demographics: %d train / %d validation images, no patient in both", len(train), len(val))
    results, predictions = demographics_probe(vectors, table, train, val, seed=seed)
    output = Path(options.output)
    output.mkdir(parents=True, exist_ok=True)
    summary = []
    if "age" in predictions:
        mae, r = results["age"]["mae"], results["age"]["pearson_r"]
        summary.append(
            f"age MAE {mae['value']:.1f} y ({mae['ci_low']:.1f}-{mae['ci_high']:.1f}), "
            f"r {r['value']:.2f} ({r['ci_low']:.2f}-{r['ci_high']:.2f})"
        )
        age = predictions["age"]
        plot_regression_scatter(age.targets, age.predictions, output / "age_scatter.png", title=summary[-1])
    if "sex" in predictions:
        auroc = results["sex"]["auroc"]
        summary.append(f"sex AUROC {auroc['value']:.3f} ({auroc['ci_low']:.3f}-{auroc['ci_high']:.3f})")
        sex = predictions["sex"]
        plot_roc_curves(
            sex.targets[:, None],
            sex.predictions[:, None],
            output / "sex_roc.png",
            class_names=["male"],
            multilabel=True,
            title=summary[-1],
        )
    summary += [f"{name} skipped ({value['skipped']})" for name, value in results.items() if "skipped" in value]
    write_csv(
        output / "predictions.csv",
        ["target", "file", "patient", "true", "predicted"],
        [
            [name, str(table.files[row]), table.patients[row], truth, guess]
            for name, target in predictions.items()
            for row, truth, guess in zip(target.rows, target.targets, target.predictions)
        ],
    )
    results.update(info, data=[str(folder) for folder in options.data], seed=seed)
    (output / "metrics.json").write_text(json.dumps(results, indent=2))
    logger.info("%s; metrics and pictures in %s", "; ".join(summary), output)
    return results
