"""Lung (or any) segmentation on a frozen encoder: masks aligned with the processor, decoder training, Dice."""

import numpy as np
import PIL.Image
import torch
from torch import nn

from image_processing_rad_dino import RadDinoImageProcessor
from modeling_rad_dino import RadDinoForSemanticSegmentation
from rad_dino_hf.metrics import bootstrap, dice_iou_from_counts, interval, segmentation_counts, segmentation_metrics


def mask_like_processor(path: str, processor: RadDinoImageProcessor) -> np.ndarray:
    """Read a label mask and resize (nearest) + centre-crop it exactly as the processor does the image.

    Returns `(crop_height, crop_width)` uint8 labels (255 stays "ignore").
    """
    mask = PIL.Image.open(path)
    if mask.mode not in ("L", "P", "I", "I;16"):
        mask = mask.convert("L")
    shortest = processor.size["shortest_edge"]
    scale = shortest / min(mask.size)
    resized = mask.resize((round(mask.width * scale), round(mask.height * scale)), PIL.Image.NEAREST)
    crop_h, crop_w = processor.crop_size["height"], processor.crop_size["width"]
    left, top = (resized.width - crop_w) // 2, (resized.height - crop_h) // 2
    return np.asarray(resized.crop((left, top, left + crop_w, top + crop_h)), dtype=np.uint8)


def train_decoder(
    model: RadDinoForSemanticSegmentation,
    patch_maps: torch.Tensor,
    masks: torch.Tensor,
    epochs: int = 30,
    lr: float = 1e-3,
    batch_size: int = 16,
    seed: int = 0,
) -> list[float]:
    """Train `model.decoder` on frozen `(N, D, h, w)` patch maps against `(N, H, W)` masks (255 ignored).

    Returns the mean loss of each epoch.
    """
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.decoder.parameters(), lr=lr, weight_decay=1e-4)
    model.decoder.train()
    losses = []
    for _ in range(epochs):
        order = torch.randperm(len(patch_maps), generator=generator)
        total = 0.0
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            logits = model.decode(patch_maps[index], masks.shape[-2:])
            loss = nn.functional.cross_entropy(logits, masks[index].long(), ignore_index=model.ignore_index)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(index)
        losses.append(total / len(order))
    model.decoder.eval()
    return losses


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
