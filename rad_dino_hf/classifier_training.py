"""End-to-end fine-tuning of `RadDinoForImageClassification` on labelled images, on HuggingFace Accelerate.

Methods: `full` (every weight trains), `lora` (LoRA adapters on the encoder, `rad_dino_hf.lora`) and `frozen` (only
the head trains: a linear probe fitted by gradient descent, with augmentation). The same loop runs as a plain
process and under `accelerate launch` (DDP): batches are sharded, validation predictions are gathered with
`gather_for_metrics`, and the caller lets only the main process write files.
"""

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import set_seed
from peft import PeftModel
from torch import nn
from torch.utils.data import DataLoader, Dataset

from image_processing_rad_dino import RadDinoImageProcessor
from modeling_rad_dino import RadDinoForImageClassification, RadDinoModel
from rad_dino_hf.lora import DEFAULT_LORA_TARGETS, add_lora, head_modules
from rad_dino_hf.schedules import fuse_param_groups, param_groups
from rad_dino_hf.preemption import quiet_worker_init
from rad_dino_hf.supervised import LoopSettings, train

METHODS = ("full", "lora", "frozen")
# Encoder (or LoRA) learning rates for each method at batch 16; the heads use `head_lr`, and `frozen` trains no
# encoder weight.
DEFAULT_LR = {"full": 2e-5, "lora": 5e-4, "frozen": 0.0}


def processor_at(processor: RadDinoImageProcessor, size: int) -> RadDinoImageProcessor:
    """A copy of `processor` that resizes the shorter side to `size` and centre-crops `size x size`."""
    resized = copy.deepcopy(processor)
    resized.size = {"shortest_edge": size}
    resized.crop_size = {"height": size, "width": size}
    return resized


def classifier_from_encoder(
    encoder: RadDinoModel,
    class_names: Sequence[str],
    pooling: str = "cls_mean",
    seed: int = 0,
    multilabel: bool = False,
) -> RadDinoForImageClassification:
    """A classifier with `encoder`'s weights and a new head (seeded) for `class_names`; `multilabel`: one sigmoid
    output per name, trained with binary cross-entropy (transformers' `multi_label_classification`)."""
    config = copy.deepcopy(encoder.config)
    config.num_labels, config.pooling = len(class_names), pooling
    config.problem_type = "multi_label_classification" if multilabel else "single_label_classification"
    config.id2label = dict(enumerate(class_names))
    config.label2id = {name: index for index, name in enumerate(class_names)}
    torch.manual_seed(seed)
    model = RadDinoForImageClassification(config)
    model.dinov2.load_state_dict(encoder.state_dict())
    return model


def augment_radiograph(
    pixels: torch.Tensor, scale: tuple[float, float] = (0.8, 1.0), jitter: float = 0.1
) -> torch.Tensor:
    """Random crop of 80-100 % of each side (same aspect) resized back, then contrast and brightness jitter.

    `pixels` `(3, H, W)` normalised -> `(3, H, W)`. No flips or rotations: laterality (heart on the patient's left)
    is part of what a chest radiograph shows. Brightness moves by up to `jitter` in normalised units (one unit is
    the processor's `image_std`), contrast by a factor within 1 +- `jitter`.
    """
    height, width = pixels.shape[-2:]
    side = math.sqrt(float(torch.empty(()).uniform_(*scale)))
    crop_height, crop_width = max(1, round(side * height)), max(1, round(side * width))
    top = int(torch.randint(0, height - crop_height + 1, ()))
    left = int(torch.randint(0, width - crop_width + 1, ()))
    crop = pixels[None, :, top : top + crop_height, left : left + crop_width]
    resized = F.interpolate(crop, size=(height, width), mode="bilinear", align_corners=False)[0]
    contrast, brightness = torch.empty(2).uniform_(-jitter, jitter)
    return resized * (1 + contrast) + brightness


class ImageDataset(Dataset):
    """Labelled image files read through a `RadDinoImageProcessor`: item -> (`(3, H, W)` pixels, label).

    `labels`: `(N,)` class indices (items get a long scalar) or `(N, C)` 0/1 multi-label targets (items get a
    float `(C,)` vector, as the binary cross-entropy loss takes them).
    """

    def __init__(
        self,
        files: Sequence[Path],
        labels: np.ndarray,
        processor: RadDinoImageProcessor,
        augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        labels = torch.as_tensor(np.asarray(labels))
        self.files, self.labels = list(files), labels.float() if labels.ndim == 2 else labels.long()
        self.processor, self.augment = processor, augment

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        # A path, not an array: the processor applies its DICOM / 16-bit conversion itself.
        pixels = self.processor(str(self.files[index]), return_tensors="pt")["pixel_values"][0]
        return (self.augment(pixels) if self.augment else pixels), self.labels[index]


@dataclass
class FinetuneOptions:
    """Hyperparameters of `finetune`. `lr` `None` takes `DEFAULT_LR[method]`; `layer_decay` < 1 scales the encoder
    learning rate by `layer_decay ** depth_from_top` (DINOv2 / BEiT layer-wise decay; 1 is off)."""

    method: str = "lora"
    epochs: int = 3
    batch_size: int = 16
    lr: float | None = None
    head_lr: float = 1e-3
    weight_decay: float = 0.05
    layer_decay: float = 1.0
    warmup_fraction: float = 0.1
    max_grad_norm: float = 1.0
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_targets: Sequence[str] = DEFAULT_LORA_TARGETS
    num_workers: int = 0
    seed: int = 0


@dataclass
class FinetuneResult:
    """The trained model (unwrapped; a `PeftModel` for LoRA), the last epoch's validation probabilities
    `(N_val, C)` in dataset order, the mean training loss of every optimiser update (of every batch without
    gradient accumulation), and one record per epoch (`rad_dino_hf.supervised.TrainingLog`)."""

    model: nn.Module
    probabilities: np.ndarray
    update_losses: list[float] = field(default_factory=list)
    history: list[dict] = field(default_factory=list)


def with_trainable_parameters(model: RadDinoForImageClassification, options: FinetuneOptions) -> nn.Module:
    """`model` with `requires_grad` set for `options.method`; LoRA returns the peft wrapper."""
    if options.method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {options.method!r}")
    if options.method == "lora":
        return add_lora(model, options.lora_rank, options.lora_alpha, options.lora_dropout, options.lora_targets)
    model.requires_grad_(True)
    if options.method == "frozen":
        model.dinov2.requires_grad_(False)
    mask_token = getattr(model.dinov2.embeddings, "mask_token", None)
    if mask_token is not None:  # iBOT's token, unused without `bool_masked_pos`: DDP stalls on weights without grads
        mask_token.requires_grad_(False)
    return model


def optimizer_groups(model: nn.Module, options: FinetuneOptions) -> list[dict]:
    """AdamW parameter groups of the trainable parameters: heads at `head_lr`, the rest at `lr` times the layer-wise
    decay; no weight decay on biases, norms, LayerScale (DINOv2's rule) and on tokens and position embeddings
    (the BEiT/MAE fine-tuning convention), see `rad_dino_hf.schedules.param_groups`."""
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    head_ids = {id(parameter) for name in head_modules(base) for parameter in getattr(base, name).parameters()}
    lr = DEFAULT_LR[options.method] if options.lr is None else options.lr
    groups = param_groups(
        model, options.weight_decay, options.layer_decay, patch_embed_lr_mult=1.0, no_wd_for_tokens=True
    )
    for group in groups:
        group["is_head"] = id(group["params"][0]) in head_ids
    fused = fuse_param_groups(groups, keys=("lr_multiplier", "wd_multiplier", "is_head"))
    for group in fused:
        group["lr"] = options.head_lr if group["is_head"] else lr * group["lr_multiplier"]
    return fused


def accuracy(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Share of correct images: argmax against `(N,)` class indices, or every label right at probability 0.5
    against `(N, C)` multi-label targets (exact match, as `rad_dino_hf.metrics`)."""
    if labels.ndim == 2:
        return float(np.mean(np.all((probabilities >= 0.5) == (labels > 0.5), axis=1)))
    return float(np.mean(probabilities.argmax(axis=1) == labels))


@torch.no_grad()
def predict_probabilities(
    accelerator: Accelerator, model: nn.Module, loader: DataLoader
) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities `(N, C)` (softmax of the logits; sigmoid for a multi-label model) and the labels (`(N,)` or
    `(N, C)`) of every item of a prepared, unshuffled `loader`, in dataset order, on every process
    (`gather_for_metrics` drops the padding of the last shard)."""
    model.eval()
    multilabel = accelerator.unwrap_model(model).config.problem_type == "multi_label_classification"
    probabilities, labels = [], []
    for pixels, batch_labels in loader:
        logits = model(pixel_values=pixels).logits.float()
        batch = logits.sigmoid() if multilabel else logits.softmax(dim=-1)
        batch, batch_labels = accelerator.gather_for_metrics((batch, batch_labels))
        probabilities.append(batch.cpu())
        labels.append(batch_labels.cpu())
    return torch.cat(probabilities).numpy(), torch.cat(labels).numpy()


def finetune(
    accelerator: Accelerator,
    model: RadDinoForImageClassification,
    train_set: Dataset,
    val_set: Dataset,
    options: FinetuneOptions,
    metrics_path: Path | None = None,
) -> FinetuneResult:
    """Train `model` on `train_set` ((pixels, label) items) with the shared loop (`rad_dino_hf.supervised`): AdamW
    over `optimizer_groups`, gradient clipping, a cosine schedule with linear warmup stepped per optimiser update.

    Gradient accumulation and mixed precision are `accelerator`'s. Validation accuracy on `val_set` is computed
    after every epoch; the result holds the last epoch's predictions (no checkpoint is picked on the validation
    split, so its metrics stay unbiased). `metrics_path`: the loop's JSONL (with validation accuracy per epoch).
    """
    set_seed(options.seed)
    model = with_trainable_parameters(model, options)
    groups = optimizer_groups(model, options)
    train_loader = DataLoader(
        train_set,
        batch_size=options.batch_size,
        shuffle=True,
        num_workers=options.num_workers,
        generator=torch.Generator().manual_seed(options.seed),
    )
    val_loader = accelerator.prepare(
        DataLoader(
            val_set, batch_size=options.batch_size, num_workers=options.num_workers, worker_init_fn=quiet_worker_init
        )
    )
    result = FinetuneResult(model=model, probabilities=np.zeros((0, 0)))

    def validate(epoch: int, prepared: nn.Module) -> dict:
        result.probabilities, val_labels = predict_probabilities(accelerator, prepared, val_loader)
        return {"val_accuracy": accuracy(result.probabilities, val_labels)}

    settings = LoopSettings(options.epochs, options.warmup_fraction, options.max_grad_norm, "fine-tuning", metrics_path)
    log = train(accelerator, model, groups, train_loader, settings, classification_loss, validate)
    result.update_losses, result.history = log.update_losses, log.epochs
    return result


def classification_loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """The classifier's own loss (cross-entropy, or binary cross-entropy per label) on a (pixels, labels) batch."""
    pixels, labels = batch
    return model(pixel_values=pixels, labels=labels).loss


def save_finetuned(model: nn.Module, processor: RadDinoImageProcessor, output: Path) -> Path:
    """Save for `from_pretrained` in `output/"model"` (with the processor); a LoRA model is saved as its adapter in
    `output/"adapter"` and then merged into the weights (`merge_and_unload`, which modifies `model`).

    The adapter holds the LoRA matrices and the trained heads: apply it with `PeftModel.from_pretrained` to a
    classifier built from the same encoder. Returns the model folder.
    """
    if isinstance(model, PeftModel):
        model.save_pretrained(output / "adapter")
        model = model.merge_and_unload()
    model.save_pretrained(output / "model")
    processor.save_pretrained(output / "model")
    return output / "model"
