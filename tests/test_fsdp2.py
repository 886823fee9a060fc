"""The trainer's FSDP2 steps on two CPU processes (gloo) against the same steps on unsharded copies.

Accelerate enables FSDP only on accelerators, so this shards with `fully_shard` directly, with the plan of
`configs/accelerate/fsdp.yaml` (each `Dinov2Layer` a unit, then the root): per-part gradient clipping, an optimizer
step and the teacher's EMA must give the unsharded result, shard by shard. Both ranks see the same batch, so
FSDP's gradient average equals the single-process gradient.
"""

import copy
import json
import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor
from transformers.models.dinov2.modeling_dinov2 import Dinov2Layer

from configuration_rad_dino import RadDinoConfig
from rad_dino_hf.ssl_model import SelfDistillationNetwork, ema_update, make_teacher, reshard_after_each_forward
from rad_dino_hf.trainer import clip_grad_norms

WORLD_SIZE = 2
CLIP = 0.5
MOMENTUM = 0.9


def _config() -> RadDinoConfig:
    return RadDinoConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=28,
        layerscale_value=1.0,
        dino_head_hidden_size=16,
        dino_head_bottleneck_size=8,
        dino_head_n_prototypes=12,
        ibot_separate_head=True,
    )


def _shard(network: torch.nn.Module, mesh) -> None:
    for module in network.modules():
        if isinstance(module, Dinov2Layer):
            fully_shard(module, mesh=mesh)
    fully_shard(network, mesh=mesh)


def _full(tensor: torch.Tensor) -> torch.Tensor:
    tensor = tensor.detach()
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def _train_step(student, teacher, crops, masks) -> dict[str, float]:
    """Teacher forward, student forward/backward, per-part clipping, SGD step, EMA: the trainer's order."""
    with torch.no_grad():
        teacher(crops, patch_selection=masks)
    outputs = student(crops, masks=masks, patch_selection=masks)
    (outputs["global_logits"].square().mean() + outputs["patch_logits"].square().mean()).backward()
    norms = clip_grad_norms(student.parts, CLIP)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.5)
    optimizer.step()
    ema_update(teacher, student, MOMENTUM)
    return norms


def _worker(rank: int, port: int, result_file: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD_SIZE)
    try:
        torch.manual_seed(0)
        student = SelfDistillationNetwork(_config())
        teacher = make_teacher(student)
        reference_student, reference_teacher = copy.deepcopy(student), copy.deepcopy(teacher)
        crops = torch.randn(3, 3, 28, 28, generator=torch.Generator().manual_seed(1))
        masks = torch.rand(3, 4, generator=torch.Generator().manual_seed(2)) < 0.5

        mesh = init_device_mesh("cpu", (WORLD_SIZE,))
        _shard(student, mesh)
        _shard(teacher, mesh)
        # Why the teacher needs `reshard_after_each_forward`: after a forward without backward, FSDP2 leaves the
        # root's parameters gathered.
        with torch.no_grad():
            teacher(crops, patch_selection=masks)
        gathered_after_forward = [name for name, p in teacher.named_parameters() if not isinstance(p, DTensor)]
        teacher.reshard()
        reshard_after_each_forward(teacher)  # as the trainer's `shard_teacher_fsdp2`
        with torch.no_grad():
            teacher(crops, patch_selection=masks)
        sharded_after_hooked_forward = all(isinstance(p, DTensor) for p in teacher.parameters())

        sharded_norms = _train_step(student, teacher, crops, masks)
        reference_norms = _train_step(reference_student, reference_teacher, crops, masks)
        teacher_error = max(
            float((_full(p) - q.detach()).abs().max())
            for p, q in zip(teacher.parameters(), reference_teacher.parameters(), strict=True)
        )
        student_error = max(
            float((_full(p) - q.detach()).abs().max())
            for p, q in zip(student.parameters(), reference_student.parameters(), strict=True)
        )
        teacher_moved = max(
            float((_full(p) - q.detach()).abs().max())
            for p, q in zip(teacher.parameters(), make_teacher(SelfDistillationNetwork(_config())).parameters())
        )
        if rank == 0:
            result = {
                "gathered_after_forward": gathered_after_forward,
                "sharded_norms": sharded_norms,
                "reference_norms": reference_norms,
                "teacher_error": teacher_error,
                "student_error": student_error,
                "teacher_moved": teacher_moved,
                "sharded_after_hooked_forward": sharded_after_hooked_forward,
            }
            with open(result_file, "w", encoding="utf-8") as handle:
                json.dump(result, handle)
    finally:
        dist.destroy_process_group()


def test_fsdp2_clipping_step_and_ema_equal_the_unsharded_step(tmp_path, free_port):
    result_file = tmp_path / "result.json"
    mp.spawn(_worker, args=(free_port, str(result_file)), nprocs=WORLD_SIZE, join=True)
    result = json.loads(result_file.read_text())

    assert result["gathered_after_forward"], "FSDP2 no longer keeps the root gathered: the hook may go"
    assert result["sharded_after_hooked_forward"]
    assert set(result["sharded_norms"]) == {"backbone", "dino_head", "ibot_head"}
    for name, norm in result["reference_norms"].items():
        assert abs(result["sharded_norms"][name] - norm) <= 1e-4 * norm, name  # shard-wise sums: other order
    assert any(norm > CLIP for norm in result["reference_norms"].values()), "the step must actually clip"
    assert result["student_error"] < 1e-5
    assert result["teacher_error"] < 1e-5
    assert result["teacher_moved"] > 1e-4  # the step changed the teacher (a no-op EMA would match too)
