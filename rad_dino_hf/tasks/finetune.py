"""Fine-tune `RadDinoForImageClassification` end to end on a labelled table's images (LoRA by default, or full, or
only the head) with Accelerate, as a plain process or under `accelerate launch`; AdamW, cosine schedule with
warmup, layer-wise lr decay optional. Writes linear-probe's metrics and pictures plus a loss curve, and saves the
model for `from_pretrained` (LoRA: the adapter, and the model with the adapter merged in). On a CPU use a small
encoder. With no --table it runs on the embedded sample's labelled images."""

import argparse
import dataclasses
import logging
import time
from pathlib import Path

import numpy as np
from accelerate import Accelerator

from configuration_rad_dino import POOLINGS
from rad_dino_hf.encoders import load_encoder
from rad_dino_hf.classifier_training import (
    DEFAULT_LR,
    METHODS,
    FinetuneOptions,
    ImageDataset,
    augment_radiograph,
    classifier_from_encoder,
    finetune,
    processor_at,
    save_finetuned,
)
from rad_dino_hf.distributed import AcceleratorOptions
from rad_dino_hf.lora import DEFAULT_LORA_TARGETS
from rad_dino_hf.metrics import classification_metrics
from rad_dino_hf.supervised import fresh_training_log
from rad_dino_hf.tasks.arguments import (
    LabelledTaskOptions,
    add_accelerator_arguments,
    add_labelled_task_arguments,
)
from rad_dino_hf.tasks.common import labelled_split, write_classification_outputs

logger = logging.getLogger("rad_dino_hf")


@dataclasses.dataclass
class Options(LabelledTaskOptions):
    training: FinetuneOptions
    accelerator: AcceleratorOptions
    pooling: str
    image_size: int | None
    augment: bool
    output: str


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_labelled_task_arguments(parser, batch_size=FinetuneOptions.batch_size)
    parser.add_argument(
        "--method", choices=METHODS, default=FinetuneOptions.method, help="frozen: only the head trains"
    )
    parser.add_argument("--epochs", type=int, default=FinetuneOptions.epochs, help="training epochs")
    parser.add_argument(
        "--lr",
        type=float,
        help=f"encoder (or LoRA) learning rate; default per method: {DEFAULT_LR['full']} full, "
        f"{DEFAULT_LR['lora']} lora",
    )
    parser.add_argument(
        "--head-lr", type=float, default=FinetuneOptions.head_lr, help="learning rate of the classifier head"
    )
    parser.add_argument("--weight-decay", type=float, default=FinetuneOptions.weight_decay, help="AdamW weight decay")
    parser.add_argument(
        "--layer-decay",
        type=float,
        default=FinetuneOptions.layer_decay,
        help="layer-wise lr decay, e.g. 0.75; 1 is off",
    )
    parser.add_argument(
        "--warmup-fraction",
        type=float,
        default=FinetuneOptions.warmup_fraction,
        help="share of updates with linear warmup",
    )
    parser.add_argument(
        "--max-grad-norm", type=float, default=FinetuneOptions.max_grad_norm, help="gradient clipping; 0 is off"
    )
    parser.add_argument("--lora-rank", type=int, default=FinetuneOptions.lora_rank, help="LoRA rank r")
    parser.add_argument(
        "--lora-alpha", type=float, default=FinetuneOptions.lora_alpha, help="LoRA updates are scaled by alpha / r"
    )
    parser.add_argument(
        "--lora-dropout", type=float, default=FinetuneOptions.lora_dropout, help="dropout on the LoRA input"
    )
    parser.add_argument(
        "--lora-targets", nargs="+", default=list(DEFAULT_LORA_TARGETS), help="encoder Linear names to adapt"
    )
    parser.add_argument("--pooling", choices=POOLINGS, default="cls_mean", help="classifier input")
    parser.add_argument(
        "--image-size", type=int, help="input side in pixels (default: the model's image_size; smaller is faster)"
    )
    parser.add_argument(
        "--augment",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="random crop of 80-100%% of each side and contrast/brightness jitter; never flips",
    )
    add_accelerator_arguments(parser)
    parser.add_argument("--num-workers", type=int, default=FinetuneOptions.num_workers, help="data loader processes")
    parser.add_argument("--output", default="outputs/finetune", help="output folder")


def run(options: Options, accelerator: Accelerator) -> dict | None:
    """Every process trains its share of each batch and holds the gathered validation predictions; the main
    process writes the files. Every process returns the results."""
    data = labelled_split(options.table, options.split, "Fine-tuning")
    encoder, processor, model_name = load_encoder(options.encoder.model)
    size = options.image_size or int(np.min(encoder.config.image_size))
    processor = processor_at(processor, size)
    seed = options.split.seed
    model = classifier_from_encoder(encoder, data.classes, options.pooling, seed, multilabel=data.multilabel)
    train_files, val_files = [data.files[i] for i in data.train], [data.files[i] for i in data.val]
    augment = augment_radiograph if options.augment else None
    train_set = ImageDataset(train_files, data.labels[data.train], processor, augment)
    val_set = ImageDataset(val_files, data.labels[data.val], processor)
    logger.info("Fine-tuning (%s) %s at %d px on %s", options.training.method, model_name, size, accelerator.device)
    output = Path(options.output)
    metrics_path = fresh_training_log(output / "loss_curve.jsonl", accelerator)
    start = time.perf_counter()
    result = finetune(accelerator, model, train_set, val_set, options.training, metrics_path=metrics_path)
    results = classification_metrics(
        data.labels[data.val], result.probabilities, data.classes, multilabel=data.multilabel, seed=seed
    )
    results.update(
        model=model_name,
        method=options.training.method,
        image_size=size,
        trainable_parameters=sum(p.numel() for p in result.model.parameters() if p.requires_grad),
        history=result.history,
        train_seconds=round(time.perf_counter() - start, 1),
        n_train=len(data.train),
        table=str(options.table.table),
        seed=seed,
        options=dataclasses.asdict(options),
    )
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:  # loss_curve.jsonl / .png were written by the training loop
        write_classification_outputs(output, results, data, result.probabilities)
        save_finetuned(result.model, processor, output)
    return results
