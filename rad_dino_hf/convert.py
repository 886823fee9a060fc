"""Conversion between the original facebookresearch/dinov2 layout and the HuggingFace layout.

The RAD-DINO release ships both: `model.safetensors` (HF `Dinov2Model`), `backbone_compatible.safetensors` (original
DINOv2 names) and `dino_head.safetensors` (the DINO head, original names with weight norm's `weight_g`/`weight_v`).
Every rename is an explicit table entry; the only non-rename is the fused `attn.qkv` split into q/k/v.

Command line:
    python -m rad_dino_hf.convert to-hf --backbone backbone_compatible.safetensors \
        [--dino-head dino_head.safetensors] --output DIR
    python -m rad_dino_hf.convert to-original --model DIR --output DIR
"""

import argparse
import logging
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from configuration_rad_dino import RadDinoConfig
from modeling_rad_dino import RadDinoModel
from rad_dino_hf.heads import DinoHead

logger = logging.getLogger(__name__)

BACKBONE_FILENAME = "backbone_compatible.safetensors"
DINO_HEAD_FILENAME = "dino_head.safetensors"

# Original name -> HF `RadDinoModel` / `Dinov2Model` state-dict name (transformers 5 in-memory names).
ORIGINAL_TO_HF_GLOBAL = {
    "cls_token": "embeddings.cls_token",
    "mask_token": "embeddings.mask_token",
    "pos_embed": "embeddings.position_embeddings",
    "patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
    "patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias",
    "norm.weight": "layernorm.weight",
    "norm.bias": "layernorm.bias",
}
# Inside `blocks.{i}.` -> inside `encoder.layer.{i}.`
ORIGINAL_TO_HF_BLOCK = {
    "norm1.weight": "norm1.weight",
    "norm1.bias": "norm1.bias",
    "attn.proj.weight": "attention.o_proj.weight",
    "attn.proj.bias": "attention.o_proj.bias",
    "ls1.gamma": "layer_scale1.lambda1",
    "norm2.weight": "norm2.weight",
    "norm2.bias": "norm2.bias",
    "mlp.fc1.weight": "mlp.fc1.weight",
    "mlp.fc1.bias": "mlp.fc1.bias",
    "mlp.fc2.weight": "mlp.fc2.weight",
    "mlp.fc2.bias": "mlp.fc2.bias",
    "ls2.gamma": "layer_scale2.lambda1",
}
# Fused original tensor -> HF tensors it is split into, in order along dim 0.
ORIGINAL_TO_HF_BLOCK_FUSED = {
    "attn.qkv.weight": ("attention.q_proj.weight", "attention.k_proj.weight", "attention.v_proj.weight"),
    "attn.qkv.bias": ("attention.q_proj.bias", "attention.k_proj.bias", "attention.v_proj.bias"),
}
# DINO head: the MLP keeps its names; weight norm moved from hooks to parametrizations in torch.
ORIGINAL_TO_HF_HEAD = {
    "last_layer.weight_g": "last_layer.parametrizations.weight.original0",
    "last_layer.weight_v": "last_layer.parametrizations.weight.original1",
}

# Prefixes training checkpoints put before the backbone names.
_CHECKPOINT_PREFIXES = ("teacher.backbone.", "student.backbone.", "backbone.", "module.")
# FSDP-chunked DINOv2 checkpoints nest blocks as `blocks.{chunk}.{index}`.
_CHUNKED_BLOCK = re.compile(r"^blocks\.\d+\.(\d+)\.")
_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")
_HF_LAYER = re.compile(r"^encoder\.layer\.(\d+)\.(.+)$")

_HF_TO_ORIGINAL_GLOBAL = {hf: original for original, hf in ORIGINAL_TO_HF_GLOBAL.items()}
_HF_TO_ORIGINAL_BLOCK = {hf: original for original, hf in ORIGINAL_TO_HF_BLOCK.items()}
_HF_TO_ORIGINAL_HEAD = {hf: original for original, hf in ORIGINAL_TO_HF_HEAD.items()}


class ConversionError(ValueError):
    """A state dict holds keys or shapes that the conversion tables do not cover."""


def normalize_original_keys(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip training-checkpoint prefixes and un-chunk FSDP block names (`blocks.0.3.` -> `blocks.3.`)."""
    normalized = {}
    for key, tensor in state_dict.items():
        for prefix in _CHECKPOINT_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
                break
        normalized[_CHUNKED_BLOCK.sub(r"blocks.\1.", key)] = tensor
    return normalized


def original_to_hf_backbone(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Original DINOv2 backbone state dict -> `RadDinoModel` state dict."""
    converted = {}
    for key, tensor in normalize_original_keys(state_dict).items():
        if key in ORIGINAL_TO_HF_GLOBAL:
            converted[ORIGINAL_TO_HF_GLOBAL[key]] = tensor
            continue
        block = _BLOCK.match(key)
        if block is None:
            raise ConversionError(f"No HF name for original key {key!r} (registers and SwiGLU are not supported)")
        index, name = block.groups()
        prefix = f"encoder.layer.{index}."
        if name in ORIGINAL_TO_HF_BLOCK:
            converted[prefix + ORIGINAL_TO_HF_BLOCK[name]] = tensor
        elif name in ORIGINAL_TO_HF_BLOCK_FUSED:
            for hf_name, part in zip(ORIGINAL_TO_HF_BLOCK_FUSED[name], tensor.chunk(3, dim=0)):
                converted[prefix + hf_name] = part.clone()
        else:
            raise ConversionError(f"No HF name for original key {key!r}")
    return converted


def hf_to_original_backbone(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`RadDinoModel` state dict -> original DINOv2 backbone state dict (the `backbone_compatible` layout)."""
    converted = {}
    fused_parts: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    hf_to_fused = {hf: original for original, parts in ORIGINAL_TO_HF_BLOCK_FUSED.items() for hf in parts}
    for key, tensor in state_dict.items():
        if key in _HF_TO_ORIGINAL_GLOBAL:
            converted[_HF_TO_ORIGINAL_GLOBAL[key]] = tensor
            continue
        layer = _HF_LAYER.match(key)
        if layer is None:
            raise ConversionError(f"No original name for HF key {key!r}")
        index, name = layer.groups()
        if name in _HF_TO_ORIGINAL_BLOCK:
            converted[f"blocks.{index}.{_HF_TO_ORIGINAL_BLOCK[name]}"] = tensor
        elif name in hf_to_fused:
            fused_parts.setdefault((index, hf_to_fused[name]), {})[name] = tensor
        else:
            raise ConversionError(f"No original name for HF key {key!r}")
    for (index, original_name), parts in fused_parts.items():
        order = ORIGINAL_TO_HF_BLOCK_FUSED[original_name]
        missing = [name for name in order if name not in parts]
        if missing:
            raise ConversionError(f"Layer {index} lacks {missing} to build {original_name}")
        converted[f"blocks.{index}.{original_name}"] = torch.cat([parts[name] for name in order], dim=0)
    return converted


def original_to_hf_head(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Original `dino_head.safetensors` state dict -> `DinoHead` state dict."""
    return {ORIGINAL_TO_HF_HEAD.get(key, key): tensor for key, tensor in state_dict.items()}


def hf_to_original_head(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`DinoHead` state dict -> original `dino_head.safetensors` layout."""
    return {_HF_TO_ORIGINAL_HEAD.get(key, key): tensor for key, tensor in state_dict.items()}


def config_from_original(
    backbone: dict[str, torch.Tensor],
    head: dict[str, torch.Tensor] | None = None,
    num_heads: int | None = None,
) -> RadDinoConfig:
    """Infer a `RadDinoConfig` from original tensors. The head count is not stored in the weights: by default it
    is `hidden / 64`, as in every DINOv2 ViT (S/B/L/g)."""
    backbone = normalize_original_keys(backbone)
    hidden_size = backbone["pos_embed"].shape[-1]
    patch_size = backbone["patch_embed.proj.weight"].shape[-1]
    grid = round((backbone["pos_embed"].shape[1] - 1) ** 0.5)
    num_layers = 1 + max(int(_BLOCK.match(key).group(1)) for key in backbone if _BLOCK.match(key))
    fields = dict(
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads or hidden_size // 64,
        mlp_ratio=backbone["blocks.0.mlp.fc1.weight"].shape[0] // hidden_size,
        patch_size=patch_size,
        image_size=grid * patch_size,
        num_channels=backbone["patch_embed.proj.weight"].shape[1],
    )
    if head is not None:
        linear_weights = sorted((key for key in head if key.startswith("mlp") and key.endswith("weight")))
        fields.update(
            dino_head_n_layers=len(linear_weights),
            dino_head_bottleneck_size=head["last_layer.weight_v"].shape[1],
            dino_head_n_prototypes=head["last_layer.weight_v"].shape[0],
        )
        if len(linear_weights) > 1:
            fields["dino_head_hidden_size"] = head[linear_weights[0]].shape[0]
    return RadDinoConfig(**fields)


def load_original(
    backbone_path: str | Path, head_path: str | Path | None = None, num_heads: int | None = None
) -> tuple[RadDinoModel, DinoHead | None]:
    """Build a `RadDinoModel` (and `DinoHead`) from original-layout safetensors files."""
    backbone = load_file(str(backbone_path))
    head = load_file(str(head_path)) if head_path else None
    config = config_from_original(backbone, head, num_heads)
    model = RadDinoModel(config)
    _load_exactly(model, original_to_hf_backbone(backbone), str(backbone_path))
    dino_head = None
    if head is not None:
        dino_head = DinoHead(config)
        _load_exactly(dino_head, original_to_hf_head(head), str(head_path))
    return model, dino_head


def load_dino_head(path: str | Path, config: RadDinoConfig) -> DinoHead:
    """Load a `dino_head.safetensors` (original names) into a `DinoHead` sized by `config`."""
    head = DinoHead(config)
    _load_exactly(head, original_to_hf_head(load_file(str(path))), str(path))
    return head


def save_dino_head(head: DinoHead, path: str | Path) -> None:
    """Write a `DinoHead` as `dino_head.safetensors` in the release's original names."""
    state = {key: tensor.detach().contiguous() for key, tensor in hf_to_original_head(head.state_dict()).items()}
    save_file(state, str(path))


def save_original_backbone(model: RadDinoModel, path: str | Path) -> None:
    """Write a `RadDinoModel`'s weights in the original DINOv2 layout (`backbone_compatible.safetensors`)."""
    state = {key: t.detach().contiguous() for key, t in hf_to_original_backbone(model.state_dict()).items()}
    save_file(state, str(path))


def _load_exactly(module: torch.nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    missing, unexpected = module.load_state_dict(state_dict, strict=False)
    if missing or unexpected:
        raise ConversionError(f"{source}: missing keys {missing}, unexpected keys {unexpected}")


def convert_to_hf(backbone: str, output: str, dino_head: str | None = None, num_heads: int | None = None) -> Path:
    """Original-layout backbone (+ DINO head) files -> a HF directory (the head file is copied next to it)."""
    model, head = load_original(backbone, dino_head, num_heads)
    folder = Path(output)
    model.save_pretrained(folder)
    if head is not None:
        shutil.copyfile(dino_head, folder / DINO_HEAD_FILENAME)
    logger.info("Wrote HF RAD-DINO checkpoint to %s", folder)
    return folder


def convert_to_original(model: str, output: str) -> Path:
    """A HF directory -> original-layout backbone file (+ its DINO head file, validated, when the directory has one)."""
    model_dir, folder = Path(model), Path(output)
    folder.mkdir(parents=True, exist_ok=True)
    backbone = RadDinoModel.from_pretrained(model_dir)
    save_original_backbone(backbone, folder / BACKBONE_FILENAME)
    if (model_dir / DINO_HEAD_FILENAME).exists() and model_dir.resolve() != folder.resolve():
        load_dino_head(model_dir / DINO_HEAD_FILENAME, backbone.config)  # validates before copying
        shutil.copyfile(model_dir / DINO_HEAD_FILENAME, folder / DINO_HEAD_FILENAME)
    logger.info("Wrote original-layout %s to %s", BACKBONE_FILENAME, folder)
    return folder


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    to_hf = commands.add_parser("to-hf", help="original DINOv2 safetensors -> HF directory")
    to_hf.add_argument("--backbone", required=True, help=f"original-layout backbone, e.g. {BACKBONE_FILENAME}")
    to_hf.add_argument("--dino-head", help=f"original-layout head, e.g. {DINO_HEAD_FILENAME}")
    to_hf.add_argument("--output", required=True, help="directory to write (model.safetensors, config.json, ...)")
    to_hf.add_argument("--num-heads", type=int, help="attention heads (default: hidden size / 64, as DINOv2)")
    to_original = commands.add_parser("to-original", help="HF directory -> original DINOv2 safetensors")
    to_original.add_argument("--model", required=True, help="HF RAD-DINO / DINOv2 directory")
    to_original.add_argument("--output", required=True, help=f"directory to write {BACKBONE_FILENAME} into")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "to-hf":
        convert_to_hf(args.backbone, args.output, args.dino_head, args.num_heads)
    else:
        convert_to_original(args.model, args.output)


if __name__ == "__main__":
    main()
