"""RadDinoModel: release-format save/load, remote code, outputs, masking, attention backends, full-size shapes."""

import json
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModel, Dinov2Config, Dinov2Model

from configuration_rad_dino import RadDinoConfig
from modeling_rad_dino import RadDinoModel, RadDinoModelOutput


def _pixels(batch: int = 2, size: int = 56, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_config_defaults_equal_released_model():
    config = RadDinoConfig()
    released = {  # microsoft/rad-dino config.json
        "hidden_size": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "mlp_ratio": 4,
        "image_size": 518,
        "patch_size": 14,
        "num_channels": 3,
        "qkv_bias": True,
        "layerscale_value": 1.0,
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-6,
        "use_swiglu_ffn": False,
        "drop_path_rate": 0.0,
    }
    assert {key: getattr(config, key) for key in released} == released
    assert (config.dino_head_hidden_size, config.dino_head_bottleneck_size) == (2048, 256)
    assert (config.dino_head_n_prototypes, config.dino_head_n_layers) == (65536, 3)


def test_saved_directory_is_release_format_and_loads_as_plain_dinov2(tiny_model, tmp_path):
    pixels = _pixels()
    expected = tiny_model(pixels).last_hidden_state
    tiny_model.save_pretrained(tmp_path)

    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "dinov2"
    assert config["architectures"] == ["Dinov2Model"]
    keys = load_file(tmp_path / "model.safetensors").keys()
    assert "encoder.layer.0.attention.attention.query.weight" in keys  # the names of the release's model.safetensors
    assert not any("q_proj" in key for key in keys)

    plain = AutoModel.from_pretrained(tmp_path).eval()  # no remote code: stock transformers
    assert type(plain) is Dinov2Model
    assert (plain(pixels).last_hidden_state - expected).abs().max() <= 1e-5


def test_loads_a_stock_dinov2_checkpoint(tmp_path):
    """A directory written by stock transformers (as microsoft/rad-dino is) loads into RadDinoModel unchanged."""
    torch.manual_seed(3)
    stock = Dinov2Model(Dinov2Config(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=56)).eval()
    stock.save_pretrained(tmp_path)
    ours = RadDinoModel.from_pretrained(tmp_path).eval()
    assert ours.config.model_type == "rad_dino"
    pixels = _pixels()
    assert torch.equal(ours(pixels).last_hidden_state, stock(pixels).last_hidden_state)


def test_trust_remote_code_load_in_fresh_process(tiny_model, tmp_path):
    model_dir, work_dir = tmp_path / "model", tmp_path / "elsewhere"
    work_dir.mkdir()
    tiny_model.save_pretrained(model_dir)
    assert (model_dir / "modeling_rad_dino.py").exists() and (model_dir / "configuration_rad_dino.py").exists()
    pixels = _pixels()
    torch.save({"pixels": pixels, "expected": tiny_model(pixels).patch_embeddings}, tmp_path / "io.pt")
    script = textwrap.dedent(
        f"""
        import torch
        from transformers import AutoModel
        model = AutoModel.from_pretrained({str(model_dir)!r}, trust_remote_code=True).eval()
        assert type(model).__name__ == "RadDinoModel", type(model)
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        io = torch.load({str(tmp_path / "io.pt")!r})
        delta = (model(io["pixels"]).patch_embeddings - io["expected"]).abs().max().item()
        assert delta <= 1e-5, delta
        print("remote-ok", delta)
        """
    )
    # A clean interpreter whose cwd and sys.path do not contain this repository.
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=work_dir, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "remote-ok" in result.stdout


def test_auto_classes_resolve_in_process(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path)
    assert type(AutoConfig.from_pretrained(tmp_path)) is Dinov2Config  # plain: release format wins
    assert isinstance(AutoModel.from_config(RadDinoConfig(num_hidden_layers=1)), RadDinoModel)


def test_outputs_cls_and_patch_map(tiny_model):
    pixels = _pixels(batch=2, size=70)  # 5x5 patches, non-default size interpolates position embeddings
    output = tiny_model(pixels, output_hidden_states=True)
    assert isinstance(output, RadDinoModelOutput)
    assert output.cls_embeddings.shape == (2, 64)
    assert output.patch_embeddings.shape == (2, 64, 5, 5)
    assert torch.equal(output.cls_embeddings, output.last_hidden_state[:, 0])
    assert torch.equal(output.pooler_output, output.cls_embeddings)
    # Token (row r, column c) of the sequence is map[..., r, c]: row-major, as the rad-dino package reshapes.
    assert torch.equal(output.patch_embeddings[:, :, 1, 3], output.last_hidden_state[:, 1 + 1 * 5 + 3])
    assert len(output.hidden_states) == 3  # embeddings + 2 layers
    as_tuple = tiny_model(pixels, return_dict=False)
    assert torch.equal(as_tuple[0], output.last_hidden_state)


def test_bool_masked_pos_replaces_patches_by_mask_token(tiny_model):
    pixels = _pixels(batch=2)
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[0, [0, 5, 6]] = True
    embeddings = tiny_model.embeddings(pixels, bool_masked_pos=mask)
    plain = tiny_model.embeddings(pixels)
    position = tiny_model.embeddings.position_embeddings[0]
    expected_masked = tiny_model.embeddings.mask_token[0] + position[1 + 5]
    assert torch.allclose(embeddings[0, 1 + 5], expected_masked)
    assert torch.equal(embeddings[1], plain[1])  # unmasked image untouched
    assert torch.equal(embeddings[0, 1 + 1], plain[0, 1 + 1])
    assert not torch.allclose(
        tiny_model(pixels, bool_masked_pos=mask).cls_embeddings[0], tiny_model(pixels).cls_embeddings[0]
    )


def test_sdpa_and_eager_agree_and_eager_returns_attentions(tiny_config):
    torch.manual_seed(0)
    sdpa = RadDinoModel(tiny_config).eval()
    assert sdpa.config._attn_implementation == "sdpa"
    eager = RadDinoModel._from_config(tiny_config, attn_implementation="eager").eval()
    eager.load_state_dict(sdpa.state_dict())
    pixels = _pixels()
    output = eager(pixels, output_attentions=True)
    assert (output.last_hidden_state - sdpa(pixels).last_hidden_state).abs().max() <= 1e-5
    assert len(output.attentions) == 2
    assert output.attentions[0].shape == (2, 4, 17, 17)
    assert torch.allclose(output.attentions[0].sum(-1), torch.ones(2, 4, 17))


def test_full_size_random_model_shapes_and_parameter_count():
    torch.manual_seed(0)
    model = RadDinoModel(RadDinoConfig()).eval()
    backbone_parameters = sum(p.numel() for p in model.parameters())
    assert 86e6 <= backbone_parameters <= 87e6, backbone_parameters
    with torch.inference_mode():
        output = model(torch.randn(1, 3, 518, 518))
    assert output.cls_embeddings.shape == (1, 768)
    assert output.patch_embeddings.shape == (1, 768, 37, 37)
    assert torch.isfinite(output.patch_embeddings).all()


@pytest.mark.parametrize("bad_shape", [(1, 1, 56, 56)])
def test_wrong_channel_count_is_a_clear_error(tiny_model, bad_shape):
    with pytest.raises(ValueError, match="channel"):
        tiny_model(torch.zeros(bad_shape))


def _with_offset(model: RadDinoModel, offset: float) -> RadDinoModel:
    config = RadDinoConfig.from_dict({**model.config.to_dict(), "interpolate_offset": offset})
    other = RadDinoModel(config).eval()
    other.load_state_dict(model.state_dict())
    return other


@pytest.mark.parametrize("height, width", [(28, 42), (70, 28), (84, 84)])
def test_interpolation_off_is_transformers_dinov2(tiny_model, height, width):
    """Default (offset 0): position embeddings resize as a stock `Dinov2Model`'s at any input size."""
    stock = Dinov2Model(Dinov2Config.from_dict(tiny_model.config.to_dict())).eval()
    stock.load_state_dict(tiny_model.state_dict())
    pixels = torch.randn(2, 3, height, width, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(tiny_model(pixels).last_hidden_state, stock(pixels).last_hidden_state)


@pytest.mark.parametrize("height, width", [(28, 42), (70, 28), (84, 84)])
def test_interpolation_offset_follows_dinov2_formula(tiny_model, height, width):
    """Offset 0.1: DINOv2's `interpolate_pos_encoding`, bicubic with scale factor ((grid + 0.1) / M) per axis."""
    model = _with_offset(tiny_model, 0.1)
    embeddings, side = model.embeddings, 4  # 56 px / 14: a 4 x 4 native grid
    rows, columns = height // 14, width // 14
    pixels = torch.randn(2, 3, height, width, generator=torch.Generator().manual_seed(0))
    position = embeddings.position_embeddings.detach()
    grid = position[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
    scaled = torch.nn.functional.interpolate(
        grid, scale_factor=((rows + 0.1) / side, (columns + 0.1) / side), mode="bicubic", align_corners=False
    )
    expected = torch.cat([position[:, :1], scaled.permute(0, 2, 3, 1).flatten(1, 2)], dim=1)
    with torch.no_grad():
        tokens = torch.cat([embeddings.cls_token.expand(2, -1, -1), embeddings.patch_embeddings(pixels)], dim=1)
        torch.testing.assert_close(embeddings(pixels), tokens + expected, rtol=0, atol=1e-6)
        by_size = torch.nn.functional.interpolate(grid, size=(rows, columns), mode="bicubic", align_corners=False)
        assert not torch.allclose(scaled, by_size, atol=1e-4)  # the option changes something here


def _bicubic_1d(values: list[float], source: float, a: float = -0.75) -> float:
    """Cubic convolution (Keys, a = -0.75 as PyTorch) of `values` at `source`, edge indices clamped."""

    def weight(x: float) -> float:
        x = abs(x)
        return (a + 2) * x**3 - (a + 3) * x**2 + 1 if x <= 1 else a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a

    start = math.floor(source)
    taps = range(start - 1, start + 3)
    return sum(weight(source - k) * values[min(max(k, 0), len(values) - 1)] for k in taps)


def test_interpolation_offset_samples_at_the_scale_factor_positions(tiny_model):
    """Independent of `interpolate`: on a position grid that varies along rows only, output row i is the cubic
    convolution of the rows at (i + 0.5) * M / (rows + 0.1) - 0.5 with DINOv2's offset (the scale factor's
    positions), at (i + 0.5) * M / rows - 0.5 without (transformers: the output size's)."""
    config = RadDinoConfig.from_dict({**tiny_model.config.to_dict(), "image_size": 112})  # 8 x 8 grid
    row_values = [0.0, 1.0, 4.0, 2.0, -3.0, 5.0, 0.5, 1.5]
    for offset in (0.0, 0.1):
        model = _with_offset(RadDinoModel(config), offset)
        with torch.no_grad():
            grid = torch.tensor(row_values).view(8, 1, 1).expand(8, 8, model.config.hidden_size)
            model.embeddings.position_embeddings[0, 1:] = grid.flatten(0, 1)
            pixels = torch.zeros(1, 3, 70, 112)  # 5 rows, 8 columns
            position = model.embeddings.interpolate_pos_encoding(model.embeddings(pixels), 70, 112)
        got = position[0, 1:, 0].view(5, 8)[:, 3]
        expected = [_bicubic_1d(row_values, (i + 0.5) * 8 / (5 + offset) - 0.5) for i in range(5)]
        torch.testing.assert_close(got, torch.tensor(expected), rtol=0, atol=1e-5)
