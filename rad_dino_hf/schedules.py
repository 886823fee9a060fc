"""Optimisation schedules and parameter groups of the DINOv2 recipe, for HF ``Dinov2Model`` names.

Mirrors ``dinov2/utils/utils.py::CosineScheduler``, ``dinov2/utils/param_groups.py`` and
``dinov2/train/train.py::{build_schedulers, apply_optim_scheduler}`` (facebookresearch/dinov2).
"""

import re
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch import nn

from rad_dino_hf.errors import UserError


class CosineScheduler:
    """Per-iteration values: ``freeze_iters`` zeros, linear warmup, then half-cosine decay.

    ``schedule[it]`` for ``it < total_iters``; ``final_value`` for any later iteration.

    Args:
        base_value: value at the end of warmup (start of the cosine).
        final_value: value the cosine reaches at ``total_iters`` (approached, not hit exactly: the
            last cosine step is ``cos(pi * (n - 1) / n)``, as DINOv2).
        total_iters: schedule length, freeze + warmup + cosine.
        warmup_iters: warmup length; ``np.linspace(start_warmup_value, base_value, warmup_iters)``
            so the last warmup iteration already equals ``base_value``.
        start_warmup_value: first warmup value.
        freeze_iters: leading iterations at exactly 0.
    """

    def __init__(
        self,
        base_value: float,
        final_value: float,
        total_iters: int,
        warmup_iters: int = 0,
        start_warmup_value: float = 0.0,
        freeze_iters: int = 0,
    ) -> None:
        if warmup_iters + freeze_iters > total_iters:
            raise ValueError(f"warmup ({warmup_iters}) + freeze ({freeze_iters}) > total_iters ({total_iters})")
        self.final_value = final_value
        self.total_iters = total_iters
        freeze_schedule = np.zeros(freeze_iters)
        warmup_schedule = np.linspace(start_warmup_value, base_value, warmup_iters)
        iters = np.arange(total_iters - warmup_iters - freeze_iters)
        cosine = final_value + 0.5 * (base_value - final_value) * (1 + np.cos(np.pi * iters / max(len(iters), 1)))
        self.schedule: np.ndarray = np.concatenate((freeze_schedule, warmup_schedule, cosine))
        assert len(self.schedule) == total_iters

    def __getitem__(self, it: int) -> float:
        return float(self.final_value if it >= self.total_iters else self.schedule[it])

    def __len__(self) -> int:
        return self.total_iters


# HF Dinov2Model names; the optional prefix (e.g. "backbone.", "student.backbone.") is allowed.
_LAYER_RE = re.compile(r"(?:^|\.)encoder\.layer\.(\d+)\.")
_EMBED_TOKEN_RE = re.compile(
    r"(?:^|\.)embeddings\.(cls_token|mask_token|register_tokens|position_embeddings|patch_embeddings)(?:$|\.)"
)
_TOKEN_RE = re.compile(r"(?:^|\.)embeddings\.(cls_token|mask_token|register_tokens|position_embeddings)$")


def layer_id_for_name(name: str, num_layers: int) -> int:
    """DINOv2's ``get_vit_lr_decay_rate`` layer id for an HF parameter name.

    0 for the embeddings (tokens, position embeddings, patch embedding), ``i + 1`` for
    ``encoder.layer.{i}.*``, ``num_layers + 1`` for everything else (final ``layernorm``, heads).
    """
    if _EMBED_TOKEN_RE.search(name):
        return 0
    match = _LAYER_RE.search(name)
    if match:
        return int(match.group(1)) + 1
    return num_layers + 1


def lr_decay_rate(name: str, layerwise_decay: float, num_layers: int) -> float:
    """``layerwise_decay ** (num_layers + 1 - layer_id)``: 1 for heads / final norm, smallest at the embeddings."""
    return layerwise_decay ** (num_layers + 1 - layer_id_for_name(name, num_layers))


def _infer_num_layers(model: nn.Module, names: Iterable[str]) -> int:
    """``config.num_hidden_layers`` of a (possibly nested) HF model, else 1 + the largest layer index."""
    for module in model.modules():
        n = getattr(getattr(module, "config", None), "num_hidden_layers", None)
        if isinstance(n, int):
            return n
    ids = [int(m.group(1)) for m in map(_LAYER_RE.search, names) if m]
    return max(ids) + 1 if ids else 0


def param_groups(
    model: nn.Module,
    weight_decay: float,
    layerwise_decay: float = 0.9,
    patch_embed_lr_mult: float = 0.2,
    num_layers: int | None = None,
    no_wd_for_tokens: bool = False,
) -> list[dict[str, Any]]:
    """One optimizer param group per trainable parameter, as DINOv2's ``get_params_groups_with_decay``.

    Each dict: ``params`` ([tensor]), ``name``, ``lr_multiplier``, ``wd_multiplier``,
    ``is_last_layer``, ``weight_decay`` (= weight_decay * wd_multiplier, a starting value that
    :func:`apply_schedules` overwrites each step).

    * ``lr_multiplier = layerwise_decay ** (L + 1 - layer_id)`` (see :func:`layer_id_for_name`),
      times ``patch_embed_lr_mult`` for ``*patch_embed*`` parameters.
    * ``wd_multiplier = 0`` for exactly what DINOv2's rule exempts (``name.endswith(".bias") or "norm" in name
      or "gamma" in name``): biases, norms (norm1/norm2/layernorm) and LayerScale (HF ``lambda1``, DINOv2's
      ``gamma``). The cls/mask/register tokens and position embeddings are decayed, as in DINOv2 pretraining.
      ``no_wd_for_tokens=True`` also exempts them: the fine-tuning convention of BEiT/MAE/timm
      (``no_weight_decay() = {pos_embed, cls_token}``), used by ``rad_dino_hf.classifier_training``.
    * ``is_last_layer`` for parameters of a head's ``last_layer`` (frozen by a zero lr at the start).

    Args:
        model: a ``Dinov2Model`` or a module containing one (names may carry a prefix) plus heads.
        weight_decay: base weight decay.
        layerwise_decay: per-block lr decay (DINOv2 default 0.9).
        patch_embed_lr_mult: extra lr factor for the patch embedding (DINOv2 default 0.2).
        num_layers: L; inferred from ``config.num_hidden_layers`` or the names if None.
        no_wd_for_tokens: also exempt tokens and position embeddings from weight decay (fine-tuning).

    Returns:
        list of param-group dicts, in ``named_parameters`` order.
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if num_layers is None:
        num_layers = _infer_num_layers(model, (n for n, _ in named))
    groups = []
    for name, param in named:
        lr_mult = lr_decay_rate(name, layerwise_decay, num_layers)
        if "patch_embed" in name:
            lr_mult *= patch_embed_lr_mult
        no_wd = (
            name.endswith(".bias")
            or name == "bias"
            or "norm" in name
            or "gamma" in name
            or re.search(r"(?:^|\.)lambda\d*$", name) is not None
            or (no_wd_for_tokens and _TOKEN_RE.search(name) is not None)
        )
        wd_mult = 0.0 if no_wd else 1.0
        groups.append(
            {
                "params": [param],
                "name": name,
                "lr_multiplier": lr_mult,
                "wd_multiplier": wd_mult,
                "is_last_layer": "last_layer" in name,
                "weight_decay": weight_decay * wd_mult,
            }
        )
    return groups


def fuse_param_groups(
    groups: Iterable[dict[str, Any]], keys: tuple[str, ...] = ("lr_multiplier", "wd_multiplier", "is_last_layer")
) -> list[dict[str, Any]]:
    """Merge groups sharing the same multipliers (fewer optimizer groups; DINOv2's ``fuse_params_groups``).

    Names are kept as a list under ``names``.
    """
    fused: dict[tuple, dict[str, Any]] = defaultdict(lambda: {"params": [], "names": []})
    for g in groups:
        key = tuple(g[k] for k in keys)
        entry = fused[key]
        for k in keys:
            entry[k] = g[k]
        if "weight_decay" in g:
            entry["weight_decay"] = g["weight_decay"]
        entry["params"].extend(g["params"])
        entry["names"].append(g.get("name", ""))
    return list(fused.values())


def apply_schedules(optimizer: torch.optim.Optimizer, lr: float, wd: float, last_layer_lr: float) -> None:
    """Write this iteration's values into every param group (DINOv2's ``apply_optim_scheduler``).

    ``group["lr"] = (last_layer_lr if is_last_layer else lr) * lr_multiplier`` and
    ``group["weight_decay"] = wd * wd_multiplier``. Groups without multipliers use 1.0 / not last layer.
    """
    for group in optimizer.param_groups:
        base = last_layer_lr if group.get("is_last_layer", False) else lr
        group["lr"] = base * group.get("lr_multiplier", 1.0)
        group["weight_decay"] = wd * group.get("wd_multiplier", 1.0)


def build_schedules(cfg: "Any", world_size: int) -> dict[str, CosineScheduler]:
    """The five DINOv2 schedules from a :class:`rad_dino_hf.recipe.RecipeConfig` (``build_schedulers``).

    ``world_size`` (data-parallel processes, known at run time) sets the global batch the lr is scaled to.
    Returns a dict with ``lr`` (warmup 0 -> ``optim.resolved_lr``, cosine to ``min_lr``), ``wd`` (cosine
    ``weight_decay -> weight_decay_end``), ``momentum`` (teacher EMA, cosine to 1.0), ``teacher_temp``
    (linear warmup then constant) and ``last_layer_lr`` (= lr schedule with zeros during
    ``freeze_last_layer_epochs``).
    """
    epoch_len = cfg.train.official_epoch_length
    total = cfg.optim.epochs * epoch_len
    for key in ("warmup_epochs", "freeze_last_layer_epochs"):
        # Longer than the run, the lr would never reach its peak or the prototypes would never train.
        if getattr(cfg.optim, key) > cfg.optim.epochs:
            raise UserError(
                f"optim.{key}={getattr(cfg.optim, key)} is longer than the run (optim.epochs={cfg.optim.epochs} "
                f"of train.official_epoch_length={epoch_len} iterations): lower it or raise optim.epochs"
            )
    lr = cfg.optim.resolved_lr(cfg.train.global_batch_size(world_size))
    lr_kwargs = dict(
        base_value=lr,
        final_value=cfg.optim.min_lr,
        total_iters=total,
        warmup_iters=cfg.optim.warmup_epochs * epoch_len,
        start_warmup_value=0.0,
    )
    last_layer = CosineScheduler(**lr_kwargs)
    last_layer.schedule[: cfg.optim.freeze_last_layer_epochs * epoch_len] = 0.0
    warmup_temp_iters = cfg.teacher.warmup_teacher_temp_epochs * epoch_len
    return {
        "lr": CosineScheduler(**lr_kwargs),
        "wd": CosineScheduler(cfg.optim.weight_decay, cfg.optim.weight_decay_end, total),
        "momentum": CosineScheduler(cfg.teacher.momentum_teacher, cfg.teacher.final_momentum_teacher, total),
        "teacher_temp": CosineScheduler(
            cfg.teacher.teacher_temp,
            cfg.teacher.teacher_temp,
            warmup_temp_iters,
            warmup_iters=warmup_temp_iters,
            start_warmup_value=cfg.teacher.warmup_teacher_temp,
        ),
        "last_layer_lr": last_layer,
    }
