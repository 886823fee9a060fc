"""KoLeo (Kozachenko-Leonenko) entropy regulariser, mirroring ``dinov2/loss/koleo_loss.py``.

From Sablayrolles et al. 2018, "Spreading vectors for similarity search": pushes each L2-normalised
feature away from its nearest neighbour in the batch.
"""

import torch
import torch.nn.functional as F
from torch import nn


class KoLeoLoss(nn.Module):
    """``-mean_i log(||x_i - x_nn(i)|| + eps)`` on L2-normalised features.

    DINOv2 applies it separately to the student CLS tokens of each global crop (never across the two
    crops of one image) and sums the two terms.
    """

    def __init__(self) -> None:
        super().__init__()
        # eps=1e-8 is added to the difference vector before the norm, as nn.PairwiseDistance does in DINOv2
        self.pdist = nn.PairwiseDistance(p=2, eps=1e-8)

    @staticmethod
    def pairwise_nn_inner(x: torch.Tensor) -> torch.Tensor:
        """Nearest neighbour index of each row, excluding itself.

        Args:
            x: (B, D) L2-normalised features.

        Returns:
            (B,) long indices. For unit vectors max inner product == min Euclidean distance.
        """
        dots = x @ x.t()
        dots.fill_diagonal_(-1.0)  # below any off-diagonal cosine except exact antipodes (ties irrelevant)
        return dots.argmax(dim=1)

    def forward(self, features: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
        """
        Args:
            features: (B, D) student features (B >= 2), any scale; normalised here in float32.
            eps: added to the distances before the log.

        Returns:
            scalar loss.
        """
        with torch.autocast(device_type=features.device.type, enabled=False):
            x = F.normalize(features.float(), p=2, dim=-1, eps=eps)
            with torch.no_grad():
                nn_idx = self.pairwise_nn_inner(x)
            distances = self.pdist(x, x[nn_idx])  # (B,)
            return -torch.log(distances + eps).mean()
