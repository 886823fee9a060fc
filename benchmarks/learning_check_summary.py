"""Every learning-check run side by side: which recipe changes moved the probe further than the pretraining seed does?

`learning_check.py` scores one run. This reads all of them: for each run folder under `--runs` (its
`learning_check.json`, `pretrain/recipe.yaml` and `pretrain/metrics.jsonl`) it names the run's change as the
recipe fields that differ from `--config` at `--iterations` (fields a learning check sets per run are ignored: data,
output folder, time cap, checkpoint interval, seed), and pairs the run with the unchanged recipe's run on the same
split and pretraining seed. The yardstick is the pretraining seed itself: unchanged-recipe runs on one split with
another `train.seed`, paired the same way.

Prints, per change, the paired differences in linear-probe accuracy, k-NN accuracy on CLS and the DINO term (mean
over the last 200 iterations), with the mean and its 95 % t interval; writes every run's row to `--csv` and the
paired differences to `--plot`. The runs that change only the pretraining images (`learning_check.py
--pediatric-only`, `--pretraining-images`, `--pretraining-fraction`) and the recipe's own runs also give a data
curve: the probe's margin over the 8 x 8 raw-pixel probe and k-NN on CLS against the number of pretraining images,
with a least-squares line in log2(images) within splits (`--data-plot`; its slope per doubling is printed). The
table also carries the effective rank of the pretrained CLS token (RankMe, from `learning_check.py`; nan for runs
scored before it was measured).

Run folders do not outlive a checkout, so the rows of earlier runs come from `--previous` (the table in the
repository, `benchmarks/learning_check_runs.csv`); a run folder replaces the row of the same name. Copy the written
table and plots over the repository's after new runs.

    python benchmarks/learning_check_summary.py                           # outputs/learning_check/* + the table
    python benchmarks/learning_check_summary.py --runs /nonexistent --plot /tmp/levers.png \
        --data-plot /tmp/data.png   # the table alone
"""

import argparse
import csv
import functools
import json
import math
import statistics
import textwrap
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import yaml
from scipy import stats

from rad_dino_hf.errors import UserError, reported_user_errors
from rad_dino_hf.plots import plot_against_size, plot_paired_differences
from rad_dino_hf.recipe import RecipeConfig
from rad_dino_hf.run_log import METRICS_FILENAME, read_records

REPO = Path(__file__).resolve().parents[1]
# Set by learning_check.py for every run, so never part of what a run changed (train.seed is the pairing key).
PER_RUN_FIELDS = {
    "train.data_sources",
    "train.output_dir",
    "train.max_minutes",
    "train.checkpoint_every",
    "train.seed",
}
RECIPE = "recipe"  # the change of a run that changes nothing
PEDIATRIC_SIZED = "half (as many as the probe-train pediatric images)"
DATA_PART = "pretrained on "  # how the change of a run with other pretraining images begins (read_run)
PEDIATRIC_ONLY = f"{DATA_PART}probe-train pediatric images only"
SEED_YARDSTICK = "recipe, another pretraining seed"
KNN_TARGET = 0.70  # issue #11's bar for k-NN on CLS
LAST_ITERATIONS = 200  # the DINO term and its MI are averaged over the last iterations: single steps are noisy
COLUMNS = [
    "run",
    "split",
    "pretraining_seed",
    "change",
    "iterations",
    "pretraining_images",
    "probe_accuracy",
    "probe_ci_low",
    "probe_ci_high",
    "probe_auroc",
    "knn_accuracy",
    "twin_accuracy",
    "raw_pixels_accuracy",
    "dino_last",
    "dino_mi_last",
    "ln_k",
    "cls_effective_rank",
]
DIFFERENCES = [
    ("probe_accuracy", "linear probe accuracy"),
    ("knn_accuracy", "k-NN on CLS accuracy"),
    ("dino_last", f"DINO term, last {LAST_ITERATIONS} its (nats)"),
]


def flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    """`{"a": {"b": 1}}` -> `{"a.b": 1}`; lists become tuples so that values compare and print alike."""
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = tuple(value) if isinstance(value, list) else value
    return flat


def change_of(run_recipe: dict, reference: dict[str, object], epoch_length: int) -> tuple[str, int]:
    """The run's change against the reference recipe as `key=value, ...` (RECIPE when none) and its iterations.

    A different schedule length is named in iterations (`optim.epochs` x `train.official_epoch_length`); a field
    missing from an older run's recipe.yaml did not exist then and counts as the default.
    """
    flat = flatten(run_recipe)
    iterations = int(flat["optim.epochs"]) * int(flat.get("train.official_epoch_length", epoch_length))
    parts = []
    for key, value in flat.items():
        if key in PER_RUN_FIELDS or key == "optim.epochs" or key not in reference or reference[key] == value:
            continue
        shown = ",".join(str(v) for v in value) if isinstance(value, tuple) else value
        parts.append(f"{key}={shown}")
    if iterations != int(reference["optim.epochs"]) * epoch_length:
        parts.append(f"{iterations} iterations")
    return (", ".join(parts) or RECIPE), iterations


def with_part(change: str, part: str) -> str:
    """The change with one more part: the recipe plus a part is just that part."""
    return part if change == RECIPE else f"{change}, {part}"


def last_mean(records: list[dict], key: str, final_step: int) -> float:
    values = [r[key] for r in records if key in r and r.get("step", 0) > final_step - LAST_ITERATIONS]
    return statistics.mean(values) if values else math.nan


def read_run(folder: Path, reference: dict[str, object], epoch_length: int) -> dict | None:
    """One CSV row for a finished CXR learning check (None for the shapes control or an unfinished run)."""
    scored, recipe_file = folder / "learning_check.json", folder / "pretrain" / "recipe.yaml"
    if not scored.is_file() or not recipe_file.is_file():
        return None
    result = json.loads(scored.read_text(encoding="utf-8"))
    if result.get("command", {}).get("task", "cxr") != "cxr":
        return None
    recipe = yaml.safe_load(recipe_file.read_text(encoding="utf-8"))
    change, iterations = change_of(recipe, reference, epoch_length)
    # Data changes, which recipe.yaml (its data sources are per-run) does not show.
    command = result.get("command", {})
    if command.get("pediatric_only"):
        change = with_part(change, PEDIATRIC_ONLY)
    if share := command.get("pretraining_fraction"):
        # The count differs by split; the share does not, so the splits pair together.
        change = with_part(change, f"{DATA_PART}a random {100 * share:g} % of the images")
    elif kept := command.get("pretraining_images"):
        # As many as --pediatric-only keeps, which differs by split: named alike so that the splits pair together.
        matched = not command.get("pediatric_only") and kept == result.get("split", {}).get("probe_train")
        subset = f"a random {PEDIATRIC_SIZED}" if matched else f"a random {kept}"
        change = with_part(change, f"{DATA_PART}{subset} of the images")
    records = read_records(folder / "pretrain" / METRICS_FILENAME)
    final_step = result["pretraining"]["step"]
    if final_step < iterations:  # the time cap ended it before its schedule did: not the recipe, whatever it set
        change = with_part(change, f"stopped by the time cap at {final_step} of {iterations}")
    rows = result["results"]
    missing = {"accuracy": math.nan, "accuracy_ci": [math.nan, math.nan], "auroc": math.nan}
    probe = rows["pretrained (linear probe)"]
    # The raw-pixel baseline is the encoder's input averaged to its patch grid (8 x 8 for 112 px crops).
    grid = recipe["crops"]["global_crops_size"] // recipe["student"]["patch_size"]
    return {
        "run": folder.name,
        "split": result["seed"],
        "pretraining_seed": recipe["train"]["seed"],
        "change": change,
        "iterations": iterations,
        "pretraining_images": result["pretraining"]["images"],
        "probe_accuracy": probe["accuracy"],
        "probe_ci_low": probe["accuracy_ci"][0],
        "probe_ci_high": probe["accuracy_ci"][1],
        "probe_auroc": probe["auroc"],
        "knn_accuracy": rows.get("pretrained (k-NN on CLS)", missing)["accuracy"],
        "twin_accuracy": rows["random twin (linear probe)"]["accuracy"],
        "raw_pixels_accuracy": rows.get(f"raw pixels {grid}x{grid} (linear probe)", missing)["accuracy"],
        "dino_last": last_mean(records, "loss/dino", final_step),
        "dino_mi_last": last_mean(records, "mi/dino", final_step),
        "ln_k": math.log(recipe["dino"]["head_n_prototypes"]),
        # Runs scored before learning_check.py reported it have none.
        "cls_effective_rank": result.get("effective_rank", {}).get("pretrained", {}).get("cls", math.nan),
    }


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        for key in COLUMNS:
            if key not in ("run", "change"):
                integer = key in ("split", "pretraining_seed", "iterations", "pretraining_images")
                # A table written before a column existed lacks it: not measured then.
                row[key] = int(row[key]) if integer else float(row.get(key) or math.nan)
    return rows


def paired_differences(rows: list[dict]) -> dict[str, list[dict]]:
    """Per change, one entry per run that has an unchanged-recipe run on its split and pretraining seed:
    {"run", "split", "<metric>": run - recipe run}. The yardstick pairs recipe runs of one split whose pretraining
    seeds differ (each unordered pair once)."""
    recipe_runs = {(r["split"], r["pretraining_seed"]): r for r in rows if r["change"] == RECIPE}
    paired = defaultdict(list)

    def entry(run: dict, base: dict) -> dict:
        return {"run": run["run"], "split": run["split"]} | {key: run[key] - base[key] for key, _ in DIFFERENCES}

    for run in rows:
        base = recipe_runs.get((run["split"], run["pretraining_seed"]))
        if run["change"] != RECIPE and base is not None:
            paired[run["change"]].append(entry(run, base))
    ordered = sorted(recipe_runs.values(), key=lambda r: (r["split"], r["pretraining_seed"]))
    for i, run in enumerate(ordered):
        for base in ordered[i + 1 :]:
            if base["split"] == run["split"]:
                paired[SEED_YARDSTICK].append(entry(run, base))
    return dict(paired)


def mean_interval(values: list[float]) -> tuple[float, float, float]:
    """Mean and 95 % t interval (nan bounds for a single value)."""
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return math.nan, math.nan, math.nan
    mean = statistics.mean(values)
    if len(values) < 2:
        return mean, math.nan, math.nan
    half = stats.t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return mean, mean - half, mean + half


def unit(key: str) -> tuple[int, int]:
    """Scale and decimals a difference is shown with: accuracy in points, the DINO term in nats."""
    return (1, 2) if key.startswith("dino") else (100, 1)


def print_table(paired: dict[str, list[dict]]) -> None:
    """A markdown row per change; for the yardstick the range instead of the mean (which seed is subtracted from
    which is arbitrary)."""
    titles = [f"{title}: mean (95 % t interval); each run" for _, title in DIFFERENCES]
    print("| change | runs | " + " | ".join(titles) + " |")
    print("|---|---|" + "---|" * len(DIFFERENCES))
    for change, entries in sorted(paired.items(), key=lambda item: (item[0] != SEED_YARDSTICK, item[0])):
        cells = []
        for key, _ in DIFFERENCES:
            scale, digits = unit(key)
            values = [scale * e[key] for e in entries]
            each = " ".join(f"{v:+.{digits}f}" for v in values)
            if change == SEED_YARDSTICK:
                cells.append(f"range {min(values):+.{digits}f} to {max(values):+.{digits}f}; {each}")
                continue
            mean, low, high = mean_interval(values)
            interval = f" ({low:+.{digits}f} to {high:+.{digits}f})" if not math.isnan(low) else ""
            cells.append(f"{mean:+.{digits}f}{interval}; {each}")
        print(f"| {change} | {len(entries)} | " + " | ".join(cells) + " |")


@functools.cache
def field_name_counts() -> Counter:
    """How many recipe sections have a field of each name (`loss_weight`: dino and ibot)."""
    return Counter(key.split(".")[-1] for key in flatten(RecipeConfig().to_dict()))


def short_label(change: str, runs: int) -> str:
    """The change without section prefixes where the field name is unique (`crops.flip_probability=0.0` ->
    `flip_probability=0.0`, `ibot.loss_weight=0.0` stays), wrapped."""
    parts = []
    for part in change.split(", "):
        key = part.split("=", 1)[0]
        unique = "=" in part and field_name_counts()[key.split(".")[-1]] == 1
        parts.append(part.split(".", 1)[-1] if unique else part)
    return textwrap.fill(", ".join(parts), width=46) + f" (n={runs})"


def bar(change: str, values: list[float]) -> tuple[float, float, float] | None:
    """What the plot draws over a row's dots. Which seed is subtracted from which is arbitrary, so the yardstick gets
    nothing; two runs give t one degree of freedom and an interval 25 times their half-range, so only their mean."""
    if change == SEED_YARDSTICK or not values:
        return None
    if len(values) < 3:
        return statistics.mean(values), math.nan, math.nan
    return mean_interval(values)


def plot(paired: dict[str, list[dict]], path: Path) -> Path:
    """One panel per difference; rows ordered by the number of runs, the yardstick on top."""
    changes = sorted(paired, key=lambda c: (c != SEED_YARDSTICK, -len(paired[c]), c))
    panels = []
    for key, title in DIFFERENCES:
        scale, _ = unit(key)
        points = [[(scale * e[key], e["split"]) for e in paired[c] if not math.isnan(e[key])] for c in changes]
        means = [bar(c, [v for v, _ in row]) for c, row in zip(changes, points)]
        panels.append((title, points, means))
    return plot_paired_differences(
        [short_label(c, len(paired[c])) for c in changes],
        panels,
        shaded_row=changes.index(SEED_YARDSTICK) if SEED_YARDSTICK in changes else None,
        group_name="split",
        shaded_name="range between pretraining seeds",
        x_label="run minus the recipe's run on the same split and pretraining seed",
        path=path,
    )


def data_curve(rows: list[dict]) -> list[dict]:
    """The runs that change nothing but the pretraining images, and the recipe's own: per run its images, split,
    whether they were the pediatric ones alone, its linear probe minus the 8 x 8 raw-pixel probe on its split (in
    points; above 0 it beats the baseline) and its k-NN accuracy on CLS."""
    return [
        {
            "images": row["pretraining_images"],
            "split": row["split"],
            "pediatric_only": row["change"] == PEDIATRIC_ONLY,
            "over_raw_pixels": 100 * (row["probe_accuracy"] - row["raw_pixels_accuracy"]),
            "knn_accuracy": row["knn_accuracy"],
        }
        for row in rows
        if row["change"] == RECIPE or (row["change"].startswith(DATA_PART) and ", " not in row["change"])
        if not math.isnan(row["raw_pixels_accuracy"])  # runs scored before the raw-pixel row existed
    ]


def per_doubling(images: list[float], values: list[float], splits: list[int]) -> dict | None:
    """Least squares of `values` on log2(`images`) within splits (a level per split, one common slope: splits differ
    in how hard their probe-val images are): the slope per doubling with its 95 % t interval, the average run's
    line (`intercept` at one image) and where that line reaches 0 (nan unless the whole interval is above 0: a
    slope that may be 0 says nothing about where). None when no split has runs of two sizes or no degree of freedom
    is left for the interval."""
    x, y, group = np.log2(images), np.asarray(values, dtype=float), np.asarray(splits)
    levels = sorted(set(splits))
    dx, dy = x.copy(), y.copy()
    for level in levels:  # each split's own mean taken out: what is left is the change within a split
        dx[group == level] -= x[group == level].mean()
        dy[group == level] -= y[group == level].mean()
    freedom = len(y) - len(levels) - 1
    if freedom < 1 or not np.any(np.abs(dx) > 1e-9):
        return None
    slope = float(dx @ dy / (dx @ dx))
    stderr = math.sqrt(float(np.sum((dy - slope * dx) ** 2)) / freedom / float(dx @ dx))
    half = stats.t.ppf(0.975, freedom) * stderr
    intercept = float(y.mean() - slope * x.mean())
    zero_at = 2 ** (-intercept / slope) if slope - half > 0 else math.nan
    return {"slope": slope, "low": slope - half, "high": slope + half, "intercept": intercept, "zero_at": zero_at}


def plot_data_curve(points: list[dict], path: Path) -> tuple[dict | None, Path]:
    """The probe's margin over raw pixels and k-NN on CLS against the pretraining images, with the margin's fit."""
    fit = per_doubling(*([p[key] for p in points] for key in ("images", "over_raw_pixels", "split")))
    dots = {
        key: [(p["images"], p[key], p["split"], p["pediatric_only"]) for p in points]
        for key in ("over_raw_pixels", "knn_accuracy")
    }
    picture = plot_against_size(
        [
            ("linear probe minus raw pixels 8 x 8, same split (points)", dots["over_raw_pixels"], (0, "raw pixels")),
            ("k-NN on CLS, accuracy", dots["knn_accuracy"], (KNN_TARGET, f"target {KNN_TARGET}")),
        ],
        [None if fit is None else (fit["slope"], fit["intercept"]), None],
        x_label="pretraining images (a random subset, or all)",
        group_name="split",
        hollow_name="probe-train pediatric images only",
        path=path,
    )
    return fit, picture


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--runs",
        type=Path,
        default=REPO / "outputs" / "learning_check",
        help="folder holding learning_check.py output folders",
    )
    parser.add_argument(
        "--config", type=Path, default=REPO / "configs" / "cpu_small.yaml", help="the recipe each run is compared with"
    )
    parser.add_argument("--iterations", type=int, default=3600, help="the recipe's learning-check schedule length")
    parser.add_argument(
        "--csv", type=Path, default=REPO / "outputs" / "learning_check_runs.csv", help="where to write every run's row"
    )
    parser.add_argument(
        "--plot",
        type=Path,
        default=REPO / "outputs" / "learning_check_changes.png",
        help="where to draw the paired differences (PNG)",
    )
    parser.add_argument(
        "--data-plot",
        type=Path,
        default=REPO / "outputs" / "learning_check_data.png",
        help="where to draw the probe's margin over raw pixels and k-NN against the number of pretraining images "
        "(PNG), from the runs that change only those",
    )
    parser.add_argument(
        "--previous",
        type=Path,
        default=REPO / "benchmarks" / "learning_check_runs.csv",
        help="a table this script wrote before: its rows stand for runs whose folders are gone (a run folder under "
        "--runs replaces the row of the same name; the rows keep the change names they were given then)",
    )
    parser.add_argument("--no-previous", action="store_true", help="read the run folders only")
    args = parser.parse_args()

    with reported_user_errors():
        recipe = RecipeConfig.from_yaml(args.config)
        epoch_length = recipe.train.official_epoch_length
        recipe.optim.epochs = max(1, round(args.iterations / epoch_length))
        reference = flatten(recipe.to_dict())
        folders = sorted(p for p in args.runs.iterdir() if p.is_dir()) if args.runs.is_dir() else []
        rows = {row["run"]: row for folder in folders if (row := read_run(folder, reference, epoch_length))}
        print(f"{len(rows)} runs read from {args.runs}")
        if not args.no_previous:
            if not args.previous.is_file():
                raise UserError(f"--previous {args.previous}: no such table (pass --no-previous to read folders only)")
            previous = [row for row in read_csv(args.previous) if row["run"] not in rows]
            rows |= {row["run"]: row for row in previous}
            print(f"{len(previous)} more from {args.previous}")
        if not rows:
            raise UserError(f"no finished CXR learning check under {args.runs}")
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        with open(args.csv, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(sorted(rows.values(), key=lambda row: row["run"]))
        print(f"{len(rows)} runs -> {args.csv}")
        rows = list(rows.values())
        paired = paired_differences(rows)
        if not paired:
            raise UserError("no run has an unchanged-recipe run on its split and pretraining seed to pair with")
        print_table(paired)
        print(f"plot -> {plot(paired, args.plot)}")
        if points := data_curve(rows):
            fit, picture = plot_data_curve(points, args.data_plot)
            if fit is not None:
                crossing = (
                    "the interval includes 0, so no crossing to extrapolate"
                    if math.isnan(fit["zero_at"])
                    else f"the line reaches 0 at about {fit['zero_at']:,.0f} images"
                )
                print(
                    f"\nLinear probe minus raw pixels against log2(pretraining images), {len(points)} runs, within "
                    f"splits: {fit['slope']:+.1f} points per doubling (95 % t interval {fit['low']:+.1f} to "
                    f"{fit['high']:+.1f}); {crossing}"
                )
            print(f"data curve -> {picture}")


if __name__ == "__main__":
    main()
