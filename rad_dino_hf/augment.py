"""DINOv2 multi-crop augmentation for grey-level radiographs, in plain torch (no torchvision).

Mirrors ``dinov2/data/augmentations.py::DataAugmentationDINO``:

* geometry: RandomResizedCrop (bicubic, antialiased) + horizontal flip p=0.5;
* ColorJitter(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1) with p=0.8, then
  RandomGrayscale(p=0.2). On a grey image (R = G = B) saturation, hue and grayscale conversion are
  exact identities, so only brightness and contrast are implemented -- the result is the same
  distribution, not an approximation. Brightness/contrast are applied in random order per crop, as
  ColorJitter's random permutation does;
* Gaussian blur (9-tap kernel, sigma ~ U(0.1, 2.0), reflect padding): global crop 1 p=1.0, global
  crop 2 p=0.1, locals p=0.5; solarisation p=0.2 on global crop 2 only;
* normalisation with the RAD-DINO grey mean/std, repeated to 3 channels.

Blur probability quirk: DINOv2's ``GaussianBlur`` passes ``1 - p`` to torchvision's ``RandomApply``
(facebookresearch/dinov2 PR #411, dinov3 issue #286), so the released DINOv2 code blurs global crop
1 *never*, global crop 2 with p=0.9 and locals with p=0.5. Here ``p`` means "probability of
blurring" (DINO/BYOL semantics) and ``dinov2_blur_quirk=True`` reproduces the released behaviour.

Images are processed as float32 in [0, 1] on a single grey channel (3-channel inputs are averaged,
which is exact for R = G = B radiographs); every op accepts (C, H, W) or batched (B, C, H, W), with
independent random parameters per batch element. All randomness goes through an optional
``torch.Generator``; ``None`` uses torch's global RNG (which DataLoader workers seed differently).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from image_processing_rad_dino import RAD_DINO_IMAGE_MEAN, RAD_DINO_IMAGE_STD

if TYPE_CHECKING:
    from rad_dino_hf.recipe import CropsConfig

# One grey value: the released processor's constant (repeated over RGB there), so training and inference agree.
RAD_DINO_MEAN: float = RAD_DINO_IMAGE_MEAN[0]
RAD_DINO_STD: float = RAD_DINO_IMAGE_STD[0]

Generator = torch.Generator | None


# ----------------------------------------------------------------------------- helpers


def _rand(n: int, generator: Generator) -> torch.Tensor:
    """(n,) float64 uniforms in [0, 1)."""
    return torch.rand(n, generator=generator, dtype=torch.float64)


def _uniform(lo: float, hi: float, n: int, generator: Generator) -> torch.Tensor:
    """(n,) float64 uniforms in [lo, hi)."""
    return lo + (hi - lo) * _rand(n, generator)


def _as_batch(img: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """(C, H, W) -> (1, C, H, W); returns whether a batch dim was added."""
    if img.ndim == 3:
        return img.unsqueeze(0), True
    if img.ndim == 4:
        return img, False
    raise ValueError(f"expected (C, H, W) or (B, C, H, W), got shape {tuple(img.shape)}")


def _bernoulli(p: float | Sequence[float] | torch.Tensor, n: int, generator: Generator) -> torch.Tensor:
    """(n,) bool, element i True with probability p (scalar or per element)."""
    probs = torch.as_tensor(p, dtype=torch.float64).expand(n)
    return _rand(n, generator) < probs


def to_float_grey(img: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] or float [0, 1], 1 or 3 channels -> float32 [0, 1] with one channel.

    Args:
        img: (C, H, W) or (B, C, H, W), C in {1, 3}.

    Returns:
        (1, H, W) or (B, 1, H, W) float32. RGB is averaged (exact for grey images stored as RGB).
    """
    x = img.float() / 255.0 if img.dtype == torch.uint8 else img.float()
    c = x.shape[-3]
    if c == 3:
        x = x.mean(dim=-3, keepdim=True)
    elif c != 1:
        raise ValueError(f"expected 1 or 3 channels, got {c}")
    return x


# ----------------------------------------------------------------------------- geometry


def get_crop_params(
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    generator: Generator = None,
) -> tuple[int, int, int, int]:
    """RandomResizedCrop box, torchvision's algorithm (10 tries, then a ratio-clamped center crop).

    Args:
        height, width: input size.
        scale: (min, max) fraction of the input area.
        ratio: (min, max) aspect ratio w / h, sampled log-uniformly.

    Returns:
        (top, left, h, w).
    """
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    draws = _rand(40, generator).tolist()  # one batched draw: 4 uniforms per attempt
    for attempt in range(10):
        u_area, u_ratio, u_top, u_left = draws[4 * attempt : 4 * attempt + 4]
        target_area = area * (scale[0] + (scale[1] - scale[0]) * u_area)
        aspect = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * u_ratio)
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = min(int(u_top * (height - h + 1)), height - h)
            left = min(int(u_left * (width - w + 1)), width - w)
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def resized_crop(img: torch.Tensor, top: int, left: int, h: int, w: int, size: int) -> torch.Tensor:
    """Crop a box and resize it to (size, size), bicubic with antialiasing, clamped to [0, 1].

    Args:
        img: (C, H, W) or (B, C, H, W) float in [0, 1] (same box for every batch element).

    Returns:
        (C, size, size) or (B, C, size, size).
    """
    x, squeeze = _as_batch(img)
    x = x[..., top : top + h, left : left + w]
    # bicubic overshoots at edges; clamp like a uint8 PIL pipeline would
    out = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=True).clamp_(0.0, 1.0)
    return out[0] if squeeze else out


def random_resized_crop(
    img: torch.Tensor,
    size: int,
    scale: tuple[float, float],
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    generator: Generator = None,
) -> torch.Tensor:
    """RandomResizedCrop; an independent box per batch element.

    Args:
        img: (C, H, W) or (B, C, H, W) float in [0, 1].
        size: output side length.
        scale: (min, max) area fraction.
        ratio: (min, max) aspect ratio.

    Returns:
        (C, size, size) or (B, C, size, size).
    """
    x, squeeze = _as_batch(img)
    height, width = x.shape[-2:]
    crops = []
    for i in range(len(x)):  # crop sizes differ per element, so resize one at a time
        crops.append(resized_crop(x[i : i + 1], *get_crop_params(height, width, scale, ratio, generator), size))
    out = torch.cat(crops)
    return out[0] if squeeze else out


def random_horizontal_flip(img: torch.Tensor, p: float = 0.5, generator: Generator = None) -> torch.Tensor:
    """Flip the last axis of each batch element with probability p.

    Args:
        img: (C, H, W) or (B, C, H, W).

    Returns:
        same shape.
    """
    x, squeeze = _as_batch(img)
    flip = _bernoulli(p, len(x), generator)
    if flip.any():
        x = x.clone()
        x[flip] = x[flip].flip(-1)
    return x[0] if squeeze else x


# ----------------------------------------------------------------------------- photometric


def adjust_brightness(img: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``clamp(factor * img, 0, 1)`` (torchvision semantics).

    Args:
        img: (B, C, H, W) float in [0, 1].
        factor: (B,) brightness factors.
    """
    return (img * factor.view(-1, 1, 1, 1).to(img.dtype)).clamp_(0.0, 1.0)


def adjust_contrast(img: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``clamp(factor * img + (1 - factor) * mean(img), 0, 1)`` per image (torchvision semantics for grey).

    Args:
        img: (B, C, H, W) float in [0, 1] (grey; for C = 3 the channel mean stands in for luma).
        factor: (B,) contrast factors.
    """
    f = factor.view(-1, 1, 1, 1).to(img.dtype)
    mean = img.mean(dim=(-3, -2, -1), keepdim=True)
    return (f * img + (1 - f) * mean).clamp_(0.0, 1.0)


def random_brightness_contrast(
    img: torch.Tensor,
    brightness: float = 0.4,
    contrast: float = 0.4,
    p: float = 0.8,
    generator: Generator = None,
) -> torch.Tensor:
    """Grey-level ColorJitter: with probability p, brightness and contrast factors ~ U(1 -/+ x), random order.

    Args:
        img: (C, H, W) or (B, C, H, W) float in [0, 1].

    Returns:
        same shape, in [0, 1].
    """
    x, squeeze = _as_batch(img)
    n = len(x)
    apply = _bernoulli(p, n, generator)
    b = torch.where(apply, _uniform(max(0.0, 1 - brightness), 1 + brightness, n, generator), 1.0)
    c = torch.where(apply, _uniform(max(0.0, 1 - contrast), 1 + contrast, n, generator), 1.0)
    brightness_first = (_rand(n, generator) < 0.5).view(-1, 1, 1, 1)
    if apply.any():
        y = torch.where(brightness_first, adjust_brightness(x, b), adjust_contrast(x, c))
        x = torch.where(brightness_first, adjust_contrast(y, c), adjust_brightness(y, b))
    return x[0] if squeeze else x


def gaussian_kernel1d(sigma: torch.Tensor, kernel_size: int = 9) -> torch.Tensor:
    """Normalised 1-D Gaussian taps at integer offsets (torchvision's ``_get_gaussian_kernel1d``).

    Args:
        sigma: (B,) standard deviations in pixels.

    Returns:
        (B, kernel_size) float32, rows sum to 1.
    """
    half = (kernel_size - 1) * 0.5
    x = torch.linspace(-half, half, kernel_size, dtype=torch.float64)
    pdf = torch.exp(-0.5 * (x / sigma.double().view(-1, 1)) ** 2)
    return (pdf / pdf.sum(-1, keepdim=True)).float()


def gaussian_blur(img: torch.Tensor, sigma: torch.Tensor | float, kernel_size: int = 9) -> torch.Tensor:
    """Separable Gaussian blur with a per-image sigma and reflect padding (torchvision semantics).

    Args:
        img: (C, H, W) or (B, C, H, W) float.
        sigma: scalar or (B,) sigmas.
        kernel_size: odd number of taps.

    Returns:
        same shape.
    """
    x, squeeze = _as_batch(img)
    b, c, h, w = x.shape
    sigma = torch.as_tensor(sigma, dtype=torch.float64).expand(b)
    k = gaussian_kernel1d(sigma, kernel_size).repeat_interleave(c, dim=0)  # (B*C, k): one filter per plane
    pad = kernel_size // 2
    # fold the batch into channels so one grouped conv blurs every image with its own kernel
    planes = F.pad(x.reshape(1, b * c, h, w), (pad, pad, pad, pad), mode="reflect")
    planes = F.conv2d(planes, k.view(b * c, 1, 1, kernel_size), groups=b * c)
    planes = F.conv2d(planes, k.view(b * c, 1, kernel_size, 1), groups=b * c)
    out = planes.view(b, c, h, w)
    return out[0] if squeeze else out


def random_gaussian_blur(
    img: torch.Tensor,
    p: float | Sequence[float] | torch.Tensor = 0.5,
    sigma_range: tuple[float, float] = (0.1, 2.0),
    kernel_size: int = 9,
    generator: Generator = None,
) -> torch.Tensor:
    """Blur each image with probability p (scalar or per image), sigma ~ U(sigma_range).

    Args:
        img: (C, H, W) or (B, C, H, W) float.

    Returns:
        same shape.
    """
    x, squeeze = _as_batch(img)
    n = len(x)
    apply = _bernoulli(p, n, generator)
    sigma = _uniform(sigma_range[0], sigma_range[1], n, generator)
    if apply.any():
        x = x.clone()
        x[apply] = gaussian_blur(x[apply], sigma[apply], kernel_size)  # only blur the selected images
    return x[0] if squeeze else x


def solarize(img: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Invert pixels ``>= threshold``: ``where(x >= t, 1 - x, x)`` (torchvision semantics, [0, 1] scale)."""
    return torch.where(img >= threshold, 1.0 - img, img)


def random_solarize(
    img: torch.Tensor,
    p: float | Sequence[float] | torch.Tensor = 0.2,
    threshold: float = 0.5,
    generator: Generator = None,
) -> torch.Tensor:
    """Solarise each image with probability p (scalar or per image).

    Args:
        img: (C, H, W) or (B, C, H, W) float in [0, 1].
    """
    x, squeeze = _as_batch(img)
    apply = _bernoulli(p, len(x), generator).view(-1, 1, 1, 1)
    x = torch.where(apply, solarize(x, threshold), x)
    return x[0] if squeeze else x


def normalize(
    img: torch.Tensor, mean: float = RAD_DINO_MEAN, std: float = RAD_DINO_STD, out_channels: int = 3
) -> torch.Tensor:
    """``(x - mean) / std`` on a grey image, repeated to ``out_channels`` channels (contiguous).

    Args:
        img: (1, H, W) or (B, 1, H, W) float in [0, 1].

    Returns:
        (out_channels, H, W) or (B, out_channels, H, W) float32.
    """
    y = (img.float() - mean) / std
    reps = [1] * y.ndim
    reps[-3] = out_channels // y.shape[-3]
    return y.repeat(*reps)


# ----------------------------------------------------------------------------- multi-crop


class MultiCropAugmentation:
    """DINOv2 multi-crop views of one radiograph: 2 global crops + n local crops.

    Args:
        global_crops_scale: area fraction range of the global crops (DINOv2: (0.32, 1.0)).
        local_crops_scale: area fraction range of the local crops (DINOv2: (0.05, 0.32)).
        local_crops_number: number of local crops (DINOv2: 8).
        global_crops_size: global crop side (224).
        local_crops_size: local crop side (98 for patch 14).
        flip_probability: horizontal flip probability (0.5).
        jitter_probability: probability of brightness/contrast jitter (0.8).
        brightness, contrast: jitter strengths (0.4, 0.4).
        blur_probabilities: (global 1, global 2, locals) probability of blurring (1.0, 0.1, 0.5).
        blur_sigma: sigma range (0.1, 2.0).
        blur_kernel_size: taps (9).
        dinov2_blur_quirk: use ``1 - p`` for the blur, as the released DINOv2 code does.
        solarize_probability: solarisation probability for global crop 2 (0.2).
        solarize_threshold: threshold on the [0, 1] scale (0.5 ~ 128/255).
        mean, std: grey normalisation (RAD-DINO 0.5307 / 0.2583).
        ratio: aspect-ratio range of the crops ((3/4, 4/3), torchvision default).
        seed: seeds a private ``torch.Generator``; ``None`` uses torch's global RNG (so DataLoader
            workers differ). With a seed, call :meth:`reseed` per worker, or all workers repeat.
    """

    def __init__(
        self,
        global_crops_scale: tuple[float, float] = (0.32, 1.0),
        local_crops_scale: tuple[float, float] = (0.05, 0.32),
        local_crops_number: int = 8,
        global_crops_size: int = 224,
        local_crops_size: int = 98,
        flip_probability: float = 0.5,
        jitter_probability: float = 0.8,
        brightness: float = 0.4,
        contrast: float = 0.4,
        blur_probabilities: tuple[float, float, float] = (1.0, 0.1, 0.5),
        blur_sigma: tuple[float, float] = (0.1, 2.0),
        blur_kernel_size: int = 9,
        dinov2_blur_quirk: bool = False,
        solarize_probability: float = 0.2,
        solarize_threshold: float = 0.5,
        mean: float = RAD_DINO_MEAN,
        std: float = RAD_DINO_STD,
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        seed: int | None = None,
    ) -> None:
        self.global_crops_scale = tuple(global_crops_scale)
        self.local_crops_scale = tuple(local_crops_scale)
        self.local_crops_number = local_crops_number
        self.global_crops_size = global_crops_size
        self.local_crops_size = local_crops_size
        self.flip_probability = flip_probability
        self.jitter_probability = jitter_probability
        self.brightness = brightness
        self.contrast = contrast
        blur = tuple(blur_probabilities)
        self.blur_probabilities = tuple(1.0 - p for p in blur) if dinov2_blur_quirk else blur
        self.blur_sigma = tuple(blur_sigma)
        self.blur_kernel_size = blur_kernel_size
        self.solarize_probability = solarize_probability
        self.solarize_threshold = solarize_threshold
        self.mean = mean
        self.std = std
        self.ratio = tuple(ratio)
        self.generator: torch.Generator | None = None
        if seed is not None:
            self.reseed(seed)

    @classmethod
    def from_config(cls, crops: CropsConfig, seed: int | None = None) -> MultiCropAugmentation:
        """Build from a :class:`rad_dino_hf.recipe.CropsConfig`."""
        if crops.global_crops_number != 2:
            raise ValueError("the DINOv2 recipe uses exactly 2 global crops")
        return cls(
            global_crops_scale=crops.global_crops_scale,
            local_crops_scale=crops.local_crops_scale,
            local_crops_number=crops.local_crops_number,
            global_crops_size=crops.global_crops_size,
            local_crops_size=crops.local_crops_size,
            flip_probability=crops.flip_probability,
            jitter_probability=crops.jitter_probability,
            brightness=crops.brightness,
            contrast=crops.contrast,
            blur_probabilities=crops.blur_probabilities,
            blur_sigma=crops.blur_sigma,
            blur_kernel_size=crops.blur_kernel_size,
            dinov2_blur_quirk=crops.dinov2_blur_quirk,
            solarize_probability=crops.solarize_probability,
            solarize_threshold=crops.solarize_threshold,
            mean=crops.mean,
            std=crops.std,
            seed=seed,
        )

    def reseed(self, seed: int) -> None:
        """(Re)create the private generator from ``seed`` (e.g. ``base_seed + worker_id``)."""
        self.generator = torch.Generator().manual_seed(seed)

    def _views(
        self,
        grey: torch.Tensor,
        n: int,
        size: int,
        scale: tuple[float, float],
        blur_p: Sequence[float],
        solarize_p: Sequence[float],
        g: Generator,
    ) -> torch.Tensor:
        """(n, 3, size, size) normalised views of a (1, H, W) grey image; photometric ops batched."""
        h, w = grey.shape[-2:]
        views = torch.cat(
            [resized_crop(grey[None], *get_crop_params(h, w, scale, self.ratio, g), size) for _ in range(n)]
        )
        views = random_horizontal_flip(views, self.flip_probability, g)
        views = random_brightness_contrast(views, self.brightness, self.contrast, self.jitter_probability, g)
        blur_p_t = torch.tensor(blur_p, dtype=torch.float64)
        views = random_gaussian_blur(views, blur_p_t, self.blur_sigma, self.blur_kernel_size, g)
        if any(p > 0 for p in solarize_p):
            views = random_solarize(views, torch.tensor(solarize_p, dtype=torch.float64), self.solarize_threshold, g)
        return normalize(views, self.mean, self.std, out_channels=3)

    def __call__(self, image: torch.Tensor, generator: Generator = None) -> dict[str, list[torch.Tensor]]:
        """
        Args:
            image: (C, H, W), C in {1, 3}, float in [0, 1] or uint8.
            generator: overrides the instance generator for this call.

        Returns:
            ``{"global_crops": [2 x (3, G, G)], "local_crops": [n x (3, L, L)]}`` float32, normalised.
        """
        if image.ndim != 3:
            raise ValueError(f"expected (C, H, W), got {tuple(image.shape)}")
        g = generator if generator is not None else self.generator
        grey = to_float_grey(image)
        p1, p2, p_local = self.blur_probabilities
        global_crops = self._views(
            grey, 2, self.global_crops_size, self.global_crops_scale, (p1, p2), (0.0, self.solarize_probability), g
        )
        out = {"global_crops": list(global_crops.unbind(0)), "local_crops": []}
        if self.local_crops_number > 0:
            n = self.local_crops_number
            local_crops = self._views(
                grey, n, self.local_crops_size, self.local_crops_scale, (p_local,) * n, (0.0,) * n, g
            )
            out["local_crops"] = list(local_crops.unbind(0))
        return out
