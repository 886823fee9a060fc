"""Augmentation: shapes, normalisation bounds, determinism and op semantics against plain formulas."""

import math

import pytest
import torch

from rad_dino_hf.augment import (
    RAD_DINO_MEAN,
    RAD_DINO_STD,
    MultiCropAugmentation,
    adjust_brightness,
    adjust_contrast,
    gaussian_blur,
    get_crop_params,
    random_horizontal_flip,
    random_resized_crop,
    random_solarize,
    solarize,
)


def radiograph(h=300, w=260, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, h, w, generator=g)


def test_multicrop_shapes_dtype_and_normalisation_bounds():
    aug = MultiCropAugmentation(local_crops_number=5, seed=0)
    out = aug(radiograph())
    assert set(out) == {"global_crops", "local_crops"}
    assert len(out["global_crops"]) == 2 and len(out["local_crops"]) == 5
    lo, hi = (0 - RAD_DINO_MEAN) / RAD_DINO_STD, (1 - RAD_DINO_MEAN) / RAD_DINO_STD
    for crop, size in [(c, 224) for c in out["global_crops"]] + [(c, 98) for c in out["local_crops"]]:
        assert crop.shape == (3, size, size) and crop.dtype == torch.float32
        assert torch.isfinite(crop).all()
        assert crop.min() >= lo - 1e-5 and crop.max() <= hi + 1e-5
        assert torch.equal(crop[0], crop[1]) and torch.equal(crop[1], crop[2])


def test_uint8_rgb_input_equals_float_grey():
    grey = (radiograph() * 255).round().to(torch.uint8)
    rgb = grey.expand(3, -1, -1).clone()
    a = MultiCropAugmentation(seed=3)(rgb)
    b = MultiCropAugmentation(seed=3)(grey.float() / 255)
    for x, y in zip(a["global_crops"] + a["local_crops"], b["global_crops"] + b["local_crops"]):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=0)


def test_determinism_with_seed():
    img = radiograph()
    a, b = MultiCropAugmentation(seed=7)(img), MultiCropAugmentation(seed=7)(img)
    c = MultiCropAugmentation(seed=8)(img)
    assert all(torch.equal(x, y) for x, y in zip(a["local_crops"], b["local_crops"]))
    assert all(torch.equal(x, y) for x, y in zip(a["global_crops"], b["global_crops"]))
    assert not torch.equal(a["global_crops"][0], c["global_crops"][0])


def test_flip_semantics():
    x = torch.rand(4, 1, 5, 6)
    assert torch.equal(random_horizontal_flip(x, p=1.0), torch.flip(x, dims=[-1]))
    assert torch.equal(random_horizontal_flip(x, p=0.0), x)
    assert torch.equal(random_horizontal_flip(x[0], p=1.0), torch.flip(x[0], dims=[-1]))


def test_solarize_on_ramp():
    ramp = torch.linspace(0, 1, 11).view(1, 1, 11)
    expected = [1 - v if v >= 0.5 else v for v in ramp.flatten().tolist()]
    assert solarize(ramp, 0.5).flatten().tolist() == pytest.approx(expected)
    assert torch.equal(random_solarize(ramp, p=1.0), solarize(ramp))
    assert torch.equal(random_solarize(ramp, p=0.0), ramp)


def test_brightness_contrast_formulas():
    x = torch.tensor([0.1, 0.5, 0.9, 0.3]).view(1, 1, 2, 2)
    got_b = adjust_brightness(x, torch.tensor([1.3])).flatten().tolist()
    assert got_b == pytest.approx([min(1.0, 1.3 * v) for v in [0.1, 0.5, 0.9, 0.3]])
    mean = (0.1 + 0.5 + 0.9 + 0.3) / 4
    got_c = adjust_contrast(x, torch.tensor([0.6])).flatten().tolist()
    assert got_c == pytest.approx([min(1.0, max(0.0, 0.6 * v + 0.4 * mean)) for v in [0.1, 0.5, 0.9, 0.3]])


def test_gaussian_blur_kernel_and_per_image_sigma():
    x = torch.zeros(2, 1, 21, 21)
    x[:, :, 10, 10] = 1.0
    sigmas = [0.7, 1.9]
    out = gaussian_blur(x, torch.tensor(sigmas), kernel_size=9)
    for img, s in zip(out, sigmas):
        taps = [math.exp(-0.5 * (i / s) ** 2) for i in range(-4, 5)]
        taps = [t / sum(taps) for t in taps]
        expected = torch.tensor([[a * b for b in taps] for a in taps])
        torch.testing.assert_close(img[0, 6:15, 6:15], expected, atol=1e-6, rtol=0)
        assert img.sum().item() == pytest.approx(1.0, abs=1e-5)
    const = torch.full((1, 12, 12), 0.3)
    torch.testing.assert_close(gaussian_blur(const, 1.5), const)  # reflect padding keeps constants


def test_crop_params_and_identity_crop():
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        top, left, h, w = get_crop_params(300, 260, (0.05, 0.32), (3 / 4, 4 / 3), g)
        assert 0 <= top <= 300 - h and 0 <= left <= 260 - w
        area = h * w / (300 * 260)
        assert 0.05 * 0.9 <= area <= 0.32 * 1.1
        assert 3 / 4 * 0.85 <= w / h <= 4 / 3 * 1.15
    img = radiograph(64, 64)
    same = random_resized_crop(img, 64, scale=(1.0, 1.0), ratio=(1.0, 1.0), generator=g)
    torch.testing.assert_close(same, img, atol=1e-6, rtol=0)  # full-image box, no resampling needed


def test_blur_quirk_inverts_probabilities():
    assert MultiCropAugmentation(dinov2_blur_quirk=True).blur_probabilities == pytest.approx((0.0, 0.9, 0.5))
    assert MultiCropAugmentation().blur_probabilities == (1.0, 0.1, 0.5)


@pytest.mark.parametrize("quirk, expected", [(False, (1.0, 0.1, 0.5)), (True, (0.0, 0.9, 0.5))])
def test_blur_quirk_blurs_crops_at_its_rates(quirk, expected):
    """Blur frequency per crop, seen in the crops: each crop is compared with the same draw without blur (blur
    draws its coin and sigma either way, so the two generators stay in step and only blurred crops differ)."""
    geometry = dict(global_crops_size=28, local_crops_size=14, local_crops_number=4, solarize_probability=0.0)
    augmentation = MultiCropAugmentation(dinov2_blur_quirk=quirk, **geometry)
    no_blur = MultiCropAugmentation(blur_probabilities=(0.0, 0.0, 0.0), **geometry)
    n_images, counts = 200, torch.zeros(3)
    for seed in range(n_images):
        image = radiograph(64, 64, seed)
        blurred = augmentation(image, torch.Generator().manual_seed(seed))
        plain = no_blur(image, torch.Generator().manual_seed(seed))
        crops = zip(blurred["global_crops"] + blurred["local_crops"], plain["global_crops"] + plain["local_crops"])
        changed = [not torch.equal(a, b) for a, b in crops]
        counts += torch.tensor([changed[0], changed[1], sum(changed[2:]) / 4])
    rates = (counts / n_images).tolist()
    # A blur with sigma near 0.1 leaves a float32 crop unchanged (~2 % of draws): blurred crops show a little less.
    assert rates[0] == pytest.approx(expected[0], abs=0.05) and rates[1] == pytest.approx(expected[1], abs=0.07)
    assert rates[2] == pytest.approx(expected[2], abs=0.07)


@pytest.mark.parametrize("config", ["rad_dino_vitb14.yaml", "rad_dino_vitb14_highres.yaml"])
def test_rad_dino_configs_blur_as_rad_dino_trained(config):
    from pathlib import Path

    from rad_dino_hf.recipe import RecipeConfig

    crops = RecipeConfig.from_yaml(Path(__file__).resolve().parents[1] / "configs" / config).crops
    assert MultiCropAugmentation.from_config(crops).blur_probabilities == pytest.approx((0.0, 0.9, 0.5))


@pytest.mark.parametrize("source", ["recipe", "defaults"])
def test_pretraining_normalisation_is_the_processors(source):
    """Crops of a flat grey image equal the inference processor's output for it: the encoder sees the same
    intensities in pretraining and in use (a different augmentation mean/std would shift every input)."""
    import dataclasses

    import numpy as np

    from image_processing_rad_dino import RadDinoImageProcessor
    from rad_dino_hf.recipe import CropsConfig

    no_jitter = {"jitter_probability": 0.0, "solarize_probability": 0.0, "local_crops_number": 1}
    if source == "recipe":
        crops = dataclasses.replace(CropsConfig(), global_crops_size=28, local_crops_size=14, **no_jitter)
        augmentation = MultiCropAugmentation.from_config(crops, seed=0)
    else:
        augmentation = MultiCropAugmentation(global_crops_size=28, local_crops_size=14, seed=0, **no_jitter)
    processor = RadDinoImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28})
    for grey in (0, 77, 200):
        image = np.full((40, 36), grey, dtype=np.uint8)
        expected = float(processor(image, return_tensors="np")["pixel_values"][0, 0, 0, 0])
        assert expected == pytest.approx((grey / 255 - 0.5307) / 0.2583, abs=1e-5)  # the released constants
        out = augmentation(torch.from_numpy(image)[None])
        for crop in out["global_crops"] + out["local_crops"]:
            torch.testing.assert_close(crop, torch.full_like(crop, expected), atol=1e-5, rtol=0)
