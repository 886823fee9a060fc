"""Stop signals to a whole process group (DataLoader workers included), decisions every process takes together, and
resuming on another number of processes. Runs that hang fail on a timeout; nothing here skips."""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import rad_dino_hf.cli.downstream as train_downstream
from rad_dino_hf import ssl_model
from rad_dino_hf.checkpoint import checkpoint_world_size, latest_checkpoint
from rad_dino_hf.distributed import make_accelerator
from rad_dino_hf.embeddings import read_metadata
from rad_dino_hf.fingerprint import parameter_digest
from rad_dino_hf.preemption import INTERRUPTED_EXIT_CODE, PREEMPTED_EXIT_CODE, Stopped
from rad_dino_hf.supervised import LoopSettings, train
from rad_dino_hf.trainer import load_checkpoint_networks
from test_pretrain import REPO_ROOT, SAMPLE, run, write_recipe
from test_pretrain import images as images  # noqa: F401 (the fixture, by its name)

TIMEOUT = 300  # seconds; a run that takes longer is hung, and the test fails
LAUNCHER = [str(Path(sys.executable).parent / "accelerate"), "launch", "--config_file"]
TWO_CPU_PROCESSES = REPO_ROOT / "configs" / "accelerate" / "cpu_2proc.yaml"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}  # the thread count of the in-process runs compared with
TWO_PROCESS_ENV = {**ENV, "OMP_NUM_THREADS": "1"}


def _group_signalled(
    command: list[str], signals: list[tuple[str | None, signal.Signals]], ready=None, env: dict = ENV
) -> tuple[int, str]:
    """Run `command` in a process group of its own and send the whole group each signal once its marker (a text)
    appears in stderr, or (marker None) once `ready()` is true; returns the exit code and stderr."""
    process = subprocess.Popen(
        command, cwd=REPO_ROOT, env=env, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    lines: list[str] = []
    pending = list(signals)

    def read_and_signal() -> None:
        for line in process.stderr:
            lines.append(line)
            if pending and pending[0][0] is not None and pending[0][0] in line:
                os.killpg(process.pid, pending.pop(0)[1])

    reader = threading.Thread(target=read_and_signal, daemon=True)
    reader.start()
    deadline = time.monotonic() + TIMEOUT
    while process.poll() is None and time.monotonic() < deadline:
        if pending and pending[0][0] is None and ready():
            os.killpg(process.pid, pending.pop(0)[1])
        time.sleep(0.2)
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        pytest.fail("the signalled run hung:\n" + "".join(lines[-40:]))
    reader.join(timeout=10)
    log = "".join(lines)
    assert not pending, "the run ended before it was signalled:\n" + log[-3000:]
    return process.returncode, log


def _pretrain_command(config: Path, iterations: int, launcher: list[str] | None = None, script: Path | None = None):
    entry = [str(script or REPO_ROOT / "train_pretrain.py"), "--config", str(config), "--no-progress"]
    arguments = [*entry, "--set", f"train.max_iterations={iterations}"]
    return [*launcher, *arguments] if launcher else [sys.executable, *arguments]


def _two_processes(port: int) -> list[str]:
    return [*LAUNCHER, str(TWO_CPU_PROCESSES), "--main_process_port", str(port)]


def _run_two_processes(command: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    """`command` (an `accelerate launch` of two CPU processes) to its end; fails the test unless it exits 0."""
    result = subprocess.run(
        command, cwd=REPO_ROOT, env=env or TWO_PROCESS_ENV, capture_output=True, text=True, timeout=TIMEOUT
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _checkpoint_step(run_dir: Path) -> int:
    return int(latest_checkpoint(run_dir / "checkpoints").name.split("-")[1])


def _summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def _copy_dir(source: Path, destination: Path) -> Path:
    shutil.copytree(source, destination)
    return destination


def _moved_recipe(config: Path, output_dir: Path) -> Path:
    """`config` with another `train.output_dir` (a copy of a run resumes there)."""
    text = config.read_text().replace(str(config.parent / "run"), str(output_dir))
    path = output_dir.parent / f"{output_dir.name}.yaml"
    path.write_text(text)
    return path


# -- one process, DataLoader workers in the group -----------------------------------------------------------------


def test_group_sigterm_then_sigusr1_checkpoint_exit_143_and_resume_exactly(tmp_path, images):
    """`kill -TERM -PGID` (scheduler, `timeout`, terminal) reaches the workers too: they ignore it, the main process
    ends the step, checkpoints and exits 143; the same with SIGUSR1 on the rerun; the last rerun ends bitwise equal
    to an uninterrupted run."""
    (tmp_path / "straight").mkdir()
    straight = run(write_recipe(tmp_path / "straight", images, num_workers=2), "--set", "train.max_iterations=6")
    config = write_recipe(tmp_path, images, num_workers=2)
    first = -1
    for signum in (signal.SIGTERM, signal.SIGUSR1):
        code, log = _group_signalled(_pretrain_command(config, 6), [(f" it {first + 2} |", signum)])
        assert code == PREEMPTED_EXIT_CODE, log[-3000:]
        assert f"{signum.name} received: stopped after iteration" in log and "Traceback" not in log
        step = _checkpoint_step(tmp_path / "run")
        assert first < step < 6
        first = step
    resumed = run(config, "--set", "train.max_iterations=6")
    assert resumed["step"] == 6 and resumed["replica_digests"] == straight["replica_digests"]
    assert resumed["teacher_digests"] == straight["teacher_digests"]


def test_ctrl_c_saves_at_the_end_of_the_step_and_a_second_stops_at_once(tmp_path, images, monkeypatch, capfd):
    """The first SIGINT: checkpoint after the step, exit 130. A second one a moment later: exit 130 at once, with
    nothing saved since the last checkpoint (said so)."""
    forward = ssl_model.SelfDistillationObjective.forward
    interrupts = {2: 1}  # objective call -> SIGINTs sent during it

    def interrupted_forward(self, *args, **kwargs):
        interrupted_forward.calls += 1
        for count in range(interrupts.get(interrupted_forward.calls, 0)):
            if count:
                time.sleep(1.2)  # a person's second Ctrl-C, not a launcher passing the first one on
            os.kill(os.getpid(), signal.SIGINT)
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(ssl_model.SelfDistillationObjective, "forward", interrupted_forward)
    config = write_recipe(tmp_path, images)
    interrupted_forward.calls = 0
    with pytest.raises(SystemExit) as stopped:
        run(config, "--set", "train.max_iterations=6")
    assert stopped.value.code == INTERRUPTED_EXIT_CODE
    assert _checkpoint_step(tmp_path / "run") == 2  # signalled during the second step, saved after it
    assert "SIGINT received: stopped after iteration 2" in capfd.readouterr().err

    interrupts.clear()
    interrupts[1] = 2
    interrupted_forward.calls = 0
    with pytest.raises(SystemExit) as stopped:
        run(config, "--set", "train.max_iterations=6")
    assert stopped.value.code == INTERRUPTED_EXIT_CODE
    assert _checkpoint_step(tmp_path / "run") == 2
    log = capfd.readouterr().err
    assert "Interrupted again: stopped at once during iteration 3; nothing saved since checkpoint" in log


# -- two processes --------------------------------------------------------------------------------------------------


def test_accelerate_launch_group_sigterm_and_resume_on_two_and_on_one_process(tmp_path, images, free_port):
    """`accelerate launch` on two CPU processes, SIGTERM to the launcher's group (the launcher passes it on again):
    both ranks checkpoint, exit 143; resumed on two processes the run ends bitwise equal to an uninterrupted one.
    A copy of the checkpoint resumed on one process carries the weights over exactly and runs to the end."""
    (tmp_path / "straight").mkdir()
    straight_config = write_recipe(tmp_path / "straight", images)
    _run_two_processes(_pretrain_command(straight_config, 4, _two_processes(free_port)))
    straight = _summary(tmp_path / "straight" / "run")

    config = write_recipe(tmp_path, images)
    command = _pretrain_command(config, 4, _two_processes(free_port))
    code, log = _group_signalled(command, [(" it 1 |", signal.SIGTERM)], env=TWO_PROCESS_ENV)
    assert code == PREEMPTED_EXIT_CODE, log[-3000:]
    assert log.count("SIGTERM received: stopped after iteration") == 2, log[-3000:]  # one line per rank
    step = _checkpoint_step(tmp_path / "run")
    checkpoint = latest_checkpoint(tmp_path / "run" / "checkpoints")
    assert 1 <= step < 4 and checkpoint_world_size(checkpoint) == 2
    one_process = _copy_dir(tmp_path / "run", tmp_path / "one")

    result = _run_two_processes(_pretrain_command(config, 4, _two_processes(free_port)))
    resumed = _summary(tmp_path / "run")
    assert f"Resumed from {checkpoint} at iteration {step}" in result.stderr
    assert resumed["replica_digests"] == straight["replica_digests"] and len(set(resumed["replica_digests"])) == 1
    assert resumed["teacher_digests"] == straight["teacher_digests"]

    # 2 -> 1 process: the weights carry over bitwise (no further step), then the run goes on to its end.
    saved = load_checkpoint_networks(one_process)
    copy = _moved_recipe(config, one_process)
    same_step = run(copy, "--set", f"train.max_iterations={step}")
    assert same_step["replica_digests"] == [parameter_digest(saved.student)]
    assert same_step["teacher_digests"] == [parameter_digest(saved.teacher)]
    finished = run(copy, "--set", "train.max_iterations=4")
    assert finished["step"] == 4 and finished["world_size"] == 1


def test_resume_on_two_processes_from_a_one_process_checkpoint(tmp_path, images, free_port):
    """1 -> 2 processes: the run resumes at the checkpoint's iteration, says what is not carried over, and both ranks
    end at the same iteration with identical replicas."""
    config = write_recipe(tmp_path, images)
    run(config, "--set", "train.max_iterations=2")
    result = _run_two_processes(_pretrain_command(config, 3, _two_processes(free_port)))
    assert "Resuming at iteration 2 on 2 process(es) from a checkpoint of 1" in result.stderr
    summary = _summary(tmp_path / "run")
    assert summary["replica_steps"] == [3, 3] and len(set(summary["replica_digests"])) == 1


ONE_RANK_PATCHED = textwrap.dedent(
    """
    import os, sys, time
    import rad_dino_hf.pretraining_data as data
    import rad_dino_hf.trainer as trainer

    if os.environ["RANK"] == "0" and os.environ.get("FAST_CLOCK"):  # this rank's clock runs a million times too fast
        start = time.perf_counter()

        class FastClock:
            def __getattr__(self, name):
                return getattr(time, name)

            def perf_counter(self):
                return start + 1e6 * (time.perf_counter() - start)

        trainer.time = FastClock()
    if os.environ["RANK"] == "1" and os.environ.get("UNREADABLE_FIRST"):  # this rank's first batch reads nothing
        decode, calls = data.decode_or_none, [0]

        def unreadable_first(value, key):
            calls[0] += 1
            return None if calls[0] <= int(os.environ["UNREADABLE_FIRST"]) else decode(value, key)

        data.decode_or_none = unreadable_first
    from rad_dino_hf.cli.pretrain import main
    main(sys.argv[1:])
    """
)


@pytest.mark.parametrize(
    "fault, extra",
    [("FAST_CLOCK", ["train.max_minutes=10"]), ("UNREADABLE_FIRST", [])],
    ids=["one-clock-runs-ahead", "one-batch-all-unreadable"],
)
def test_one_rank_out_of_step_still_ends_with_every_rank_at_the_same_iteration(
    tmp_path, images, free_port, fault, extra
):
    """Rank 0's clock a million times too fast (the budget is spent at its first check): every rank stops at the same
    iteration. Rank 1's first batch all unreadable: it takes the next batch, no rank skips a step. No hang."""
    script = tmp_path / "patched_run.py"
    script.write_text(ONE_RANK_PATCHED)
    command = _pretrain_command(write_recipe(tmp_path, images), 3, _two_processes(free_port), script)
    result = _run_two_processes([*command, *extra], env={**TWO_PROCESS_ENV, fault: "4"})  # 4 = the batch size
    summary = _summary(tmp_path / "run")
    steps = summary["replica_steps"]
    assert len(steps) == 2 and len(set(steps)) == 1 and len(set(summary["replica_digests"])) == 1
    if fault == "FAST_CLOCK":
        assert steps[0] < 3 and f"Time budget of 10.0 min spent at iteration {steps[0]}" in result.stderr
    else:
        assert steps[0] == 3 and summary["skipped_samples"] == 4 and summary["images_seen"] == 2 * 3 * 4


# -- features and the supervised loop ---------------------------------------------------------------------------


def test_group_signal_to_features_keeps_complete_shards_and_the_rerun_skips_them(tmp_path, tiny_model_dir):
    output = tmp_path / "features"
    arguments = ["features", "--images", str(SAMPLE), "--model", str(tiny_model_dir), "--output", str(output)]
    arguments += ["--shard-size", "4", "--batch-size", "2", "--num-workers", "2", "--max-pictures", "0"]
    command = [sys.executable, str(REPO_ROOT / "train_downstream.py"), *arguments]
    code, log = _group_signalled(command, [(None, signal.SIGTERM)], ready=lambda: any(output.glob("*.parquet")))
    assert code == PREEMPTED_EXIT_CODE, log[-3000:]
    assert "SIGTERM received: stopped with" in log and "Traceback" not in log
    kept = {path: path.stat().st_mtime_ns for path in output.glob("shard-*.parquet")}
    assert kept and not list(output.glob("*.tmp"))
    for path in kept:  # complete: its 4 rows, readable or listed as unreadable
        errors = path.with_suffix(".errors.jsonl").read_text().splitlines()
        assert pq.read_metadata(path).num_rows + len(errors) == 4

    train_downstream.main([*arguments, "--num-workers", "0"])
    summary = read_metadata(output)
    assert summary["skipped_shards"] == len(kept) and summary["complete"]
    assert all(path.stat().st_mtime_ns == mtime for path, mtime in kept.items())  # not rewritten


@pytest.mark.parametrize(
    "signum, code", [(signal.SIGTERM, PREEMPTED_EXIT_CODE), (signal.SIGINT, INTERRUPTED_EXIT_CODE)]
)
def test_supervised_loop_stops_after_the_update_and_says_nothing_was_saved(signum, code, caplog):
    """A stop signal during the third batch (workers reading): the loop finishes that update and stops."""
    model = torch.nn.Linear(3, 1)
    loader = DataLoader(TensorDataset(torch.randn(32, 3), torch.randn(32, 1)), batch_size=4, num_workers=2)
    calls = []

    def loss(module, batch):
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signum)
        return torch.nn.functional.mse_loss(module(batch[0]), batch[1])

    with pytest.raises(Stopped) as stopped:
        train(make_accelerator(), model, [{"params": model.parameters(), "lr": 0.1}], loader, LoopSettings(2), loss)
    assert stopped.value.code == code and stopped.value.step == 3 and len(calls) == 3
    assert any("after update 3 of 16. Nothing was saved" in record.getMessage() for record in caplog.records)


def test_collective_timeout_reaches_the_process_group_settings():
    accelerator = make_accelerator(collective_timeout_minutes=0.5)
    assert accelerator.init_handler.timeout.total_seconds() == 30
