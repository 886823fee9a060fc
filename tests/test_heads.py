"""Classification and segmentation heads: save formats, loading from the encoder, losses, output sizes."""

import json

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForImageClassification, AutoModelForSemanticSegmentation, Dinov2ForImageClassification

from configuration_rad_dino import RadDinoConfig
from modeling_rad_dino import RadDinoForImageClassification, RadDinoForSemanticSegmentation, RadDinoModel

TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=56)


def _pixels(height: int = 56, width: int = 56) -> torch.Tensor:
    return torch.randn(2, 3, height, width, generator=torch.Generator().manual_seed(0))


def test_default_classifier_is_a_stock_dinov2_classifier_on_disk(tmp_path):
    torch.manual_seed(0)
    model = RadDinoForImageClassification(RadDinoConfig(**TINY, num_labels=3)).eval()
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert (config["model_type"], config["architectures"]) == ("dinov2", ["Dinov2ForImageClassification"])
    stock = AutoModelForImageClassification.from_pretrained(tmp_path).eval()
    assert type(stock) is Dinov2ForImageClassification
    pixels = _pixels()
    assert torch.equal(stock(pixels).logits, model(pixels).logits)
    ours = AutoModelForImageClassification.from_pretrained(tmp_path, trust_remote_code=True).eval()
    assert type(ours).__name__ == "RadDinoForImageClassification"
    assert torch.equal(ours(pixels).logits, model(pixels).logits)


@pytest.mark.parametrize("pooling", ["cls", "attention"])
def test_other_poolings_save_as_rad_dino_and_round_trip(tmp_path, pooling):
    torch.manual_seed(0)
    model = RadDinoForImageClassification(RadDinoConfig(**TINY, num_labels=3, pooling=pooling)).eval()
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "rad_dino" and config["pooling"] == pooling
    assert config["auto_map"]["AutoModelForImageClassification"] == "modeling_rad_dino.RadDinoForImageClassification"
    loaded = RadDinoForImageClassification.from_pretrained(tmp_path).eval()
    pixels = _pixels()
    assert torch.equal(loaded(pixels).logits, model(pixels).logits)


def test_classifier_starts_from_a_saved_encoder(tmp_path):
    torch.manual_seed(1)
    encoder = RadDinoModel(RadDinoConfig(**TINY)).eval()
    encoder.save_pretrained(tmp_path)
    classifier = RadDinoForImageClassification.from_pretrained(tmp_path, num_labels=3)
    for name, tensor in encoder.state_dict().items():
        assert torch.equal(classifier.dinov2.state_dict()[name], tensor), name
    assert classifier.classifier.out_features == 3


def test_losses_multiclass_and_multilabel():
    torch.manual_seed(0)
    pixels = _pixels()
    multiclass = RadDinoForImageClassification(RadDinoConfig(**TINY, num_labels=3)).eval()
    labels = torch.tensor([0, 2])
    output = multiclass(pixels, labels=labels)
    assert torch.allclose(output.loss, F.cross_entropy(output.logits, labels))

    config = RadDinoConfig(**TINY, num_labels=4, problem_type="multi_label_classification")
    multilabel = RadDinoForImageClassification(config).eval()
    targets = torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    output = multilabel(pixels, labels=targets)
    assert torch.allclose(output.loss, F.binary_cross_entropy_with_logits(output.logits, targets))


def test_unknown_pooling_is_refused():
    with pytest.raises(Exception, match="pooling must be one of"):
        RadDinoConfig(**TINY, pooling="max")


@pytest.mark.parametrize("decoder", ["linear", "upsample"])
def test_segmentation_output_size_and_ignored_pixels(tmp_path, decoder):
    torch.manual_seed(0)
    model = RadDinoForSemanticSegmentation(RadDinoConfig(**TINY, num_labels=2, segmentation_decoder=decoder)).eval()
    pixels = _pixels(56, 84)
    labels = torch.randint(0, 2, (2, 56, 84), generator=torch.Generator().manual_seed(2))
    labels[:, :10] = 255
    output = model(pixels, labels=labels)
    assert output.logits.shape == (2, 2, 56, 84)
    keep = labels != 255
    manual = F.cross_entropy(output.logits.permute(0, 2, 3, 1)[keep], labels[keep])
    assert torch.allclose(output.loss, manual, atol=1e-6)

    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "rad_dino"
    loaded = AutoModelForSemanticSegmentation.from_pretrained(tmp_path, trust_remote_code=True).eval()
    assert torch.equal(loaded(pixels).logits, output.logits)
