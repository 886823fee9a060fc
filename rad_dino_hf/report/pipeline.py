"""The report generator's pipeline: image–report pairs -> patient split -> (tiny local LM: tokenizer + text
pretraining, or any HF causal LM) -> generator (encoder + new projector + LM) -> stage 1 (projector) -> stage 2 (LoRA)
-> saved adapter and merged generator -> generated reports for held-out and training cases -> ROUGE-L, BLEU-4,
finding F1 next to two baselines: the most common training report and, on held-out cases, the report of the training
image whose frozen encoder CLS token is the most similar. `rad_dino_hf.tasks.report_generator` is its command line.
"""

import json
import logging
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from safetensors.torch import save_file
from torch.utils.data import DataLoader
from transformers import AutoModelForCausalLM, AutoTokenizer

from rad_dino_hf.embeddings import cosine_topk, encode_pixels
from rad_dino_hf.encoders import load_encoder
from rad_dino_hf.report.builder import (
    build_generator,
    load_generator,
    push_generator,
    save_generator,
)
from rad_dino_hf.report.data import ReportCollator, ReportPair, load_report_pairs
from rad_dino_hf.report.generation import GenerationSettings, generate_reports, write_jsonl
from rad_dino_hf.report.labeler_agreement import phrase_agreement
from rad_dino_hf.report.text_metrics import report_metrics
from rad_dino_hf.report.tiny_lm import pretrain_on_text, tiny_llama, train_tokenizer
from rad_dino_hf.report.training import (
    LoraSettings,
    add_lora,
    cached_vision_tower,
    freeze_all_but_projector,
    train_loop,
    trainable_parameter_count,
)
from rad_dino_hf.distributed import AcceleratorOptions
from rad_dino_hf.supervised import fresh_training_log
from rad_dino_hf.tables import patient_split

logger = logging.getLogger("rad_dino_hf")
TINY_LM = "tiny"
# Every training phase (LM on text, stage 1, stage 2) appends here; the loop draws loss_curves.png from it.
TRAINING_LOG = "loss_curves.jsonl"
VISION_CACHE_AUTO_GIB = 4.0


@dataclass
class DataOptions:
    """Image-report pairs (`load_report_pairs`), their patient split and how they become a prompt and a target."""

    data: str
    image_column: str
    text_column: str
    patient_column: str
    val_fraction: float
    instruction: str
    max_report_tokens: int


@dataclass
class ModelOptions:
    """The generator's parts (`build_generator`), the tiny LM's size, or a saved `generator` to evaluate instead."""

    encoder: str
    lm: str
    image_token_pooling: int
    vision_feature_select_strategy: str
    chat_template: str | None
    generator: str | None
    tiny_hidden_size: int
    tiny_layers: int
    tiny_vocab_size: int


@dataclass
class TrainingOptions:
    """Text pretraining of the tiny LM, stage 1 (projector) and stage 2 (LoRA)."""

    lm_epochs: int
    stage1_epochs: int
    stage1_lr: float
    stage2_epochs: int
    stage2_lr: float
    lora_rank: int
    lora_alpha: int
    lora_dropout: float
    lora_targets: list[str]
    lora_encoder: bool
    freeze_projector_in_stage2: bool
    vision_cache: str
    batch_size: int
    gradient_checkpointing: bool
    seed: int


@dataclass
class EvaluationOptions:
    """Decoding (`GenerationSettings`) and how many training pairs are scored too (0: all)."""

    max_new_tokens: int
    num_beams: int
    repetition_penalty: float
    train_eval_size: int


@dataclass
class Options:
    data: DataOptions
    model: ModelOptions
    training: TrainingOptions
    evaluation: EvaluationOptions
    accelerator: AcceleratorOptions
    output: str
    push_to_hub: str | None


def most_common_report(pairs: list[ReportPair]) -> str:
    """The baseline's one answer: the training report that occurs most often (first seen wins ties)."""
    return Counter(pair.text for pair in pairs).most_common(1)[0][0]


def build_language_model(options: Options, train_texts: list[str], accelerator: Accelerator, output: Path):
    """(LM, tokenizer, text-pretraining losses): `--lm`, or a tiny local Llama trained on the training reports and
    saved to `output/tiny_lm` (the base that `adapter/` applies to)."""
    model_options, training = options.model, options.training
    if model_options.lm != TINY_LM:
        name = model_options.lm
        return AutoModelForCausalLM.from_pretrained(name), AutoTokenizer.from_pretrained(name), []
    tokenizer = train_tokenizer(train_texts, model_options.tiny_vocab_size)
    model = tiny_llama(
        tokenizer,
        hidden_size=model_options.tiny_hidden_size,
        num_layers=model_options.tiny_layers,
        seed=training.seed,
    )
    losses = pretrain_on_text(
        model,
        tokenizer,
        train_texts,
        accelerator,
        epochs=training.lm_epochs,
        batch_size=training.batch_size,
        max_tokens=options.data.max_report_tokens,
        metrics_path=output / TRAINING_LOG,
    )
    if accelerator.is_main_process:
        model.save_pretrained(output / "tiny_lm")
        tokenizer.save_pretrained(output / "tiny_lm")
    return model, tokenizer, losses


def use_vision_cache(training: TrainingOptions, model, processor, n_images: int) -> bool:
    """Whether to keep the frozen encoder's outputs in memory across epochs (`--vision-cache`; "auto": when the
    encoder is frozen and the outputs of `n_images` take at most `VISION_CACHE_AUTO_GIB`)."""
    if training.vision_cache == "off" or training.lora_encoder:
        if training.vision_cache == "on":
            raise ValueError("--vision-cache on needs a frozen encoder (drop --lora-encoder)")
        return False
    vision, crop = model.config.vision_config, processor.image_processor.crop_size
    tokens = 1 + (crop["height"] // vision.patch_size) * (crop["width"] // vision.patch_size)
    gib = n_images * tokens * vision.hidden_size * 4 / 2**30
    if training.vision_cache == "auto" and gib > VISION_CACHE_AUTO_GIB:
        logger.info("Not caching encoder outputs (%.1f GiB for %d images); --vision-cache on to force", gib, n_images)
        return False
    logger.info("Caching the frozen encoder's outputs: %.2f GiB for %d images, encoded once", gib, n_images)
    return True


def train_generator(options: Options, train_pairs: list[ReportPair], accelerator: Accelerator, output: Path):
    """Both LLaVA stages; saves the stage-1 projector, the stage-2 adapter and the merged generator."""
    model_options, training = options.model, options.training
    encoder, image_processor, encoder_name = load_encoder(model_options.encoder)
    texts = [pair.text for pair in train_pairs]
    fresh_training_log(output / TRAINING_LOG, accelerator)
    language_model, tokenizer, lm_losses = build_language_model(options, texts, accelerator, output)
    curves = {"language model on text": lm_losses} if lm_losses else {}
    model, processor = build_generator(
        encoder,
        image_processor,
        language_model,
        tokenizer,
        image_token_pooling=model_options.image_token_pooling,
        vision_feature_select_strategy=model_options.vision_feature_select_strategy,
        chat_template=Path(model_options.chat_template).read_text() if model_options.chat_template else None,
    )
    if training.gradient_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    collator = ReportCollator(processor, options.data.instruction, options.data.max_report_tokens)
    loader = DataLoader(
        train_pairs,
        batch_size=training.batch_size,
        shuffle=True,
        collate_fn=collator,
        generator=torch.Generator().manual_seed(training.seed),
    )
    lora = LoraSettings(
        rank=training.lora_rank,
        alpha=training.lora_alpha,
        dropout=training.lora_dropout,
        lm_targets=training.lora_targets,
        train_projector=not training.freeze_projector_in_stage2,
        lora_encoder=training.lora_encoder,
    )
    with cached_vision_tower(model, use_vision_cache(training, model, processor, len(train_pairs))):
        freeze_all_but_projector(model)
        logger.info("Stage 1: %d of %d parameters trainable (projector)", *trainable_parameter_count(model))
        stage = "stage 1 (projector)"
        curves[stage] = train_loop(
            model,
            loader,
            accelerator,
            training.stage1_epochs,
            training.stage1_lr,
            description=stage,
            metrics_path=output / TRAINING_LOG,
        )
        if accelerator.is_main_process:
            save_file(model.model.multi_modal_projector.state_dict(), output / "stage1_projector.safetensors")
        peft_model = add_lora(model, lora)
        trainable = trainable_parameter_count(peft_model)
        logger.info("Stage 2: %d of %d parameters trainable (LoRA + projector)", *trainable)
        stage = "stage 2 (LoRA)"
        curves[stage] = train_loop(
            peft_model,
            loader,
            accelerator,
            training.stage2_epochs,
            training.stage2_lr,
            description=stage,
            metrics_path=output / TRAINING_LOG,
        )
    accelerator.wait_for_everyone()
    peft_model = accelerator.unwrap_model(peft_model)
    if accelerator.is_main_process:
        peft_model.save_pretrained(output / "adapter")
    generator = peft_model.merge_and_unload()
    if accelerator.is_main_process:
        save_generator(generator, processor, output / "generator")
        (output / "loss_curves.json").write_text(json.dumps(curves))  # loss_curves.png: drawn by the training loop
    return generator, processor, curves, encoder_name


@torch.no_grad()
def nearest_image_reports(
    encoder_name: str, train_pairs: list[ReportPair], queries: list[ReportPair], batch_size: int, device
) -> list[str]:
    """The retrieval baseline's answers: for each query, the report of the training image whose CLS token (of the
    frozen encoder `encoder_name`, fp32) is most similar by cosine, as the `similar` command searches."""
    model, processor, _ = load_encoder(encoder_name)
    model = model.to(device)

    def cls_tokens(pairs: list[ReportPair]) -> torch.Tensor:
        batches = [pairs[start : start + batch_size] for start in range(0, len(pairs), batch_size)]
        pixels = (processor([pair.image for pair in batch], return_tensors="pt")["pixel_values"] for batch in batches)
        return torch.cat([encode_pixels(model, batch.to(device), torch.float32)["cls"].cpu() for batch in pixels])

    _, nearest = cosine_topk(cls_tokens(queries), cls_tokens(train_pairs), 1)
    return [train_pairs[index].text for index in nearest[:, 0].tolist()]


def evaluate_split(
    model,
    processor,
    pairs: list[ReportPair],
    baseline: str,
    options: Options,
    name: str,
    output: Path,
    retrieved: list[str] | None = None,
) -> dict:
    """Generate for `pairs`, write `generations_<name>.jsonl`, score model and baselines on the same references:
    the most common training report, and (`retrieved`, one per pair) the nearest training image's report."""
    evaluation = options.evaluation
    settings = GenerationSettings(
        max_new_tokens=evaluation.max_new_tokens,
        num_beams=evaluation.num_beams,
        repetition_penalty=evaluation.repetition_penalty,
        batch_size=options.training.batch_size,
    )
    start = time.perf_counter()
    rows = generate_reports(model, processor, pairs, options.data.instruction, settings)
    seconds = time.perf_counter() - start
    write_jsonl(rows, output / f"generations_{name}.jsonl")
    references = [row["reference"] for row in rows]
    return {
        "n": len(rows),
        "generation_seconds": round(seconds, 1),
        "model": report_metrics(references, [row["generated"] for row in rows]),
        "most_common_report_baseline": report_metrics(references, [baseline] * len(rows)),
        **({"nearest_image_report_baseline": report_metrics(references, retrieved)} if retrieved else {}),
    }


def run(options: Options, accelerator: Accelerator) -> dict | None:
    """Every process trains; the main process generates, scores and writes (the others return None)."""
    data, seed = options.data, options.training.seed
    set_seed(seed)
    output = Path(options.output)
    output.mkdir(parents=True, exist_ok=True)
    pairs = load_report_pairs(data.data, data.image_column, data.text_column, data.patient_column)
    train, held_out = patient_split([pair.patient for pair in pairs], data.val_fraction, seed)
    train_pairs, held_out_pairs = [pairs[i] for i in train], [pairs[i] for i in held_out]
    logger.info("Reports: %d train / %d held-out pairs, no patient in both", len(train_pairs), len(held_out_pairs))

    start = time.perf_counter()
    generator = options.model.generator
    if generator:
        model, processor = load_generator(generator)
        curves, encoder_name = {}, generator
    else:
        model, processor, curves, encoder_name = train_generator(options, train_pairs, accelerator, output)
    train_seconds = time.perf_counter() - start
    if not accelerator.is_main_process:
        return None

    baseline = most_common_report(train_pairs)
    retrieved = nearest_image_reports(
        options.model.encoder, train_pairs, held_out_pairs, options.training.batch_size, accelerator.device
    )
    results = {
        "encoder": encoder_name,
        "lm": options.model.lm,
        "train_seconds": round(train_seconds, 1),
        "final_loss": {stage: losses[-1] for stage, losses in curves.items()},
        "baseline_report": baseline,
        # What finding F1 rests on: the labeler's agreement with the CheXpert labeler on its own phrase list.
        "labeler_agreement": phrase_agreement().overall,
        "held_out": evaluate_split(model, processor, held_out_pairs, baseline, options, "held_out", output, retrieved),
        "train": evaluate_split(
            model,
            processor,
            train_pairs[: options.evaluation.train_eval_size or None],
            baseline,
            options,
            "train",
            output,
        ),
    }
    (output / "metrics.json").write_text(json.dumps(results, indent=2))
    for split in ("train", "held_out"):
        scores = results[split]
        for system in ("model", "most_common_report_baseline", "nearest_image_report_baseline"):
            if system not in scores:  # the retrieval baseline is scored on held-out cases only
                continue
            metric = scores[system]
            logger.info(
                "%-8s %-28s ROUGE-L %.3f  BLEU-4 %.2f  finding micro-F1 %.3f (labeler %.1f %% CheXpert agreement)",
                split,
                system,
                metric["rouge_l"],
                metric["bleu4"],
                metric["finding_f1"]["micro_f1"],
                100 * results["labeler_agreement"],
            )
    if options.push_to_hub:
        pushed = push_generator(generator or output / "generator", options.push_to_hub)
        logger.info("Pushed the generator to https://huggingface.co/%s", pushed)
    logger.info("Generator, adapter, generations, metrics and loss curves in %s", output)
    return results
