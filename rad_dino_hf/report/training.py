"""The two LLaVA training stages on Accelerate: (1) projector only; (2) LoRA on the LM (+ projector / encoder).

Stage 1 aligns image tokens with the frozen LM's embedding space; stage 2 adapts the LM with low-rank adapters
(peft), optionally training the projector fully and putting adapters on the encoder too. Every other parameter
stays frozen, so a step cannot change it.
"""

import hashlib
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn
from torch.utils.data import DataLoader
from transformers.modeling_outputs import BaseModelOutputWithPooling

from modeling_rad_dino import RadDinoLlavaForConditionalGeneration
from rad_dino_hf.lora import DEFAULT_LORA_TARGETS as ENCODER_LORA_TARGETS, lora_target_pattern
from rad_dino_hf.supervised import LossFunction, LoopSettings, model_loss, train

logger = logging.getLogger(__name__)

# Attention and MLP projections of Llama-family LMs (Llama, Mistral, Qwen2 and Gemma use these names).
DEFAULT_LM_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class LoraSettings:
    """Stage-2 adapters. `lm_targets`: module-name suffixes inside the LM ("all-linear": every Linear there)."""

    rank: int = 16
    alpha: int = 32
    dropout: float = 0.05
    lm_targets: Sequence[str] = DEFAULT_LM_LORA_TARGETS
    train_projector: bool = True
    lora_encoder: bool = False


def freeze_all_but_projector(model: RadDinoLlavaForConditionalGeneration) -> RadDinoLlavaForConditionalGeneration:
    """Stage 1: only `model.model.multi_modal_projector` keeps `requires_grad`."""
    model.requires_grad_(False)
    model.model.multi_modal_projector.requires_grad_(True)
    return model


def add_lora(model: RadDinoLlavaForConditionalGeneration, settings: LoraSettings) -> PeftModel:
    """Stage 2: wrap `model` with LoRA adapters; trainable = adapters (+ the projector if `train_projector`)."""
    model.requires_grad_(False)
    # Names relative to the generator, e.g. `model.language_model.layers.0.self_attn.q_proj`.
    parts = [lora_target_pattern(model, "model.language_model", settings.lm_targets)]
    if settings.lora_encoder:
        parts.append(lora_target_pattern(model, "model.vision_tower.encoder", ENCODER_LORA_TARGETS))
    config = LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules="|".join(parts),
        modules_to_save=["multi_modal_projector"] if settings.train_projector else None,
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, config)
    adapted = [name for name, module in peft_model.named_modules() if hasattr(module, "lora_A")]
    if not adapted:
        raise ValueError(f"No module of the LM matches LoRA targets {list(settings.lm_targets)}; pass --lora-targets")
    return peft_model


def trainable_parameter_count(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


def train_loop(
    model: torch.nn.Module,
    loader: DataLoader,
    accelerator: Accelerator,
    epochs: int,
    lr: float,
    weight_decay: float = 0.0,
    warmup_fraction: float = 0.03,
    description: str = "train",
    compute_loss: LossFunction = model_loss,
    max_grad_norm: float = 0.0,
    metrics_path: Path | None = None,
) -> list[float]:
    """One stage: the shared loop (`rad_dino_hf.supervised.train`) with AdamW at `lr` on every trainable parameter,
    a cosine schedule with warmup, gradient accumulation as configured on `accelerator`. Returns the mean loss of
    each optimizer update (averaged over processes).
    """
    group = {"params": [p for p in model.parameters() if p.requires_grad], "lr": lr, "weight_decay": weight_decay}
    settings = LoopSettings(epochs, warmup_fraction, max_grad_norm, description, metrics_path)
    return train(accelerator, model, [group], loader, settings, compute_loss).update_losses


class FrozenTowerCache(nn.Module):
    """Wraps a frozen, deterministic vision tower and remembers its output per image, so that training epochs after
    the first skip the encoder (on a CPU, a full-size RAD-DINO forward costs seconds an image).

    Images are keyed by a BLAKE2 digest of their pixel tensor: without augmentation the same file gives the same
    tensor. Only the final output (`last_hidden_state`) is kept, which is what `vision_feature_layer=-1` projects.
    Memory: tokens x hidden x 4 bytes an image (5.6 MB for RAD-DINO at 518 px).
    """

    def __init__(self, tower: nn.Module) -> None:
        super().__init__()
        self.tower = tower
        self.outputs: dict[bytes, torch.Tensor] = {}
        self.misses = 0

    def forward(self, pixel_values: torch.Tensor, **kwargs) -> BaseModelOutputWithPooling:
        """`pixel_values` `(B, 3, H, W)` -> `last_hidden_state` `(B, 1 + tokens, D)` (others are not kept)."""
        if kwargs.get("output_hidden_states"):
            raise ValueError("FrozenTowerCache keeps only the final output; use vision_feature_layer=-1")
        images = pixel_values.detach().cpu().numpy()
        keys = [hashlib.blake2b(image.tobytes(), digest_size=16).digest() for image in images]
        missing = [index for index, key in enumerate(keys) if key not in self.outputs]
        if missing:
            self.misses += len(missing)
            with torch.no_grad():
                computed = self.tower(pixel_values[missing], return_dict=True).last_hidden_state
            self.outputs.update((keys[index], tokens.cpu()) for index, tokens in zip(missing, computed))
        tokens = torch.stack([self.outputs[key] for key in keys]).to(pixel_values.device)
        return BaseModelOutputWithPooling(last_hidden_state=tokens)


@contextmanager
def cached_vision_tower(model: RadDinoLlavaForConditionalGeneration, enabled: bool = True) -> Iterator[None]:
    """Within the block, `model`'s vision tower is a `FrozenTowerCache` (if `enabled`: the tower must stay frozen and
    the projected layer be the last); afterwards the plain tower is back, so saving writes the usual weights."""
    if not enabled:
        yield
        return
    if model.config.vision_feature_layer != -1:
        raise ValueError("the vision-tower cache needs vision_feature_layer=-1")
    tower = model.model.vision_tower
    model.model.vision_tower = FrozenTowerCache(tower)
    try:
        yield
    finally:
        model.model.vision_tower = tower
