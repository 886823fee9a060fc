"""Tiny helpers so the losses run both single-process and under ``torch.distributed``."""

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """True when a default process group exists (guarded: some builds lack ``torch.distributed``)."""
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """Number of ranks, 1 when not distributed."""
    return dist.get_world_size() if is_distributed() else 1


def all_reduce_sum_(tensor: torch.Tensor) -> torch.Tensor:
    """In-place SUM all-reduce when distributed, identity otherwise. Returns ``tensor``."""
    if is_distributed():
        dist.all_reduce(tensor)
    return tensor


@torch.no_grad()
def sinkhorn_knopp(
    teacher_logits: torch.Tensor,
    teacher_temp: float,
    n_samples_global: int | torch.Tensor | None = None,
    n_iterations: int = 3,
) -> torch.Tensor:
    """Sinkhorn-Knopp teacher normalisation as in DINOv2 (SwAV-style, 3 iterations by default).

    Args:
        teacher_logits: (B, K) teacher head outputs on this rank.
        teacher_temp: softmax temperature for the teacher.
        n_samples_global: total number of samples over all ranks (DINOv2 passes the all-reduced
            number of masked patches for iBOT). ``None`` -> ``B * world_size``.
        n_iterations: number of (row, column) normalisation rounds.

    Returns:
        (B, K) float32 assignment. Let ``Q = exp(logits / temp)^T`` (K, B_global). Each round first
        scales every prototype row to sum 1/K, then every sample column to sum 1/B_global; the
        final ``*= B_global`` therefore makes every *sample* (output row) sum to exactly 1, while the
        per-prototype totals (output column sums, over all ranks) are only approximately B_global/K:
        they are whatever the last column step leaves (exactly B_global/K only at convergence).
    """
    q = torch.exp(teacher_logits.float() / teacher_temp).t()  # (K, B): notation of the SwAV paper
    num_prototypes = q.shape[0]
    if n_samples_global is None:
        n_samples = q.shape[1] * world_size()
    elif isinstance(n_samples_global, torch.Tensor):
        # copy: DINOv2 all-reduces the caller's tensor in place, which silently mutates it
        n_samples = all_reduce_sum_(n_samples_global.detach().clone().to(q.device)).to(q.dtype)
    else:
        n_samples = n_samples_global

    # whole matrix sums to 1 (as DINOv2); the iterations are scale-invariant, this only bounds values
    q /= all_reduce_sum_(torch.sum(q))
    for _ in range(n_iterations):
        sum_of_rows = all_reduce_sum_(torch.sum(q, dim=1, keepdim=True))  # prototype totals, all ranks
        q /= sum_of_rows
        q /= num_prototypes
        q /= torch.sum(q, dim=0, keepdim=True)  # sample totals are local: each sample lives on one rank
        q /= n_samples
    q *= n_samples  # columns (samples) sum to 1 -> a proper assignment per sample
    return q.t()
