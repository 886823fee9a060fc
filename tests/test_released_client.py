"""Microsoft's released client (`pip install rad-dino`, `from rad_dino import RadDino`) reads this repository's exports.

The client loads `RadDino._REPO` with stock `AutoModel` / `AutoImageProcessor`; here it points at a local export.
This repository's machinery package is `rad_dino_hf`, so `import rad_dino` from the repository root is the client.
"""

from importlib.metadata import distribution
from pathlib import Path

import rad_dino  # the client (rad-dino==0.1.1 in requirements.txt), found from the repository root
import torch
from PIL import Image

from image_processing_rad_dino import RadDinoImageProcessor

SAMPLE_IMAGE = Path(__file__).resolve().parents[1] / "data" / "sample" / "images" / "00870a9c.png"


def test_import_is_the_released_client_not_this_repository():
    client = distribution("rad-dino")
    assert client.version == "0.1.1"
    assert Path(rad_dino.__file__).resolve() == Path(client.locate_file("rad_dino/__init__.py")).resolve()


def test_released_client_loads_an_export_with_equal_features(tiny_model, tiny_model_dir):
    class LocalRadDino(rad_dino.RadDino):
        _REPO = str(tiny_model_dir)

    client = LocalRadDino()
    assert type(client.model).__name__ == "Dinov2Model"  # stock transformers, as for microsoft/rad-dino
    image = Image.open(SAMPLE_IMAGE).convert("RGB")
    cls_token, patch_grid = client.extract_features(image)

    pixels = RadDinoImageProcessor.from_pretrained(tiny_model_dir)(image, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        ours = tiny_model(pixels)
    assert cls_token.shape == (1, 64) and patch_grid.shape == (1, 64, 4, 4)  # 56 px / 14 px patches
    assert (cls_token - ours.cls_embeddings).abs().max() <= 1e-5
    assert (patch_grid - ours.patch_embeddings).abs().max() <= 1e-5
