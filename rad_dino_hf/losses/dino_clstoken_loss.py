"""Image-level (CLS token) DINO loss with EMA centering or Sinkhorn-Knopp teacher normalisation.

Mirrors ``dinov2/loss/dino_clstoken_loss.py`` (facebookresearch/dinov2), with three deliberate
differences, all numerically equivalent for the DINOv2 call order
(``softmax_center_teacher`` then ``update_center`` on the same batch):

* ``forward`` takes all crops at once and does the pairing and averaging that DINOv2's
  ``ssl_meta_arch`` does around its loss calls;
* the center update is applied eagerly in ``update_center`` (DINOv2 launches an async all-reduce and
  applies it lazily at the next ``softmax_center_teacher``);
* distributed calls are guarded by ``dist.is_available() and dist.is_initialized()``.
"""

import torch
import torch.nn.functional as F
from torch import nn

from rad_dino_hf.losses._dist import all_reduce_sum_, sinkhorn_knopp, world_size


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

    def forward(self, student_logits: torch.Tensor, teacher_probs: torch.Tensor) -> torch.Tensor:
        """DINOv2's multi-crop DINO term: every student crop against every teacher global crop but its own.

        ``loss = mean_{(s, t), s != t} mean_b( -sum_k teacher_probs[t, b, k] * log_softmax(student_logits[s, b] /
        student_temp)[k] )`` over the ``n_global * S - n_global`` pairs (18 for 2 global + 8 local crops): the value
        of DINOv2's ``dino_local_crops_loss + dino_global_crops_loss`` before ``dino.loss_weight`` (DINOv2 counts one
        phantom local pair when there are no local crops; the pairs are counted exactly here).

        Args:
            student_logits: (S, B, K) student head outputs: the n_global global crops first, in the teacher's
                order, then the local crops.
            teacher_probs: (n_global, B, K) teacher probabilities of the global crops.

        Returns:
            scalar loss.
        """
        n_global, batch = teacher_probs.shape[:2]
        n_pairs = n_global * student_logits.shape[0] - n_global
        if n_pairs <= 0:
            raise ValueError(f"no DINO pairs for {n_global} teacher and {student_logits.shape[0]} student crops")
        # float32 throughout: each pair's cross-entropy sums B * K products, too many for bf16 autocast.
        with torch.autocast(device_type=student_logits.device.type, enabled=False):
            log_probs = F.log_softmax(student_logits.float() / self.student_temp, dim=-1)
            cross = teacher_probs.float().flatten(1) @ log_probs.flatten(1).T  # (n_global, S): -CE summed over B
            same_crop = torch.eye(*cross.shape, dtype=torch.bool, device=cross.device)
            return -cross.masked_fill(same_crop, 0.0).sum() / (batch * n_pairs)

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
