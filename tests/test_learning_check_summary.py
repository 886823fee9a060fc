"""benchmarks/learning_check_summary.py: naming each run's change, pairing, and the averages, on hand-made runs."""

import importlib.util
import json
import math
import sys

import numpy as np
import pytest
from scipy import stats as scipy_stats

from conftest import REPO_ROOT

CONFIG = REPO_ROOT / "configs" / "cpu_small.yaml"


@pytest.fixture(scope="module")
def summary():
    path = REPO_ROOT / "benchmarks" / "learning_check_summary.py"
    spec = importlib.util.spec_from_file_location("learning_check_summary", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["learning_check_summary"] = module
    spec.loader.exec_module(module)
    return module


def make_run(
    root,
    name,
    split,
    overrides,
    probe,
    knn,
    dino_values,
    iterations=3600,
    stopped_at=None,
    command=None,
    split_sizes=None,
    images=1043,
    rank=40.0,
):
    """A finished learning check as learning_check.py leaves it: the scores, the resolved recipe and the metrics."""
    from rad_dino_hf.recipe import RecipeConfig, apply_overrides

    folder = root / name
    (folder / "pretrain").mkdir(parents=True)
    recipe = apply_overrides(
        RecipeConfig.from_yaml(CONFIG),
        [
            f"optim.epochs={iterations // 30}",
            f"train.output_dir={folder / 'pretrain'}",  # per-run fields: never part of the change
            "train.max_minutes=45",
            f"train.seed={split}",
            *overrides,
        ],
    )
    recipe.to_yaml(folder / "pretrain" / "recipe.yaml")
    steps = range(iterations - 10 * (len(dino_values) - 1), iterations + 1, 10)
    records = [{"step": s, "loss/dino": v, "mi/dino": 1.0} for s, v in zip(steps, dino_values)]
    (folder / "pretrain" / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    scores = {
        "pretrained (linear probe)": {"accuracy": probe, "accuracy_ci": [probe - 0.05, probe + 0.05], "auroc": 0.9},
        "random twin (linear probe)": {"accuracy": 0.6, "accuracy_ci": [0.5, 0.7], "auroc": 0.8},
        "raw pixels 8x8 (linear probe)": {"accuracy": 0.82, "accuracy_ci": [0.76, 0.88], "auroc": 0.94},
        "raw pixels 10x10 (linear probe)": {"accuracy": 0.79, "accuracy_ci": [0.72, 0.85], "auroc": 0.92},
        "pretrained (k-NN on CLS)": {"accuracy": knn, "accuracy_ci": [knn - 0.05, knn + 0.05], "auroc": 0.85},
    }
    pretraining = {"step": stopped_at or iterations, "images": images}
    command = {"task": "cxr"} | (command or {})
    result = {"seed": split, "command": command, "pretraining": pretraining, "results": scores}
    if rank is not None:  # runs scored before learning_check.py measured it have no effective_rank
        result["effective_rank"] = {"pretrained": {"cls": rank, "mean_patch": rank / 2, "dimensions": 128}}
    if split_sizes:
        result["split"] = split_sizes
    (folder / "learning_check.json").write_text(json.dumps(result))
    return folder


@pytest.fixture
def runs(tmp_path):
    make_run(tmp_path, "recipe_0", 0, [], probe=0.70, knn=0.60, dino_values=[9.0] * 30 + [4.0] * 20)
    make_run(tmp_path, "recipe_0_seed100", 0, ["train.seed=100"], probe=0.75, knn=0.58, dino_values=[4.5])
    make_run(tmp_path, "noflip_0", 0, ["crops.flip_probability=0"], probe=0.66, knn=0.72, dino_values=[3.5])
    make_run(tmp_path, "noflip_1", 1, ["crops.flip_probability=0"], probe=0.66, knn=0.72, dino_values=[3.5])
    make_run(tmp_path, "b64_0", 0, ["train.batch_size_per_gpu=64"], 0.68, 0.61, [4.2], iterations=900)
    make_run(tmp_path, "g140_0", 0, ["crops.global_crops_size=140"], 0.73, 0.68, [4.0], rank=47.5)
    (tmp_path / "unfinished").mkdir()
    return tmp_path


def read_all(summary, folder):
    from rad_dino_hf.recipe import RecipeConfig

    recipe = RecipeConfig.from_yaml(CONFIG)
    recipe.optim.epochs = 120
    reference = summary.flatten(recipe.to_dict())
    rows = [summary.read_run(p, reference, 30) for p in sorted(folder.iterdir())]
    return {row["run"]: row for row in rows if row}


def test_change_names_only_what_differs(summary, runs):
    rows = read_all(summary, runs)

    # The unfinished run is skipped.
    assert set(rows) == {"recipe_0", "recipe_0_seed100", "noflip_0", "noflip_1", "b64_0", "g140_0"}
    assert rows["recipe_0"]["change"] == summary.RECIPE
    assert rows["recipe_0_seed100"]["change"] == summary.RECIPE  # the seed is the pairing key, not a change
    assert rows["recipe_0_seed100"]["pretraining_seed"] == 100
    assert rows["noflip_0"]["change"] == "crops.flip_probability=0.0"
    assert rows["b64_0"]["change"] == "train.batch_size_per_gpu=64, 900 iterations"


def test_raw_pixels_are_read_at_the_encoders_patch_grid(summary, runs):
    rows = read_all(summary, runs)

    assert rows["recipe_0"]["raw_pixels_accuracy"] == 0.82  # 112 px crops: 8 x 8 patches
    assert rows["g140_0"]["raw_pixels_accuracy"] == 0.79  # 140 px: 10 x 10


def test_dino_term_is_the_mean_of_the_last_200_iterations(summary, runs):
    # Logged every 10 iterations up to 3,600: the last 200 iterations (3,401-3,600) hold the last 20 records.
    row = read_all(summary, runs)["recipe_0"]

    assert row["dino_last"] == pytest.approx(4.0)
    assert row["dino_mi_last"] == pytest.approx(1.0)
    assert row["ln_k"] == pytest.approx(math.log(256))


def test_pairs_on_split_and_pretraining_seed(summary, runs):
    paired = summary.paired_differences(list(read_all(summary, runs).values()))

    assert set(paired) == {
        "crops.flip_probability=0.0",
        "train.batch_size_per_gpu=64, 900 iterations",
        "crops.global_crops_size=140",
        summary.SEED_YARDSTICK,
    }
    (noflip,) = paired["crops.flip_probability=0.0"]  # split 1 has no recipe run to pair with
    assert noflip["run"] == "noflip_0"
    assert noflip["probe_accuracy"] == pytest.approx(0.66 - 0.70)
    assert noflip["knn_accuracy"] == pytest.approx(0.72 - 0.60)
    assert noflip["dino_last"] == pytest.approx(3.5 - 4.0)
    (yardstick,) = paired[summary.SEED_YARDSTICK]
    assert yardstick["probe_accuracy"] == pytest.approx(0.70 - 0.75)


def test_mean_interval_against_the_t_formula(summary):
    mean, low, high = summary.mean_interval([1.0, 2.0, 3.0, float("nan")])

    # n = 3, sd = 1: half width t(0.975, 2) / sqrt(3) = 4.3027 / 1.7321
    assert mean == 2.0
    assert high - mean == pytest.approx(4.302653 / math.sqrt(3), rel=1e-5)
    assert mean - low == pytest.approx(high - mean)
    assert math.isnan(summary.mean_interval([5.0])[1])


def test_table_round_trips_and_plots(summary, runs, tmp_path, monkeypatch, capsys):
    table, picture = tmp_path / "out" / "runs.csv", tmp_path / "out" / "changes.png"
    argv = ["summary", "--runs", str(runs), "--csv", str(table), "--plot", str(picture), "--no-previous"]
    argv += ["--data-plot", str(tmp_path / "out" / "data.png")]
    monkeypatch.setattr(sys, "argv", argv)
    summary.main()
    printed = capsys.readouterr().out

    assert "| crops.flip_probability=0.0 | 1 | -4.0; -4.0 | +12.0; +12.0 | -0.50; -0.50 |" in printed
    assert f"| {summary.SEED_YARDSTICK} | 1 | range -5.0 to -5.0; -5.0 | range +2.0 to +2.0; +2.0 |" in printed
    assert picture.stat().st_size > 10_000
    assert (tmp_path / "out" / "data.png").stat().st_size > 10_000  # the two recipe runs: dots, no line
    assert summary.read_csv(table) == sorted(read_all(summary, runs).values(), key=lambda r: r["run"])


def test_earlier_runs_come_from_the_previous_table_and_folders_win(summary, runs, tmp_path, monkeypatch, capsys):
    """A fresh checkout has no run folders: the committed table stands for them, and a folder read now replaces its
    row of the same name."""
    previous, merged = tmp_path / "previous.csv", tmp_path / "merged.csv"
    rows = read_all(summary, runs)
    gone = rows.pop("noflip_1") | {"run": "noflip_1_gone"}  # its folder no longer exists
    stale = rows["recipe_0"] | {"probe_accuracy": 0.1}  # the folder's own numbers must win
    with open(previous, "w", newline="", encoding="utf-8") as handle:
        writer = summary.csv.DictWriter(handle, fieldnames=summary.COLUMNS)
        writer.writeheader()
        writer.writerows([gone, stale])
    argv = ["summary", "--runs", str(runs), "--csv", str(merged), "--plot", str(tmp_path / "p.png")]
    argv += ["--data-plot", str(tmp_path / "data.png")]
    monkeypatch.setattr(sys, "argv", [*argv, "--previous", str(previous)])
    summary.main()

    table = {row["run"]: row for row in summary.read_csv(merged)}
    assert set(table) == set(read_all(summary, runs)) | {"noflip_1_gone"}
    assert table["recipe_0"]["probe_accuracy"] == pytest.approx(0.70)
    assert table["noflip_1_gone"] == gone  # floats survive the CSV exactly

    monkeypatch.setattr(sys, "argv", [*argv, "--previous", str(tmp_path / "absent.csv")])
    with pytest.raises(SystemExit):
        summary.main()
    assert "absent.csv: no such table (pass --no-previous" in capsys.readouterr().err


def test_a_run_the_time_cap_stopped_early_is_never_the_recipe(summary, tmp_path):
    make_run(tmp_path, "capped", 0, [], probe=0.70, knn=0.60, dino_values=[4.0], stopped_at=3300)
    make_run(tmp_path, "capped_noflip", 0, ["crops.flip_probability=0"], 0.7, 0.6, [4.0], stopped_at=3300)
    rows = read_all(summary, tmp_path)

    assert rows["capped"]["change"] == "stopped by the time cap at 3300 of 3600"
    assert rows["capped_noflip"]["change"] == "crops.flip_probability=0.0, stopped by the time cap at 3300 of 3600"


def test_pretraining_on_pediatric_images_only_is_a_change(summary, tmp_path):
    """`--pediatric-only` changes the data, not recipe.yaml (whose data sources are per-run): the run must not be
    paired as the recipe."""
    make_run(tmp_path, "recipe_0", 0, [], probe=0.70, knn=0.60, dino_values=[4.0])
    make_run(tmp_path, "pedonly_0", 0, [], 0.74, 0.66, [3.8], command={"pediatric_only": True})
    rows = read_all(summary, tmp_path)

    assert rows["pedonly_0"]["change"] == "pretrained on probe-train pediatric images only"
    (pedonly,) = summary.paired_differences(list(rows.values()))["pretrained on probe-train pediatric images only"]
    assert pedonly["probe_accuracy"] == pytest.approx(0.74 - 0.70)


def test_pretraining_on_a_random_subset_is_a_change(summary, tmp_path):
    """`--pretraining-images N` is named with its count, or as the pediatric-sized half when N is the probe-train
    count (which differs by split), so that those runs pair as one change across splits."""
    make_run(tmp_path, "recipe_0", 0, [], probe=0.70, knn=0.60, dino_values=[4.0])
    make_run(tmp_path, "recipe_1", 1, [], probe=0.68, knn=0.60, dino_values=[4.0])
    for split, probe, kept in ((0, 0.66, 540), (1, 0.65, 552)):
        command, sizes = {"pretraining_images": kept}, {"probe_train": kept}
        make_run(tmp_path, f"half_{split}", split, [], probe, 0.58, [4.3], command=command, split_sizes=sizes)
    make_run(tmp_path, "n300_0", 0, ["crops.flip_probability=0"], 0.6, 0.6, [4.3], command={"pretraining_images": 300})
    rows = read_all(summary, tmp_path)

    half = "pretrained on a random half (as many as the probe-train pediatric images) of the images"
    assert rows["half_0"]["change"] == rows["half_1"]["change"] == half
    assert rows["n300_0"]["change"] == "crops.flip_probability=0.0, pretrained on a random 300 of the images"
    differences = summary.paired_differences(list(rows.values()))[half]
    assert sorted(d["probe_accuracy"] for d in differences) == pytest.approx([0.66 - 0.70, 0.65 - 0.68])


def test_pretraining_on_a_random_share_is_named_by_the_share(summary, tmp_path):
    """`--pretraining-fraction F` keeps a different count on every split (their image totals differ): the run is
    named by its share, so the splits pair as one change, and a share also given as a count is named once."""
    for split, probe in ((0, 0.70), (1, 0.68)):
        make_run(tmp_path, f"recipe_{split}", split, [], probe=probe, knn=0.60, dino_values=[4.0])
    for split, probe, kept in ((0, 0.61, 261), (1, 0.64, 264)):
        command = {"pretraining_fraction": 0.25, "pretraining_images": kept}
        make_run(tmp_path, f"quarter_{split}", split, [], probe, 0.55, [4.4], command=command)
    rows = read_all(summary, tmp_path)

    quarter = "pretrained on a random 25 % of the images"
    assert rows["quarter_0"]["change"] == rows["quarter_1"]["change"] == quarter
    differences = summary.paired_differences(list(rows.values()))[quarter]
    assert sorted(d["probe_accuracy"] for d in differences) == pytest.approx([0.61 - 0.70, 0.64 - 0.68])


def test_slope_per_doubling_equals_least_squares_with_a_level_per_split(summary):
    """Within-split slope of a value on log2(images) and its 95 % interval, against ordinary least squares with one
    indicator column per split (numpy's lstsq and the textbook standard error)."""
    rng = np.random.default_rng(0)
    images = np.array([256, 512, 1024, 1024, 261, 522, 1043, 1043, 264, 1055])
    splits = np.array([0, 0, 0, 0, 1, 1, 1, 1, 2, 2])
    values = np.array([-20.0, -10.0, -5.0])[splits] + 4.0 * np.log2(images) + rng.normal(0, 2.0, len(images))
    fit = summary.per_doubling(list(images), list(values), list(splits))

    design = np.column_stack([np.log2(images)] + [(splits == s).astype(float) for s in range(3)])
    coefficients, residual, _, _ = np.linalg.lstsq(design, values, rcond=None)
    freedom = len(values) - design.shape[1]
    covariance = residual[0] / freedom * np.linalg.inv(design.T @ design)
    half = scipy_stats.t.ppf(0.975, freedom) * math.sqrt(covariance[0, 0])
    assert fit["slope"] == pytest.approx(coefficients[0])
    assert (fit["low"], fit["high"]) == pytest.approx((coefficients[0] - half, coefficients[0] + half))
    # The average run's line passes through the mean point and reaches 0 where the formula says.
    assert fit["intercept"] + fit["slope"] * np.log2(images).mean() == pytest.approx(values.mean())
    assert fit["low"] > 0 and fit["zero_at"] == pytest.approx(2 ** (-fit["intercept"] / fit["slope"]))
    # A slope whose interval includes 0 gives no crossing.
    flat = summary.per_doubling(list(images), list(values - 4.0 * np.log2(images)), list(splits))
    assert flat["low"] < 0 < flat["high"] and math.isnan(flat["zero_at"])


def test_no_slope_without_two_sizes_on_a_split(summary):
    """Sizes that differ only between splits say nothing about the within-split slope."""
    assert summary.per_doubling([1043, 1043, 1055, 1055], [-5.0, -7.0, -9.0, -8.0], [0, 0, 1, 1]) is None


def test_the_data_curve_takes_the_recipe_and_data_only_runs(summary, tmp_path):
    """Runs that change only the images join the recipe's runs on the curve; a run that also changes the recipe
    does not. Its margin is over the raw-pixel probe of its own split."""
    make_run(tmp_path, "recipe_0", 0, [], probe=0.70, knn=0.60, dino_values=[4.0])
    make_run(tmp_path, "quarter_0", 0, [], 0.62, 0.58, [4.4], command={"pretraining_fraction": 0.25}, images=261)
    make_run(tmp_path, "pedonly_0", 0, [], 0.64, 0.57, [4.6], command={"pediatric_only": True}, images=540)
    make_run(tmp_path, "noflip_0", 0, ["crops.flip_probability=0"], 0.66, 0.72, [3.5])
    command = {"pretraining_fraction": 0.25}
    make_run(tmp_path, "noflip_quarter_0", 0, ["crops.flip_probability=0"], 0.6, 0.6, [4.0], command=command)
    points = summary.data_curve(list(read_all(summary, tmp_path).values()))

    by_size = {p["images"]: p for p in points}
    assert sorted(by_size) == [261, 540, 1043]
    assert by_size[261]["over_raw_pixels"] == pytest.approx(100 * (0.62 - 0.82))
    assert by_size[540]["pediatric_only"] and not by_size[261]["pediatric_only"]
    assert by_size[1043]["knn_accuracy"] == pytest.approx(0.60)
    fit, picture = summary.plot_data_curve(points, tmp_path / "data.png")
    assert fit["slope"] > 0 and picture.stat().st_size > 10_000


def test_effective_rank_is_read_where_measured(summary, tmp_path):
    """The CLS rank comes from learning_check.json; a run scored before it was measured, and a table written before
    the column existed, give nan."""
    make_run(tmp_path, "measured", 0, [], 0.7, 0.6, [4.0], rank=47.5)
    make_run(tmp_path, "older", 1, [], 0.7, 0.6, [4.0], rank=None)
    rows = read_all(summary, tmp_path)
    assert rows["measured"]["cls_effective_rank"] == 47.5
    assert math.isnan(rows["older"]["cls_effective_rank"])

    table = tmp_path / "old_table.csv"
    columns = [key for key in summary.COLUMNS if key != "cls_effective_rank"]
    with open(table, "w", newline="", encoding="utf-8") as handle:
        writer = summary.csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerow(rows["measured"])
    (old,) = summary.read_csv(table)
    assert math.isnan(old["cls_effective_rank"]) and old["probe_accuracy"] == pytest.approx(0.7)
