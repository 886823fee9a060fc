"""The wheel, installed alone in a fresh environment outside the checkout: its files, the console scripts, the Hub
modules with `from_pretrained` of an export, and the evaluate modules (loaded by path from the package).

The fresh environment reuses this environment's installed dependencies through a path line in a `.pth` file. That
line puts the folder on `sys.path` without running the `.pth` files inside it, so the editable install of this
project (a finder that a `.pth` file there installs) stays out; the child process checks that it did.
"""

import json
import os
import subprocess
import sys
import sysconfig
import textwrap
import venv
import zipfile
from pathlib import Path

import pytest
import yaml

from conftest import REPO_ROOT, copy_checkout

HUB_MODULES = ["configuration_rad_dino.py", "modeling_rad_dino.py", "image_processing_rad_dino.py"]
PACKAGE = "rad_dino_hf"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The project's wheel, built without build isolation (setuptools comes with the test extra)."""
    work = tmp_path_factory.mktemp("wheel")
    source = copy_checkout(work / "source")  # building in place would write build/ and *.egg-info/ there
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(work)]
    result = subprocess.run([*command, str(source)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    [built] = work.glob("rad_dino_hf-*.whl")
    return built


@pytest.fixture(scope="module")
def environment(wheel, tmp_path_factory) -> Path:
    """A fresh virtual environment (outside the checkout) with the wheel installed and this environment's
    dependencies visible; returns its folder."""
    root = tmp_path_factory.mktemp("env") / "venv"
    venv.create(root, with_pip=False)
    python = root / "bin" / "python"
    # This pip installs into the new environment before the dependencies become visible there: it sees no other
    # rad-dino-hf (the editable one) to replace.
    install = [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q"]
    result = subprocess.run([*install, str(wheel)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    site_packages = _run(root, "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.strip()
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (Path(site_packages) / "test_environment.pth").write_text("\n".join(sorted(ours)) + "\n", encoding="utf-8")
    return root


def _run(root: Path, code: str | None = None, script: str | None = None, *args: str, cwd: Path | None = None):
    """`python -c CODE` or a console script of the environment at `root`, offline, with no PYTHONPATH."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env |= {"HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(root.parent / "modules")}
    command = [str(root / "bin" / script)] if script else [str(root / "bin" / "python"), "-c", code]
    command += args
    return subprocess.run(command, cwd=cwd or root.parent, env=env, capture_output=True, text=True, timeout=300)


def test_wheel_holds_the_hub_modules_and_the_package_only(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names}
    dist_info = {name for name in top_level if name.endswith(".dist-info")}
    assert len(dist_info) == 1 and top_level - dist_info == {*HUB_MODULES, PACKAGE}, top_level
    in_package = {name for name in names if name.startswith(f"{PACKAGE}/")}
    # Every module and data file of the source package, the evaluate modules (folders without __init__.py) included.
    sources = {
        path.relative_to(REPO_ROOT).as_posix()
        for path in (REPO_ROOT / PACKAGE).rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }
    assert in_package == sources
    assert {f"{PACKAGE}/evaluate_metrics/{name}/{name}.py" for name in ("classification", "segmentation")} <= sources


def test_console_scripts_run_outside_the_checkout(environment):
    for script in ("rad-dino-pretrain", "rad-dino-downstream"):
        result = _run(environment, None, script, "--help")
        assert result.returncode == 0, result.stderr[-3000:]
        assert result.stdout.startswith(f"usage: {script}"), result.stdout[:500]


WHEEL_USE = textwrap.dedent(
    """
    import contextlib, io, json, sys

    import numpy as np
    import torch
    from transformers import AutoModel

    import configuration_rad_dino, rad_dino_hf
    from modeling_rad_dino import RadDinoModel
    from rad_dino_hf.cli import pretrain
    from rad_dino_hf.metrics import classification_metrics, load_evaluate_metric

    export, config = sys.argv[1:]
    printed = {}
    for name, argv in [("no_config", []), ("config", ["--config", config, "--set", "optim.epochs=7"])]:
        stdout, stderr = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                pretrain.main([*argv, "--print-config"])
                code = 0
            except SystemExit as exit:
                code = exit.code
        printed[name] = [code, stdout.getvalue(), stderr.getvalue()]

    stock = AutoModel.from_pretrained(export).eval()
    remote = AutoModel.from_pretrained(export, trust_remote_code=True).eval()
    ours = RadDinoModel.from_pretrained(export).eval()
    pixels = torch.randn(1, 3, 56, 56, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        outputs = [model(pixel_values=pixels).last_hidden_state for model in (stock, remote, ours)]

    labels = np.array([0, 1, 0, 1])
    scores = np.array([[0.9, 0.1], [0.2, 0.8], [0.4, 0.6], [0.3, 0.7]])  # the third image is wrong
    metric = load_evaluate_metric("classification")
    from_module = metric.compute(predictions=scores, references=labels, n_bootstrap=5)
    print(json.dumps({
        "files": [rad_dino_hf.__file__, configuration_rad_dino.__file__, sys.modules[RadDinoModel.__module__].__file__],
        "editable": [name for name in sys.modules if "__editable__" in name]
        + [repr(finder) for finder in sys.meta_path if "editable" in repr(finder).lower()],
        "classes": [type(model).__name__ for model in (stock, remote, ours)],
        "remote_module": type(remote).__module__,
        "max_difference": max((output - outputs[2]).abs().max().item() for output in outputs),
        "accuracy": from_module["accuracy"]["value"],
        "same_as_function": from_module == classification_metrics(labels, scores, n_bootstrap=5),
        "printed": printed,
    }))
    """
)


def test_wheel_loads_an_export_scores_and_asks_for_a_recipe(environment, tiny_model_dir):
    config = REPO_ROOT / "configs" / "cpu_small.yaml"
    result = _run(environment, WHEEL_USE, None, str(tiny_model_dir), str(config))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    site_packages = (environment / "lib").resolve()
    assert all(Path(path).resolve().is_relative_to(site_packages) for path in report["files"]), report["files"]
    assert report["editable"] == []
    assert report["classes"] == ["Dinov2Model", "RadDinoModel", "RadDinoModel"]
    assert report["remote_module"].startswith("transformers_modules")
    assert report["max_difference"] <= 1e-5
    assert report["accuracy"] == 0.75 and report["same_as_function"]
    # The wheel holds no recipe: without --config, one line says to pass it; with one, the command resolves it.
    code, _, stderr = report["printed"]["no_config"]
    [line] = stderr.strip().splitlines()
    assert code == 2 and line.startswith("error: no --config given") and "pass --config" in line, line
    code, stdout, _ = report["printed"]["config"]
    crop_size = yaml.safe_load(config.read_text(encoding="utf-8"))["crops"]["global_crops_size"]
    assert code == 0 and "  epochs: 7\n" in stdout and f"  global_crops_size: {crop_size}\n" in stdout
