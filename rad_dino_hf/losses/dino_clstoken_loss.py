"""Image-level (CLS token) DINO loss with EMA centering or Sinkhorn-Knopp teacher normalisation.

Mirrors ``dinov2/loss/dino_clstoken_loss.py`` (facebookresearch/dinov2), with two deliberate
differences, both numerically equivalent for the DINOv2 call order
(``softmax_center_teacher`` then ``update_center`` on the same batch):

* the center update is applied eagerly in ``update_center`` (DINOv2 launches an async all-reduce and
  applies it lazily at the next ``softmax_center_teacher``);
* distributed calls are guarded by ``dist.is_available() and dist.is_initialized()``.
"""

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from rad_dino_hf.losses._dist import all_reduce_sum_, sinkhorn_knopp, world_size


def dino_loss_num_terms(n_global_crops: int, n_local_crops: int) -> int:
    """Number of (student crop, teacher crop) pairs DINOv2 averages the DINO loss over.

    Every student crop (global or local) is compared with every teacher global crop, except a global
    crop with itself: ``n_global * (n_global + n_local) - n_global``
    (= ``(n_g - 1) * n_g + n_l * n_g``; 18 for 2 global + 8 local crops).

    Note: DINOv2's ``ssl_meta_arch`` uses ``max(n_local * n_global, 1)`` for the local part, i.e. it
    counts one phantom term when there are no local crops; we count pairs exactly.
    """
    n_terms = n_global_crops * (n_global_crops + n_local_crops) - n_global_crops
    if n_terms <= 0:
        raise ValueError(f"no valid DINO pairs for n_global={n_global_crops}, n_local={n_local_crops}")
    return n_terms


class DINOLoss(nn.Module):
    """Cross-entropy between teacher probabilities and student log-softmax on the CLS-token head.

    The ``center`` buffer (shape (1, K)) is registered so it is saved in ``state_dict`` checkpoints.

    Args:
        out_dim: K, number of prototypes of the DINO head.
        student_temp: student softmax temperature (DINOv2: 0.1).
        center_momentum: EMA momentum of the teacher center (DINOv2: 0.9).
    """

    center: torch.Tensor

    def __init__(self, out_dim: int, student_temp: float = 0.1, center_momentum: float = 0.9) -> None:
        super().__init__()
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))

    @torch.no_grad()
    def softmax_center_teacher(self, teacher_logits: torch.Tensor, teacher_temp: float) -> torch.Tensor:
        """Centered, sharpened teacher probabilities.

        Args:
            teacher_logits: (B, K) teacher head outputs.
            teacher_temp: teacher temperature (DINOv2 warms up 0.04 -> 0.07).

        Returns:
            (B, K) ``softmax((teacher_logits - center) / teacher_temp)``; rows sum to 1.
        """
        return F.softmax((teacher_logits - self.center) / teacher_temp, dim=-1)

    @torch.no_grad()
    def sinkhorn_knopp_teacher(
        self, teacher_logits: torch.Tensor, teacher_temp: float, n_iterations: int = 3
    ) -> torch.Tensor:
        """Sinkhorn-Knopp normalised teacher targets (alternative to centering; DINOv2 ViT-L/g).

        Args:
            teacher_logits: (B, K) teacher head outputs on this rank.
            teacher_temp: teacher temperature.
            n_iterations: Sinkhorn rounds (DINOv2: 3).

        Returns:
            (B, K) float32. Rows (samples) sum to exactly 1 after the final column step; column sums
            (prototype totals over all ranks) approximate ``B_global / K`` (exact only at convergence).
        """
        return sinkhorn_knopp(teacher_logits, teacher_temp, None, n_iterations)

    def forward(
        self, student_logits_list: Sequence[torch.Tensor], teacher_probs_list: Sequence[torch.Tensor]
    ) -> torch.Tensor:
        """Sum over ALL (student, teacher) pairs of the batch-mean cross-entropy.

        ``loss = sum_s sum_t mean_b( -sum_k t[b,k] * log_softmax(s[b] / student_temp)[k] )``

        Same-crop pairs are NOT excluded here (as in DINOv2): the caller decides which pairs to pass
        (DINOv2 passes the teacher globals swapped so global crop A is matched to B), and normalises
        by :func:`dino_loss_num_terms`. :func:`dino_crossview_loss` does both.

        Args:
            student_logits_list: list of (B, K) student head outputs (one per crop).
            teacher_probs_list: list of (B, K) teacher probabilities (one per teacher global crop).

        Returns:
            scalar loss (unnormalised by the number of pairs).
        """
        total_loss = torch.zeros((), device=student_logits_list[0].device)
        for s in student_logits_list:
            lsm = F.log_softmax(s.float() / self.student_temp, dim=-1)
            for t in teacher_probs_list:
                total_loss = total_loss - torch.sum(t * lsm, dim=-1).mean()
        return total_loss

    @torch.no_grad()
    def update_center(self, teacher_logits: torch.Tensor) -> None:
        """EMA update: ``center = m * center + (1 - m) * mean_over_batch(teacher_logits)``.

        Args:
            teacher_logits: (B, K) teacher head outputs (pre-centering). Under ``torch.distributed``
                the batch mean is taken over all ranks (sum all-reduce / (B * world_size)).
        """
        batch_sum = all_reduce_sum_(torch.sum(teacher_logits.float(), dim=0, keepdim=True))
        batch_center = batch_sum / (teacher_logits.shape[0] * world_size())
        self.center.mul_(self.center_momentum).add_(batch_center * (1 - self.center_momentum))


def dino_crossview_loss(
    loss: DINOLoss,
    student_global_logits: Sequence[torch.Tensor],
    student_local_logits: Sequence[torch.Tensor],
    teacher_global_probs: Sequence[torch.Tensor],
) -> torch.Tensor:
    """DINOv2's full multi-crop DINO term: all cross-view pairs, averaged over the number of pairs.

    Student global crop i is paired with every teacher global crop j != i; every student local crop
    with every teacher global crop. The sum of per-pair batch-mean cross-entropies is divided by
    :func:`dino_loss_num_terms` -- the same value as DINOv2's ``dino_local_crops_loss +
    dino_global_crops_loss`` (before ``dino.loss_weight``).

    Args:
        loss: the :class:`DINOLoss` (for ``student_temp``).
        student_global_logits: n_global tensors (B, K).
        student_local_logits: n_local tensors (B, K).
        teacher_global_probs: n_global tensors (B, K), in the same crop order as the student globals.

    Returns:
        scalar loss.
    """
    n_global = len(teacher_global_probs)
    if len(student_global_logits) != n_global:
        raise ValueError(f"{len(student_global_logits)} student globals vs {n_global} teacher globals")
    total = loss(list(student_local_logits), list(teacher_global_probs)) if student_local_logits else 0.0
    for i, s in enumerate(student_global_logits):
        others = [t for j, t in enumerate(teacher_global_probs) if j != i]
        if others:
            total = total + loss([s], others)
    return total / dino_loss_num_terms(n_global, len(student_local_logits))
