"""Effective rank of a set of embeddings: how many directions the features really use.

RankMe (Garrido et al. 2023, "RankMe: Assessing the downstream performance of pretrained self-supervised
representations"): with the singular values s_k of the embedding matrix and p_k = s_k / sum(s), the effective rank is
exp(-sum_k p_k log p_k) (Roy & Vetterli 2007), between 1 (every embedding on one line) and min(N, D) (all singular
values equal). Self-supervised encoders can collapse dimensionally, their features spanning few directions while
the loss still falls; a linear probe then has only those directions to read. The features are centred first, so
that a direction shared by every image (their mean) does not count as one the images differ along.
"""

import numpy as np
import torch


def effective_rank(features: torch.Tensor | np.ndarray) -> float:
    """RankMe of `features` `(N, D)` after centring; 1.0 when every row is the same point."""
    matrix = torch.as_tensor(features, dtype=torch.float64)
    if matrix.ndim != 2 or len(matrix) < 2:
        raise ValueError(f"effective_rank needs an (N, D) matrix with N >= 2, got shape {tuple(matrix.shape)}")
    singular = torch.linalg.svdvals(matrix - matrix.mean(dim=0))
    total = singular.sum()
    if total <= torch.finfo(torch.float64).eps * matrix.abs().max().clamp_min(1.0) * len(matrix):
        return 1.0
    share = singular[singular > 0] / total
    return float(torch.exp(-(share * share.log()).sum()))
