"""Report generator: tiny RAD-DINO encoder + tiny Llama, built, trained in both stages, saved and reloaded."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from peft import PeftModel
from PIL import Image
from torch.utils.data import DataLoader

from image_processing_rad_dino import RadDinoImageProcessor
from rad_dino_hf.report.builder import build_generator, load_generator, save_generator
from rad_dino_hf.report.data import IGNORE_INDEX, ReportCollator, load_report_pairs
from rad_dino_hf.report.generation import GenerationSettings, generate_reports, report_lengths
from rad_dino_hf.report.tiny_lm import tiny_llama, train_tokenizer
from rad_dino_hf.report.training import LoraSettings, add_lora, freeze_all_but_projector, train_loop

REPORTS = [
    "No pleural effusion or pneumothorax.",
    "Bilateral patchy opacities in the lower zones.",
    "Cardiomegaly is present. No focal consolidation.",
    "Right lower lobe consolidation concerning for pneumonia.",
    "Endotracheal tube in place. Small left effusion.",
    "Clear lungs. Normal heart size.",
]
INSTRUCTION = "Describe the findings."


@pytest.fixture
def pair_folder(tmp_path):
    """Six random 64 px greyscale images with reports, three patients, as a folder with metadata.csv."""
    rng = np.random.default_rng(0)
    (tmp_path / "images").mkdir()
    rows = []
    for index, text in enumerate(REPORTS):
        name = f"images/{index}.png"
        Image.fromarray(rng.integers(0, 256, (64, 72), dtype=np.uint8)).save(tmp_path / name)
        rows.append({"file": name, "patient": f"p{index // 2}", "clinical_notes": text})
    rows.append({"file": "images/0.png", "patient": "p0", "clinical_notes": ""})  # dropped: no report
    with open(tmp_path / "metadata.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return tmp_path


@pytest.fixture
def image_processor():
    return RadDinoImageProcessor(size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56})


def make_generator(tiny_model, image_processor, pooling=1, strategy="default"):
    tokenizer = train_tokenizer(REPORTS * 3, vocab_size=300)
    language_model = tiny_llama(tokenizer, hidden_size=32, num_layers=2, num_heads=2)
    return build_generator(tiny_model, image_processor, language_model, tokenizer, pooling, strategy)


@pytest.fixture
def generator(tiny_model, image_processor):
    return make_generator(tiny_model, image_processor)


@pytest.fixture
def pairs(pair_folder):
    return load_report_pairs(str(pair_folder))


def test_pairs_load_from_folder_and_drop_empty_reports(pairs, pair_folder):
    assert [pair.text for pair in pairs] == REPORTS
    assert pairs[0].image == str(pair_folder / "images" / "0.png")
    assert [pair.patient for pair in pairs] == ["p0", "p0", "p1", "p1", "p2", "p2"]


def test_forward_loss_is_finite_and_equals_cross_entropy_on_report_tokens(generator, pairs):
    model, processor = generator
    batch = ReportCollator(processor, INSTRUCTION, max_report_tokens=32)(pairs[:3])
    output = model(**batch)
    assert torch.isfinite(output.loss)
    # Independent reference: next-token cross-entropy over labelled positions only.
    logits, labels = output.logits[:, :-1], batch["labels"][:, 1:]
    expected = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))
    torch.testing.assert_close(output.loss, expected)


def test_labels_mask_prompt_image_and_padding(generator, pairs):
    model, processor = generator
    tokenizer = processor.tokenizer
    batch = ReportCollator(processor, INSTRUCTION, max_report_tokens=32)(pairs[:3])
    image_positions = batch["input_ids"] == model.config.image_token_index
    assert (image_positions.sum(dim=1) == model.config.image_seq_length).all()
    assert (batch["labels"][image_positions] == IGNORE_INDEX).all()
    prompt_length = int(image_positions.nonzero()[:, 1].max()) + 1
    for row, pair in enumerate(pairs[:3]):
        labelled = batch["labels"][row] != IGNORE_INDEX
        first = int(labelled.nonzero()[0])
        assert first >= prompt_length  # nothing of the prompt (template, image, instruction) is labelled
        assert not labelled[batch["attention_mask"][row] == 0].any()  # nor padding
        targets = batch["labels"][row][labelled]
        assert targets[-1] == tokenizer.eos_token_id
        assert tokenizer.decode(targets[:-1]).strip() == pair.text
        # Labels are the inputs themselves at labelled positions (the model shifts them).
        assert torch.equal(batch["input_ids"][row][labelled], targets)


@pytest.mark.parametrize("pooling,strategy,tokens", [(1, "default", 16), (2, "default", 4), (2, "full", 5)])
def test_image_tokens_match_processor_and_pooled_reference(tiny_model, image_processor, pooling, strategy, tokens):
    model, processor = make_generator(tiny_model, image_processor, pooling, strategy)
    assert model.config.image_seq_length == tokens
    pixels = torch.randn(2, 3, 56, 56)
    features = model.model.get_image_features(pixels).pooler_output
    assert [tuple(f.shape) for f in features] == [(tokens, 32)] * 2
    # Reference: the encoder's normed tokens, k x k mean over the 4 x 4 patch grid, CLS in front for "full".
    with torch.no_grad():
        hidden = tiny_model(pixels).last_hidden_state
        grid = hidden[:, 1:].reshape(2, 4, 4, -1)
        pooled = grid.reshape(2, 4 // pooling, pooling, 4 // pooling, pooling, -1).mean(dim=(2, 4)).flatten(1, 2)
        if strategy == "full":
            pooled = torch.cat([hidden[:, :1], pooled], dim=1)
        expected = model.model.multi_modal_projector(pooled)
    torch.testing.assert_close(torch.stack(features), expected, atol=1e-5, rtol=1e-5)
    text = processor(images=[Image.new("L", (70, 60))], text=["<image> x"], return_tensors="pt")
    assert int((text["input_ids"] == model.config.image_token_index).sum()) == tokens


def one_step(model, pairs, processor):
    loader = DataLoader(pairs[:4], batch_size=4, collate_fn=ReportCollator(processor, INSTRUCTION, 32))
    return train_loop(model, loader, Accelerator(), epochs=1, lr=1e-2, warmup_fraction=0.0)


def snapshot(model):
    return {name: parameter.detach().clone() for name, parameter in model.named_parameters()}


def test_stage1_changes_only_the_projector(generator, pairs):
    model, processor = generator
    before = snapshot(freeze_all_but_projector(model))
    one_step(model, pairs, processor)
    for name, parameter in model.named_parameters():
        changed = not torch.equal(before[name], parameter)
        assert changed == name.startswith("model.multi_modal_projector."), name


@pytest.mark.parametrize("train_projector,lora_encoder", [(True, False), (False, False), (True, True)])
def test_stage2_changes_only_lora_and_chosen_parts(generator, pairs, train_projector, lora_encoder):
    model, processor = generator
    settings = LoraSettings(4, 8, 0.0, ["q_proj", "v_proj"], train_projector, lora_encoder)
    peft_model = add_lora(model, settings)
    trainable = {name for name, parameter in peft_model.named_parameters() if parameter.requires_grad}
    assert trainable and all(
        "lora_" in name or (train_projector and "multi_modal_projector.modules_to_save" in name) for name in trainable
    )
    lm_adapted = {name.split(".lora_")[0] for name in trainable if "language_model" in name}
    assert lm_adapted and all(name.endswith(("q_proj", "v_proj")) for name in lm_adapted)
    encoder_adapted = {name.split(".lora_")[0] for name in trainable if "vision_tower" in name}
    # Encoder adapters: every attention/MLP projection of every layer (2 layers x 6), or none.
    assert len(encoder_adapted) == (12 if lora_encoder else 0)
    before = snapshot(peft_model)
    one_step(peft_model, pairs, processor)
    for name, parameter in peft_model.named_parameters():
        changed = not torch.equal(before[name], parameter)
        if name in trainable and ("lora_B" in name or "modules_to_save" in name):
            assert changed, name  # B starts at zero and the projector copy trains: both must move
        if name not in trainable:
            assert not changed, name


ENCODER_PROJECTIONS = [
    "attention.q_proj",
    "attention.k_proj",
    "attention.v_proj",
    "attention.o_proj",
    "mlp.fc1",
    "mlp.fc2",
]
LM_PROJECTIONS = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"]
LM_PROJECTIONS += ["mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]


@pytest.mark.parametrize(
    "lm_targets,lm_names,lora_encoder",
    [
        (["q_proj", "v_proj"], ["self_attn.q_proj", "self_attn.v_proj"], False),
        (["q_proj", "v_proj"], ["self_attn.q_proj", "self_attn.v_proj"], True),
        (["all-linear"], LM_PROJECTIONS, False),  # the LM's Linears: not lm_head, the projector or the encoder
    ],
)
def test_stage2_adapts_exactly_the_named_modules(generator, lm_targets, lm_names, lora_encoder):
    model, _ = generator
    peft_model = add_lora(model, LoraSettings(rank=4, lm_targets=lm_targets, lora_encoder=lora_encoder))
    adapted = {name.removeprefix("base_model.model.") for name, m in peft_model.named_modules() if hasattr(m, "lora_A")}
    expected = {f"model.language_model.layers.{layer}.{name}" for layer in range(2) for name in lm_names}
    if lora_encoder:
        expected |= {
            f"model.vision_tower.encoder.layer.{layer}.{name}" for layer in range(2) for name in ENCODER_PROJECTIONS
        }
    assert adapted == expected


def test_save_load_gives_identical_greedy_generations(generator, pairs, tmp_path):
    model, processor = generator
    save_generator(model, processor, tmp_path / "base")  # before LoRA is injected (peft adapts in place)
    peft_model = add_lora(model, LoraSettings(rank=4, lm_targets=["q_proj", "v_proj"]))
    one_step(peft_model, pairs, processor)
    peft_model.save_pretrained(tmp_path / "adapter")
    settings = GenerationSettings(max_new_tokens=6, batch_size=3)
    adapted = generate_reports(peft_model, processor, pairs, INSTRUCTION, settings, progress=False)
    batch = ReportCollator(processor, INSTRUCTION, 32)(pairs)
    with torch.no_grad():
        adapted_logits = peft_model(**batch).logits
        merged = peft_model.merge_and_unload()
        torch.testing.assert_close(merged(**batch).logits, adapted_logits, atol=1e-5, rtol=1e-5)
    assert generate_reports(merged, processor, pairs, INSTRUCTION, settings, progress=False) == adapted

    save_generator(merged, processor, tmp_path / "generator")
    loaded, loaded_processor = load_generator(tmp_path / "generator")
    assert generate_reports(loaded, loaded_processor, pairs, INSTRUCTION, settings, progress=False) == adapted
    loaded_state = loaded.state_dict()
    for name, parameter in merged.state_dict().items():
        assert torch.equal(parameter, loaded_state[name]), name

    # The adapter saved separately, applied to the saved base and merged, is the same model again.
    base, _ = load_generator(tmp_path / "base")
    readapted = PeftModel.from_pretrained(base, tmp_path / "adapter").merge_and_unload()
    with torch.no_grad():
        torch.testing.assert_close(readapted(**batch).logits, adapted_logits, atol=1e-5, rtol=1e-5)
    assert generate_reports(readapted, processor, pairs, INSTRUCTION, settings, progress=False) == adapted


def test_beam_search_and_repetition_penalty_run(generator, pairs):
    model, processor = generator
    settings = GenerationSettings(max_new_tokens=5, num_beams=3, repetition_penalty=1.3, batch_size=2)
    rows = generate_reports(model, processor, pairs[:2], INSTRUCTION, settings, progress=False)
    assert [row["reference"] for row in rows] == REPORTS[:2]
    assert all(isinstance(row["generated"], str) for row in rows)
    assert json.dumps(rows)


def test_report_command_trains_saves_and_reloads(pair_folder, tiny_model, image_processor, tmp_path):
    from rad_dino_hf.cli.downstream import main

    tiny_model.save_pretrained(tmp_path / "encoder")
    image_processor.save_pretrained(tmp_path / "encoder")
    common = ["--data", str(pair_folder), "--text-column", "clinical_notes", "--val-fraction", "0.3"]
    common += ["--max-new-tokens", "5", "--batch-size", "2"]
    tiny = ["--tiny-hidden-size", "32", "--tiny-layers", "1", "--tiny-vocab-size", "300", "--max-report-tokens", "24"]
    epochs = ["--lm-epochs", "2", "--stage1-epochs", "1", "--stage2-epochs", "2", "--lora-rank", "2"]
    output = tmp_path / "report"
    results = main(["report", "--encoder", str(tmp_path / "encoder"), *common, *tiny, *epochs, "--output", str(output)])
    for name in ["metrics.json", "loss_curves.png", "loss_curves.json", "stage1_projector.safetensors"]:
        assert (output / name).is_file(), name
    assert (output / "adapter" / "adapter_config.json").is_file()
    assert (output / "tiny_lm" / "config.json").is_file() and (output / "tiny_lm" / "tokenizer.json").is_file()
    held_out = [json.loads(line) for line in (output / "generations_held_out.jsonl").read_text().splitlines()]
    train = [json.loads(line) for line in (output / "generations_train.jsonl").read_text().splitlines()]
    assert results["held_out"]["n"] == len(held_out) == 2 and len(train) == 4  # one of three patients held out
    patient = {pair.image: pair.patient for pair in load_report_pairs(str(pair_folder))}
    assert not {patient[row["id"]] for row in held_out} & {patient[row["id"]] for row in train}
    assert results["baseline_report"] in REPORTS
    assert set(results["final_loss"]) == {"language model on text", "stage 1 (projector)", "stage 2 (LoRA)"}
    curves = json.loads((output / "loss_curves.json").read_text())
    assert len(curves["stage 2 (LoRA)"]) == 2 * 2  # 2 epochs of 2 batches (4 training pairs, batch 2)

    # Evaluating the saved generator reproduces the same greedy generations.
    again = main(["report", "--generator", str(output / "generator"), *common, "--output", str(tmp_path / "again")])
    assert (tmp_path / "again" / "generations_held_out.jsonl").read_text() == (
        output / "generations_held_out.jsonl"
    ).read_text()
    assert again["held_out"]["model"] == results["held_out"]["model"]


def test_gradient_checkpointing_trains_lora(generator, pairs):
    model, processor = generator
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    peft_model = add_lora(model, LoraSettings(rank=4, lm_targets=["q_proj", "v_proj"]))
    before = snapshot(peft_model)
    losses = one_step(peft_model, pairs, processor)
    assert np.isfinite(losses).all()
    assert any(not torch.equal(before[n], p) for n, p in peft_model.named_parameters() if "lora_B" in n)


def test_pairs_from_parquet_with_embedded_images(tmp_path, generator):
    """A Hub-style dataset: an `Image` feature (decoded to PIL) and a text column, no file paths."""
    from datasets import Dataset, Features, Value
    from datasets import Image as ImageFeature

    images = [Image.fromarray(np.full((40, 50), 30 * i, np.uint8)) for i in range(3)]
    features = Features({"image": ImageFeature(), "report": Value("string"), "subject": Value("string")})
    table = Dataset.from_dict({"image": images, "report": REPORTS[:3], "subject": ["a", "b", "b"]}, features=features)
    table.to_parquet(str(tmp_path / "pairs.parquet"))
    pairs = load_report_pairs(str(tmp_path / "pairs.parquet"), "image", "report", "subject")
    assert [pair.patient for pair in pairs] == ["a", "b", "b"] and isinstance(pairs[0].image, Image.Image)
    model, processor = generator
    batch = ReportCollator(processor, INSTRUCTION, 32)(pairs)
    assert batch["pixel_values"].shape == (3, 3, 56, 56) and torch.isfinite(model(**batch).loss)


def test_push_generator_uploads_weights_code_and_processor(generator, tmp_path, monkeypatch):
    from types import SimpleNamespace

    import huggingface_hub

    from rad_dino_hf.report.builder import push_generator

    uploaded = {}

    def create_repo(self, repo_id, **kwargs):
        return SimpleNamespace(repo_id=repo_id)

    def create_commit(self, repo_id, operations, **kwargs):
        uploaded.update({operation.path_in_repo: operation.path_or_fileobj for operation in operations})
        return SimpleNamespace(commit_url="https://example.invalid/commit", oid="0" * 40, pr_url=None)

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "create_commit", create_commit)
    save_generator(*generator, tmp_path / "generator")
    assert push_generator(tmp_path / "generator", "someone/rad-dino-report") == "someone/rad-dino-report"
    expected = {"config.json", "model.safetensors", "modeling_rad_dino.py", "configuration_rad_dino.py"}
    expected |= {"tokenizer.json", "chat_template.jinja", "preprocessor_config.json", "processor_config.json"}
    assert expected <= set(uploaded)
    config = json.loads(Path(uploaded["config.json"]).read_text())
    assert config["model_type"] == "rad_dino_llava"
    assert config["auto_map"]["AutoModelForImageTextToText"] == "modeling_rad_dino.RadDinoLlavaForConditionalGeneration"


def test_vision_cache_gives_the_same_training_and_encodes_each_image_once(generator, pairs):
    import copy

    from rad_dino_hf.report.training import FrozenTowerCache, cached_vision_tower

    model, processor = generator
    twin = copy.deepcopy(model)
    loader = DataLoader(pairs[:4], batch_size=2, collate_fn=ReportCollator(processor, INSTRUCTION, 32))
    plain = train_loop(freeze_all_but_projector(model), loader, Accelerator(), epochs=3, lr=1e-2)
    with cached_vision_tower(twin):
        cache = twin.model.vision_tower
        assert isinstance(cache, FrozenTowerCache)
        calls = []
        cache.tower.register_forward_hook(lambda module, inputs, output: calls.append(len(inputs[0])))
        cached = train_loop(freeze_all_but_projector(twin), loader, Accelerator(), epochs=3, lr=1e-2)
    assert sum(calls) == cache.misses == 4  # 4 images x 3 epochs, encoded once each
    torch.testing.assert_close(torch.tensor(cached), torch.tensor(plain), atol=1e-6, rtol=1e-6)
    assert not isinstance(twin.model.vision_tower, FrozenTowerCache)  # the plain tower is back for saving
    for name, parameter in model.state_dict().items():
        torch.testing.assert_close(twin.state_dict()[name], parameter, atol=1e-6, rtol=1e-6)


def test_report_lengths_stop_at_the_first_end_token():
    """Pad (0) generated mid-report is a token of the report; only what follows the end token (2) is padding."""
    new_tokens = torch.tensor([[5, 0, 7, 2, 0], [2, 0, 0, 0, 0], [5, 6, 7, 8, 9], [0, 0, 2, 2, 0]])
    assert report_lengths(new_tokens, eos_token_id=2).tolist() == [3, 0, 5, 2]


def test_min_new_tokens_fixes_the_length_and_tokens_counts_it(generator, pairs):
    model, processor = generator
    tokenizer = processor.tokenizer
    fixed = GenerationSettings(max_new_tokens=5, min_new_tokens=5, batch_size=len(pairs))
    rows = generate_reports(model, processor, pairs, INSTRUCTION, fixed, progress=False)
    assert [row["tokens"] for row in rows] == [5] * len(pairs)

    # Counted independently: the position of the first end token in `generate`'s own output (5 if none).
    free = GenerationSettings(max_new_tokens=5, batch_size=len(pairs))
    rows = generate_reports(model, processor, pairs, INSTRUCTION, free, progress=False)
    batch = ReportCollator(processor, INSTRUCTION, for_generation=True)(pairs)
    del batch["ids"], batch["references"]
    with torch.no_grad():
        output = model.generate(
            **batch,
            max_new_tokens=5,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    new_tokens = output[:, batch["input_ids"].shape[1] :].tolist()
    expected = [row.index(tokenizer.eos_token_id) if tokenizer.eos_token_id in row else len(row) for row in new_tokens]
    assert [row["tokens"] for row in rows] == expected
