"""benchmarks/head_geometry.py: the DINO head's geometry against hand computations."""

import importlib.util
import math
import sys

import pytest
import torch

from conftest import REPO_ROOT


@pytest.fixture(scope="module")
def geometry():
    spec = importlib.util.spec_from_file_location("head_geometry", REPO_ROOT / "benchmarks" / "head_geometry.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["head_geometry"] = module
    spec.loader.exec_module(module)
    return module


def orthonormal_head(tiny_config):
    """A DINO head whose prototypes are the d unit axes (K = d = 16), gains 1."""
    from rad_dino_hf.heads import DinoHead

    tiny_config.dino_head_n_prototypes = tiny_config.dino_head_bottleneck_size
    head = DinoHead(tiny_config)
    with torch.no_grad():
        head.last_layer.parametrizations.weight.original1.copy_(torch.eye(16))
    return head


def test_one_direction_for_every_image(geometry, tiny_config):
    head = orthonormal_head(tiny_config)
    z = torch.zeros(5, 16)
    z[:, 0] = 3.0  # unnormalised on purpose: the head normalises
    z[0, 1] = 1e-3  # a tiny image-specific part, so that the variation is defined
    numbers = geometry.head_geometry(z, head, center=torch.zeros(1, 16), temperature=0.5)

    assert numbers["z pairwise cosine (mean)"] == pytest.approx(1.0, abs=1e-6)
    assert numbers["prototype energy in top direction"] == pytest.approx(1 / 16)
    # 16 random directions in 16 dimensions are far from orthonormal: the top one holds well above 1/16.
    assert 1.5 / 16 < numbers["same for random prototypes"] < (1 + 1) ** 2 / 16
    # Logits are one-hot(0): mean 1/16, std sqrt((1 - 1/16)^2 + 15 (1/16)^2) / sqrt(15) over the 16 prototypes.
    assert numbers["logit std across prototypes"] == pytest.approx(math.sqrt((15 / 16) / 15), rel=1e-4)
    # Target softmax(one-hot / 0.5): e^2 on prototype 0, 1 on the other 15.
    top = math.exp(2) / (math.exp(2) + 15)
    rest = 1 / (math.exp(2) + 15)
    expected = -(top * math.log(top) + 15 * rest * math.log(rest))
    assert numbers["per-image target entropy"] == pytest.approx(expected, rel=1e-4)
    assert numbers["entropy of the mean target"] == pytest.approx(expected, rel=1e-4)
    assert numbers["ln K"] == pytest.approx(math.log(16))


def test_random_prototypes_approach_isotropy_as_k_grows(geometry):
    dim = 32
    few, many = geometry.random_prototype_energy(64, dim), geometry.random_prototype_energy(65536, dim)
    assert 1 / dim < many < few
    assert many == pytest.approx((1 + (dim / 65536) ** 0.5) ** 2 / dim, rel=0.05)  # Marchenko-Pastur edge


def test_images_on_distinct_prototypes(geometry, tiny_config):
    head = orthonormal_head(tiny_config)
    z = torch.eye(16)[:4]  # four images, each on its own axis
    numbers = geometry.head_geometry(z, head, center=torch.zeros(1, 16), temperature=1e-3)

    assert numbers["z pairwise cosine (mean)"] == pytest.approx(0.0, abs=1e-6)
    assert numbers["per-image target entropy"] == pytest.approx(0.0, abs=1e-4)  # sharp one-hot targets
    assert numbers["entropy of the mean target"] == pytest.approx(math.log(4), rel=1e-4)  # uniform over 4
    # z - mean(z) spans 3 directions equally: the top 2 carry 2/3 of the variation.
    assert numbers["z variation in top 2 directions"] == pytest.approx(2 / 3, rel=1e-4)
