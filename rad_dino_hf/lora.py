"""LoRA (Hu et al. 2021) with peft: which modules get adapters (`lora_target_pattern`, also used by the report
generator), and adapters on a RAD-DINO classifier's encoder, the heads staying fully trainable.

Module names are those of transformers 5's `Dinov2Layer`: `attention.q_proj`, `k_proj`, `v_proj`, `o_proj` (4.x
called them `attention.attention.query`/`key`/`value` and `attention.output.dense`) and `mlp.fc1`, `mlp.fc2`.
"""

import re
from collections.abc import Sequence

from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn

from modeling_rad_dino import RadDinoForImageClassification

DEFAULT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "fc1", "fc2")
ALL_LINEAR = "all-linear"


def head_modules(model: RadDinoForImageClassification) -> list[str]:
    """Attribute names of the modules trained in full whatever the method: the classifier and an attention pooler."""
    return ["classifier"] + (["pooler"] if model.pooler is not None else [])


def linear_suffixes(model: nn.Module, prefix: str) -> set[str]:
    """Last name component of every `nn.Linear` under the submodule named `prefix` (`q_proj`, `fc1`, ...)."""
    modules = model.get_submodule(prefix).named_modules()
    return {name.rsplit(".", 1)[-1] for name, module in modules if isinstance(module, nn.Linear)}


def lora_target_pattern(model: nn.Module, prefix: str, suffixes: Sequence[str]) -> str:
    """A full-match regex for peft's `target_modules`: the modules under the submodule named `prefix` (e.g.
    `dinov2`, `model.language_model`) whose last name component is one of `suffixes`, both matched literally.

    `suffixes` `["all-linear"]` stands for every `nn.Linear` name under `prefix` (peft's own "all-linear" takes the
    Linears of the whole model). Patterns of several prefixes combine with `|`.
    """
    if list(suffixes) == [ALL_LINEAR]:
        suffixes = sorted(linear_suffixes(model, prefix))
    return rf"(?:{re.escape(prefix)}\.(?:.+\.)?(?:{'|'.join(map(re.escape, suffixes))}))"


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
    available = linear_suffixes(model, "dinov2")
    unknown = sorted(set(targets) - available)
    if unknown:
        raise ValueError(f"No encoder Linear named {unknown}; choose from {sorted(available)}")
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=lora_target_pattern(model, "dinov2", targets),  # encoder only, not a pooler's projections
        modules_to_save=head_modules(model),
    )
    return get_peft_model(model, config)
