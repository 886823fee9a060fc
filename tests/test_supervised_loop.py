"""The shared supervised loop: what is stepped per batch, per optimiser update and per epoch, against hand counts
and the cosine-with-warmup formula written out here."""

import json
import math

import pytest
import torch
from accelerate import Accelerator
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook
from torch.utils.data import DataLoader, TensorDataset

from rad_dino_hf.supervised import LoopSettings, train

ITEMS, BATCH, ACCUMULATION, EPOCHS = 10, 2, 2, 3  # 5 batches an epoch: updates after batches 2, 4 and 5
UPDATES = EPOCHS * 3
LR = 0.1


def mse(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    inputs, targets = batch
    return nn.functional.mse_loss(model(inputs), targets)


def _data() -> TensorDataset:
    generator = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(ITEMS, 4, generator=generator), 10 * torch.randn(ITEMS, 1, generator=generator))


def _run(tmp_path, max_grad_norm=0.0, warmup_fraction=0.25, on_epoch_end=None):
    """Train a seeded `Linear(4, 1)`; returns (log, JSONL records, initial model, gradient norms seen by AdamW)."""
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    initial = nn.Linear(4, 1)
    initial.load_state_dict(model.state_dict())
    loader = DataLoader(_data(), batch_size=BATCH)
    settings = LoopSettings(EPOCHS, warmup_fraction, max_grad_norm, "toy", tmp_path / "metrics.jsonl")
    group = {"params": list(model.parameters()), "lr": LR, "weight_decay": 0.0}
    norms = []

    def before_step(optimizer, args, kwargs):
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        norms.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))

    handle = register_optimizer_step_pre_hook(before_step)
    try:
        log = train(
            Accelerator(gradient_accumulation_steps=ACCUMULATION), model, [group], loader, settings, mse, on_epoch_end
        )
    finally:
        handle.remove()
    records = [json.loads(line) for line in settings.metrics_path.read_text().splitlines()]
    return log, records, initial, norms, model


def _first_update_gradient_norm(model: nn.Module) -> float:
    """By hand: the gradient of the mean of the first two batch losses (one accumulated update) at the start."""
    inputs, targets = _data().tensors
    loss = (mse(model, (inputs[:2], targets[:2])) + mse(model, (inputs[2:4], targets[2:4]))) / 2
    grads = torch.autograd.grad(loss, list(model.parameters()))
    return float(torch.linalg.vector_norm(torch.cat([g.flatten() for g in grads])))


def expected_lr(update: int, warmup: int, total: int) -> float:
    """Linear warmup from 0, then a half cosine to 0 over the remaining updates (0-based `update`)."""
    if update < warmup:
        return LR * update / warmup
    return LR * 0.5 * (1 + math.cos(math.pi * (update - warmup) / (total - warmup)))


def test_one_scheduler_and_optimizer_step_per_update_on_the_cosine_with_warmup(tmp_path):
    log, records, initial, norms, _ = _run(tmp_path)
    updates = [record for record in records if "update" in record]
    assert len(norms) == len(log.update_losses) == len(updates) == UPDATES  # AdamW stepped once per update
    assert [record["update"] for record in updates] == list(range(1, UPDATES + 1))
    assert [record["epoch"] for record in updates] == [1, 1, 1, 2, 2, 2, 3, 3, 3]
    warmup = round(0.25 * UPDATES)  # 2
    lrs = [record["lr"] for record in updates]
    assert lrs == pytest.approx([expected_lr(u, warmup, UPDATES) for u in range(UPDATES)], rel=1e-9, abs=1e-12)
    assert "grad_norm" not in updates[0]  # clipping off
    # The first update averages the losses of batches 1 and 2, both at the initial weights (lr 0 in warmup).
    inputs, targets = _data().tensors
    first = [mse(initial, (inputs[i : i + 2], targets[i : i + 2])).item() for i in (0, 2)]
    assert log.update_losses[0] == pytest.approx(sum(first) / 2, rel=1e-6)
    assert records[-1]["phase"] == "toy" and (tmp_path / "metrics.png").stat().st_size > 1000


def test_gradients_are_clipped_before_each_update(tmp_path):
    _, _, initial, unclipped, _ = _run(tmp_path / "plain")
    assert unclipped[0] == pytest.approx(_first_update_gradient_norm(initial), rel=1e-5)
    max_norm = 1e-2
    assert min(unclipped) > 10 * max_norm  # so clipping has work to do
    _, records, _, clipped, _ = _run(tmp_path / "clipped", max_grad_norm=max_norm)
    assert max(clipped) == pytest.approx(max_norm, rel=1e-4)  # what AdamW saw
    updates = [record for record in records if "update" in record]
    assert updates[0]["grad_norm"] == pytest.approx(unclipped[0], rel=1e-5)  # logged before clipping


def test_epoch_callback_once_per_epoch_joins_the_epoch_record(tmp_path):
    calls = []

    def on_epoch_end(epoch, model):
        calls.append((epoch, model.training))
        return {"val_score": float(epoch) / 10}

    log, records, _, _, model = _run(tmp_path, on_epoch_end=on_epoch_end)
    assert calls == [(1, True), (2, True), (3, True)]
    assert [record["val_score"] for record in log.epochs] == [0.1, 0.2, 0.3]
    epoch_records = [record for record in records if "update" not in record]
    assert [record["epoch"] for record in epoch_records] == [1, 2, 3]
    assert [record["val_score"] for record in epoch_records] == [0.1, 0.2, 0.3]
    assert not model.training
