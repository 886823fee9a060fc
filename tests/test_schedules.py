"""Schedules (closed-form math), param groups (tiny HF Dinov2Model names) and the recipe config."""

import math

import pytest
import torch
from torch import nn
from transformers import Dinov2Config, Dinov2Model

from rad_dino_hf.recipe import RecipeConfig, apply_overrides
from rad_dino_hf.schedules import (
    CosineScheduler,
    apply_schedules,
    build_schedules,
    fuse_param_groups,
    param_groups,
)


def test_cosine_schedule_closed_form():
    base, final, total, warm, start = 1.0, 0.1, 100, 10, 0.2
    s = CosineScheduler(base, final, total, warmup_iters=warm, start_warmup_value=start)
    for it in range(warm):
        assert s[it] == pytest.approx(start + (base - start) * it / (warm - 1))
    n = total - warm
    for it in range(warm, total):
        assert s[it] == pytest.approx(final + 0.5 * (base - final) * (1 + math.cos(math.pi * (it - warm) / n)))
    assert s[0] == pytest.approx(start) and s[warm - 1] == pytest.approx(base) and s[warm] == pytest.approx(base)
    assert s[total] == final and s[10 * total] == final


def test_freeze_iters_give_zeros():
    s = CosineScheduler(0.5, 0.0, 50, warmup_iters=5, start_warmup_value=0.1, freeze_iters=7)
    assert all(s[i] == 0.0 for i in range(7))
    assert s[7] == pytest.approx(0.1) and s[11] == pytest.approx(0.5)


def test_lr_follows_the_sqrt_rule_of_the_global_batch():
    optim = RecipeConfig().optim
    assert optim.resolved_lr(1024) == pytest.approx(0.004)
    assert optim.resolved_lr(2560) == pytest.approx(0.004 * math.sqrt(2.5))
    optim.lr = 0.01  # an explicit lr is used as-is
    assert optim.resolved_lr(2560) == 0.01
    train = apply_overrides(RecipeConfig(), ["train.gradient_accumulation_steps=2"]).train
    assert train.global_batch_size(world_size=4) == 64 * 4 * 2


def test_recipe_schedules():
    cfg = apply_overrides(RecipeConfig(), ["train.official_epoch_length=10", "optim.epochs=40"])
    s = build_schedules(cfg, world_size=1)
    peak = 0.004 * math.sqrt(64 / 1024)
    assert build_schedules(cfg, world_size=4)["lr"][99] == pytest.approx(0.004 * math.sqrt(4 * 64 / 1024))
    assert s["lr"][0] == 0.0 and s["lr"][99] == pytest.approx(peak) and s["lr"][100] == pytest.approx(peak)
    assert s["lr"][400] == pytest.approx(1e-6)
    assert all(s["last_layer_lr"][i] == 0.0 for i in range(10)) and s["last_layer_lr"][10] == s["lr"][10]
    assert s["wd"][0] == pytest.approx(0.04) and s["wd"][400] == pytest.approx(0.4)
    assert s["momentum"][0] == pytest.approx(0.992) and s["momentum"][10**6] == 1.0
    assert s["teacher_temp"][0] == pytest.approx(0.04)
    assert s["teacher_temp"][299] == pytest.approx(0.07) and s["teacher_temp"][5000] == pytest.approx(0.07)


def tiny_dinov2():
    cfg = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=28, patch_size=14)
    return Dinov2Model(cfg)


def expected_multipliers(name, num_layers=2, decay=0.9, patch_mult=0.2, tokens_decayed=True):
    """Independent statement of the DINOv2 rule for HF names (layer ids: 0 embed, i+1 block, L+1 rest).

    Weight decay: DINOv2's `get_params_groups_with_decay` exempts `name.endswith(".bias") or "norm" in name or
    "gamma" in name`; HF calls LayerScale's `gamma` `lambda1`. Tokens and position embeddings are decayed."""
    short = name.split("backbone.", 1)[-1]
    if short.startswith("embeddings."):
        layer_id = 0
    elif short.startswith("encoder.layer."):
        layer_id = int(short.split(".")[2]) + 1
    else:
        layer_id = num_layers + 1
    lr = decay ** (num_layers + 1 - layer_id) * (patch_mult if "patch_embeddings" in short else 1.0)
    leaf = short.split(".")[-1]
    exempt = {"bias", "lambda1"} | (set() if tokens_decayed else {"cls_token", "mask_token", "position_embeddings"})
    no_wd = leaf in exempt or "norm" in short
    return lr, 0.0 if no_wd else 1.0


def test_param_groups_hf_names():
    groups = {g["name"]: g for g in param_groups(tiny_dinov2(), weight_decay=0.04)}
    for name, g in groups.items():
        lr, wd = expected_multipliers(name)
        assert g["lr_multiplier"] == pytest.approx(lr), name
        assert g["wd_multiplier"] == wd, name
        assert g["weight_decay"] == pytest.approx(0.04 * wd)
    assert groups["embeddings.patch_embeddings.projection.weight"]["lr_multiplier"] == pytest.approx(0.9**3 * 0.2)
    assert groups["encoder.layer.0.attention.q_proj.weight"]["lr_multiplier"] == pytest.approx(0.81)
    assert groups["encoder.layer.1.mlp.fc1.weight"]["lr_multiplier"] == pytest.approx(0.9)
    assert groups["layernorm.weight"]["lr_multiplier"] == 1.0
    for decayed in ["embeddings.cls_token", "embeddings.mask_token", "embeddings.position_embeddings"]:
        assert groups[decayed]["wd_multiplier"] == 1.0, decayed  # as DINOv2's pos_embed, cls_token, mask_token
    for zero_wd in [
        "encoder.layer.1.layer_scale1.lambda1",
        "encoder.layer.0.norm1.weight",
        "encoder.layer.0.attention.q_proj.bias",
        "layernorm.weight",
    ]:
        assert groups[zero_wd]["wd_multiplier"] == 0.0
    assert groups["encoder.layer.0.attention.q_proj.weight"]["wd_multiplier"] == 1.0
    # The fine-tuning option also exempts tokens and position embeddings, and changes nothing else.
    finetune = {g["name"]: g for g in param_groups(tiny_dinov2(), 0.04, no_wd_for_tokens=True)}
    for name, g in finetune.items():
        assert g["wd_multiplier"] == expected_multipliers(name, tokens_decayed=False)[1], name
    assert finetune["embeddings.cls_token"]["wd_multiplier"] == 0.0


class Wrapper(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = tiny_dinov2()
        self.dino_head = nn.ModuleDict({"mlp": nn.Linear(32, 8), "last_layer": nn.Linear(8, 16, bias=False)})


def test_param_groups_with_prefix_head_and_schedule_application():
    groups = param_groups(Wrapper(), weight_decay=0.04)
    by_name = {g["name"]: g for g in groups}
    for name, g in by_name.items():
        if name.startswith("backbone."):
            assert (g["lr_multiplier"], g["wd_multiplier"]) == pytest.approx(expected_multipliers(name)), name
    assert by_name["dino_head.mlp.weight"]["lr_multiplier"] == 1.0
    assert by_name["dino_head.last_layer.weight"]["is_last_layer"]
    assert not by_name["dino_head.mlp.weight"]["is_last_layer"]

    opt = torch.optim.AdamW(fuse_param_groups(groups), lr=0.0)
    apply_schedules(opt, lr=1e-3, wd=0.1, last_layer_lr=0.0)
    for group in opt.param_groups:
        base = 0.0 if group["is_last_layer"] else 1e-3
        assert group["lr"] == pytest.approx(base * group["lr_multiplier"])
        assert group["weight_decay"] == pytest.approx(0.1 * group["wd_multiplier"])
    n_params = sum(len(g["params"]) for g in opt.param_groups)
    assert n_params == len(list(Wrapper().parameters()))


# ----------------------------------------------------------------------------- recipe


def test_recipe_defaults_match_dinov2_default_config():
    cfg = RecipeConfig()
    assert (cfg.optim.base_lr, cfg.optim.min_lr, cfg.optim.warmup_epochs) == (0.004, 1e-6, 10)
    assert (cfg.optim.weight_decay, cfg.optim.weight_decay_end, cfg.optim.clip_grad) == (0.04, 0.4, 3.0)
    teacher = cfg.teacher
    assert (teacher.momentum_teacher, teacher.warmup_teacher_temp, teacher.teacher_temp) == (0.992, 0.04, 0.07)
    assert cfg.crops.global_crops_scale == (0.32, 1.0) and cfg.crops.local_crops_scale == (0.05, 0.32)
    assert cfg.ibot.mask_ratio_min_max == (0.1, 0.5) and cfg.dino.koleo_loss_weight == 0.1


def test_recipe_yaml_round_trip(tmp_path):
    cfg = apply_overrides(RecipeConfig(), ["crops.local_crops_number=4", "train.max_minutes=7.5"])
    path = tmp_path / "recipe.yaml"
    cfg.to_yaml(path)
    assert RecipeConfig.from_yaml(path) == cfg
    path.write_text("optim:\n  base_lr: 0.001\n")  # partial file keeps other defaults
    partial = RecipeConfig.from_yaml(path)
    assert partial.optim.base_lr == 0.001 and partial.optim.min_lr == 1e-6


def test_overrides_type_conversion():
    base = RecipeConfig()
    cfg = apply_overrides(
        base,
        [
            "optim.lr=0.001",
            "crops.local_crops_number=4",
            "crops.global_crops_scale=0.4,1",
            "ibot.separate_head=true",
            "optim.min_lr=1e-5",
            "train.centering=sinkhorn_knopp",
            "crops.blur_probabilities=[0.5, 0.5, 0.5]",
            "train.max_minutes=none",
            "optim.epochs=2.0",
        ],
    )
    assert cfg.optim.lr == 0.001 and isinstance(cfg.optim.lr, float)
    assert cfg.crops.local_crops_number == 4 and isinstance(cfg.crops.local_crops_number, int)
    assert cfg.crops.global_crops_scale == (0.4, 1.0)
    assert cfg.ibot.separate_head is True and cfg.optim.min_lr == 1e-5 and cfg.optim.epochs == 2
    assert cfg.train.centering == "sinkhorn_knopp" and cfg.train.max_minutes is None
    assert cfg.crops.blur_probabilities == (0.5, 0.5, 0.5)
    assert base.optim.lr == 0.0  # the input is not mutated


@pytest.mark.parametrize(
    "override, exc, fragment",
    [
        ("optim.lrr=1", KeyError, "lrr"),
        ("optimizer.lr=1", KeyError, "optimizer"),
        ("optim=1", KeyError, "section"),
        ("optim.lr", ValueError, "section.field=value"),
        ("crops.local_crops_number=2.5", ValueError, "int"),
        ("crops.global_crops_scale=0.1,0.2,0.3", ValueError, "expected 2"),
        ("ibot.separate_head=maybe", ValueError, "bool"),
    ],
)
def test_bad_overrides_raise_clear_errors(override, exc, fragment):
    with pytest.raises(exc, match=fragment):
        apply_overrides(RecipeConfig(), [override])


def test_unknown_yaml_key_raises(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("optim:\n  learning_rate: 0.1\n")
    with pytest.raises(KeyError, match="learning_rate"):
        RecipeConfig.from_yaml(path)
