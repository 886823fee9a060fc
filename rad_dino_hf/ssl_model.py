"""Student and teacher networks of the DINOv2 recipe, and the objective that ties them.

Each network is a `RadDinoModel` backbone with a DINO head (and an iBOT head when separate). The teacher is an
exponential moving average of the student and never receives gradients. `SelfDistillationObjective` computes
DINOv2's loss terms from one multi-crop batch, as `dinov2/train/ssl_meta_arch.py` does:

- DINO: every student crop (global with masks, local) against the teacher's *other* global crops;
- iBOT: student masked patch tokens against the teacher's tokens at the same positions (teacher sees full images);
- KoLeo: spread of the student's backbone CLS tokens within each global crop batch.
"""

import copy
from dataclasses import dataclass

import torch
from torch import nn

from configuration_rad_dino import RadDinoConfig
from modeling_rad_dino import RadDinoModel
from rad_dino_hf.convert import load_dino_head, load_original
from rad_dino_hf.heads import DinoHead
from rad_dino_hf.losses import DINOLoss, KoLeoLoss, iBOTPatchLoss
from rad_dino_hf.losses.dino_clstoken_loss import dino_crossview_loss
from rad_dino_hf.losses.ibot_patch_loss import masks_weight_from_masks
from rad_dino_hf.recipe import RecipeConfig


class SelfDistillationNetwork(nn.Module):
    """Backbone + projection heads. Parameter names start with `backbone.`, `dino_head.`, `ibot_head.`."""

    def __init__(self, backbone: RadDinoModel, recipe: RecipeConfig) -> None:
        super().__init__()
        self.backbone = backbone
        dim = backbone.config.hidden_size
        self.dino_head = DinoHead(
            dim,
            recipe.dino.head_n_prototypes,
            recipe.dino.head_hidden_dim,
            recipe.dino.head_bottleneck_dim,
            recipe.dino.head_nlayers,
        )
        self.ibot_head = (
            DinoHead(
                dim,
                recipe.ibot.head_n_prototypes,
                recipe.ibot.head_hidden_dim,
                recipe.ibot.head_bottleneck_dim,
                recipe.ibot.head_nlayers,
            )
            if recipe.ibot.separate_head
            else None
        )

    @property
    def patch_head(self) -> DinoHead:
        return self.ibot_head if self.ibot_head is not None else self.dino_head

    def forward(
        self,
        global_crops: torch.Tensor,
        local_crops: torch.Tensor | None = None,
        masks: torch.Tensor | None = None,
        patch_selection: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor | None]:
        """All of one step's outputs in a single call (DDP expects one forward per backward).

        Args:
            global_crops: `(n_global * B, 3, G, G)`.
            local_crops: `(n_local * B, 3, L, L)` or None.
            masks: `(n_global * B, N)` bool; these patches are replaced by the mask token (student) or None.
            patch_selection: `(n_global * B, N)` bool; patch tokens sent to the patch head (the iBOT targets).

        Returns:
            `cls` `(n_global * B, D)` backbone CLS tokens, `global_logits` `(n_global * B, K)`,
            `local_logits` `(n_local * B, K)` or None, `patch_logits` `(M, K)` or None, M = selected patches.
        """
        tokens = self.backbone(global_crops, bool_masked_pos=masks).last_hidden_state
        cls = tokens[:, 0]
        outputs = {"cls": cls, "global_logits": self.dino_head(cls), "local_logits": None, "patch_logits": None}
        if local_crops is not None:
            outputs["local_logits"] = self.dino_head(self.backbone(local_crops).last_hidden_state[:, 0])
        if patch_selection is not None:
            outputs["patch_logits"] = self.patch_head(tokens[:, 1:][patch_selection])
        return outputs


def build_student_teacher(
    backbone: RadDinoModel, recipe: RecipeConfig, dino_head: DinoHead | None = None
) -> tuple[SelfDistillationNetwork, SelfDistillationNetwork]:
    """Student (with stochastic depth from the recipe) and its teacher: an exact copy without drop path.
    `dino_head`, when given, replaces the fresh DINO head (continued pretraining of a released model)."""
    student_config: RadDinoConfig = copy.deepcopy(backbone.config)
    student_config.drop_path_rate = recipe.student.drop_path_rate
    student_backbone = RadDinoModel(student_config)
    student_backbone.load_state_dict(backbone.state_dict())
    student = SelfDistillationNetwork(student_backbone, recipe)
    if dino_head is not None:
        student.dino_head.load_state_dict(dino_head.state_dict())
    teacher = copy.deepcopy(student)
    for module in teacher.modules():  # the teacher has no stochastic depth
        if hasattr(module, "drop_path"):
            module.drop_path = nn.Identity()
    teacher.backbone.config.drop_path_rate = 0.0
    teacher.requires_grad_(False)
    return student, teacher


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """`teacher = momentum * teacher + (1 - momentum) * student`, parameter by parameter."""
    teacher_params = [p for p in teacher.parameters()]
    student_params = [p.detach() for p in student.parameters()]
    if len(teacher_params) != len(student_params):
        raise ValueError("teacher and student have different parameter lists")
    torch._foreach_mul_(teacher_params, momentum)
    torch._foreach_add_(teacher_params, student_params, alpha=1.0 - momentum)


@dataclass
class LossTerms:
    """One step's loss terms (weighted as they enter `total`)."""

    total: torch.Tensor
    dino: torch.Tensor
    ibot: torch.Tensor
    koleo: torch.Tensor

    def as_floats(self) -> dict[str, float]:
        return {name: float(value.detach()) for name, value in vars(self).items()}


class SelfDistillationObjective(nn.Module):
    """DINO + iBOT + KoLeo with teacher centering buffers (saved in `state_dict`)."""

    def __init__(self, recipe: RecipeConfig) -> None:
        super().__init__()
        self.recipe = recipe
        self.dino_loss = DINOLoss(recipe.dino.head_n_prototypes, recipe.dino.student_temp, recipe.dino.center_momentum)
        ibot_prototypes = recipe.ibot.head_n_prototypes if recipe.ibot.separate_head else recipe.dino.head_n_prototypes
        self.ibot_loss = iBOTPatchLoss(ibot_prototypes, recipe.dino.student_temp, recipe.dino.center_momentum)
        self.koleo_loss = KoLeoLoss()

    @torch.no_grad()
    def teacher_targets(
        self, teacher: SelfDistillationNetwork, global_crops: torch.Tensor, masks: torch.Tensor, teacher_temp: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher probabilities: CLS `(n_global * B, K)` and masked patches `(M, K)`; updates the centers."""
        outputs = teacher(global_crops, patch_selection=masks)
        cls_logits, patch_logits = outputs["global_logits"], outputs["patch_logits"]
        if self.recipe.train.centering == "sinkhorn_knopp":
            cls_probs = self.dino_loss.sinkhorn_knopp_teacher(cls_logits, teacher_temp)
            patch_probs = self.ibot_loss.sinkhorn_knopp_teacher(patch_logits, teacher_temp, int(masks.sum()))
        elif self.recipe.train.centering == "centering":
            cls_probs = self.dino_loss.softmax_center_teacher(cls_logits, teacher_temp)
            self.dino_loss.update_center(cls_logits)
            patch_probs = self.ibot_loss.softmax_center_teacher(patch_logits, teacher_temp)
            self.ibot_loss.update_center(patch_logits)
        else:
            raise ValueError(f"Unknown centering {self.recipe.train.centering!r}: centering or sinkhorn_knopp")
        return cls_probs, patch_probs

    def forward(
        self,
        student: nn.Module,
        teacher: SelfDistillationNetwork,
        global_crops: torch.Tensor,
        local_crops: torch.Tensor | None,
        masks: torch.Tensor,
        teacher_temp: float,
    ) -> LossTerms:
        """Loss terms for one batch. `student` may be the DDP/FSDP-wrapped network.

        Args:
            global_crops: `(n_global, B, 3, G, G)`.
            local_crops: `(n_local, B, 3, L, L)` or None.
            masks: `(n_global * B, N)` bool iBOT masks of the student's global crops (crop-major order).
            teacher_temp: current teacher temperature.
        """
        n_global = global_crops.shape[0]
        n_local = 0 if local_crops is None else local_crops.shape[0]
        flat_globals = global_crops.flatten(0, 1)
        teacher_cls, teacher_patches = self.teacher_targets(teacher, flat_globals, masks, teacher_temp)
        outputs = student(
            flat_globals, local_crops.flatten(0, 1) if n_local else None, masks=masks, patch_selection=masks
        )
        dino = dino_crossview_loss(
            self.dino_loss,
            list(outputs["global_logits"].chunk(n_global)),
            list(outputs["local_logits"].chunk(n_local)) if n_local else [],
            list(teacher_cls.chunk(n_global)),
        )
        if masks.any():
            ibot = self.ibot_loss.forward_masked(
                outputs["patch_logits"], teacher_patches, masks, masks_weight=masks_weight_from_masks(masks)
            )
        else:
            ibot = outputs["patch_logits"].sum() * 0.0  # keeps the graph connected for DDP
        koleo = sum(self.koleo_loss(chunk) for chunk in outputs["cls"].chunk(n_global))

        dino = self.recipe.dino.loss_weight * dino
        ibot = self.recipe.ibot.loss_weight * ibot
        koleo = self.recipe.dino.koleo_loss_weight * koleo
        return LossTerms(total=dino + ibot + koleo, dino=dino, ibot=ibot, koleo=koleo)


def initial_backbone(recipe: RecipeConfig) -> tuple[RadDinoModel, DinoHead | None]:
    """The backbone to start from (and a DINO head to continue, if the recipe names one).

    `student.pretrained` is "random" (architecture from the recipe), an original-layout `.safetensors` backbone
    (e.g. `backbone_compatible.safetensors`), or a HF directory / Hub id (`microsoft/rad-dino`,
    `facebook/dinov2-base`, an export of this trainer).
    """
    student = recipe.student
    if student.pretrained == "random":
        config = RadDinoConfig(
            hidden_size=student.hidden_size,
            num_hidden_layers=student.num_hidden_layers,
            num_attention_heads=student.num_attention_heads,
            patch_size=student.patch_size,
            image_size=recipe.crops.global_crops_size,
            layerscale_value=student.layerscale,
        )
        backbone = RadDinoModel(config)
    elif student.pretrained.endswith(".safetensors"):
        backbone, _ = load_original(student.pretrained)
    else:
        backbone = RadDinoModel.from_pretrained(student.pretrained)
    if backbone.config.patch_size != student.patch_size:
        raise ValueError(
            f"{student.pretrained} has patch size {backbone.config.patch_size}, recipe says {student.patch_size}"
        )
    head = None
    if student.dino_head:
        head_config = copy.deepcopy(backbone.config)
        head_config.dino_head_n_prototypes = recipe.dino.head_n_prototypes
        head_config.dino_head_hidden_size = recipe.dino.head_hidden_dim
        head_config.dino_head_bottleneck_size = recipe.dino.head_bottleneck_dim
        head_config.dino_head_n_layers = recipe.dino.head_nlayers
        head = load_dino_head(student.dino_head, head_config)
    return backbone, head
