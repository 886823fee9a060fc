"""LoRA (Hu et al. 2021) on a RAD-DINO classifier's encoder with peft; the heads stay fully trainable.

Module names are those of transformers 5's `Dinov2Layer`: `attention.q_proj`, `k_proj`, `v_proj`, `o_proj` (4.x
called them `attention.attention.query`/`key`/`value` and `attention.output.dense`) and `mlp.fc1`, `mlp.fc2`.
"""

import re
from collections.abc import Sequence

from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn

from modeling_rad_dino import RadDinoForImageClassification

DEFAULT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "fc1", "fc2")


def head_modules(model: RadDinoForImageClassification) -> list[str]:
    """Attribute names of the modules trained in full whatever the method: the classifier and an attention pooler."""
    return ["classifier"] + (["pooler"] if model.pooler is not None else [])


def encoder_linear_names(model: RadDinoForImageClassification) -> set[str]:
    """Last name component of every `nn.Linear` in the encoder (`q_proj`, `fc1`, ...): the possible LoRA targets."""
    return {name.rsplit(".", 1)[-1] for name, module in model.dinov2.named_modules() if isinstance(module, nn.Linear)}


def add_lora(
    model: RadDinoForImageClassification,
    rank: int = 8,
    alpha: float = 16.0,
    dropout: float = 0.0,
    targets: Sequence[str] = DEFAULT_LORA_TARGETS,
) -> PeftModel:
    """Wrap `model` with LoRA adapters on the encoder's `nn.Linear` layers named `targets`.

    Each targeted `W` `(out, in)` gains `B @ A` scaled by `alpha / rank`, with `A` `(rank, in)` random and `B`
    `(out, rank)` zero, so the wrapped model starts equal to `model`. Only `A`, `B` and the heads (`head_modules`,
    kept as trainable copies through `modules_to_save`) have `requires_grad`.
    """
    unknown = sorted(set(targets) - encoder_linear_names(model))
    if unknown:
        raise ValueError(f"No encoder Linear named {unknown}; choose from {sorted(encoder_linear_names(model))}")
    # A regex over full module names, so that only encoder layers match (not, e.g., a pooler's projections).
    pattern = rf"dinov2\..*\.({'|'.join(map(re.escape, targets))})"
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=pattern,
        modules_to_save=head_modules(model),
    )
    return get_peft_model(model, config)
