"""End-to-end fine-tuning: which weights LoRA / full / frozen train, LoRA merging, and the finetune command."""

import csv
import json
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from accelerate import Accelerator
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn
from torch.utils.data import TensorDataset
from transformers import AutoModelForImageClassification

import rad_dino_hf.cli.downstream as train_downstream
from configuration_rad_dino import RadDinoConfig
from image_processing_rad_dino import RadDinoImageProcessor
from modeling_rad_dino import RadDinoForImageClassification, RadDinoModel
from rad_dino_hf.classifier_training import FinetuneOptions, classifier_from_encoder, finetune
from rad_dino_hf.lora import DEFAULT_LORA_TARGETS, add_lora, lora_target_pattern

HIDDEN, LAYERS, CLASSES, RANK = 32, 2, 3, 4


def _classifier() -> RadDinoForImageClassification:
    torch.manual_seed(0)
    config = RadDinoConfig(
        hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=2, image_size=28, num_labels=CLASSES
    )
    return RadDinoForImageClassification(config)


def _one_step(method: str) -> tuple[dict[str, torch.Tensor], nn.Module]:
    """The state before, and the model after, one optimizer update on a single batch of 6 random images."""
    model = _classifier()
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    generator = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(6, 3, 28, 28, generator=generator), torch.tensor([0, 1, 2, 0, 1, 2]))
    options = FinetuneOptions(method=method, epochs=1, batch_size=6, lr=1e-2, lora_rank=RANK, warmup_fraction=0.0)
    result = finetune(Accelerator(), model, data, data, options)
    assert len(result.update_losses) == 1 and result.probabilities.shape == (6, CLASSES)
    return before, result.model.cpu()


def test_lora_trains_exactly_the_adapters_and_the_head():
    model = _classifier()
    from_shapes = sum(
        RANK * (module.in_features + module.out_features)  # A (r, in) + B (out, r)
        for name, module in model.dinov2.named_modules()
        if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in DEFAULT_LORA_TARGETS
    )
    # Per layer: q, k, v, o are (d -> d), fc1 (d -> 4d), fc2 (4d -> d): r * (4 * 2d + 2 * 5d) = 18 r d.
    assert from_shapes == LAYERS * 18 * RANK * HIDDEN
    head = 2 * HIDDEN * CLASSES + CLASSES  # CLS ⊕ mean patch token -> classes, with bias

    wrapped = add_lora(model, rank=RANK)
    trainable = {name: p for name, p in wrapped.named_parameters() if p.requires_grad}
    adapters = [name for name in trainable if ".lora_A." in name or ".lora_B." in name]
    heads = [name for name in trainable if ".classifier.modules_to_save." in name]
    assert sorted(adapters + heads) == sorted(trainable)
    assert len(adapters) == 2 * LAYERS * len(DEFAULT_LORA_TARGETS) and len(heads) == 2
    assert all(".dinov2.encoder.layer." in name for name in adapters)
    assert sum(p.numel() for p in trainable.values()) == from_shapes + head
    frozen = [name for name, p in wrapped.named_parameters() if not p.requires_grad]
    assert any(name.endswith("q_proj.base_layer.weight") for name in frozen)
    assert all("lora_" not in name and "modules_to_save" not in name for name in frozen)


def adapted_modules(model: nn.Module) -> set[str]:
    """Names (relative to the model peft wrapped) of the modules that received LoRA adapters."""
    return {
        name.removeprefix("base_model.model.") for name, module in model.named_modules() if hasattr(module, "lora_A")
    }


def test_lora_pattern_matches_suffixes_literally_and_only_under_the_prefix():
    def block() -> nn.ModuleDict:
        return nn.ModuleDict({"q+proj": nn.Linear(4, 4), "qqproj": nn.Linear(4, 4), "fc1": nn.Linear(4, 4)})

    def adapted(prefix: str, suffixes: list[str]) -> set[str]:
        model = nn.Module()
        for name in ("encoder", "encoder2", "other"):
            model.add_module(name, nn.ModuleDict({"block": block()}))
        model.add_module("encoderxblock", block())
        model.encoder.add_module("out", nn.Linear(4, 4))  # directly under the prefix
        model.encoder.add_module("norm", nn.LayerNorm(4))  # not a Linear: peft would refuse it
        pattern = lora_target_pattern(model, prefix, suffixes)
        return adapted_modules(get_peft_model(model, LoraConfig(r=2, target_modules=pattern)))

    # Unescaped, "q+proj" would match "qqproj" and not itself, and "encoder.block" would match "encoderxblock".
    assert adapted("encoder", ["q+proj", "out"]) == {"encoder.block.q+proj", "encoder.out"}
    assert adapted("encoder.block", ["q+proj"]) == {"encoder.block.q+proj"}
    assert adapted("encoder", ["all-linear"]) == {
        "encoder.block.q+proj",
        "encoder.block.qqproj",
        "encoder.block.fc1",
        "encoder.out",
    }


def test_classifier_lora_adapts_the_encoder_projections_only():
    torch.manual_seed(0)
    config = RadDinoConfig(
        hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=2, image_size=28, pooling="attention"
    )
    wrapped = add_lora(RadDinoForImageClassification(config), rank=RANK)  # the pooler's out_proj stays plain
    expected = {
        f"dinov2.encoder.layer.{layer}.{name}"
        for layer in range(LAYERS)
        for name in (
            "attention.q_proj",
            "attention.k_proj",
            "attention.v_proj",
            "attention.o_proj",
            "mlp.fc1",
            "mlp.fc2",
        )
    }
    assert adapted_modules(wrapped) == expected


def test_unknown_lora_target_is_refused():
    with pytest.raises(ValueError, match="No encoder Linear named"):
        add_lora(_classifier(), targets=["query"])


def test_one_lora_step_leaves_the_encoder_bitwise_unchanged():
    before, model = _one_step("lora")
    merged_names = set()
    for name, tensor in model.state_dict().items():
        if "lora_" in name or "modules_to_save" in name:
            continue
        original = name.removeprefix("base_model.model.").replace(".base_layer.", ".").replace(".original_module.", ".")
        assert torch.equal(tensor, before[original]), name
        merged_names.add(original)
    assert merged_names == set(before)  # every original weight was compared
    lora_b = [p for name, p in model.named_parameters() if ".lora_B." in name]
    assert all(p.abs().sum() > 0 for p in lora_b)  # B starts at zero: the step moved it
    head = model.base_model.model.classifier.modules_to_save["default"].weight
    assert not torch.equal(head, before["classifier.weight"])


@pytest.mark.parametrize("method", ["full", "frozen"])
def test_full_changes_the_encoder_and_frozen_does_not(method):
    before, model = _one_step(method)
    after = model.state_dict()
    encoder = [name for name in before if name.startswith("dinov2.")]
    encoder_changed = [name for name in encoder if not torch.equal(before[name], after[name])]
    assert not torch.equal(before["classifier.weight"], after["classifier.weight"])
    if method == "full":
        assert not model.dinov2.embeddings.mask_token.requires_grad  # unused by classification (DDP needs this)
        assert any(name.endswith("attention.q_proj.weight") for name in encoder_changed)
        assert any(name.endswith("mlp.fc2.weight") for name in encoder_changed)
    else:
        assert encoder_changed == []


def test_merged_model_gives_the_adapted_logits():
    wrapped = add_lora(_classifier(), rank=RANK).eval()
    with torch.no_grad():
        for name, parameter in wrapped.named_parameters():
            if ".lora_B." in name:  # zero at init: without this the adapters would do nothing
                parameter.normal_(std=0.2)
    pixels = torch.randn(2, 3, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        adapted = wrapped(pixel_values=pixels).logits
        with wrapped.disable_adapter():
            plain = wrapped(pixel_values=pixels).logits
        assert (adapted - plain).abs().max() > 1e-2  # the adapters change the output
        merged = wrapped.merge_and_unload()
        assert type(merged) is RadDinoForImageClassification
        assert (merged(pixels).logits - adapted).abs().max() <= 1e-5


def _labelled_images(folder: Path, rng: np.random.Generator) -> Path:
    """12 random images: 3 classes x 2 patients x 2 images, and their CSV (also as 0/1 columns `pneumonia` and
    `viral`)."""
    folder.mkdir()
    rows = []
    for index in range(12):
        label, patient = ["normal", "bacterial", "viral"][index % 3], f"p{index % 6}"
        PIL.Image.fromarray(rng.integers(0, 256, size=(40, 48), dtype=np.uint8)).save(folder / f"{index}.png")
        flags = {"pneumonia": int(label != "normal"), "viral": int(label == "viral")}
        rows.append({"file": f"{index}.png", "label": label, "patient": patient, **flags})
    with open(folder / "labels.csv", "w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return folder / "labels.csv"


def test_finetune_command_saves_an_adapter_and_a_merged_model(tiny_model_dir, tmp_path):
    labels_csv = _labelled_images(tmp_path / "images", np.random.default_rng(0))
    output = tmp_path / "out"
    results = train_downstream.main(
        ["finetune", "--model", str(tiny_model_dir), "--csv", str(labels_csv), "--epochs", "2", "--batch-size", "4"]
        + ["--image-size", "28", "--val-fraction", "0.34", "--lora-rank", "4", "--output", str(output)]
    )
    assert results["method"] == "lora" and results["image_size"] == 28 and len(results["history"]) == 2
    assert results["n"] + results["n_train"] == 12 and "ci_low" in results["accuracy"]
    saved = json.loads((output / "metrics.json").read_text())
    assert saved["history"][-1]["epoch"] == 2 and saved["trainable_parameters"] == results["trainable_parameters"]
    for picture in ("roc_curves.png", "confusion_matrix.png", "loss_curve.png"):
        assert (output / picture).stat().st_size > 1000, picture
    assert (output / "adapter" / "adapter_config.json").exists()
    # The training loop's log: one record per optimiser update (8 training images, batch 4: 2 a epoch), then the
    # epoch's record with the validation accuracy metrics.json reports.
    records = [json.loads(line) for line in (output / "loss_curve.jsonl").read_text().splitlines()]
    assert [record.get("update") for record in records] == [1, 2, None, 3, 4, None]
    epochs = [record for record in records if "update" not in record]
    assert [record["val_accuracy"] for record in epochs] == [epoch["val_accuracy"] for epoch in results["history"]]

    with open(output / "predictions.csv", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    classes = results["class_names"]
    expected = torch.tensor([[float(row[f"p_{name}"]) for name in classes] for row in rows])
    processor = RadDinoImageProcessor.from_pretrained(output / "model")
    pixels = processor([row["file"] for row in rows], return_tensors="pt")["pixel_values"]
    assert pixels.shape[-1] == 28  # the processor was saved at the training size
    merged = RadDinoForImageClassification.from_pretrained(output / "model").eval()
    auto = AutoModelForImageClassification.from_pretrained(output / "model", trust_remote_code=True).eval()
    encoder = RadDinoModel.from_pretrained(tiny_model_dir)
    adapted = PeftModel.from_pretrained(classifier_from_encoder(encoder, classes, seed=123), output / "adapter").eval()
    with torch.no_grad():
        for model in (merged, auto, adapted):
            probabilities = model(pixel_values=pixels).logits.softmax(dim=-1)
            assert (probabilities - expected).abs().max() <= 1e-5, type(model).__name__
    assert merged.config.id2label == dict(enumerate(classes))


def test_multilabel_finetune_predicts_sigmoid_probabilities_per_label(tiny_model_dir, tmp_path):
    labels_csv = _labelled_images(tmp_path / "images", np.random.default_rng(1))
    output = tmp_path / "out"
    results = train_downstream.main(
        ["finetune", "--model", str(tiny_model_dir), "--csv", str(labels_csv), "--label-column", "pneumonia", "viral"]
        + ["--method", "full", "--epochs", "1", "--batch-size", "4", "--image-size", "28", "--val-fraction", "0.34"]
        + ["--no-augment", "--output", str(output)]
    )
    assert results["task"] == "multilabel" and results["class_names"] == ["pneumonia", "viral"]
    with open(output / "predictions.csv", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    expected = torch.tensor([[float(row[f"p_{name}"]) for name in ("pneumonia", "viral")] for row in rows])
    model = RadDinoForImageClassification.from_pretrained(output / "model").eval()
    assert model.config.problem_type == "multi_label_classification"
    processor = RadDinoImageProcessor.from_pretrained(output / "model")
    with torch.no_grad():
        logits = model(
            pixel_values=processor([row["file"] for row in rows], return_tensors="pt")["pixel_values"]
        ).logits
    assert logits.shape == expected.shape == (results["n"], 2)
    assert (logits.sigmoid() - expected).abs().max() <= 1e-5  # sigmoid per label, not a softmax over labels
    # The epoch's validation accuracy is the exact-match accuracy of the saved predictions (all labels right at 0.5).
    truth = np.array([[name in row["label"].split(";") for name in ("pneumonia", "viral")] for row in rows])
    exact_match = float(np.mean(np.all((expected.numpy() >= 0.5) == truth, axis=1)))
    assert results["history"][-1]["val_accuracy"] == pytest.approx(exact_match)
