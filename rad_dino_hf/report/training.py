"""The two LLaVA training stages on Accelerate: (1) projector only; (2) LoRA on the LM (+ projector / encoder).

Stage 1 aligns image tokens with the frozen LM's embedding space; stage 2 adapts the LM with low-rank adapters
(peft), optionally training the projector fully and putting adapters on the encoder too. Every other parameter
stays frozen, so a step cannot change it.
"""

import hashlib
import logging
import math
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from accelerate import Accelerator
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup
from transformers.modeling_outputs import BaseModelOutputWithPooling

from modeling_rad_dino import RadDinoLlavaForConditionalGeneration
from rad_dino_hf.lora import DEFAULT_LORA_TARGETS as ENCODER_LORA_TARGETS

logger = logging.getLogger(__name__)

# Attention and MLP projections of Llama-family LMs (Llama, Mistral, Qwen2, Gemma, Phi-3 use these names).
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


def lora_target_pattern(settings: LoraSettings) -> str:
    """A full-match regex over module names that puts adapters in the LM (and the encoder if asked), never elsewhere.

    Names are relative to the generator, e.g. `model.language_model.layers.0.self_attn.q_proj`.
    """
    targets = list(settings.lm_targets)
    lm_suffix = r"[^.]+" if targets == ["all-linear"] else "|".join(map(re.escape, targets))
    parts = [rf"model\.language_model\..*\.({lm_suffix})"]
    if settings.lora_encoder:
        parts.append(rf"model\.vision_tower\.encoder\..*\.({'|'.join(ENCODER_LORA_TARGETS)})")
    return "|".join(f"(?:{part})" for part in parts)


def add_lora(model: RadDinoLlavaForConditionalGeneration, settings: LoraSettings) -> PeftModel:
    """Stage 2: wrap `model` with LoRA adapters; trainable = adapters (+ the projector if `train_projector`)."""
    model.requires_grad_(False)
    config = LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=lora_target_pattern(settings),
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
    compute_loss: Callable[[torch.nn.Module, dict], torch.Tensor] = lambda model, batch: model(**batch).loss,
) -> list[float]:
    """AdamW on the trainable parameters with a cosine schedule and warmup, gradient accumulation as configured on
    `accelerator`. Returns the mean loss of each optimizer step (averaged over processes).
    """
    parameters: Iterable[torch.nn.Parameter] = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay)
    steps = epochs * math.ceil(len(loader) / accelerator.gradient_accumulation_steps)
    scheduler = get_cosine_schedule_with_warmup(optimizer, math.ceil(warmup_fraction * steps), steps)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    model.train()
    losses, window = [], []
    bar = tqdm(total=steps, desc=description, disable=not accelerator.is_local_main_process)
    for epoch in range(epochs):
        for batch in loader:
            with accelerator.accumulate(model):
                loss = compute_loss(model, batch)
                accelerator.backward(loss)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            window.append(accelerator.gather(loss.detach()).mean().item())
            if accelerator.sync_gradients:
                losses.append(sum(window) / len(window))
                window = []
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.3f}", epoch=epoch + 1)
        logger.info("%s epoch %d/%d: loss %.4f", description, epoch + 1, epochs, losses[-1])
    bar.close()
    model.eval()
    return losses


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
