"""RAD-DINO encoder: transformers' `Dinov2Model` with RAD-DINO defaults and outputs shaped for radiology use.

`RadDinoModel` is a `Dinov2Model` subclass, so attention goes through transformers' attention interface
(`attn_implementation="sdpa"` by default, `"eager"` for attention maps, `"flex_attention"`) and weights keep the
`Dinov2Model` parameter names. It saves in the `microsoft/rad-dino` format and loads that format back.

The Hub copies this file and `configuration_rad_dino.py` alone for `trust_remote_code`: import only those two,
transformers and torch here.
"""

from dataclasses import dataclass

import torch
from transformers import AutoConfig, AutoModel, Dinov2Model
from transformers.conversion_mapping import (
    get_checkpoint_conversion_mapping,
    register_checkpoint_conversion_mapping,
)
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.utils.generic import can_return_tuple

try:  # loaded as remote code: a package with the config next to it
    from .configuration_rad_dino import RadDinoConfig
except ImportError:  # loaded from a checkout of this repository
    from configuration_rad_dino import RadDinoConfig


@dataclass
class RadDinoModelOutput(BaseModelOutputWithPooling):
    r"""
    last_hidden_state (`torch.FloatTensor` of shape `(B, 1 + H/p * W/p, D)`):
        Final layer-normed tokens, CLS first.
    pooler_output (`torch.FloatTensor` of shape `(B, D)`):
        The final CLS token (as `Dinov2Model`).
    cls_embeddings (`torch.FloatTensor` of shape `(B, D)`):
        The image embedding the `rad-dino` package returns: the final CLS token.
    patch_embeddings (`torch.FloatTensor` of shape `(B, D, H/p, W/p)`):
        Final patch tokens as a feature map, as the `rad-dino` package returns them.
    hidden_states, attentions:
        As `Dinov2Model` (attentions need `attn_implementation="eager"`).
    """

    cls_embeddings: torch.FloatTensor | None = None
    patch_embeddings: torch.FloatTensor | None = None


class RadDinoModel(Dinov2Model):
    """The RAD-DINO image encoder (ViT-B/14, 518 px by default). See `RadDinoModelOutput` for what it returns."""

    config_class = RadDinoConfig
    config: RadDinoConfig

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        bool_masked_pos: torch.BoolTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        **kwargs,
    ) -> RadDinoModelOutput:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(B, 3, H, W)`):
            Normalised images; H and W multiples of the patch size (other sizes interpolate position embeddings).
        bool_masked_pos (`torch.BoolTensor` of shape `(B, H/p * W/p)`, *optional*):
            Patches to replace by the learned mask token (iBOT student input).
        """
        outputs = super().forward(
            pixel_values, bool_masked_pos=bool_masked_pos, attention_mask=attention_mask, return_dict=True, **kwargs
        )
        patch_size = self.config.patch_size
        grid_height = pixel_values.shape[-2] // patch_size
        grid_width = pixel_values.shape[-1] // patch_size
        patch_tokens = outputs.last_hidden_state[:, 1:]
        patch_map = patch_tokens.unflatten(1, (grid_height, grid_width)).permute(0, 3, 1, 2)
        return RadDinoModelOutput(
            last_hidden_state=outputs.last_hidden_state,
            pooler_output=outputs.pooler_output,
            cls_embeddings=outputs.pooler_output,
            patch_embeddings=patch_map,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )


# Checkpoints in the release format store transformers 4.x parameter names (`attention.attention.query`, ...).
# transformers 5 converts them with a table keyed on the class name or model type, and skips custom-code models
# unless their key was registered by the user: register DINOv2's table for our model type, for both directions
# (saving applies it in reverse, which writes the release names back).
if get_checkpoint_conversion_mapping(RadDinoConfig.model_type) is None:
    register_checkpoint_conversion_mapping(RadDinoConfig.model_type, get_checkpoint_conversion_mapping("Dinov2Model"))

AutoConfig.register(RadDinoConfig.model_type, RadDinoConfig, exist_ok=True)
AutoModel.register(RadDinoConfig, RadDinoModel, exist_ok=True)
RadDinoConfig.register_for_auto_class()
RadDinoModel.register_for_auto_class("AutoModel")

__all__ = ["RadDinoModel", "RadDinoModelOutput"]
