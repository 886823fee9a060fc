"""Lung (or any) segmentation on a frozen encoder: masks aligned with the processor, decoder training, Dice."""

from pathlib import Path

import numpy as np
import PIL.Image
import torch
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from image_processing_rad_dino import RadDinoImageProcessor, read_image
from modeling_rad_dino import RadDinoForSemanticSegmentation
from rad_dino_hf.distributed import make_accelerator
from rad_dino_hf.errors import UserError
from rad_dino_hf.metrics import bootstrap, dice_iou_from_counts, interval, segmentation_counts, segmentation_metrics
from rad_dino_hf.supervised import LoopSettings, train


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) of an image file: from the header where PIL reads it, else (DICOM) from the decoded pixels."""
    try:
        with PIL.Image.open(path) as image:
            return image.size
    except (OSError, SyntaxError, ValueError):
        height, width = read_image(path).shape[:2]
        return width, height


def mask_like_processor(path: str, processor: RadDinoImageProcessor, image: str | Path | None = None) -> np.ndarray:
    """Read a label mask and resize (nearest) + centre-crop it exactly as the processor does the image.

    With `image`, the mask must have that image's size (a `UserError` naming both otherwise): a mask drawn on a
    resized copy would be cropped differently from its image. Returns `(crop_height, crop_width)` uint8 labels
    (255 stays "ignore").
    """
    mask = PIL.Image.open(path)
    if image is not None and image_size(image) != mask.size:
        raise UserError(
            f"Mask {path} is {mask.width}x{mask.height} pixels but its image {image} is "
            "{}x{}; masks must have their image's size".format(*image_size(image))
        )
    if mask.mode not in ("L", "P", "I", "I;16"):
        mask = mask.convert("L")
    shortest = processor.size["shortest_edge"]
    scale = shortest / min(mask.size)
    resized = mask.resize((round(mask.width * scale), round(mask.height * scale)), PIL.Image.NEAREST)
    crop_h, crop_w = processor.crop_size["height"], processor.crop_size["width"]
    left, top = (resized.width - crop_w) // 2, (resized.height - crop_h) // 2
    return np.asarray(resized.crop((left, top, left + crop_w, top + crop_h)), dtype=np.uint8)


class FrozenFeatureDecoder(nn.Module):
    """`model.decode` at a fixed output size as a module holding only the decoder, so that Accelerate prepares (and
    DDP synchronises) the decoder and not the frozen encoder the patch maps came from."""

    def __init__(self, model: RadDinoForSemanticSegmentation, size: tuple[int, int]) -> None:
        super().__init__()
        self.decoder, self.decode, self.size = model.decoder, model.decode, tuple(size)

    def forward(self, patch_maps: torch.Tensor) -> torch.Tensor:
        """`(B, D, h, w)` patch maps -> `(B, num_labels, *size)` logits."""
        return self.decode(patch_maps, self.size)


def train_decoder(
    model: RadDinoForSemanticSegmentation,
    patch_maps: torch.Tensor,
    masks: torch.Tensor,
    epochs: int = 30,
    lr: float = 1e-3,
    batch_size: int = 16,
    seed: int = 0,
    accelerator: Accelerator | None = None,
    metrics_path: Path | None = None,
) -> list[float]:
    """Train `model.decoder` on frozen `(N, D, h, w)` patch maps against `(N, H, W)` masks (255 ignored) with the
    shared loop (`rad_dino_hf.supervised`): AdamW at `lr` decaying on a cosine, cross-entropy per pixel.

    `accelerator` defaults to a plain one; the decoder ends on the patch maps' device. Returns each epoch's mean
    batch loss.
    """
    device = patch_maps.device
    accelerator = accelerator or make_accelerator()
    module = FrozenFeatureDecoder(model, masks.shape[-2:])
    loader = DataLoader(
        TensorDataset(patch_maps, masks), batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed)
    )
    group = {"params": list(module.parameters()), "lr": lr, "weight_decay": 1e-4}

    def pixel_cross_entropy(decoder: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        maps, targets = batch
        return nn.functional.cross_entropy(decoder(maps), targets.long(), ignore_index=model.ignore_index)

    settings = LoopSettings(epochs, description="segmentation decoder", metrics_path=metrics_path)
    log = train(accelerator, module, [group], loader, settings, pixel_cross_entropy)
    model.decoder.to(device)
    return [record["train_loss"] for record in log.epochs]


@torch.inference_mode()
def predict(model: RadDinoForSemanticSegmentation, patch_maps: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """Class per pixel `(N, *size)` from frozen patch maps."""
    return model.decode(patch_maps, size).argmax(dim=1).numpy().astype(np.uint8)


def foreground_dice(predictions: np.ndarray, targets: np.ndarray, ignore_index: int = 255, seed: int = 0) -> dict:
    """Per-image Dice of class 1 (lung), its mean with a 95 % bootstrap interval over images, and the pooled
    (dataset-level) Dice / IoU per class from `rad_dino_hf.metrics.segmentation_metrics`."""
    per_image = np.array(
        [
            dice_iou_from_counts(*segmentation_counts(prediction, target, 2, ignore_index))[0][1]
            for prediction, target in zip(predictions, targets)
        ]
    )
    valid = per_image[np.isfinite(per_image)]
    samples = bootstrap(lambda values: np.array([values.mean()]), [valid], seed=seed)[:, 0]
    return {
        "lung_dice_per_image": interval(float(valid.mean()), samples),
        "n_images": int(len(valid)),
        "pooled": segmentation_metrics(
            predictions, targets, num_classes=2, ignore_index=ignore_index, class_names=["background", "lung"]
        ),
    }
