"""Fresh-clone end to end: every downstream command runs with no data argument on a copy of the repository whose
parent holds no `shared/` folder, on the embedded sample in `data/sample/`.

Scope: the defaults of the command line (where each command finds its data when given none), not the quality of
any result; the tasks themselves are tested in their own files. The copy holds the files git tracks or would track
(`git ls-files --cached --others --exclude-standard`), as a clone with uncommitted work would. The commands run in
two subprocesses with the copy as working directory: one `python train_downstream.py visualize`, as a user types
it, and one that runs the other commands in turn through the copy's `train_downstream.main` (one start-up instead
of eight). A tiny encoder and the smallest training settings keep it to about a minute on two cores.
"""

import csv
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO_ROOT, copy_checkout

pytestmark = pytest.mark.fresh_clone

SMALLEST_REPORT = (
    ["--lm-epochs", "1", "--stage1-epochs", "1", "--stage2-epochs", "1", "--tiny-layers", "1"]
    + ["--tiny-hidden-size", "32", "--tiny-vocab-size", "300", "--max-new-tokens", "8", "--max-report-tokens", "24"]
)  # fmt: skip

# Runs each command of argv lists (JSON in argv[1]) through the copy's entry point, in one process; prints the
# imported package's file and each command's seconds as JSON on the last line.
DRIVER = """
import json, sys, time
import rad_dino_hf, train_downstream
seconds = {}
for argv in json.loads(sys.argv[1]):
    start = time.perf_counter()
    train_downstream.main(argv)
    seconds[argv[0]] = round(time.perf_counter() - start, 1)
print(json.dumps({"package": rad_dino_hf.__file__, "seconds": seconds}))
"""


def run_in(copy: Path, *arguments: str) -> subprocess.CompletedProcess:
    """`python ARGUMENTS` with the copy as working directory, offline, with nothing added to the import path."""
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    environment["HF_HUB_OFFLINE"] = "1"
    result = subprocess.run(
        [sys.executable, *arguments], cwd=copy, env=environment, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def metrics(copy: Path, command: str) -> dict:
    return json.loads((copy / "outputs" / command / "metrics.json").read_text())


def sample_rows(copy: Path) -> list[dict]:
    with open(copy / "data" / "sample" / "metadata.csv", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_every_downstream_command_runs_on_the_embedded_sample_of_a_fresh_clone(tiny_model_dir, tmp_path):
    copy = copy_checkout(tmp_path.resolve() / "clone" / "rad-dino")
    assert not (copy.parent / "shared").exists() and not (copy / "outputs").exists()
    model = ["--model", str(tiny_model_dir)]

    visualize = run_in(copy, "train_downstream.py", "visualize", *model)
    commands = [
        ["features", *model],
        ["similar"],
        ["segment", *model, "--epochs", "2"],
        ["linear-probe", *model],
        ["knn", *model],
        ["demographics", *model],
        ["finetune", *model, "--epochs", "1"],
        ["report", "--encoder", str(tiny_model_dir), *SMALLEST_REPORT],
    ]
    ran = json.loads(run_in(copy, "-c", DRIVER, json.dumps(commands)).stdout.splitlines()[-1])
    print("seconds per command:", ran["seconds"])

    sample = copy / "data" / "sample"
    rows = sample_rows(copy)
    assert Path(ran["package"]).resolve() == (copy / "rad_dino_hf" / "__init__.py").resolve()
    assert str(sample / "dicom" / "RG1_UNCR.dcm") in visualize.stderr  # the log names the copy's sample DICOM
    assert (copy / "outputs" / "visualize" / "RG1_UNCR_attention.png").stat().st_size > 1000

    images = sorted(path for path in (sample / "images").iterdir())
    summary = json.loads((copy / "outputs" / "features" / "summary.json").read_text())
    assert summary["rows"] == len(images) and summary["errors"] == 0
    assert (copy / "outputs" / "features" / "patch_pca.png").stat().st_size > 1000

    with open(copy / "outputs" / "similar" / "neighbours.csv", encoding="utf-8") as handle:
        neighbours = list(csv.DictReader(handle))
    assert len(neighbours) == 8 and {row["query"] for row in neighbours} == {str(sample / rows[0]["file"])}
    assert neighbours[0]["path"] == str(sample / rows[0]["file"]) and float(neighbours[0]["cosine"]) > 0.999
    assert (copy / "outputs" / "similar" / "contact_sheet.png").stat().st_size > 1000

    segment = metrics(copy, "segment")
    assert segment["n_images"] + segment["n_train"] == sum(1 for row in rows if row["lung_mask"])
    assert 0 <= segment["lung_dice_per_image"]["value"] <= 1
    assert (copy / "outputs" / "segment" / "model" / "config.json").is_file()
    assert list((copy / "outputs" / "segment").glob("overlay_*.png"))

    labelled = [row for row in rows if row["label"]]
    for command in ("linear_probe", "knn", "finetune"):
        result = metrics(copy, command)
        assert result["table"] == str(sample / "metadata.csv")
        assert result["n"] + result["n_train"] == len(labelled)
        assert result["class_names"] == ["bacterial", "normal", "viral"] and "value" in result["accuracy"]
        assert (copy / "outputs" / command / "roc_curves.png").stat().st_size > 1000
    assert (copy / "outputs" / "finetune" / "model" / "config.json").is_file()

    demographics = metrics(copy, "demographics")
    assert demographics["n_images"] == len(rows) and "auroc" in demographics["sex"]
    assert sum(1 for row in rows if row["age"]) < 5  # fewer ages than patient-grouped 5-fold CV needs
    assert set(demographics["age"]) == {"skipped"} and "known age" in demographics["age"]["skipped"]
    assert (copy / "outputs" / "demographics" / "sex_roc.png").stat().st_size > 1000

    report = metrics(copy, "report")
    pairs = [row for row in rows if row["report"]]
    assert report["held_out"]["n"] + report["train"]["n"] == len(pairs)
    assert (copy / "outputs" / "report" / "generator" / "config.json").is_file()


def test_a_missing_embedded_sample_names_the_option_to_pass(tmp_path, monkeypatch, capsys):
    """An installed package without the checkout's data/sample: the default fails as a one-line `error:` that
    names the missing path and the option, before any model is loaded."""
    from rad_dino_hf import embedded_sample
    from rad_dino_hf.cli.downstream import main

    monkeypatch.setattr(embedded_sample, "SAMPLE_DIR", tmp_path / "sample")
    missing = tmp_path / "sample" / "metadata.csv"
    with pytest.raises(SystemExit) as exit_info:
        main(["knn", "--table", str(missing), "--model", "not-loaded"])
    assert exit_info.value.code == 2
    message = capsys.readouterr().err.strip()
    assert message.startswith("error: The embedded sample") and str(missing) in message and "--table" in message
    elsewhere = tmp_path / "mine.csv"  # a path outside the sample is the reader's business
    assert embedded_sample.require(elsewhere, "--table") == str(elsewhere)


# Why a README shell example is not run here, by what it contains; every other example runs as written.
DOWNSTREAM = "python train_downstream.py "
README_SKIPS = {
    "pip install": "set-up: .ci/run installs the project the same way before the tests",
    "/path/to/": "names a file of the user's",
    "hub:": "reads a Hub dataset (offline here)",
    "microsoft/rad-dino": "downloads the released model (offline here)",
    "--num_machines": "needs several GPU machines",
    "--push-to-hub": "uploads to the Hub",
}


def readme_shell_examples() -> list[str]:
    """Every command of the README's ```bash blocks, continuation lines joined, comments left out."""
    text = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    blocks = [block.split("```", 1)[0] for block in text.split("```bash\n")[1:]]
    commands = []
    for block in blocks:
        for command in block.replace("\\\n", " ").splitlines():
            if command.strip() and not command.lstrip().startswith("#"):
                commands.append(" ".join(command.split()))
    return commands


def readme_skip_reason(command: str) -> str | None:
    return next((reason for marker, reason in README_SKIPS.items() if marker in command), None)


def test_readme_shell_examples_run_as_written_on_a_fresh_clone(tiny_model_dir, tmp_path):
    """The README's examples, in order, in a copy of the checkout with no `../shared`. `outputs/pretrain/export`
    (what the README's first command writes, a few minutes of pretraining) is stood in for by a tiny encoder.
    Pretraining examples run as typed, in bash; the downstream ones (`python train_downstream.py ARGS`) run with
    the same ARGS through the copy's `train_downstream.main`, in one process, to save eight start-ups."""
    copy = copy_checkout(tmp_path.resolve() / "clone" / "rad-dino")
    shutil.copytree(tiny_model_dir, copy / "outputs" / "pretrain" / "export")
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    environment["HF_HUB_OFFLINE"] = "1"
    # `python` and the console scripts of the environment running the tests, as after the README's set-up.
    environment["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{environment.get('PATH', '')}"
    commands = readme_shell_examples()
    assert len(commands) >= 12, commands
    skipped = {command: reason for command in commands if (reason := readme_skip_reason(command))}
    runnable = [command for command in commands if command not in skipped]
    downstream = [command for command in runnable if command.startswith(DOWNSTREAM)]
    # The downstream examples use the pretraining export only, so running them after the pretraining ones keeps
    # the README's order where it matters (features before similar).
    for command in (command for command in runnable if command not in downstream):
        result = subprocess.run(
            ["bash", "-c", command], cwd=copy, env=environment, capture_output=True, text=True, timeout=600
        )
        assert result.returncode == 0, f"{command}\n{result.stderr[-4000:]}"
    arguments = [shlex.split(command.removeprefix(DOWNSTREAM)) for command in downstream]
    ran = json.loads(run_in(copy, "-c", DRIVER, json.dumps(arguments)).stdout.splitlines()[-1])
    print("skipped README examples:", json.dumps(skipped, indent=1))
    print("seconds per downstream example:", ran["seconds"])
    assert Path(ran["package"]).resolve() == (copy / "rad_dino_hf" / "__init__.py").resolve()
    assert all(command.startswith(("python ", "rad-dino", "accelerate ")) for command in runnable), runnable
    # Every downstream command has an example that ran.
    from rad_dino_hf.cli.downstream import TASKS

    assert sorted(ran["seconds"]) == sorted(TASKS), ran["seconds"]
    assert (copy / "outputs" / "pretrain-short" / "export" / "README.md").is_file()


def test_readme_skip_rules_leave_the_runnable_examples():
    assert readme_skip_reason("python train_downstream.py knn --model outputs/pretrain/export") is None
    assert readme_skip_reason("python train_downstream.py knn --table /path/to/x.csv") == "names a file of the user's"
    assert "set-up" in readme_skip_reason("python3 -m venv .venv && pip install -e . && rad-dino-pretrain")
