"""HF <-> original DINOv2 layout: exact round trips, and a reference forward of the original layout."""

import math
import re

import pytest
import torch
from safetensors.torch import load_file, save_file

from modeling_rad_dino import RadDinoModel
from rad_dino_hf import convert
from rad_dino_hf.heads import DinoHead


def _reference_original_forward(state: dict[str, torch.Tensor], pixels: torch.Tensor, heads: int) -> torch.Tensor:
    """facebookresearch/dinov2 `DinoVisionTransformer.forward_features` on original names, written from the paper's
    block definition: x + ls1 * attn(norm1(x)), x + ls2 * mlp(norm2(x)), fused qkv laid out [q; k; v]."""
    patch_weight = state["patch_embed.proj.weight"]
    tokens = torch.nn.functional.conv2d(
        pixels, patch_weight, state["patch_embed.proj.bias"], stride=patch_weight.shape[-1]
    )
    tokens = tokens.flatten(2).transpose(1, 2)
    batch, _, dim = tokens.shape
    x = torch.cat([state["cls_token"].expand(batch, -1, -1), tokens], dim=1) + state["pos_embed"]

    def layer_norm(t: torch.Tensor, name: str) -> torch.Tensor:
        return torch.nn.functional.layer_norm(t, (dim,), state[f"{name}.weight"], state[f"{name}.bias"], 1e-6)

    index = 0
    while f"blocks.{index}.norm1.weight" in state:
        prefix = f"blocks.{index}."
        h = layer_norm(x, prefix + "norm1")
        qkv = h @ state[prefix + "attn.qkv.weight"].T + state[prefix + "attn.qkv.bias"]
        q, k, v = qkv.reshape(batch, -1, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
        attention = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(dim // heads), dim=-1)
        attended = (attention @ v).transpose(1, 2).reshape(batch, -1, dim)
        attended = attended @ state[prefix + "attn.proj.weight"].T + state[prefix + "attn.proj.bias"]
        x = x + state[prefix + "ls1.gamma"] * attended
        h = layer_norm(x, prefix + "norm2")
        h = torch.nn.functional.gelu(h @ state[prefix + "mlp.fc1.weight"].T + state[prefix + "mlp.fc1.bias"])
        h = h @ state[prefix + "mlp.fc2.weight"].T + state[prefix + "mlp.fc2.bias"]
        x = x + state[prefix + "ls2.gamma"] * h
        index += 1
    return layer_norm(x, "norm")


def _random_head(config) -> DinoHead:
    torch.manual_seed(5)
    head = DinoHead(config)
    with torch.no_grad():  # g away from its init value of 1, so a dropped g would show
        head.last_layer.parametrizations.weight.original0.uniform_(0.5, 2.0)
    return head


def test_backbone_round_trip_is_exact(tiny_model):
    hf_state = tiny_model.state_dict()
    original = convert.hf_to_original_backbone(hf_state)
    assert "blocks.1.attn.qkv.weight" in original and "ls1.gamma" in " ".join(original)
    assert original["blocks.0.attn.qkv.weight"].shape == (3 * 64, 64)
    back = convert.original_to_hf_backbone(original)
    assert back.keys() == hf_state.keys()
    assert all(torch.equal(back[key], hf_state[key]) for key in hf_state)


def test_original_layout_matches_reference_forward(tiny_model):
    original = convert.hf_to_original_backbone(tiny_model.state_dict())
    pixels = torch.randn(2, 3, 56, 56)
    reference = _reference_original_forward(original, pixels, heads=4)
    assert (tiny_model(pixels).last_hidden_state - reference).abs().max() <= 1e-5


def test_dino_head_round_trip_and_weight_norm(tiny_config, tmp_path):
    head = _random_head(tiny_config)
    path = tmp_path / convert.DINO_HEAD_FILENAME
    convert.save_dino_head(head, path)
    on_disk = load_file(path)
    assert set(on_disk) == {f"mlp.{i}.{p}" for i in (0, 2, 4) for p in ("weight", "bias")} | {
        "last_layer.weight_g",
        "last_layer.weight_v",
    }
    reloaded = convert.load_dino_head(path, tiny_config)
    for key, tensor in head.state_dict().items():
        assert torch.equal(reloaded.state_dict()[key], tensor)
    # Weight norm semantics of the original: W = g * v / ||v|| row-wise.
    features = torch.randn(3, 64)
    bottleneck = torch.nn.functional.normalize(reloaded.mlp(features), dim=-1)
    weight = (
        on_disk["last_layer.weight_g"]
        * on_disk["last_layer.weight_v"]
        / on_disk["last_layer.weight_v"].norm(dim=1, keepdim=True)
    )
    assert torch.allclose(reloaded(features), bottleneck @ weight.T, atol=1e-6)


def test_cli_round_trip_through_files(tiny_model, tiny_config, tmp_path):
    original_dir, hf_dir, back_dir = tmp_path / "original", tmp_path / "hf", tmp_path / "back"
    original_dir.mkdir()
    save_file(convert.hf_to_original_backbone(tiny_model.state_dict()), original_dir / convert.BACKBONE_FILENAME)
    convert.save_dino_head(_random_head(tiny_config), original_dir / convert.DINO_HEAD_FILENAME)

    convert.main(
        [
            "to-hf",
            "--backbone",
            str(original_dir / convert.BACKBONE_FILENAME),
            "--dino-head",
            str(original_dir / convert.DINO_HEAD_FILENAME),
            "--output",
            str(hf_dir),
            "--num-heads",
            "4",
        ]
    )
    loaded = RadDinoModel.from_pretrained(hf_dir).eval()
    assert loaded.config.num_attention_heads == 4 and loaded.config.dino_head_n_prototypes == 50
    pixels = torch.randn(1, 3, 56, 56)
    assert torch.equal(loaded(pixels).last_hidden_state, tiny_model(pixels).last_hidden_state)

    convert.main(["to-original", "--model", str(hf_dir), "--output", str(back_dir)])
    for name in (convert.BACKBONE_FILENAME, convert.DINO_HEAD_FILENAME):
        first, second = load_file(original_dir / name), load_file(back_dir / name)
        assert first.keys() == second.keys()
        assert all(torch.equal(first[key], second[key]) for key in first)


def test_training_checkpoint_prefixes_and_chunks_are_normalised(tiny_model):
    original = convert.hf_to_original_backbone(tiny_model.state_dict())
    # A DINOv2 training checkpoint: teacher prefix, blocks nested in one FSDP chunk (`blocks.0.{i}.`).
    chunked = {
        "teacher.backbone." + re.sub(r"^blocks\.(\d+)\.", r"blocks.0.\1.", key): t for key, t in original.items()
    }
    assert "teacher.backbone.blocks.0.1.attn.qkv.weight" in chunked
    assert convert.normalize_original_keys(chunked).keys() == original.keys()


def test_unknown_keys_are_a_clear_error(tiny_model):
    original = convert.hf_to_original_backbone(tiny_model.state_dict())
    original["register_tokens"] = torch.zeros(1, 4, 64)
    with pytest.raises(convert.ConversionError, match="register_tokens"):
        convert.original_to_hf_backbone(original)
