"""RAD-DINO configuration.

`RadDinoConfig` is a `Dinov2Config` whose defaults equal the released `microsoft/rad-dino` (ViT-B/14 at 518 px),
plus the fields the DINOv2 pretraining recipe needs for its projection heads.

On disk it is written in the release's own format (`model_type: dinov2`, `architectures: [Dinov2Model]`), so that
plain `transformers.AutoModel.from_pretrained(dir)` without remote code still loads a `Dinov2Model`, while
`trust_remote_code=True` follows the `auto_map` to this file. The Hub copies this file alone for remote code: it
may import transformers and nothing from this repository.
"""

from huggingface_hub.dataclasses import strict
from transformers import Dinov2Config, LlavaConfig

# Names written to disk in place of ours, so the saved directory reads as a stock DINOv2 checkpoint. Only classes whose
# weights a stock class loads unchanged are listed; anything else is saved as `rad_dino` (remote code).
RELEASE_MODEL_TYPE = "dinov2"
RELEASE_ARCHITECTURES = {"RadDinoModel": "Dinov2Model", "RadDinoForImageClassification": "Dinov2ForImageClassification"}
POOLINGS = ("cls_mean", "cls", "attention")
SEGMENTATION_DECODERS = ("linear", "upsample")


@strict
class RadDinoConfig(Dinov2Config):
    r"""
    Configuration of a RAD-DINO encoder. Backbone fields are `Dinov2Config`'s; the defaults are those of
    `microsoft/rad-dino`: image 518, patch 14, hidden 768, 12 layers, 12 heads, MLP ratio 4, qkv bias, LayerScale
    1.0, GELU, layer-norm eps 1e-6, no registers, no SwiGLU.

    dino_head_hidden_size (`int`, defaults to 2048):
        Hidden width of the DINO projection head MLP (pretraining only).
    dino_head_bottleneck_size (`int`, defaults to 256):
        Output width of the head MLP, before the weight-normalised prototype layer.
    dino_head_n_prototypes (`int`, defaults to 65536):
        Number of prototypes (output logits) of the DINO head.
    dino_head_n_layers (`int`, defaults to 3):
        Number of linear layers in the head MLP.
    ibot_separate_head (`bool`, defaults to `False`):
        Whether iBOT uses its own head (DINOv2 ViT-B shares the DINO head).
    ibot_head_hidden_size (`int`, defaults to 2048):
        Hidden width of the iBOT head MLP when it is separate.
    ibot_head_bottleneck_size (`int`, defaults to 256):
        Output width of the iBOT head MLP when it is separate.
    ibot_head_n_prototypes (`int`, defaults to 65536):
        Number of prototypes of the iBOT head when it is separate.
    ibot_head_n_layers (`int`, defaults to 3):
        Number of linear layers in the iBOT head MLP when it is separate.
    pooling (`str`, defaults to `"cls_mean"`):
        Image features of `RadDinoForImageClassification`: `"cls_mean"` (CLS and mean patch token concatenated, as
        `Dinov2ForImageClassification`, so such checkpoints load in stock transformers), `"cls"`, or `"attention"`
        (a learned query attending over the patch tokens).
    segmentation_decoder (`str`, defaults to `"linear"`):
        Decoder of `RadDinoForSemanticSegmentation`: `"linear"` (batch norm + 1x1 conv on the patch-token map, then
        bilinear upsampling, as DINOv2's linear segmentation head) or `"upsample"` (a small convolutional decoder
        that upsamples the map twice before the final bilinear resize).
    interpolate_offset (`float`, defaults to 0.0):
        How position embeddings are resized for an input whose patch grid differs from the model's. 0: transformers'
        `Dinov2Model` (bicubic to the output grid). > 0: DINOv2's training code (bicubic with scale factor
        `(grid + interpolate_offset) / native grid`; DINOv2 and RAD-DINO trained with 0.1), used in pretraining.
        Saved models use 0, so they equal a stock `Dinov2Model`.

    Example:

    ```python
    >>> from configuration_rad_dino import RadDinoConfig
    >>> from modeling_rad_dino import RadDinoModel
    >>> model = RadDinoModel(RadDinoConfig())  # random full-size RAD-DINO
    ```
    """

    model_type = "rad_dino"

    image_size: int | list[int] | tuple[int, int] = 518
    dino_head_hidden_size: int = 2048
    dino_head_bottleneck_size: int = 256
    dino_head_n_prototypes: int = 65536
    dino_head_n_layers: int = 3
    ibot_separate_head: bool = False
    ibot_head_hidden_size: int = 2048
    ibot_head_bottleneck_size: int = 256
    ibot_head_n_prototypes: int = 65536
    ibot_head_n_layers: int = 3
    pooling: str = "cls_mean"
    segmentation_decoder: str = "linear"
    interpolate_offset: float = 0.0

    def validate_architecture(self):
        super().validate_architecture()
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if self.segmentation_decoder not in SEGMENTATION_DECODERS:
            raise ValueError(f"segmentation_decoder must be one of {SEGMENTATION_DECODERS}")

    @property
    def release_compatible(self) -> bool:
        """Whether a stock transformers class loads this model's weights unchanged (so it is saved as `dinov2`)."""
        architectures = self.architectures or ["RadDinoModel"]
        stock = all(name in RELEASE_ARCHITECTURES for name in architectures)
        classifier_ok = "RadDinoForImageClassification" not in architectures or self.pooling == "cls_mean"
        return stock and classifier_ok

    @classmethod
    def get_config_dict(cls, pretrained_model_name_or_path, **kwargs) -> tuple[dict, dict]:
        config_dict, kwargs = super().get_config_dict(pretrained_model_name_or_path, **kwargs)
        return cls._from_release_names(config_dict), kwargs

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs):
        return super().from_dict(cls._from_release_names(config_dict), **kwargs)

    @classmethod
    def _from_release_names(cls, config_dict: dict) -> dict:
        """A release-format dict says `dinov2`; read it as ours (else the instance would carry `dinov2`)."""
        if config_dict.get("model_type") == RELEASE_MODEL_TYPE:
            config_dict = {**config_dict, "model_type": cls.model_type}
        return config_dict

    def to_dict(self) -> dict:
        output = super().to_dict()
        if self.release_compatible:
            output["model_type"] = RELEASE_MODEL_TYPE
            if output.get("architectures"):
                output["architectures"] = [RELEASE_ARCHITECTURES[name] for name in output["architectures"]]
        return output


@strict
class RadDinoLlavaConfig(LlavaConfig):
    r"""
    Configuration of a LLaVA-style report generator with a RAD-DINO vision tower: `LlavaConfig` (vision_config = the
    encoder's `Dinov2Config`, text_config = any causal LM's config, a 2-layer GELU MLP projector) plus token pooling.

    image_token_pooling (`int`, defaults to 1):
        Side of the square average pooling applied to the patch-token grid before the projector: 1 keeps all
        37 x 37 = 1,369 tokens at 518 px, 2 gives 18 x 18 = 324 (the grid is floored, as `avg_pool2d`).
    vision_feature_layer (`int`, defaults to -1):
        Encoder layer whose tokens are projected. -1 is the encoder output after its final LayerNorm (what RAD-DINO's
        model card calls the patch embeddings); other indices select `hidden_states[i]` (pre-norm), as in LLaVA.
    vision_feature_select_strategy (`str`, defaults to `"default"`):
        `"default"` drops the CLS token, `"full"` keeps it in front of the (pooled) patch tokens.
    """

    model_type = "rad_dino_llava"

    vision_feature_layer: int = -1
    image_token_pooling: int = 1

    def validate_architecture(self):
        super().validate_architecture()
        if not isinstance(self.vision_feature_layer, int):
            raise ValueError("RadDinoLlavaConfig takes one vision_feature_layer (an int)")
        if self.image_token_pooling < 1:
            raise ValueError(f"image_token_pooling must be >= 1, got {self.image_token_pooling}")


__all__ = ["RadDinoConfig", "RadDinoLlavaConfig"]
