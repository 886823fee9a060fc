"""RAD-DINO encoder: transformers' `Dinov2Model` with RAD-DINO defaults and outputs shaped for radiology use.

`RadDinoModel` is a `Dinov2Model` subclass, so attention goes through transformers' attention interface
(`attn_implementation="sdpa"` by default, `"eager"` for attention maps, `"flex_attention"`) and weights keep the
`Dinov2Model` parameter names. It saves in the `microsoft/rad-dino` format and loads that format back.

The Hub copies this file and `configuration_rad_dino.py` alone for `trust_remote_code`: import only those two,
transformers and torch here.
"""

import math
from dataclasses import dataclass

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForImageTextToText,
    AutoModelForSemanticSegmentation,
    Dinov2Model,
    Dinov2PreTrainedModel,
    LlavaForConditionalGeneration,
    LlavaModel,
)
from transformers.conversion_mapping import (
    get_checkpoint_conversion_mapping,
    register_checkpoint_conversion_mapping,
)
from transformers.modeling_outputs import BaseModelOutputWithPooling, ImageClassifierOutput, SemanticSegmenterOutput
from transformers.models.dinov2.modeling_dinov2 import Dinov2Embeddings
from transformers.utils.generic import can_return_tuple

try:  # loaded as remote code: a package with the config next to it
    from .configuration_rad_dino import RadDinoConfig, RadDinoLlavaConfig
except ImportError:  # loaded from a checkout of this repository
    from configuration_rad_dino import RadDinoConfig, RadDinoLlavaConfig


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


class RadDinoEmbeddings(Dinov2Embeddings):
    """`Dinov2Embeddings` (same parameters) whose position grid resizes as DINOv2's training code does when
    `config.interpolate_offset > 0` (see `RadDinoConfig.interpolate_offset`), else exactly as transformers'."""

    def interpolate_pos_encoding(self, embeddings: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Position embeddings `(1, 1 + N, D)` for `embeddings` `(B, 1 + N, D)` of an image `height` x `width` px.

        With an offset, DINOv2's `interpolate_pos_encoding`: bicubic (no antialiasing) with scale factors
        `(height // p + offset) / M` and `(width // p + offset) / M` from the native `M x M` grid, in float32.
        """
        offset = self.config.interpolate_offset
        num_positions = self.position_embeddings.shape[1] - 1
        if not offset or (embeddings.shape[1] - 1 == num_positions and height == width):
            return super().interpolate_pos_encoding(embeddings, height, width)
        grid = math.isqrt(num_positions)
        rows, columns = height // self.patch_size, width // self.patch_size
        position_embeddings = self.position_embeddings.float()
        patch_grid = position_embeddings[:, 1:].reshape(1, grid, grid, -1).permute(0, 3, 1, 2)
        # A scale factor rather than an output size: the sampling positions follow the factor, which the offset
        # keeps just above rows / M so that floor(M * factor) is rows despite rounding.
        patch_grid = nn.functional.interpolate(
            patch_grid, scale_factor=((rows + offset) / grid, (columns + offset) / grid), mode="bicubic"
        )
        if patch_grid.shape[-2:] != (rows, columns):
            raise ValueError(f"interpolate_offset {offset} gives a {tuple(patch_grid.shape[-2:])} position grid")
        patches = patch_grid.permute(0, 2, 3, 1).flatten(1, 2)
        return torch.cat([position_embeddings[:, :1], patches], dim=1).to(self.position_embeddings.dtype)


class RadDinoModel(Dinov2Model):
    """The RAD-DINO image encoder (ViT-B/14, 518 px by default). See `RadDinoModelOutput` for what it returns."""

    config_class = RadDinoConfig
    config: RadDinoConfig

    def __init__(self, config: RadDinoConfig) -> None:
        super().__init__(config)
        # The same module and parameters as transformers built (names, initial values), with our interpolation.
        self.embeddings.__class__ = RadDinoEmbeddings

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


class RadDinoAttentionPooling(nn.Module):
    """A learned query attending over the patch tokens: `(B, N, D)` -> `(B, D)`."""

    def __init__(self, config: RadDinoConfig) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        self.attention = nn.MultiheadAttention(config.hidden_size, config.num_attention_heads, batch_first=True)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, patch_tokens: torch.Tensor) -> torch.Tensor:
        query = self.query.expand(patch_tokens.shape[0], -1, -1)
        pooled, _ = self.attention(query, patch_tokens, patch_tokens, need_weights=False)
        return self.norm(pooled[:, 0])


class RadDinoForImageClassification(Dinov2PreTrainedModel):
    """RAD-DINO encoder + linear classifier, multi-class or multi-label (`config.problem_type`).

    Features per `config.pooling`; with the default `"cls_mean"` the weights are those of transformers'
    `Dinov2ForImageClassification` (same names and shapes), so saved checkpoints load there unchanged.
    `RadDinoForImageClassification.from_pretrained("microsoft/rad-dino", num_labels=3)` starts from the encoder.
    """

    config_class = RadDinoConfig
    config: RadDinoConfig

    def __init__(self, config: RadDinoConfig) -> None:
        super().__init__(config)
        self.num_labels = config.num_labels
        self.dinov2 = RadDinoModel(config)
        self.pooler = RadDinoAttentionPooling(config) if config.pooling == "attention" else None
        features = 2 * config.hidden_size if config.pooling == "cls_mean" else config.hidden_size
        self.classifier = nn.Linear(features, config.num_labels) if config.num_labels > 0 else nn.Identity()
        self.post_init()

    def image_features(self, last_hidden_state: torch.Tensor) -> torch.Tensor:
        """`(B, 1 + N, D)` encoder tokens -> `(B, F)` classifier input, per `config.pooling`."""
        cls_token, patch_tokens = last_hidden_state[:, 0], last_hidden_state[:, 1:]
        if self.config.pooling == "cls_mean":
            return torch.cat([cls_token, patch_tokens.mean(dim=1)], dim=1)
        if self.config.pooling == "attention":
            return self.pooler(patch_tokens)
        return cls_token

    @can_return_tuple
    def forward(
        self, pixel_values: torch.Tensor | None = None, labels: torch.Tensor | None = None, **kwargs
    ) -> ImageClassifierOutput:
        r"""
        labels (`torch.LongTensor` of shape `(B,)`, or `(B, num_labels)` floats for multi-label):
            Targets; the loss follows `config.problem_type` (inferred from the labels when unset).
        """
        outputs = self.dinov2(pixel_values, **kwargs)
        logits = self.classifier(self.image_features(outputs.last_hidden_state))
        loss = self.loss_function(labels, logits, self.config) if labels is not None else None
        return ImageClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


class RadDinoForSemanticSegmentation(Dinov2PreTrainedModel):
    """RAD-DINO encoder + a decoder on the patch-token map; logits at the input's resolution.

    `config.segmentation_decoder`: `"linear"` (DINOv2's linear head: batch norm and a 1x1 conv on the patch map) or
    `"upsample"` (two conv + 2x upsampling stages). Pixels labelled 255 are ignored by the loss.
    """

    config_class = RadDinoConfig
    config: RadDinoConfig
    ignore_index = 255

    def __init__(self, config: RadDinoConfig) -> None:
        super().__init__(config)
        self.dinov2 = RadDinoModel(config)
        dim = config.hidden_size
        if config.segmentation_decoder == "linear":
            self.decoder = nn.Sequential(nn.BatchNorm2d(dim), nn.Conv2d(dim, config.num_labels, kernel_size=1))
        else:
            width = max(dim // 4, 32)
            self.decoder = nn.Sequential(
                nn.Conv2d(dim, width, kernel_size=3, padding=1),
                nn.GELU(),
                nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                nn.Conv2d(width, width, kernel_size=3, padding=1),
                nn.GELU(),
                nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                nn.Conv2d(width, config.num_labels, kernel_size=1),
            )
        self.post_init()

    def decode(self, patch_maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """`(B, D, h, w)` encoder patch maps -> `(B, num_labels, *size)` logits (also for cached frozen features)."""
        logits = self.decoder(patch_maps)
        return nn.functional.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)

    @can_return_tuple
    def forward(
        self, pixel_values: torch.Tensor | None = None, labels: torch.Tensor | None = None, **kwargs
    ) -> SemanticSegmenterOutput:
        r"""
        labels (`torch.LongTensor` of shape `(B, H, W)`):
            Class per pixel, 255 where unknown (ignored).

        Returns logits of shape `(B, num_labels, H, W)`, the input's height and width.
        """
        outputs = self.dinov2(pixel_values, **kwargs)
        logits = self.decode(outputs.patch_embeddings, pixel_values.shape[-2:])
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits, labels.long(), ignore_index=self.ignore_index)
        return SemanticSegmenterOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


class RadDinoLlavaModel(LlavaModel):
    """`LlavaModel` whose image features are RAD-DINO's normed patch tokens, optionally average-pooled on the grid."""

    config_class = RadDinoLlavaConfig
    config: RadDinoLlavaConfig

    def get_image_features(
        self,
        pixel_values: torch.Tensor,
        vision_feature_layer: int | None = None,
        vision_feature_select_strategy: str | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling:
        """Project the encoder's tokens of `pixel_values` `(B, 3, H, W)`.

        Returns the vision tower's output with `pooler_output` set to a list of B tensors `(T, D_text)`, where
        T = (H/p // k) * (W/p // k) for pooling k, plus 1 with the `"full"` strategy (CLS first).
        """
        layer = self.config.vision_feature_layer if vision_feature_layer is None else vision_feature_layer
        strategy = vision_feature_select_strategy or self.config.vision_feature_select_strategy
        kwargs.pop("image_sizes", None)  # one fixed-size image per sample; Dinov2 takes no sizes
        outputs = self.vision_tower(pixel_values, output_hidden_states=layer != -1, return_dict=True)
        tokens = outputs.last_hidden_state if layer == -1 else outputs.hidden_states[layer]
        vision = self.config.vision_config
        prefix = 1 + getattr(vision, "num_register_tokens", 0)
        height, width = pixel_values.shape[-2] // vision.patch_size, pixel_values.shape[-1] // vision.patch_size
        patches = tokens[:, prefix:]
        pooling = self.config.image_token_pooling
        if pooling > 1:
            grid = patches.transpose(1, 2).reshape(len(patches), -1, height, width)
            patches = nn.functional.avg_pool2d(grid, pooling).flatten(2).transpose(1, 2)
        if strategy == "full":
            patches = torch.cat([tokens[:, :1], patches], dim=1)
        outputs.pooler_output = list(self.multi_modal_projector(patches))
        return outputs


class RadDinoLlavaForConditionalGeneration(LlavaForConditionalGeneration):
    """LLaVA-style report generator: RAD-DINO vision tower -> 2-layer GELU MLP projector -> any causal LM.

    Same parts, parameter names and `generate` as `LlavaForConditionalGeneration`; only the image features differ
    (see `RadDinoLlavaModel.get_image_features`). Build one from an encoder and a language model with
    `rad_dino_hf.report.builder.build_generator`.
    """

    config_class = RadDinoLlavaConfig
    config: RadDinoLlavaConfig

    def __init__(self, config: RadDinoLlavaConfig) -> None:
        # LlavaForConditionalGeneration.__init__ would build a stock LlavaModel first; build ours instead.
        super(LlavaForConditionalGeneration, self).__init__(config)
        self.model = RadDinoLlavaModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()


# Checkpoints in the release format store transformers 4.x parameter names (`attention.attention.query`, ...).
# transformers 5 converts them with a table keyed on the class name or model type, and skips custom-code models
# unless their key was registered by the user: register DINOv2's table for our model type, for both directions
# (saving applies it in reverse, which writes the release names back).
if get_checkpoint_conversion_mapping(RadDinoConfig.model_type) is None:
    register_checkpoint_conversion_mapping(RadDinoConfig.model_type, get_checkpoint_conversion_mapping("Dinov2Model"))

AutoConfig.register(RadDinoConfig.model_type, RadDinoConfig, exist_ok=True)
AutoModel.register(RadDinoConfig, RadDinoModel, exist_ok=True)
AutoModelForImageClassification.register(RadDinoConfig, RadDinoForImageClassification, exist_ok=True)
AutoModelForSemanticSegmentation.register(RadDinoConfig, RadDinoForSemanticSegmentation, exist_ok=True)
AutoConfig.register(RadDinoLlavaConfig.model_type, RadDinoLlavaConfig, exist_ok=True)
AutoModelForImageTextToText.register(RadDinoLlavaConfig, RadDinoLlavaForConditionalGeneration, exist_ok=True)
RadDinoConfig.register_for_auto_class()
RadDinoModel.register_for_auto_class("AutoModel")
RadDinoForImageClassification.register_for_auto_class("AutoModelForImageClassification")
RadDinoForSemanticSegmentation.register_for_auto_class("AutoModelForSemanticSegmentation")
RadDinoLlavaConfig.register_for_auto_class()
RadDinoLlavaForConditionalGeneration.register_for_auto_class("AutoModelForImageTextToText")

__all__ = [
    "RadDinoModel",
    "RadDinoModelOutput",
    "RadDinoForImageClassification",
    "RadDinoForSemanticSegmentation",
    "RadDinoAttentionPooling",
    "RadDinoLlavaModel",
    "RadDinoLlavaForConditionalGeneration",
]
