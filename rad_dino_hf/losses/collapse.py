"""How much the teacher's targets say about the image: the collapse monitor of the DINO and iBOT terms.

A loss below ln K does not show learning: a common-mode peaked target (every image assigned the same prototype) also
lowers the cross-entropy. The mutual information between the sample and its target does: it is 0 when every sample
gets the same distribution, whatever its shape, and grows as targets differ between samples.
"""

import torch

from rad_dino_hf.losses._dist import all_reduce_sum_


@torch.no_grad()
def target_mutual_information(probs: torch.Tensor) -> torch.Tensor:
    """Mutual information in nats between a sample (uniform over the rows) and its target prototype.

    ``I = H(mean_n p_n) - mean_n H(p_n)``: the entropy of the batch-mean target minus the mean per-sample entropy.
    0 when all rows are equal; at most ``ln N`` (N rows: reached by distinct one-hot rows) and at most ``ln K``.

    The batch is global: row sums, entropies and counts are summed over all processes (one all-reduce), so the
    value is the same on every rank and does not depend on how the batch is split. Every rank must call it.

    Args:
        probs: (N, K) teacher probabilities of this rank's samples (rows sum to 1; N may be 0).

    Returns:
        scalar float32 tensor; NaN when no process has a sample.
    """
    p = probs.detach().float()
    entropy_sum = -torch.special.xlogy(p, p).sum()
    stats = torch.cat([p.sum(0), entropy_sum.view(1), p.new_tensor([p.shape[0]])])
    stats = all_reduce_sum_(stats)
    n = stats[-1]
    mean = stats[:-2] / n
    return -torch.special.xlogy(mean, mean).sum() - stats[-2] / n
