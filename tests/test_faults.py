"""The README's fault matrix: faults and bad input end in a clear message, a counted skip, a fallback or an exact
resume; never a hang, a traceback or a lost run. Rows already checked elsewhere name those tests in the README."""

import errno
import json
import logging
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from accelerate import Accelerator

import rad_dino_hf.cli.downstream as train_downstream
import rad_dino_hf.cli.pretrain as train_pretrain
from image_processing_rad_dino import UnreadableImageError, read_image
from rad_dino_hf import checkpoint as checkpoint_module
from rad_dino_hf.checkpoint import (
    MANIFEST,
    CheckpointError,
    TrainState,
    latest_checkpoint,
    resumable_checkpoint,
    save_checkpoint,
    verify_checkpoint,
)
from rad_dino_hf.augment import MultiCropAugmentation
from rad_dino_hf.pretraining_data import (
    MultiCropMapper,
    build_stream,
    collate_crops,
    decode_or_none,
    open_source,
    parse_source,
)
from rad_dino_hf.errors import USAGE_EXIT_CODE, UserError
from rad_dino_hf.preemption import PREEMPTED_EXIT_CODE
from rad_dino_hf.recipe import RecipeConfig
from test_pretrain import REPO_ROOT, SAMPLE, TINY_RECIPE, run, write_recipe
from test_pretrain import images as images  # noqa: F401 (the fixture, by its name)

SUBPROCESS_TIMEOUT = 300  # seconds; a run that takes longer is hung, and the test fails


def _bad_files(folder: Path) -> None:
    """Three unreadable radiographs: empty, text named .png, truncated JPEG."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.png").write_text("not an image")
    (folder / "truncated.jpg").write_bytes(next(SAMPLE.glob("*.jpg")).read_bytes()[:2000])


def _user_error(capsys, main, argv: list[str]) -> str:
    """Run an entry point expecting a user error; returns its one stderr line (checked: `error: ...`, exit 2)."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == USAGE_EXIT_CODE
    assert isinstance(exit_info.value.__cause__, UserError)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, lines
    return lines[0]


@pytest.fixture(scope="module")
def straight_six(tmp_path_factory) -> dict:
    """The summary of an uninterrupted 6-iteration tiny run (what interrupted-and-resumed runs must equal)."""
    root = tmp_path_factory.mktemp("straight")
    folder = root / "images"
    folder.mkdir()
    for path in sorted(SAMPLE.iterdir())[:8]:
        shutil.copy(path, folder / path.name)
    return run(write_recipe(root, folder, checkpoint_every=2), "--set", "train.max_iterations=6")


# -- input files --------------------------------------------------------------------------------------------------


def test_truncated_png_is_unreadable_and_skipped(tmp_path):
    full = tmp_path / "full.png"
    PIL.Image.fromarray(np.random.default_rng(0).integers(0, 256, (96, 96), dtype=np.uint8)).save(full)
    cut = tmp_path / "cut.png"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(UnreadableImageError, match="cut.png"):
        read_image(cut)
    assert decode_or_none({"bytes": None, "path": str(cut)}, "cut.png") is None  # pretraining: a counted skip


def test_image_over_the_decompression_bomb_limit_is_unreadable(tmp_path, monkeypatch):
    """PIL refuses images over twice `MAX_IMAGE_PIXELS` (about 179 megapixels); lowered here to keep the file small."""
    path = tmp_path / "huge.png"
    PIL.Image.new("L", (64, 64), 100).save(path)
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 64 * 64 // 3)  # 4096 pixels > 2 x 1365
    with pytest.raises(UnreadableImageError, match="huge.png.*decompression bomb"):
        read_image(path)
    assert decode_or_none({"bytes": None, "path": str(path)}, "huge.png") is None


# -- pretraining: data ------------------------------------------------------------------------------------------


def test_all_unreadable_folder_stops_naming_it(tmp_path, capsys):
    bad = tmp_path / "bad"
    _bad_files(bad)
    argv = ["--data", str(bad), "--output-dir", str(tmp_path / "run")]  # with the progress bar: it ends its line
    line = _user_error(capsys, train_pretrain.main, argv)
    assert f"Data source {bad}: the last 3 samples" in line  # a whole pass: the folder's 3 files


def test_unreadable_source_in_a_mix_stops_naming_it(tmp_path, images, capsys):
    bad = tmp_path / "bad"
    _bad_files(bad)
    config = write_recipe(tmp_path, images)
    argv = ["--config", str(config), "--no-progress", "--data", str(images), "--data", str(bad)]
    line = _user_error(capsys, train_pretrain.main, [*argv, "--set", "train.max_iterations=8"])
    assert f"Data source {bad}:" in line and str(images) + ":" not in line


def test_a_mix_keeps_each_samples_source(tmp_path, images):
    """The per-source count needs the source of every sample: bad files of the second source are counted there."""
    bad = tmp_path / "bad"
    _bad_files(bad)
    sources = [parse_source(str(images)), parse_source(str(bad))]
    stream = build_stream(sources, seed=0, files_per_shard=2, folder_epochs=2)
    crops = RecipeConfig.from_dict(TINY_RECIPE).crops
    mapper = MultiCropMapper(MultiCropAugmentation.from_config(crops), seed=0)
    samples = [mapper(example, index) for index, example in zip(range(12), stream)]
    read = collate_crops(samples)["read"]
    assert {source for source, _, ok in read if not ok} == {1} and {source for source, _, ok in read if ok} == {0}
    assert all(key.startswith(str(bad if source else images)) for source, key, _ in read)


# -- pretraining: user errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv, named",
    [
        (["--data", "{tmp}/no/such/folder"], "{tmp}/no/such/folder: no such folder or file"),
        (["--config", "{tmp}/missing.yaml"], "--config {tmp}/missing.yaml: no such file"),
        (["--set", "optim.lr=fast"], "--set: optim.lr: expected a float"),
        (["--set", "train.no_such_key=1"], "--set: override 'train.no_such_key'"),
        (["--data", "someone/never-cached-cxr"], "someone/never-cached-cxr: neither a local folder nor a Hub"),
        (["--set", "optim.epochs=1", "optim.warmup_epochs=2"], "optim.warmup_epochs=2 is longer than the run"),
        (["--set", "optim.epochs=2", "optim.freeze_last_layer_epochs=3"], "optim.freeze_last_layer_epochs=3 is longer"),
    ],
    ids=[
        "missing-data-folder",
        "missing-config",
        "bad-set-value",
        "unknown-set-key",
        "hub-id-offline",
        "warmup-longer-than-run",
        "frozen-prototypes-longer-than-run",
    ],
)
def test_pretrain_user_errors_are_one_line(tmp_path, capsys, monkeypatch, argv, named):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    argv = [a.format(tmp=tmp_path) for a in argv] + ["--output-dir", str(tmp_path / "run"), "--no-progress"]
    assert named.format(tmp=tmp_path) in _user_error(capsys, train_pretrain.main, argv)


def test_debug_shows_the_user_error_itself(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        train_pretrain.main(["--config", str(tmp_path / "missing.yaml"), "--debug"])


def test_user_errors_print_no_traceback_in_a_real_process(tmp_path):
    """The same as a user sees it: stderr is the one `error:` line, exit code 2, in both entry points."""
    table = tmp_path / "table.csv"
    table.write_text("file,diagnosis\nx.png,normal\n")
    commands = [
        [str(REPO_ROOT / "train_pretrain.py"), "--config", str(tmp_path / "missing.yaml")],
        [str(REPO_ROOT / "train_downstream.py"), "linear-probe", "--model", "random", "--table", str(table)],
    ]
    for command in commands:
        result = subprocess.run(
            [sys.executable, *command], capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT, cwd=tmp_path
        )
        assert result.returncode == USAGE_EXIT_CODE, result.stderr[-2000:]
        assert "Traceback" not in result.stderr
        assert result.stderr.strip().splitlines()[-1].startswith("error: ")


# -- downstream: user errors ------------------------------------------------------------------------------------


def _table(tmp_path: Path, rows: list[str], header: str = "file,label,patient") -> Path:
    path = tmp_path / "table.csv"
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def _sample_images(n: int) -> list[Path]:
    return sorted(SAMPLE.glob("*.jpg"))[:n] or sorted(SAMPLE.iterdir())[:n]


def test_table_without_the_named_columns(tmp_path, tiny_model_dir, capsys):
    table = _table(tmp_path, ["x.png,normal"], header="file,diagnosis")
    argv = ["linear-probe", "--model", str(tiny_model_dir), "--table", str(table)]
    line = _user_error(capsys, train_downstream.main, argv)
    assert f"{table} lacks column(s) ['label', 'patient']" in line and "--label-column" in line


def test_label_column_with_one_class(tmp_path, tiny_model_dir, capsys):
    rows = [f"{path},normal,p{i}" for i, path in enumerate(_sample_images(4))]
    argv = ["linear-probe", "--model", str(tiny_model_dir), "--table", str(_table(tmp_path, rows))]
    assert "label column 'label' has a single class ('normal')" in _user_error(capsys, train_downstream.main, argv)


def test_listed_images_that_do_not_exist(tmp_path, tiny_model_dir, capsys):
    present = _sample_images(2)
    rows = [f"{present[0]},a,p0", f"{present[1]},b,p1", "gone.png,a,p2"]
    argv = ["knn", "--model", str(tiny_model_dir), "--table", str(_table(tmp_path, rows))]
    line = _user_error(capsys, train_downstream.main, argv)
    assert f"1 of 3 listed images do not exist ({tmp_path / 'gone.png'})" in line


def test_mask_whose_size_differs_from_its_image(tmp_path, tiny_model_dir, capsys):
    folder = tmp_path / "set"
    folder.mkdir()
    rows = []
    for index in range(4):
        PIL.Image.new("L", (64, 48), 90 + index).save(folder / f"image{index}.png")
        size = (32, 24) if index == 2 else (64, 48)  # one mask drawn on a half-size copy
        PIL.Image.new("L", size, 1).save(folder / f"mask{index}.png")
        rows.append(f"image{index}.png,p{index},mask{index}.png")
    (folder / "metadata.csv").write_text("file,patient,lung_mask\n" + "\n".join(rows) + "\n")
    argv = ["segment", "--model", str(tiny_model_dir), "--data", str(folder), "--output", str(tmp_path / "out")]
    line = _user_error(capsys, train_downstream.main, [*argv, "--epochs", "1", "--cache-dir", str(tmp_path / "cache")])
    assert f"Mask {folder / 'mask2.png'} is 32x24 pixels but its image {folder / 'image2.png'} is 64x48" in line


def test_model_directory_without_weights(tmp_path, tiny_model_dir, capsys):
    (tiny_model_dir / "model.safetensors").unlink()
    argv = ["features", "--images", str(SAMPLE), "--model", str(tiny_model_dir)]
    line = _user_error(capsys, train_downstream.main, [*argv, "--output", str(tmp_path / "out")])
    assert f"--model {tiny_model_dir}: cannot load an encoder" in line and "model.safetensors" in line


def test_hub_model_id_while_offline(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    argv = ["features", "--images", str(SAMPLE), "--model", "someone/never-cached-encoder"]
    line = _user_error(capsys, train_downstream.main, [*argv, "--output", str(tmp_path / "out")])
    assert "--model someone/never-cached-encoder: cannot load an encoder" in line


def test_empty_image_folder(tmp_path, tiny_model_dir, capsys):
    (tmp_path / "empty").mkdir()
    argv = ["features", "--images", str(tmp_path / "empty"), "--model", str(tiny_model_dir)]
    line = _user_error(capsys, train_downstream.main, [*argv, "--output", str(tmp_path / "out")])
    assert "No images" in line and str(tmp_path / "empty") in line


def test_empty_pretraining_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=f"Data source {tmp_path / 'empty'}: no images"):
        open_source(parse_source(str(tmp_path / "empty")))


# -- checkpoints --------------------------------------------------------------------------------------------------


def _tiny_accelerator_state() -> Accelerator:
    accelerator = Accelerator(cpu=True)
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters())
    accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(TrainState())
    return accelerator


def test_disk_full_while_checkpointing_keeps_the_previous_one(tmp_path, monkeypatch):
    accelerator = _tiny_accelerator_state()
    root = tmp_path / "checkpoints"
    first = save_checkpoint(accelerator, root, step=1)
    assert verify_checkpoint(first) is None
    manifest = json.loads((first / MANIFEST).read_text())["files"]
    assert manifest["model.safetensors"]["size"] == (first / "model.safetensors").stat().st_size

    import accelerate.checkpointing

    real_save = accelerate.checkpointing.save

    def fill_the_disk(obj, path, *args, **kwargs):
        if Path(path).name.startswith("optimizer"):  # the model file is written; the optimizer's half, then ENOSPC
            Path(path).write_bytes(b"\0" * 10)
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(accelerate.checkpointing, "save", fill_the_disk)
    with pytest.raises(CheckpointError) as info:
        save_checkpoint(accelerator, root, step=2)
    message = str(info.value)
    assert "No space left on device" in message and f"previous checkpoint {first} is intact" in message
    assert latest_checkpoint(root) == first and verify_checkpoint(first) is None
    assert sorted(p.name for p in root.iterdir()) == ["latest", first.name]  # the partial copy is gone


def test_manifest_catches_a_same_size_change(tmp_path):
    checkpoint = save_checkpoint(_tiny_accelerator_state(), tmp_path, step=1)
    data = bytearray((checkpoint / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (checkpoint / "model.safetensors").write_bytes(bytes(data))
    assert verify_checkpoint(checkpoint) == "model.safetensors differs from the saved file (SHA-256)"
    (checkpoint / MANIFEST).unlink()
    assert verify_checkpoint(checkpoint).startswith(f"no readable {MANIFEST}")


def test_corrupt_latest_checkpoint_falls_back_with_a_warning(tmp_path, images, straight_six, caplog, capfd):
    """Truncated model.safetensors in the latest checkpoint: resume from the one before, warned; the run still ends
    bitwise equal to an uninterrupted one. With every checkpoint damaged: a clear error."""
    config = write_recipe(tmp_path, images, checkpoint_every=2)
    run(config, "--set", "train.max_iterations=4")
    root = tmp_path / "run" / "checkpoints"
    latest = latest_checkpoint(root)
    assert latest.name == "step-00000004"
    model_file = latest / "model.safetensors"
    model_file.write_bytes(model_file.read_bytes()[:100])
    checkpoint_logger = logging.getLogger(checkpoint_module.__name__)
    checkpoint_logger.addHandler(caplog.handler)  # the run above replaced the root's handlers (basicConfig(force))
    try:
        assert resumable_checkpoint(root) == root / "step-00000002"
    finally:
        checkpoint_logger.removeHandler(caplog.handler)
    damaged = [r.getMessage() for r in caplog.records if "is damaged" in r.getMessage()]
    assert len(damaged) == 1 and str(latest) in damaged[0] and "model.safetensors has 100 bytes" in damaged[0]
    capfd.readouterr()
    resumed = run(config, "--set", "train.max_iterations=6")  # the entry point logs through its own handler
    log = capfd.readouterr().err
    assert f"Checkpoint {latest} is damaged" in log and f"Resumed from {root / 'step-00000002'} at iteration 2" in log
    assert resumed["replica_digests"] == straight_six["replica_digests"]
    assert resumed["teacher_digests"] == straight_six["teacher_digests"]

    for checkpoint in root.glob("step-*"):
        (checkpoint / "model.safetensors").write_bytes(b"")
    line = _user_error(capfd, train_pretrain.main, ["--config", str(config), "--no-progress"])
    assert f"No checkpoint under {root} is intact" in line and "--resume never" in line


# -- preemption ---------------------------------------------------------------------------------------------------


def test_sigterm_checkpoints_exits_143_and_resumes_exactly(tmp_path, images, straight_six):
    """A real SIGTERM to a training process: it finishes the step, checkpoints, exits 143; the same command then
    resumes and ends bitwise equal to an uninterrupted run."""
    config = write_recipe(tmp_path, images, checkpoint_every=2)
    command = [sys.executable, str(REPO_ROOT / "train_pretrain.py"), "--config", str(config), "--no-progress"]
    process = subprocess.Popen(
        [*command, "--set", "train.max_iterations=6"], cwd=REPO_ROOT, stderr=subprocess.PIPE, text=True
    )
    lines: list[str] = []
    signalled = threading.Event()

    def read_and_signal() -> None:
        for line in process.stderr:
            lines.append(line)
            if not signalled.is_set() and " it 1 |" in line:  # the first iteration is done: the run is training
                process.send_signal(signal.SIGTERM)
                signalled.set()

    reader = threading.Thread(target=read_and_signal, daemon=True)
    reader.start()
    try:
        process.wait(timeout=SUBPROCESS_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail("the preempted run hung:\n" + "".join(lines[-30:]))
    reader.join(timeout=10)
    log = "".join(lines)
    assert signalled.is_set(), log[-3000:]
    assert process.returncode == PREEMPTED_EXIT_CODE, log[-3000:]
    assert "SIGTERM received: stopped after iteration" in log
    stopped = latest_checkpoint(tmp_path / "run" / "checkpoints")
    assert stopped is not None and 1 <= int(stopped.name.split("-")[1]) < 6  # mid-run, not at the end
    assert not (tmp_path / "run" / "summary.json").exists()

    resumed = run(config, "--set", "train.max_iterations=6")
    assert resumed["step"] == 6
    assert resumed["replica_digests"] == straight_six["replica_digests"]
    assert resumed["teacher_digests"] == straight_six["teacher_digests"]
