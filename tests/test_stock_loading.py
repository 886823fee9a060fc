"""An export of this repository loads silently with stock transformers entry points, as `microsoft/rad-dino` does."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch
from PIL import Image

from image_processing_rad_dino import RadDinoImageProcessor

SAMPLE_IMAGE = Path(__file__).resolve().parents[1] / "data" / "sample" / "images" / "006f3a8a.png"


def _sample_image() -> Image.Image:
    return Image.open(SAMPLE_IMAGE).convert("RGB")


def test_pipeline_loads_an_export_silently_with_stock_classes(tiny_model, tiny_model_dir, tmp_path):
    """`pipeline(...)` asks no question (stdin closed, `input` forbidden) and equals `RadDinoModel` on our pixels."""
    image_path = tmp_path / "image.png"
    _sample_image().save(image_path)
    script = textwrap.dedent(
        f"""
        import builtins, json, sys
        def no_prompt(*args, **kwargs):  # an interactive question exits the process (SystemExit is not swallowed)
            print("PROMPTED:", args, file=sys.stderr)
            raise SystemExit(3)
        builtins.input = no_prompt
        from PIL import Image
        from transformers import AutoConfig, AutoImageProcessor, AutoModel, pipeline
        directory = {str(tiny_model_dir)!r}
        extractor = pipeline("image-feature-extraction", model=directory)
        features = extractor(Image.open({str(image_path)!r}))
        print(json.dumps({{
            "pipeline": [type(extractor.model).__name__, type(extractor.image_processor).__name__],
            "auto": [type(AutoModel.from_pretrained(directory)).__name__,
                     type(AutoImageProcessor.from_pretrained(directory)).__name__,
                     type(AutoConfig.from_pretrained(directory)).__name__],
            "features": features,
        }}))
        """
    )
    # A clean interpreter outside the repository (no local modules on sys.path), without a terminal.
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "custom code" not in result.stdout + result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["pipeline"] == ["Dinov2Model", "BitImageProcessorPil"]
    assert report["auto"] == ["Dinov2Model", "BitImageProcessorPil", "Dinov2Config"]

    pixels = RadDinoImageProcessor.from_pretrained(tiny_model_dir)(Image.open(image_path), return_tensors="pt")
    with torch.no_grad():
        expected = tiny_model(**pixels).last_hidden_state
    got = torch.tensor(report["features"])
    assert got.shape == expected.shape  # (1, 1 + 4 * 4, 64): the pipeline returns every token
    assert (got - expected).abs().max() <= 1e-5


def test_pipeline_with_remote_code_uses_this_repository(tiny_model_dir):
    from transformers import pipeline

    extractor = pipeline("image-feature-extraction", model=str(tiny_model_dir), trust_remote_code=True)
    assert type(extractor.model).__name__ == "RadDinoModel"
    assert type(extractor.image_processor).__name__ == "RadDinoImageProcessor"
    assert type(extractor.image_processor).__module__.startswith("transformers_modules")
