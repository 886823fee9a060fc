"""DINOv2 pretraining losses (image-level DINO, patch-level iBOT, the KoLeo regulariser) and the collapse monitor."""

from rad_dino_hf.losses.collapse import target_mutual_information
from rad_dino_hf.losses.dino_clstoken_loss import DINOLoss
from rad_dino_hf.losses.ibot_patch_loss import iBOTPatchLoss
from rad_dino_hf.losses.koleo_loss import KoLeoLoss

__all__ = ["DINOLoss", "KoLeoLoss", "iBOTPatchLoss", "target_mutual_information"]
