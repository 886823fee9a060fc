"""All pretraining recipe defaults in one nested dataclass, with YAML I/O and ``key=value`` overrides.

Sources (tags used in the field comments):

* "DINOv2 default": ``dinov2/configs/ssl_default_config.yaml`` (facebookresearch/dinov2).
* "DINOv2 patch-14": the public ``configs/train/vitl14.yaml`` / ``vitg14.yaml`` (the repo ships no
  ViT-B/14 *training* config; the released ViT-B/14 was distilled, not trained with this recipe).
* "DINO v1": ``main_dino.py`` defaults of facebookresearch/dino (ViT-S/B), for ``drop_path_rate``.
* "RAD-DINO card": the microsoft/rad-dino model card / preprocessor config (init from
  ``facebook/dinov2-base``; image mean 0.5307, std 0.2583).
* "paper": RAD-DINO paper (Pérez-García et al., Nat. Mach. Intell. 2025) numbers as quoted in the
  project brief -- 100k iterations, global batch 2560 over 64 GPUs, second stage at 518 px. They are
  kept as *comments / opt-in values* only: not re-verified against the paper text here.

The defaults reproduce the DINOv2 default recipe with a ViT-B/14 student, except where a field says
otherwise.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from image_processing_rad_dino import RAD_DINO_IMAGE_MEAN, RAD_DINO_IMAGE_STD


@dataclass
class OptimConfig:
    """AdamW + schedules (all "DINOv2 default" unless noted)."""

    epochs: int = 100  # schedule length in "epochs" of train.official_epoch_length iterations
    base_lr: float = 0.004  # lr for a global batch of 1024 (ssl_default_config: 0.004; vitl14/g14: 2e-4)
    lr: float = 0.0  # if > 0, used as-is; else base_lr scaled to the global batch (scaling_rule, resolved_lr)
    scaling_rule: str = "sqrt_wrt_1024"  # lr = base_lr * sqrt(global_batch / 1024)
    min_lr: float = 1.0e-6  # final value of the lr cosine
    warmup_epochs: int = 10  # linear lr warmup from 0
    weight_decay: float = 0.04  # start of the wd cosine
    weight_decay_end: float = 0.4  # end of the wd cosine (vitl14/g14: 0.2)
    clip_grad: float = 3.0  # max grad norm
    freeze_last_layer_epochs: int = 1  # DINO head last_layer lr = 0 for this long
    layerwise_decay: float = 0.9  # lr *= decay ** (L + 1 - layer_id) (vitl14/g14: 1.0)
    patch_embed_lr_mult: float = 0.2  # extra lr factor for the patch embedding
    adamw_beta1: float = 0.9
    adamw_beta2: float = 0.999

    def resolved_lr(self, global_batch_size: int) -> float:
        """Peak lr: ``lr`` when set (> 0), otherwise the scaling rule applied to ``base_lr``."""
        if self.lr > 0:
            return self.lr
        if self.scaling_rule != "sqrt_wrt_1024":
            raise NotImplementedError(f"scaling_rule {self.scaling_rule!r}")
        return self.base_lr * math.sqrt(global_batch_size / 1024.0)


@dataclass
class CropsConfig:
    """Multi-crop augmentation (geometry "DINOv2 default"; photometric as DINOv2 augmentations.py)."""

    global_crops_number: int = 2  # DINOv2 hard-codes 2 global crops
    global_crops_scale: tuple[float, float] = (0.32, 1.0)  # area fraction range of RandomResizedCrop
    global_crops_size: int = 224
    local_crops_number: int = 8
    local_crops_scale: tuple[float, float] = (0.05, 0.32)
    local_crops_size: int = 98  # DINOv2 patch-14 (default config has 96 for patch 16)
    flip_probability: float = 0.5  # horizontal flip
    jitter_probability: float = 0.8  # ColorJitter is RandomApply(p=0.8) in DINOv2
    brightness: float = 0.4  # factor ~ U(1 - b, 1 + b)
    contrast: float = 0.4  # factor ~ U(1 - c, 1 + c); saturation/hue are identities on grey images
    blur_probabilities: tuple[float, float, float] = (1.0, 0.1, 0.5)  # global 1, global 2, locals (intended)
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    blur_kernel_size: int = 9  # DINOv2 GaussianBlur(kernel_size=9)
    dinov2_blur_quirk: bool = False  # True: DINOv2 code applies blur with 1 - p (see augment.py)
    solarize_probability: float = 0.2  # global crop 2 only
    solarize_threshold: float = 0.5  # 128/255 in DINOv2 on uint8 PIL images
    mean: float = RAD_DINO_IMAGE_MEAN[0]  # RAD-DINO card (one grey value repeated over RGB)
    std: float = RAD_DINO_IMAGE_STD[0]  # RAD-DINO card


@dataclass
class DinoConfig:
    """Image-level DINO loss and head ("DINOv2 default").

    `head_*` is the architecture field `RadDinoConfig.dino_head_*` (DINOv2 spells `head_hidden_dim`,
    `head_bottleneck_dim`, `head_nlayers`); `rad_dino_hf.ssl_model.model_config` puts it there.
    """

    loss_weight: float = 1.0
    koleo_loss_weight: float = 0.1
    head_n_prototypes: int = 65536  # vitl14/g14: 131072
    head_bottleneck_size: int = 256  # vitl14/g14: 384
    head_n_layers: int = 3
    head_hidden_size: int = 2048
    student_temp: float = 0.1  # DINOLoss default
    center_momentum: float = 0.9  # DINOLoss default


@dataclass
class IbotConfig:
    """Patch-level iBOT loss, masking and head ("DINOv2 default").

    `separate_head` and `head_*` are the architecture fields `RadDinoConfig.ibot_separate_head` / `ibot_head_*`;
    the `head_*` shape applies only to a separate head (otherwise iBOT uses the DINO head).
    """

    loss_weight: float = 1.0
    mask_sample_probability: float = 0.5  # fraction of global crops that get a mask
    mask_ratio_min_max: tuple[float, float] = (0.1, 0.5)  # masked fraction range per masked crop
    separate_head: bool = False  # vitl14/g14: True
    head_n_prototypes: int = 65536
    head_bottleneck_size: int = 256
    head_n_layers: int = 3
    head_hidden_size: int = 2048


@dataclass
class TeacherConfig:
    """EMA teacher ("DINOv2 default")."""

    momentum_teacher: float = 0.992  # start of the momentum cosine (vitl14/g14: 0.994)
    final_momentum_teacher: float = 1.0
    warmup_teacher_temp: float = 0.04  # linear warmup start
    teacher_temp: float = 0.07  # value after warmup
    warmup_teacher_temp_epochs: int = 30


@dataclass
class StudentConfig:
    """Backbone and its initialisation; the architecture fields carry `RadDinoConfig`'s names."""

    # "random", a HF RAD-DINO / DINOv2 directory or Hub id, or an original-layout backbone .safetensors file.
    pretrained: str = "facebook/dinov2-base"  # RAD-DINO card: fine-tuned from dinov2-base (ViT-B/14)
    dino_head: str | None = None  # original-layout dino_head.safetensors, e.g. microsoft/rad-dino's, to continue
    # Architecture of a "random" backbone (ViT-B/14 here; a pretrained one brings its own).
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    patch_size: int = 14
    # Stochastic depth of the student, the same rate in every block (DINOv2's drop_path_uniform; the HF backbone has
    # no per-block schedule). DINO v1 ViT default; DINOv2 default 0.3 is for ViT-L, vitl14 uses 0.4.
    drop_path_rate: float = 0.1
    layerscale_value: float = 1.0e-5  # DINOv2 default init (irrelevant when loading pretrained weights)
    # Position-embedding interpolation for crops whose patch grid differs from the model's (DINOv2 default 0.1:
    # bicubic with scale factor (grid + 0.1) / native grid, as DINOv2 and RAD-DINO trained; 0 = transformers' Dinov2,
    # resized to the output grid). `RadDinoConfig.interpolate_offset` of the student and teacher; exports write 0.
    interpolate_offset: float = 0.1


@dataclass
class TrainConfig:
    """Loop, data, checkpoint and teacher-normalisation settings."""

    batch_size_per_gpu: int = 64  # DINOv2 default; paper: 2560 global over 64 GPUs = 40/GPU (brief)
    gradient_accumulation_steps: int = 1
    official_epoch_length: int = 1250  # DINOv2 OFFICIAL_EPOCH_LENGTH (iterations per "epoch")
    max_iterations: int | None = None  # stop early (schedules still span optim.epochs); None = run them all
    max_minutes: float | None = None  # wall-clock budget (the main process's clock): checkpoint and stop when spent
    centering: str = "centering"  # "centering" or "sinkhorn_knopp" (DINOv2 default / patch-14 configs)
    mixed_precision: str = "no"  # "no", "bf16" or "fp16" (accelerate); measure before choosing on CPU
    seed: int = 0
    data_sources: tuple[str, ...] = ()  # "[kind:]location[@weight]" (see rad_dino_hf/pretraining_data.py)
    files_per_shard: int = 64  # local folders: files per stream shard (shards spread over ranks and workers)
    num_workers: int = 10
    output_dir: str = "outputs/pretrain"
    checkpoint_every: int = 1250  # iterations
    keep_checkpoints: int = 2
    log_every: int = 10  # iterations
    max_consecutive_nan: int = 5  # skip non-finite steps; stop after this many in a row
    max_consecutive_unreadable: int = 1000  # per source and rank (a folder: at most its file count); then stop
    # A collective (gradient all-reduce, barrier) waiting longer than this for another process fails with an error
    # instead of hanging; it must exceed the slowest checkpoint write.
    collective_timeout_minutes: float = 30.0
    # Collapse warning (once per run): the DINO or iBOT teacher target carries less than `collapse_information_nats`
    # of mutual information about the image for `collapse_warning_iterations` iterations in a row (0: never warn).
    collapse_warning_iterations: int = 100
    collapse_information_nats: float = 0.01

    def global_batch_size(self, world_size: int) -> int:
        """Images per optimisation step over `world_size` data-parallel processes and the accumulation steps."""
        return self.batch_size_per_gpu * world_size * self.gradient_accumulation_steps


@dataclass
class RecipeConfig:
    """The whole RAD-DINO / DINOv2 pretraining recipe."""

    optim: OptimConfig = field(default_factory=OptimConfig)
    crops: CropsConfig = field(default_factory=CropsConfig)
    dino: DinoConfig = field(default_factory=DinoConfig)
    ibot: IbotConfig = field(default_factory=IbotConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    @property
    def total_iterations(self) -> int:
        """``optim.epochs * train.official_epoch_length`` (DINOv2 default: 125,000)."""
        return self.optim.epochs * self.train.official_epoch_length

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (tuples become lists, YAML friendly)."""
        return _to_plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> RecipeConfig:
        """Build from a (partial) nested dict; missing fields keep their defaults, unknown keys raise."""
        return _from_dict(cls, data or {}, prefix="")

    def to_yaml(self, path: str | Path | None = None) -> str:
        """Serialise to YAML; also write it to ``path`` when given. Returns the YAML text."""
        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_yaml(cls, path: str | Path) -> RecipeConfig:
        """Load a (partial) YAML file; see :meth:`from_dict`."""
        return cls.from_dict(yaml.safe_load(Path(path).read_text()))


def _to_plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_plain(v) for v in obj]
    return obj


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _from_dict(cls: type, data: dict[str, Any], prefix: str) -> Any:
    if not isinstance(data, dict):
        raise TypeError(f"{prefix or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = _field_types(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise KeyError(f"unknown config key(s) {[prefix + k for k in unknown]}; valid: {sorted(names)}")
    kwargs = {}
    for name, value in data.items():
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _from_dict(tp, value or {}, prefix=f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(value, tp, f"{prefix}{name}")
    return cls(**kwargs)


_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert ``value`` (possibly a raw CLI string) to the annotated type ``tp``; raise ValueError."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.strip().lower() in {"none", "null", "~"}):
            if type(None) in args:
                return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except (TypeError, ValueError) as exc:
                errors.append(str(exc))
        raise ValueError(f"{key}: cannot convert {value!r} to {tp}: {errors}")
    if origin is tuple:
        if isinstance(value, str):
            text = value.strip()
            parsed = yaml.safe_load(text if text.startswith("[") else f"[{text}]")
            value = parsed
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{key}: expected a sequence for {tp}, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], key) for v in value)
        if len(value) != len(args):
            raise ValueError(f"{key}: expected {len(args)} values, got {len(value)} ({value!r})")
        return tuple(_coerce(v, a, key) for v, a in zip(value, args))
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ValueError(f"{key}: expected a bool, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ValueError(f"{key}: expected an int, got {value!r}")
        if isinstance(value, str):
            value = yaml.safe_load(value)
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, int):
            return value
        raise ValueError(f"{key}: expected an int, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ValueError(f"{key}: expected a float, got {value!r}")
        try:
            return float(value)  # handles "1e-6", which YAML 1.1 would read as a string
        except (TypeError, ValueError):
            raise ValueError(f"{key}: expected a float, got {value!r}") from None
    if tp is str:
        if not isinstance(value, str):
            raise ValueError(f"{key}: expected a string, got {value!r}")
        return value
    raise TypeError(f"{key}: unsupported field type {tp}")


def apply_overrides(cfg: RecipeConfig, overrides: list[str] | tuple[str, ...]) -> RecipeConfig:
    """Return a copy of ``cfg`` with ``section.field=value`` overrides applied (``cfg`` is untouched).

    Values are converted to the field's annotated type: ``"optim.lr=0.001"``,
    ``"crops.local_crops_number=4"``, ``"crops.global_crops_scale=0.4,1.0"`` (or ``[0.4, 1.0]``),
    ``"ibot.separate_head=true"``, ``"train.max_minutes=none"``.

    Raises:
        KeyError: unknown section or field (message lists the valid names).
        ValueError: malformed override or value not convertible to the field type.
    """
    new = copy.deepcopy(cfg)
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not of the form section.field=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        path = key.split(".")
        target: Any = new
        for depth, part in enumerate(path):
            if not dataclasses.is_dataclass(target):
                raise KeyError(f"override {key!r}: {'.'.join(path[:depth])!r} is not a section")
            valid = [f.name for f in dataclasses.fields(target)]
            if part not in valid:
                where = ".".join(path[:depth]) or "RecipeConfig"
                raise KeyError(f"override {key!r}: unknown key {part!r} in {where}; valid: {valid}")
            if depth == len(path) - 1:
                tp = _field_types(type(target))[part]
                if dataclasses.is_dataclass(tp):
                    raise KeyError(f"override {key!r}: {part!r} is a section, name a field inside it")
                setattr(target, part, _coerce(raw.strip(), tp, key))
            else:
                target = getattr(target, part)
    return new
