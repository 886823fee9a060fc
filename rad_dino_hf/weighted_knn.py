"""Weighted k-nearest-neighbour classification of frozen features, as DINO's k-NN evaluation.

Caron et al. 2021 (facebookresearch/dino, `eval_knn.py`): features are L2-normalised, neighbours are the `k` training
features of highest cosine similarity, and each votes for its label with weight `exp(similarity / T)`. Multi-label
targets generalise the vote: a neighbour votes for each of its positive labels.
"""

import numpy as np
import torch
import torch.nn.functional as F

DEFAULT_K = 20
DEFAULT_TEMPERATURE = 0.07


@torch.no_grad()
def knn_classify(
    train_features: torch.Tensor | np.ndarray,
    train_labels: torch.Tensor | np.ndarray,
    query_features: torch.Tensor | np.ndarray,
    num_classes: int,
    k: int = DEFAULT_K,
    temperature: float = DEFAULT_TEMPERATURE,
    batch_size: int = 1024,
) -> torch.Tensor:
    """Class probabilities of each query from its `k` nearest training features.

    `train_features` `(N, F)`, `train_labels` `(N,)` ints in `[0, num_classes)` or `(N, num_classes)` multi-hot 0/1,
    `query_features` `(M, F)`. Returns `(M, num_classes)` float32: each class's share of the neighbours' total
    weight, i.e. the weighted votes normalised to sum to 1 for class indices (DINO takes their argmax), and for
    multi-hot targets each label's weighted frequency among the neighbours (a probability per label).
    `k` larger than `N` uses all training features. Queries are processed `batch_size` at a time, so memory is
    `batch_size x N` similarities.
    """
    if k < 1 or temperature <= 0:
        raise ValueError(f"k must be at least 1 and the temperature positive, got k={k}, temperature={temperature}")
    train = F.normalize(torch.as_tensor(train_features, dtype=torch.float32), dim=1)
    queries = F.normalize(torch.as_tensor(query_features, dtype=torch.float32), dim=1)
    labels = torch.as_tensor(train_labels)
    if labels.ndim == 1:
        targets = F.one_hot(labels.long(), num_classes).float()
    elif labels.shape[1] == num_classes:
        targets = labels.float()
    else:
        raise ValueError(f"multi-hot labels must be (N, {num_classes}), got {tuple(labels.shape)}")
    k = min(k, train.shape[0])
    probabilities = []
    for start in range(0, queries.shape[0], batch_size):
        similarity, neighbours = (queries[start : start + batch_size] @ train.T).topk(k, dim=1)
        # Shifting by the largest similarity (1 for unit vectors) keeps exp() in range at small T; it cancels below.
        weights = ((similarity - 1.0) / temperature).exp()
        votes = torch.einsum("mk,mkc->mc", weights, targets[neighbours])
        probabilities.append(votes / weights.sum(dim=1, keepdim=True))
    return torch.cat(probabilities) if probabilities else torch.zeros(0, num_classes)
