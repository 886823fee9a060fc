"""DINOv2 pretraining losses: image-level DINO, patch-level iBOT and the KoLeo regulariser."""

from rad_dino_hf.losses.dino_clstoken_loss import DINOLoss, dino_crossview_loss, dino_loss_num_terms
from rad_dino_hf.losses.ibot_patch_loss import iBOTPatchLoss, masks_weight_from_masks
from rad_dino_hf.losses.koleo_loss import DEFAULT_KOLEO_WEIGHT, KoLeoLoss

__all__ = [
    "DEFAULT_KOLEO_WEIGHT",
    "DINOLoss",
    "KoLeoLoss",
    "dino_crossview_loss",
    "dino_loss_num_terms",
    "iBOTPatchLoss",
    "masks_weight_from_masks",
]
