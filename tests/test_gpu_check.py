"""`benchmarks/gpu_check.py --dry-run`: the GPU check's paths run on the CPU with tiny configs, so it cannot rot."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModel, Dinov2Model

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gpu_check")
    output = folder / "gpu_check.json"
    result = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "benchmarks" / "gpu_check.py"),
            "--dry-run",
            "--workdir",
            str(folder / "work"),
            "--output",
            str(output),
        ],
        cwd=REPO_ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2"},
        capture_output=True,
        text=True,
        timeout=600,  # a hang fails the test instead of the suite
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = json.loads(output.read_text())["rows"]
    return result.stdout, {(row["part"], row["case"]): row for row in rows}


def test_every_row_is_printed_and_ok_or_skipped_with_a_reason(dry_run):
    stdout, rows = dry_run
    expected = {
        ("pretrain", "tiny ViT/14, DDP, 1 process"),
        ("pretrain", "tiny ViT/14, FSDP2, 1 process"),
        *(
            ("inference", f"{model} 112 px, batch 2, {variant}")
            for model in ("HF Dinov2Model", "RadDinoModel")
            for variant in ("fp32", "bf16-autocast")
        ),
        ("inference", "RadDinoModel 112 px, batch 2, compile"),
    }
    assert expected <= set(rows)
    assert [part for part, _ in rows].count("report") == 2
    for (part, case), row in rows.items():
        assert f"| {part}" in stdout and case in stdout
        assert row["status"] == "ok" or (row["status"].startswith("skipped: ") and len(row["status"]) > 20), row
    skipped = {case for (_, case), row in rows.items() if row["status"] != "ok"}
    assert skipped == {
        "tiny ViT/14, FSDP2, 1 process",
        "HF Dinov2Model 112 px, batch 2, bf16-autocast",
        "RadDinoModel 112 px, batch 2, bf16-autocast",
        "RadDinoModel 112 px, batch 2, compile",
    }
    assert "GPU" in rows[("pretrain", "tiny ViT/14, FSDP2, 1 process")]["status"]


def test_pretraining_resumes_to_the_straight_runs_next_step_and_exports_a_dinov2(dry_run):
    _, rows = dry_run
    row = rows[("pretrain", "tiny ViT/14, DDP, 1 process")]
    assert row["checks"] == {"losses_finite": True, "resume_equals_straight": True, "export_is_dinov2": True}
    straight, resumed = (Path(folder) for folder in row["run_dirs"])
    # Read the runs' own files, not the check's verdicts.
    straight_metrics = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    resumed_metrics = [json.loads(line) for line in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in straight_metrics] == [1, 2, 3, 4]
    assert all(math.isfinite(m["loss/total"]) for m in straight_metrics)
    assert [m["step"] for m in resumed_metrics] == [4]  # it started from the checkpoint of iteration 3
    assert resumed_metrics[0]["loss/total"] == straight_metrics[-1]["loss/total"]
    summaries = [json.loads((folder / "summary.json").read_text()) for folder in (straight, resumed)]
    assert summaries[0]["replica_digests"] == summaries[1]["replica_digests"]
    assert summaries[0]["teacher_digests"] == summaries[1]["teacher_digests"]
    assert summaries[0]["peak_gpu_memory_gib"] is None  # no CUDA here
    model = AutoModel.from_pretrained(straight / "export")
    assert type(model) is Dinov2Model and model.config.hidden_size == 64


def test_inference_matches_hf_dinov2_and_report_step_trains(dry_run):
    _, rows = dry_run
    for model in ("HF Dinov2Model", "RadDinoModel"):
        row = rows[("inference", f"{model} 112 px, batch 2, fp32")]
        assert row["max_abs_diff"] <= 1e-5 and row["images_per_s"] > 0
    report = [row for (part, _), row in rows.items() if part == "report"]
    assert report[0]["checks"] == {"loss_finite": True, "lora_updated": True}
    assert report[1]["checks"] == {"reports": 2, "tokens": [16, 16]}  # min_new_tokens holds the length
    assert all(row["step_ms"] > 0 for row in report)


def test_without_cuda_only_the_dry_run_is_offered():
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "benchmarks" / "gpu_check.py")],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and "--dry-run" in result.stderr
