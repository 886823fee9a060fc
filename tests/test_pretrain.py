"""Pretraining runs end to end on tiny models: exact resume, crash safety, bad data, NaN, DDP, export."""

import json
import math
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoModel, Dinov2Model

import rad_dino_hf.cli.pretrain as train_pretrain
from configuration_rad_dino import RadDinoConfig
from modeling_rad_dino import RadDinoModel
from rad_dino_hf import ssl_model
from rad_dino_hf.checkpoint import latest_checkpoint
from rad_dino_hf.convert import DINO_HEAD_FILENAME, load_dino_head
from rad_dino_hf.heads import DinoHead
from rad_dino_hf.recipe import RecipeConfig
from rad_dino_hf.run_log import METRICS_FILENAME, read_records
from rad_dino_hf.errors import UserError
from rad_dino_hf.fingerprint import parameter_digest
from rad_dino_hf.trainer import NonFiniteLossError, clip_grad_norms, load_checkpoint_networks

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLE = REPO_ROOT / "data" / "sample" / "images"

TINY_RECIPE = {
    "student": {
        "pretrained": "random",
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "drop_path_rate": 0.1,
    },
    "crops": {"global_crops_size": 56, "local_crops_size": 28, "local_crops_number": 2},
    "dino": {"head_n_prototypes": 64, "head_hidden_size": 32, "head_bottleneck_size": 16},
    "ibot": {"head_n_prototypes": 64, "head_hidden_size": 32, "head_bottleneck_size": 16},
    "optim": {"epochs": 4, "warmup_epochs": 1, "freeze_last_layer_epochs": 1},
    "teacher": {"warmup_teacher_temp_epochs": 1},
    "train": {
        "batch_size_per_gpu": 4,
        "official_epoch_length": 2,
        "files_per_shard": 2,
        "num_workers": 0,
        "checkpoint_every": 100,
        "log_every": 1,
    },
}


@pytest.fixture
def images(tmp_path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    for path in sorted(SAMPLE.iterdir())[:8]:
        shutil.copy(path, folder / path.name)
    return folder


def write_recipe(tmp_path: Path, images: Path, name: str = "recipe.yaml", **train) -> Path:
    recipe = json.loads(json.dumps(TINY_RECIPE))
    recipe["train"].update(data_sources=[str(images)], output_dir=str(tmp_path / "run"), **train)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(recipe))
    return path


def run(config: Path, *args: str) -> dict:
    return train_pretrain.main(["--config", str(config), "--no-progress", *args])


def test_resume_equals_straight_run_bitwise(tmp_path, images):
    """N steps straight == k steps, stop, resume, N-k steps: weights, teacher and data position, with workers."""
    (tmp_path / "straight").mkdir()
    (tmp_path / "resumed").mkdir()
    straight = run(write_recipe(tmp_path / "straight", images, num_workers=2), "--set", "train.max_iterations=6")
    config = write_recipe(tmp_path / "resumed", images, num_workers=2)
    first = run(config, "--set", "train.max_iterations=3")
    assert first["step"] == 3
    resumed = run(config, "--set", "train.max_iterations=6")
    assert resumed["step"] == 6
    assert resumed["replica_digests"] == straight["replica_digests"]
    assert resumed["teacher_digests"] == straight["teacher_digests"]
    assert resumed["images_seen"] == straight["images_seen"] == 24


class FakeSummaryWriter:
    """Stands in for TensorBoard's writer (not a requirement): records how it was opened and what it was given."""

    opened: list = []

    def __init__(self, log_dir, purge_step=None):
        self.purge_step, self.steps = purge_step, set()
        FakeSummaryWriter.opened.append(self)

    def add_scalar(self, name, value, step):
        self.steps.add(step)

    def close(self):
        pass


def test_a_resumed_run_purges_tensorboard_events_past_its_checkpoint(tmp_path, images, monkeypatch):
    """TensorBoard's `purge_step` drops events at or after it: a run resumed at iteration 3 (the last checkpoint; a
    crashed run may have logged beyond it) opens its writer with purge_step 4, a fresh run with none."""
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", SimpleNamespace(SummaryWriter=FakeSummaryWriter))
    monkeypatch.setattr(FakeSummaryWriter, "opened", [])
    config = write_recipe(tmp_path, images)
    run(config, "--set", "train.max_iterations=3")
    run(config, "--set", "train.max_iterations=6")

    fresh, resumed = FakeSummaryWriter.opened
    assert (fresh.purge_step, fresh.steps) == (None, {1, 2, 3})
    assert (resumed.purge_step, resumed.steps) == (4, {4, 5, 6})


def test_export_loads_as_plain_dinov2(tmp_path, images):
    summary = run(write_recipe(tmp_path, images), "--set", "train.max_iterations=2")
    export = Path(summary["export_dir"])
    assert {"config.json", "model.safetensors", "dino_head.safetensors", "preprocessor_config.json", "README.md"} <= {
        p.name for p in export.iterdir()
    }
    model = AutoModel.from_pretrained(export).eval()
    assert type(model) is Dinov2Model and model.config.hidden_size == 32
    ours = RadDinoModel.from_pretrained(export).eval()
    for size in [(56, 56), (42, 70)]:  # native grid, and one that interpolates position embeddings
        pixels = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(0))
        assert torch.equal(model(pixels).last_hidden_state, ours(pixels).last_hidden_state)
    # The teacher's config, as trained: the recipe's heads, no stochastic depth; it rebuilds the shipped head.
    # Trained with DINOv2's position interpolation (recipe default 0.1), exported with transformers' (0).
    config = json.loads((export / "config.json").read_text())
    assert (config["dino_head_n_prototypes"], config["dino_head_hidden_size"], config["drop_path_rate"]) == (64, 32, 0)
    assert config["interpolate_offset"] == 0.0
    head = load_dino_head(export / DINO_HEAD_FILENAME, ours.config)
    assert head.last_layer.weight.shape == (64, 16)
    assert "| iterations | 2 (schedule: 8) |" in (export / "README.md").read_text()  # the card states this run
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2]
    assert {"loss/dino", "loss/ibot", "loss/koleo", "lr", "wd", "momentum", "teacher_temp"} <= set(metrics[0])
    assert (tmp_path / "run" / "loss_curves.png").exists()


def test_checkpoint_networks_are_the_runs_student_and_teacher(tmp_path, images):
    """`load_checkpoint_networks` reads the student and teacher the run ended with (bitwise, by the summary's
    digests), the exported teacher's backbone, and the DINO center; an FSDP checkpoint is refused."""
    summary = run(write_recipe(tmp_path, images), "--set", "train.max_iterations=3")
    networks = load_checkpoint_networks(tmp_path / "run")

    assert parameter_digest(networks.student) == summary["replica_digests"][0]
    assert parameter_digest(networks.teacher) == summary["teacher_digests"][0]
    assert summary["replica_digests"][0] != summary["teacher_digests"][0]  # the two are told apart
    exported = RadDinoModel.from_pretrained(summary["export_dir"]).state_dict()
    backbone = networks.teacher.backbone.state_dict()
    assert exported.keys() == backbone.keys()
    for name, value in exported.items():
        assert torch.equal(backbone[name], value), name
    center = networks.centers["dino_loss.center"]
    assert networks.recipe.dino.head_n_prototypes == 64 and center.shape == (1, 64)
    assert center.abs().sum() > 0  # the run's center, not a fresh zero buffer
    assert not (networks.student.training or networks.teacher.training)

    (latest_checkpoint(tmp_path / "run" / "checkpoints") / "pytorch_model_fsdp_1").mkdir()
    with pytest.raises(UserError, match="FSDP checkpoint"):
        load_checkpoint_networks(tmp_path / "run")


def test_checkpoint_networks_of_a_continued_run_need_not_its_pretrained_source(tmp_path, images):
    """A run continued from another run's export reads back from its own files after that export is gone."""
    first = run(write_recipe(tmp_path, images), "--set", "train.max_iterations=2")
    source = tmp_path / "source"
    shutil.move(first["export_dir"], source)
    shutil.rmtree(tmp_path / "run")
    summary = run(write_recipe(tmp_path, images), "--set", "train.max_iterations=2", f"student.pretrained={source}")
    shutil.rmtree(source)

    networks = load_checkpoint_networks(tmp_path / "run")
    assert networks.recipe.student.pretrained == str(source)
    assert parameter_digest(networks.student) == summary["replica_digests"][0]
    assert parameter_digest(networks.teacher) == summary["teacher_digests"][0]
    assert networks.student.config.drop_path_rate == 0.1 and networks.teacher.config.drop_path_rate == 0.0


def test_gradient_accumulation_steps_once_per_window(tmp_path, images):
    summary = run(write_recipe(tmp_path, images, gradient_accumulation_steps=2), "--set", "train.max_iterations=2")
    assert summary["step"] == 2 and summary["images_seen"] == 2 * 2 * 4  # steps x micro-batches x batch
    recipe = yaml.safe_load((tmp_path / "run" / "recipe.yaml").read_text())
    assert recipe["train"]["gradient_accumulation_steps"] == 2


def test_a_folder_source_is_listed_once_per_run(tmp_path, images, monkeypatch):
    """The stream, the epoch count and the unreadable-sample guard share one listing (a large folder is slow)."""
    from rad_dino_hf import pretraining_data as data

    listed = []
    original = data.folder_images
    monkeypatch.setattr(data, "folder_images", lambda location: listed.append(location) or original(location))
    summary = run(write_recipe(tmp_path, images), "--set", "train.max_iterations=1")
    assert summary["step"] == 1
    assert listed == [str(images)]


def test_corrupt_samples_are_skipped_and_counted(tmp_path, images):
    (images / "empty.png").write_bytes(b"")
    (images / "notes.png").write_text("not an image")
    (images / "truncated.jpg").write_bytes(next(SAMPLE.glob("*.jpg")).read_bytes()[:2000])
    summary = run(write_recipe(tmp_path, images), "--set", "train.max_iterations=4")
    assert summary["step"] == 4
    assert summary["skipped_samples"] >= 3  # 11 files, 16 samples drawn: every bad file at least once


def test_nan_steps_are_skipped_and_never_checkpointed(tmp_path, images, monkeypatch):
    forward = ssl_model.SelfDistillationObjective.forward
    calls = {"n": 0}

    def sometimes_nan(self, *args, **kwargs):
        calls["n"] += 1
        terms = forward(self, *args, **kwargs)
        if calls["n"] in (2, 3):
            terms.total = terms.total * float("nan")
        return terms

    monkeypatch.setattr(ssl_model.SelfDistillationObjective, "forward", sometimes_nan)
    summary = run(write_recipe(tmp_path, images), "--set", "train.max_iterations=3")
    assert summary["skipped_nan_steps"] == 2 and summary["step"] == 3
    checkpoint = latest_checkpoint(tmp_path / "run" / "checkpoints")
    assert all(torch.isfinite(t).all() for t in load_file(checkpoint / "model.safetensors").values())
    centers = torch.load(checkpoint / "custom_checkpoint_1.pkl", weights_only=False)
    assert all(torch.isfinite(t).all() for t in centers.values())


def test_persistent_nan_stops_with_clear_error(tmp_path, images, monkeypatch):
    forward = ssl_model.SelfDistillationObjective.forward

    def always_nan(self, *args, **kwargs):
        terms = forward(self, *args, **kwargs)
        terms.total = terms.total * float("nan")
        return terms

    monkeypatch.setattr(ssl_model.SelfDistillationObjective, "forward", always_nan)
    with pytest.raises(NonFiniteLossError, match="3 non-finite steps in a row"):
        run(write_recipe(tmp_path, images), "--set", "train.max_iterations=5", "train.max_consecutive_nan=3")
    assert latest_checkpoint(tmp_path / "run" / "checkpoints") is None


KILL_DURING_SECOND_CHECKPOINT = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    import accelerate
    original = accelerate.Accelerator.save_state
    calls = {"n": 0}

    def save_then_die(self, output_dir=None, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # half-written checkpoint, then the process is killed
            Path(output_dir).mkdir(parents=True, exist_ok=True)
            (Path(output_dir) / "model.safetensors").write_bytes(b"partial")
            os.kill(os.getpid(), signal.SIGKILL)
        return original(self, output_dir, **kwargs)

    accelerate.Accelerator.save_state = save_then_die
    from rad_dino_hf.cli.pretrain import main
    main(sys.argv[1:])
    """
)


def test_sigkill_while_checkpointing_resumes_from_previous(tmp_path, images):
    config = write_recipe(tmp_path, images, checkpoint_every=2)
    script = tmp_path / "killed_run.py"
    script.write_text(KILL_DURING_SECOND_CHECKPOINT)
    result = subprocess.run(
        [sys.executable, str(script), "--config", str(config), "--no-progress", "--set", "train.max_iterations=6"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == -9, result.stderr[-2000:]
    checkpoints = tmp_path / "run" / "checkpoints"
    assert latest_checkpoint(checkpoints).name == "step-00000002"  # the half-written step-4 never became latest
    assert any(p.name.startswith(".tmp-") for p in checkpoints.iterdir())

    resumed = run(config, "--set", "train.max_iterations=6")
    straight_dir = tmp_path / "straight"
    straight_dir.mkdir()
    straight = run(write_recipe(straight_dir, images, checkpoint_every=2), "--set", "train.max_iterations=6")
    assert resumed["step"] == 6
    assert resumed["replica_digests"] == straight["replica_digests"]
    assert not any(p.name.startswith(".tmp-") for p in checkpoints.iterdir())
    # The killed run logged iterations 3 and 4 after its last checkpoint; the resumed run logged them again. The log
    # holds each iteration once, with the straight run's numbers (timing aside).
    logged, straight_logged = (
        [{key: value for key, value in record.items() if key != "images_per_second"} for record in read_records(path)]
        for path in (tmp_path / "run" / METRICS_FILENAME, straight_dir / "run" / METRICS_FILENAME)
    )
    assert [record["step"] for record in logged] == [1, 2, 3, 4, 5, 6]
    assert logged == straight_logged


def test_two_process_ddp_keeps_replicas_identical(tmp_path, images, free_port):
    config = write_recipe(tmp_path, images)
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            str(free_port),
            str(REPO_ROOT / "train_pretrain.py"),
            "--config",
            str(config),
            "--no-progress",
            "--set",
            "train.max_iterations=3",
        ],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["step"] == 3
    assert len(summary["replica_digests"]) == 2 and len(set(summary["replica_digests"])) == 1
    assert len(set(summary["teacher_digests"])) == 1
    assert summary["images_seen"] == 2 * 3 * 4  # ranks x steps x batch per rank


def test_initialisation_from_original_files_and_from_export(tmp_path, images):
    """Continue pretraining from original-layout backbone + DINO head files, then from a HF export directory."""
    from rad_dino_hf import convert

    config = RadDinoConfig(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=1,
        image_size=56,
        dino_head_n_prototypes=64,
        dino_head_hidden_size=32,
        dino_head_bottleneck_size=16,
    )
    torch.manual_seed(7)
    backbone = RadDinoModel(config)
    head = DinoHead(config)
    convert.save_original_backbone(backbone, tmp_path / convert.BACKBONE_FILENAME)
    convert.save_dino_head(head, tmp_path / convert.DINO_HEAD_FILENAME)

    recipe = write_recipe(tmp_path, images)
    overrides = [
        f"student.pretrained={tmp_path / convert.BACKBONE_FILENAME}",
        f"student.dino_head={tmp_path / convert.DINO_HEAD_FILENAME}",
        "optim.lr=1e-12",  # nearly frozen: the export must still be the loaded weights
    ]
    summary = run(recipe, "--set", "train.max_iterations=1", *overrides)
    exported = RadDinoModel.from_pretrained(summary["export_dir"])
    for name, tensor in backbone.state_dict().items():
        assert torch.allclose(exported.state_dict()[name], tensor, atol=1e-6), name
    exported_head = convert.load_dino_head(Path(summary["export_dir"]) / convert.DINO_HEAD_FILENAME, exported.config)
    for name, tensor in head.state_dict().items():
        assert torch.allclose(exported_head.state_dict()[name], tensor, atol=1e-6), name

    (tmp_path / "second").mkdir()
    again = run(
        write_recipe(tmp_path / "second", images),
        "--set",
        "train.max_iterations=1",
        f"student.pretrained={summary['export_dir']}",
        "optim.lr=1e-12",
    )
    second = RadDinoModel.from_pretrained(again["export_dir"])
    assert second.config.hidden_size == 64
    for name, tensor in backbone.state_dict().items():
        assert torch.allclose(second.state_dict()[name], tensor, atol=1e-6), name


def test_push_to_hub_uploads_the_export(tmp_path, images, monkeypatch):
    from types import SimpleNamespace

    import huggingface_hub

    calls = {}

    def create_repo(self, repo_id, **kwargs):
        calls["repo"] = (repo_id, kwargs.get("private"))
        return SimpleNamespace(repo_id=repo_id)

    def upload_folder(self, repo_id, folder_path, **kwargs):
        calls["files"] = sorted(p.name for p in Path(folder_path).iterdir())
        return SimpleNamespace(commit_url="https://example.invalid/commit")

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    run(write_recipe(tmp_path, images), "--set", "train.max_iterations=1", "--push-to-hub", "someone/cxr-dino")
    assert calls["repo"] == ("someone/cxr-dino", True)
    assert {"config.json", "model.safetensors", "dino_head.safetensors", "README.md"} <= set(calls["files"])


def test_model_config_takes_heads_from_the_recipe_and_the_backbone_from_its_source():
    recipe = RecipeConfig.from_dict(
        {
            **TINY_RECIPE,
            "ibot": {"separate_head": True, "head_n_prototypes": 40, "head_hidden_size": 24, "head_n_layers": 2},
        }
    )
    random = ssl_model.model_config(recipe)
    assert (random.hidden_size, random.num_hidden_layers, random.image_size, random.drop_path_rate) == (32, 2, 56, 0.1)
    dino_head = (random.dino_head_n_prototypes, random.dino_head_hidden_size, random.dino_head_bottleneck_size)
    assert dino_head == (64, 32, 16)
    assert (random.ibot_separate_head, random.ibot_head_n_prototypes, random.ibot_head_hidden_size) == (True, 40, 24)
    assert (random.ibot_head_bottleneck_size, random.ibot_head_n_layers) == (256, 2)  # 256: recipe default
    network = ssl_model.SelfDistillationNetwork(random)
    # separate iBOT head: Linear(32 -> 24), GELU, Linear(24 -> 256), then 256 -> 40 prototypes
    assert [tuple(m.weight.shape) for m in network.ibot_head.mlp if hasattr(m, "weight")] == [(24, 32), (256, 24)]
    assert network.ibot_head.last_layer.weight.shape == (40, 256)
    assert network.dino_head.last_layer.weight.shape == (64, 16)

    pretrained = RadDinoConfig(hidden_size=48, num_hidden_layers=3, num_attention_heads=3, image_size=518)
    derived = ssl_model.model_config(recipe, pretrained)
    assert (derived.hidden_size, derived.num_hidden_layers, derived.image_size) == (48, 3, 518)
    assert (derived.dino_head_n_prototypes, derived.drop_path_rate) == (64, 0.1)
    assert random.interpolate_offset == derived.interpolate_offset == 0.1  # DINOv2's interpolation in pretraining
    teacher = ssl_model.make_teacher(ssl_model.SelfDistillationNetwork(derived))
    assert teacher.config.interpolate_offset == 0.1
    with pytest.raises(ValueError, match="patch size"):
        ssl_model.model_config(recipe, RadDinoConfig(patch_size=16))


def _network_with_gradients(norms: dict[str, float]) -> ssl_model.SelfDistillationNetwork:
    """A tiny network (separate iBOT head) whose parts' gradients have the given norms (random directions)."""
    recipe = RecipeConfig.from_dict({**TINY_RECIPE, "ibot": {**TINY_RECIPE["ibot"], "separate_head": True}})
    network = ssl_model.SelfDistillationNetwork(ssl_model.model_config(recipe))
    generator = torch.Generator().manual_seed(0)
    for name, part in network.parts.items():
        grads = [torch.randn(p.shape, generator=generator) for p in part.parameters()]
        total = math.sqrt(sum(float((g**2).sum()) for g in grads))
        for p, g in zip(part.parameters(), grads):
            p.grad = g * norms[name] / total
    return network


def test_gradients_are_clipped_per_part_as_dinov2():
    """DINOv2 clips backbone, DINO head and iBOT head separately: each part's norm ends at most `clip`, scaled by
    clip / its own norm; a part under the limit keeps its gradient exactly."""
    norms = {"backbone": 5.0, "dino_head": 30.0, "ibot_head": 1.0}
    network = _network_with_gradients(norms)
    before = {name: [p.grad.clone() for p in part.parameters()] for name, part in network.parts.items()}
    measured = clip_grad_norms(network.parts, 3.0)
    assert measured == pytest.approx(norms, rel=1e-5)
    for name, part in network.parts.items():
        factor = min(1.0, 3.0 / (norms[name] + 1e-6))  # torch's clip coefficient
        after = [p.grad for p in part.parameters()]
        for old, new in zip(before[name], after):
            torch.testing.assert_close(new, old * factor, rtol=1e-6, atol=0)
        norm = math.sqrt(sum(float((g**2).sum()) for g in after))
        assert norm == pytest.approx(min(norms[name], 3.0), rel=1e-5)
    assert all(torch.equal(old, p.grad) for old, p in zip(before["ibot_head"], network.ibot_head.parameters()))
    # One norm over everything (the trainer's former rule) would have shrunk the backbone by 3 / 30.4, not 3 / 5.
    unclipped = clip_grad_norms(_network_with_gradients(norms).parts, 0.0)
    assert unclipped == pytest.approx(norms, rel=1e-5)


def _constant_teacher_targets():
    """`teacher_targets` that gives every sample the uniform target: image-target MI 0 for both heads."""
    targets = ssl_model.SelfDistillationObjective.teacher_targets

    def constant_teacher(self, *args, **kwargs):
        cls, patches = targets(self, *args, **kwargs)
        return torch.full_like(cls, 1 / cls.shape[1]), torch.full_like(patches, 1 / patches.shape[1])

    return constant_teacher


def test_collapse_is_logged_and_warned_once(tmp_path, images, monkeypatch, capfd):
    """A teacher that gives every sample the same target: image-target MI 0 in metrics.jsonl, one warning."""
    monkeypatch.setattr(ssl_model.SelfDistillationObjective, "teacher_targets", _constant_teacher_targets())
    run(write_recipe(tmp_path, images, collapse_warning_iterations=2), "--set", "train.max_iterations=5")
    warnings = [line for line in capfd.readouterr().err.splitlines() if "Collapse:" in line]
    assert len(warnings) == 1 and "DINO and iBOT targets" in warnings[0] and "layerscale" in warnings[0]
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 5
    for row in metrics:
        assert abs(row["mi/dino"]) < 1e-6 and (abs(row["mi/ibot"]) < 1e-6 or math.isnan(row["mi/ibot"]))
        assert {"grad_norm/backbone", "grad_norm/dino_head"} <= set(row)


def test_collapse_patience_counts_across_a_resume(tmp_path, images, monkeypatch, capfd):
    """Iterations in a row below the threshold count across a checkpoint: 2 before a stop and 2 after reach a
    patience of 4 (a fresh count would not), and a run that has warned does not warn again after resuming."""
    monkeypatch.setattr(ssl_model.SelfDistillationObjective, "teacher_targets", _constant_teacher_targets())
    config = write_recipe(tmp_path, images, collapse_warning_iterations=4)
    run(config, "--set", "train.max_iterations=2")
    assert "Collapse:" not in capfd.readouterr().err
    run(config, "--set", "train.max_iterations=4")
    assert sum("Collapse:" in line for line in capfd.readouterr().err.splitlines()) == 1
    run(config, "--set", "train.max_iterations=6")
    assert "Collapse:" not in capfd.readouterr().err


def test_varied_targets_are_not_a_collapse(tmp_path, images, capfd):
    """The real teacher with a large LayerScale: targets differ between images, the MI is logged, no warning."""
    config = write_recipe(tmp_path, images, collapse_warning_iterations=2)
    run(config, "--set", "train.max_iterations=3", "student.layerscale_value=1.0", "teacher.warmup_teacher_temp=0.01")
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(row["mi/dino"] > 0.05 for row in metrics), [row["mi/dino"] for row in metrics]
    assert "Collapse:" not in capfd.readouterr().err
