"""Projection heads of the DINOv2 recipe.

`DinoHead` matches facebookresearch/dinov2 `layers/dino_head.py` (the layout of the released
`dino_head.safetensors`): an MLP `mlp.0 -> GELU -> mlp.2 -> GELU -> mlp.4` to a bottleneck, L2 normalisation,
then a weight-normalised linear layer onto the prototypes with its norm `g` fixed at 1 at init.
"""

import torch
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from configuration_rad_dino import RadDinoConfig


def _build_mlp(n_layers: int, in_dim: int, hidden_dim: int, bottleneck_dim: int) -> nn.Module:
    if n_layers == 1:
        return nn.Linear(in_dim, bottleneck_dim)
    layers: list[nn.Module] = [nn.Linear(in_dim, hidden_dim), nn.GELU()]
    for _ in range(n_layers - 2):
        layers += [nn.Linear(hidden_dim, hidden_dim), nn.GELU()]
    layers.append(nn.Linear(hidden_dim, bottleneck_dim))
    return nn.Sequential(*layers)


class DinoHead(nn.Module):
    """DINO / iBOT projection head: `(..., hidden_size)` features to `(..., n_prototypes)` logits.

    Its shape comes from `config`: the `dino_head_*` fields for the image-level head, the `ibot_head_*` fields for
    the separate patch-level head (`patch_head=True`; DINOv2 ViT-L/g, with `ibot_separate_head`).
    """

    def __init__(self, config: RadDinoConfig, patch_head: bool = False) -> None:
        super().__init__()
        if patch_head:
            n_prototypes, hidden_size = config.ibot_head_n_prototypes, config.ibot_head_hidden_size
            bottleneck_size, n_layers = config.ibot_head_bottleneck_size, config.ibot_head_n_layers
        else:
            n_prototypes, hidden_size = config.dino_head_n_prototypes, config.dino_head_hidden_size
            bottleneck_size, n_layers = config.dino_head_bottleneck_size, config.dino_head_n_layers
        self.mlp = _build_mlp(max(n_layers, 1), config.hidden_size, hidden_size, bottleneck_size)
        self.apply(self._init_weights)
        self.last_layer = weight_norm(nn.Linear(bottleneck_size, n_prototypes, bias=False))
        with torch.no_grad():
            self.last_layer.parametrizations.weight.original0.fill_(1.0)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """`(..., hidden_size)` -> `(..., n_prototypes)` logits (before temperature)."""
        bottleneck = self.mlp(features)
        eps = 1e-6 if bottleneck.dtype == torch.float16 else 1e-12
        bottleneck = nn.functional.normalize(bottleneck, dim=-1, p=2, eps=eps)
        return self.last_layer(bottleneck)
