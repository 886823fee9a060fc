"""Patch-level iBOT loss on masked patch tokens, mirroring ``dinov2/loss/ibot_patch_loss.py``.

Differences from DINOv2 (equivalent for its call order): ``forward`` is DINOv2's ``forward_masked`` (the
only variant its training uses); eager center update; distributed calls are guarded; the Sinkhorn sample
count is all-reduced on a copy instead of the caller's tensor.
"""

import torch
import torch.nn.functional as F
from torch import nn

from rad_dino_hf.losses._dist import all_reduce_sum_, sinkhorn_knopp, world_size


def masks_weight_from_masks(student_masks_flat: torch.Tensor) -> torch.Tensor:
    """Per-masked-patch weight ``1 / (number of masked patches of its image)``.

    Args:
        student_masks_flat: (B, N) bool, True where the student patch is masked.

    Returns:
        (M,) float, M = ``student_masks_flat.sum()``, in row-major order of the True entries (the
        order of ``patch_tokens.flatten(0, 1)[student_masks_flat.flatten()]``).
    """
    per_image = 1.0 / student_masks_flat.sum(-1).clamp(min=1.0)  # (B,)
    return per_image.unsqueeze(-1).expand_as(student_masks_flat)[student_masks_flat]


class iBOTPatchLoss(nn.Module):  # noqa: N801 - DINOv2's name
    """Cross-entropy between teacher and student distributions of the masked patch tokens.

    The ``center`` buffer has DINOv2's shape (1, 1, K) so DINOv2 training checkpoints load as-is;
    it is a separate buffer from :class:`DINOLoss`'s.

    Args:
        patch_out_dim: K, number of prototypes of the (iBOT or shared DINO) head.
        student_temp: student temperature (DINOv2: 0.1).
        center_momentum: EMA momentum of the center (DINOv2: 0.9).
    """

    center: torch.Tensor

    def __init__(self, patch_out_dim: int, student_temp: float = 0.1, center_momentum: float = 0.9) -> None:
        super().__init__()
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, 1, patch_out_dim))

    @torch.no_grad()
    def softmax_center_teacher(self, teacher_patch_logits: torch.Tensor, teacher_temp: float) -> torch.Tensor:
        """Centered, sharpened teacher probabilities for masked patches.

        Args:
            teacher_patch_logits: (M, K) teacher head outputs of the masked patches.
            teacher_temp: teacher temperature.

        Returns:
            (M, K) probabilities, rows sum to 1.
        """
        return F.softmax((teacher_patch_logits - self.center[0]) / teacher_temp, dim=-1)

    @torch.no_grad()
    def sinkhorn_knopp_teacher(
        self,
        teacher_patch_logits: torch.Tensor,
        teacher_temp: float,
        n_masked_patches_tensor: torch.Tensor | int | None = None,
        n_iterations: int = 3,
    ) -> torch.Tensor:
        """Sinkhorn-Knopp targets over the masked patches of all ranks.

        Args:
            teacher_patch_logits: (M, K) teacher head outputs of the masked patches on this rank.
            teacher_temp: teacher temperature.
            n_masked_patches_tensor: number of masked patches on this rank (all-reduced to the global
                count when distributed, as DINOv2); ``None`` -> M.
            n_iterations: Sinkhorn rounds.

        Returns:
            (M, K) float32; rows sum to 1 (see :func:`rad_dino_hf.losses._dist.sinkhorn_knopp`).
        """
        if n_masked_patches_tensor is None:
            n_masked_patches_tensor = torch.tensor(teacher_patch_logits.shape[0], device=teacher_patch_logits.device)
        elif isinstance(n_masked_patches_tensor, int):
            n_masked_patches_tensor = torch.tensor(n_masked_patches_tensor, device=teacher_patch_logits.device)
        return sinkhorn_knopp(teacher_patch_logits, teacher_temp, n_masked_patches_tensor, n_iterations)

    def forward(
        self, student_patch_logits: torch.Tensor, teacher_patch_probs: torch.Tensor, student_masks_flat: torch.Tensor
    ) -> torch.Tensor:
        """Per-image-normalised masked-patch cross-entropy.

        ``loss = -(1/B) * sum_m w_m * sum_k t[m,k] * log_softmax(s[m] / student_temp)[k]`` with
        ``w_m = 1 / (#masked patches of the image owning patch m)``: every masked image contributes
        the mean CE of its masked patches, images without masks contribute 0, and the total is divided
        by B (all images, masked or not), as DINOv2.

        Args:
            student_patch_logits: (M, K) student head outputs of the masked patches.
            teacher_patch_probs: (M, K) teacher probabilities of the same patches.
            student_masks_flat: (B, N) bool masks the patches were selected with (row-major order).

        Returns:
            scalar loss.
        """
        log_probs = F.log_softmax(student_patch_logits.float() / self.student_temp, dim=-1)
        loss = torch.sum(teacher_patch_probs * log_probs, dim=-1)
        return -(loss * masks_weight_from_masks(student_masks_flat)).sum() / student_masks_flat.shape[0]

    @torch.no_grad()
    def update_center(self, teacher_patch_logits: torch.Tensor) -> None:
        """EMA update with the mean masked-patch logit.

        As DINOv2: the per-rank mean over the M masked patches, averaged over ranks (not weighted by
        each rank's M). ``center = m * center + (1 - m) * batch_center``.

        Args:
            teacher_patch_logits: (M, K) teacher head outputs of the masked patches (pre-centering).
        """
        batch_center = teacher_patch_logits.float().mean(0, keepdim=True)  # (1, K)
        batch_center = all_reduce_sum_(batch_center) / world_size()
        self.center.mul_(self.center_momentum).add_(batch_center.unsqueeze(0) * (1 - self.center_momentum))
