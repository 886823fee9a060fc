"""Shared fixtures: tiny RAD-DINO configs and the path of the shared real data."""

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture
def tiny_config():
    from configuration_rad_dino import RadDinoConfig

    return RadDinoConfig(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=56,
        dino_head_hidden_size=32,
        dino_head_bottleneck_size=16,
        dino_head_n_prototypes=50,
    )


@pytest.fixture
def tiny_model(tiny_config):
    from modeling_rad_dino import RadDinoModel

    torch.manual_seed(0)
    model = RadDinoModel(tiny_config).eval()
    # Non-trivial LayerScale and mask token so that tests notice if either is dropped or misplaced.
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("lambda1") or name.endswith("mask_token"):
                parameter.normal_()
    return model


@pytest.fixture
def shared_data():
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared real data not found at {SHARED_DATA}")
    return SHARED_DATA
