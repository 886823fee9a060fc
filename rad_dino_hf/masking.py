"""Block-wise masks for the iBOT objective, mirroring DINOv2's ``data/masking.py`` and the mask part
of ``data/collate.py::collate_data_and_cast``.

All randomness goes through an explicit :class:`random.Random` (DINOv2 uses the global ``random``
module), so results are reproducible from a seed and independent of other code's RNG use.
"""

import math
import random

import numpy as np
import torch

RandomLike = random.Random | int | None


def _as_rng(generator: RandomLike) -> random.Random:
    """An int seeds a fresh ``random.Random``; ``None`` gives an OS-seeded one; an instance is used as is."""
    return generator if isinstance(generator, random.Random) else random.Random(generator)


class MaskingGenerator:
    """Samples a (H, W) boolean mask made of random rectangular blocks.

    Each block has area uniform in [min_num_patches, max_patches_left] and log-uniform aspect ratio in
    [min_aspect, max_aspect]; blocks are added until the requested number of patches is reached or a
    block cannot be placed within 10 tries. The count may fall short of the target but never exceeds
    it: a block is accepted only if its *new* patches fit in the remaining budget. Since overlapping
    blocks are allowed, a single new region may be smaller than ``min_num_patches``.

    Args:
        input_size: (H, W) patch grid, or an int for a square grid.
        num_masking_patches: kept for DINOv2 API parity (default per-call target); may be None.
        min_num_patches: minimum block area in patches (DINOv2: 4).
        max_num_patches: maximum area of a single block; ``None`` -> 0.5 * H * W (DINOv2's train.py).
        min_aspect: minimum block aspect ratio (DINOv2: 0.3).
        max_aspect: maximum aspect ratio; ``None`` -> 1 / min_aspect.
        generator: ``random.Random`` or int seed used by ``__call__`` unless one is passed there.
    """

    def __init__(
        self,
        input_size: int | tuple[int, int],
        num_masking_patches: int | None = None,
        min_num_patches: int = 4,
        max_num_patches: float | None = None,
        min_aspect: float = 0.3,
        max_aspect: float | None = None,
        generator: RandomLike = None,
    ) -> None:
        if not isinstance(input_size, tuple):
            input_size = (input_size, input_size)
        self.height, self.width = input_size
        self.num_patches = self.height * self.width
        self.num_masking_patches = num_masking_patches
        self.min_num_patches = min_num_patches
        self.max_num_patches = 0.5 * self.num_patches if max_num_patches is None else max_num_patches
        max_aspect = max_aspect or 1 / min_aspect
        self.log_aspect_ratio = (math.log(min_aspect), math.log(max_aspect))
        self.rng = _as_rng(generator)

    def __repr__(self) -> str:
        return (
            f"MaskingGenerator(grid=({self.height}, {self.width}), block_area=[{self.min_num_patches}, "
            f"{self.max_num_patches}], log_aspect=({self.log_aspect_ratio[0]:.3f}, {self.log_aspect_ratio[1]:.3f}))"
        )

    def get_shape(self) -> tuple[int, int]:
        """(H, W) of the patch grid."""
        return self.height, self.width

    def _mask(self, mask: np.ndarray, max_mask_patches: float, rng: random.Random) -> int:
        """Try (10 times) to add one block to ``mask`` in place; returns the number of newly masked patches."""
        delta = 0
        for _ in range(10):
            target_area = rng.uniform(self.min_num_patches, max_mask_patches)
            aspect_ratio = math.exp(rng.uniform(*self.log_aspect_ratio))
            h = int(round(math.sqrt(target_area * aspect_ratio)))
            w = int(round(math.sqrt(target_area / aspect_ratio)))
            if w < self.width and h < self.height:
                top = rng.randint(0, self.height - h)
                left = rng.randint(0, self.width - w)
                block = mask[top : top + h, left : left + w]
                num_new = h * w - int(block.sum())
                # accept only blocks that add something and whose new patches fit the budget
                if 0 < num_new <= max_mask_patches:
                    block[...] = True  # view into ``mask``
                    delta += num_new
                if delta > 0:
                    break
        return delta

    def __call__(self, num_masking_patches: int = 0, generator: RandomLike = None) -> np.ndarray:
        """Sample one mask.

        Args:
            num_masking_patches: target number of masked patches (upper bound; may fall short).
            generator: optional RNG overriding the one given at construction.

        Returns:
            (H, W) bool numpy array.
        """
        rng = self.rng if generator is None else _as_rng(generator)
        mask = np.zeros(self.get_shape(), dtype=bool)
        mask_count = 0
        while mask_count < num_masking_patches:
            max_mask_patches = min(num_masking_patches - mask_count, self.max_num_patches)
            delta = self._mask(mask, max_mask_patches, rng)
            if delta == 0:
                break
            mask_count += delta
        return mask


def sample_batch_masks(
    batch_size: int,
    grid: tuple[int, int],
    mask_probability: float = 0.5,
    mask_ratio_range: tuple[float, float] = (0.1, 0.5),
    generator: RandomLike = None,
    mask_generator: MaskingGenerator | None = None,
) -> torch.Tensor:
    """Masks for a batch of student global crops, as DINOv2's ``collate_data_and_cast``.

    ``n = int(batch_size * mask_probability)`` images are masked; image i < n gets a target of
    ``int(N * U(p_i, p_{i+1}))`` patches with ``p = linspace(lo, hi, n + 1)`` (float32, as DINOv2),
    so the masked images' ratios are spread over the whole range; the remaining images get empty
    masks; the list is then shuffled. In DINOv2 ``batch_size`` counts global crops
    (n_global_crops * images per GPU), since every student global crop gets its own mask.

    Args:
        batch_size: B, number of global crops the student sees.
        grid: (H, W) patch grid (e.g. (16, 16) for 224 px and patch 14).
        mask_probability: fraction of the batch that is masked (DINOv2: 0.5).
        mask_ratio_range: (min, max) masked fraction per masked image (DINOv2: (0.1, 0.5)).
        generator: ``random.Random`` or int seed; drives ratios, blocks and the shuffle.
        mask_generator: optional pre-built generator for ``grid`` (defaults: min 4 patches per block,
            aspect (0.3, 1/0.3), at most 0.5 * N patches per block).

    Returns:
        (B, H*W) bool tensor: ``bool_masked_pos`` for a HF ``Dinov2Model`` (True = use mask token).
    """
    rng = _as_rng(generator)
    height, width = grid
    if mask_generator is None:
        mask_generator = MaskingGenerator((height, width))
    elif mask_generator.get_shape() != (height, width):
        raise ValueError(f"mask_generator grid {mask_generator.get_shape()} != {grid}")
    num_tokens = height * width
    n_samples_masked = int(batch_size * mask_probability)
    probs = torch.linspace(mask_ratio_range[0], mask_ratio_range[1], n_samples_masked + 1).tolist()
    masks_list = []
    for i in range(n_samples_masked):
        n_target = int(num_tokens * rng.uniform(probs[i], probs[i + 1]))
        masks_list.append(torch.from_numpy(mask_generator(n_target, generator=rng)))
    for _ in range(n_samples_masked, batch_size):
        masks_list.append(torch.zeros(height, width, dtype=torch.bool))
    rng.shuffle(masks_list)
    if not masks_list:
        return torch.zeros(0, num_tokens, dtype=torch.bool)
    return torch.stack(masks_list).flatten(1)


def masks_upperbound(
    batch_size: int, num_tokens: int, mask_probability: float = 0.5, mask_ratio_range: tuple[float, float] = (0.1, 0.5)
) -> int:
    """DINOv2's ``upperbound``: a static bound on the total masked patches of a batch (for padding buffers).

    ``sum_i int(N * p_{i+1})`` over the masked images (see :func:`sample_batch_masks`).
    """
    n_samples_masked = int(batch_size * mask_probability)
    probs = torch.linspace(mask_ratio_range[0], mask_ratio_range[1], n_samples_masked + 1).tolist()
    return sum(int(num_tokens * probs[i + 1]) for i in range(n_samples_masked))
