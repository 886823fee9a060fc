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
    """DINO / iBOT projection head: `(..., in_dim)` features to `(..., n_prototypes)` logits."""

    def __init__(
        self,
        in_dim: int = 768,
        n_prototypes: int = 65536,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        n_layers: int = 3,
    ) -> None:
        super().__init__()
        self.mlp = _build_mlp(max(n_layers, 1), in_dim, hidden_dim, bottleneck_dim)
        self.apply(self._init_weights)
        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, n_prototypes, bias=False))
        with torch.no_grad():
            self.last_layer.parametrizations.weight.original0.fill_(1.0)

    @classmethod
    def from_config(cls, config: RadDinoConfig, n_prototypes: int | None = None) -> "DinoHead":
        return cls(
            in_dim=config.hidden_size,
            n_prototypes=n_prototypes or config.dino_head_n_prototypes,
            hidden_dim=config.dino_head_hidden_size,
            bottleneck_dim=config.dino_head_bottleneck_size,
            n_layers=config.dino_head_n_layers,
        )

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """`(..., in_dim)` -> `(..., n_prototypes)` logits (before temperature)."""
        bottleneck = self.mlp(features)
        eps = 1e-6 if bottleneck.dtype == torch.float16 else 1e-12
        bottleneck = nn.functional.normalize(bottleneck, dim=-1, p=2, eps=eps)
        return self.last_layer(bottleneck)
