"""Student and teacher networks of the DINOv2 recipe, and the objective that ties them.

Each network is a `RadDinoModel` backbone with a DINO head (and an iBOT head when separate). The teacher is an
exponential moving average of the student and never receives gradients. `SelfDistillationObjective` computes
DINOv2's loss terms from one multi-crop batch, as `dinov2/train/ssl_meta_arch.py` does:

- DINO: every student crop (global with masks, local) against the teacher's *other* global crops;
- iBOT: student masked patch tokens against the teacher's tokens at the same positions (teacher sees full images);
- KoLeo: spread of the student's backbone CLS tokens within each global crop batch.
"""

import copy
import dataclasses
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.distributed.fsdp import FSDPModule

from configuration_rad_dino import RadDinoConfig
from modeling_rad_dino import RadDinoModel
from rad_dino_hf.convert import load_dino_head, load_original
from rad_dino_hf.heads import DinoHead
from rad_dino_hf.losses import DINOLoss, KoLeoLoss, iBOTPatchLoss, target_mutual_information
from rad_dino_hf.recipe import RecipeConfig


def model_config(recipe: RecipeConfig, backbone_config: RadDinoConfig | None = None) -> RadDinoConfig:
    """The run's architecture: the one `RadDinoConfig` the student, the teacher and the export are built from.

    Backbone fields come from `backbone_config` (the pretrained checkpoint's) or, when it is None, from the recipe's
    random-architecture fields (`student.hidden_size`, ...; image size = the global crop size). Head fields and the
    student's `drop_path_rate` always come from the recipe, whose head keys are the config's field names within
    their section: `dino.head_n_layers` is `dino_head_n_layers`, `ibot.separate_head` is `ibot_separate_head`.
    `student.interpolate_offset` (DINOv2's position-embedding interpolation) too; the export resets it to 0.
    """
    student = recipe.student
    if backbone_config is None:
        backbone = dict(
            hidden_size=student.hidden_size,
            num_hidden_layers=student.num_hidden_layers,
            num_attention_heads=student.num_attention_heads,
            patch_size=student.patch_size,
            image_size=recipe.crops.global_crops_size,
            layerscale_value=student.layerscale_value,
        )
    elif backbone_config.patch_size != student.patch_size:
        raise ValueError(
            f"{student.pretrained} has patch size {backbone_config.patch_size}, recipe says {student.patch_size}"
        )
    else:
        backbone = backbone_config.to_dict()
    heads = {
        f"{section}_{key}": value
        for section in ("dino", "ibot")
        for key, value in dataclasses.asdict(getattr(recipe, section)).items()
        if "head" in key
    }
    training = {"drop_path_rate": student.drop_path_rate, "interpolate_offset": student.interpolate_offset}
    return RadDinoConfig.from_dict({**backbone, **heads, **training})


class SelfDistillationNetwork(nn.Module):
    """Backbone + projection heads, all shaped by one `RadDinoConfig` (see `model_config`).

    Parameter names start with `backbone.`, `dino_head.`, `ibot_head.`.
    """

    def __init__(self, config: RadDinoConfig) -> None:
        super().__init__()
        self.backbone = RadDinoModel(config)
        self.dino_head = DinoHead(config)
        self.ibot_head = DinoHead(config, patch_head=True) if config.ibot_separate_head else None

    @property
    def config(self) -> RadDinoConfig:
        return self.backbone.config

    @property
    def patch_head(self) -> DinoHead:
        return self.ibot_head if self.ibot_head is not None else self.dino_head

    @property
    def parts(self) -> dict[str, nn.Module]:
        """The submodules DINOv2 keeps in its `model.student` dict: `backbone`, `dino_head`, `ibot_head` (if separate).

        DINOv2 clips each one's gradient norm on its own (`rad_dino_hf.trainer.clip_grad_norms`).
        """
        parts = {"backbone": self.backbone, "dino_head": self.dino_head}
        if self.ibot_head is not None:
            parts["ibot_head"] = self.ibot_head
        return parts

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


def initial_student(recipe: RecipeConfig) -> SelfDistillationNetwork:
    """The student at step 0, built from `model_config(recipe, <the pretrained backbone's config>)`.

    `student.pretrained` is "random" (architecture from the recipe), an original-layout `.safetensors` backbone
    (e.g. `backbone_compatible.safetensors`), or a HF directory / Hub id (`microsoft/rad-dino`,
    `facebook/dinov2-base`, an export of this trainer). `student.dino_head`, when set, is a `dino_head.safetensors`
    whose weights replace the fresh DINO head (continued pretraining of a released model).
    """
    pretrained = recipe.student.pretrained
    backbone = None
    if pretrained.endswith(".safetensors"):
        backbone, _ = load_original(pretrained)
    elif pretrained != "random":
        backbone = RadDinoModel.from_pretrained(pretrained)
    student = SelfDistillationNetwork(model_config(recipe, backbone.config if backbone is not None else None))
    if backbone is not None:
        student.backbone.load_state_dict(backbone.state_dict())
    if recipe.student.dino_head:
        student.dino_head = load_dino_head(recipe.student.dino_head, student.config)
    return student


def make_teacher(student: SelfDistillationNetwork) -> SelfDistillationNetwork:
    """The EMA teacher at step 0: the student's weights, frozen, in a network without stochastic depth.

    Its config is the student's with `drop_path_rate = 0` (DINOv2's teacher has none); built once here, it is the
    config the export writes, so an exported model does not switch stochastic depth on when fine-tuned.
    """
    config = copy.deepcopy(student.config)
    config.drop_path_rate = 0.0
    teacher = SelfDistillationNetwork(config)
    teacher.load_state_dict(student.state_dict())
    teacher.requires_grad_(False)
    return teacher


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """`teacher = momentum * teacher + (1 - momentum) * student`, parameter by parameter."""
    teacher_params = [p for p in teacher.parameters()]
    student_params = [p.detach() for p in student.parameters()]
    if len(teacher_params) != len(student_params):
        raise ValueError("teacher and student have different parameter lists")
    torch._foreach_mul_(teacher_params, momentum)
    torch._foreach_add_(teacher_params, student_params, alpha=1.0 - momentum)


def reshard_after_each_forward(teacher: FSDPModule) -> None:
    """Keep an FSDP2-sharded teacher sharded between its forwards.

    FSDP2 leaves the root unit's parameters gathered after a forward, for the backward that follows. The teacher
    has no backward: gathered, its root parameters would be full tensors next to the student's shards in the EMA,
    and full tensors in a checkpoint written after a skipped step. A forward hook reshards it as soon as it returns.
    """
    teacher.register_forward_hook(lambda module, args, output: module.reshard())


@dataclass
class LossTerms:
    """One step's loss terms (weighted as they enter `total`) and what the teacher's targets say about the images.

    `target_information`: `{"dino": ..., "ibot": ...}`, the mutual information in nats between a teacher sample (a
    global crop, a masked patch) and its target over the global batch (`rad_dino_hf.losses.target_mutual_information`);
    near 0 means the teacher gives every image the same target (collapse).
    """

    total: torch.Tensor
    dino: torch.Tensor
    ibot: torch.Tensor
    koleo: torch.Tensor
    target_information: dict[str, torch.Tensor] = field(default_factory=dict)

    def as_floats(self) -> dict[str, float]:
        """The loss terms by name (`total`, `dino`, `ibot`, `koleo`)."""
        return {name: float(getattr(self, name).detach()) for name in ("total", "dino", "ibot", "koleo")}


class SelfDistillationObjective(nn.Module):
    """DINO + iBOT + KoLeo with teacher centering buffers (saved in `state_dict`).

    Loss settings come from `recipe`, the prototype counts (the centers' sizes) from the networks' `config`.
    """

    def __init__(self, recipe: RecipeConfig, config: RadDinoConfig) -> None:
        super().__init__()
        self.recipe = recipe
        self.dino_loss = DINOLoss(config.dino_head_n_prototypes, recipe.dino.student_temp, recipe.dino.center_momentum)
        patch_prototypes = config.ibot_head_n_prototypes if config.ibot_separate_head else config.dino_head_n_prototypes
        self.ibot_loss = iBOTPatchLoss(patch_prototypes, recipe.dino.student_temp, recipe.dino.center_momentum)
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
        n_global, batch = global_crops.shape[:2]
        n_local = 0 if local_crops is None else local_crops.shape[0]
        flat_globals = global_crops.flatten(0, 1)
        teacher_cls, teacher_patches = self.teacher_targets(teacher, flat_globals, masks, teacher_temp)
        outputs = student(
            flat_globals, local_crops.flatten(0, 1) if n_local else None, masks=masks, patch_selection=masks
        )
        student_logits = torch.cat([outputs["global_logits"]] + ([outputs["local_logits"]] if n_local else []))
        dino = self.dino_loss(student_logits.unflatten(0, (-1, batch)), teacher_cls.unflatten(0, (n_global, batch)))
        if masks.any():
            ibot = self.ibot_loss(outputs["patch_logits"], teacher_patches, masks)
        else:
            ibot = outputs["patch_logits"].sum() * 0.0  # keeps the graph connected for DDP
        koleo = sum(self.koleo_loss(chunk) for chunk in outputs["cls"].chunk(n_global))

        dino = self.recipe.dino.loss_weight * dino
        ibot = self.recipe.ibot.loss_weight * ibot
        koleo = self.recipe.dino.koleo_loss_weight * koleo
        information = {
            "dino": target_mutual_information(teacher_cls),
            "ibot": target_mutual_information(teacher_patches),
        }
        return LossTerms(total=dino + ibot + koleo, dino=dino, ibot=ibot, koleo=koleo, target_information=information)
