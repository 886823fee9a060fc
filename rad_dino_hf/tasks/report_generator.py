"""LLaVA-style report generator: the encoder's patch tokens -> 2-layer GELU MLP projector -> any causal LM (a tiny
local Llama by default, since none can be downloaded offline). Stage 1 trains the projector, stage 2 LoRA adapters
on the LM; loss on report tokens only. Generates for held-out and training cases (greedy or beam search) and scores
ROUGE-L, BLEU-4 and CheXpert-style finding F1 next to a most-common-report baseline and, on held-out cases, the
retrieval baseline (the report of the training image whose frozen --encoder CLS token is most similar).

Default data: the embedded sample's `report` column, 38 image-text pairs. 36 are short findings texts written from
the pediatric images' labels (normal, bacterial or viral pneumonia; `report_source` "template from the label"), 2
are the case-report notes published with two covid-chestxray images (CC BY 4.0; "case report notes"). They show that
the pipeline runs end to end; they are not radiology reports to learn from.
"""

import argparse

from accelerate import Accelerator

from rad_dino_hf import embedded_sample
from rad_dino_hf.encoders import RELEASED_MODEL_ID
from rad_dino_hf.report.builder import DEFAULT_INSTRUCTION
from rad_dino_hf.report import pipeline
from rad_dino_hf.report.pipeline import TINY_LM, VISION_CACHE_AUTO_GIB, Options
from rad_dino_hf.report.training import DEFAULT_LM_LORA_TARGETS
from rad_dino_hf.tasks.arguments import add_accelerator_arguments

__all__ = ["Options", "add_arguments", "run"]


def add_arguments(report: argparse.ArgumentParser) -> None:
    data = report.add_argument_group("data")
    data.add_argument(
        "--data",
        default=str(embedded_sample.SAMPLE_DIR),
        help="folder with metadata.csv, a CSV/parquet/JSONL file or a Hub dataset id; by default the embedded sample, "
        "whose report texts are templates written from the pediatric images' labels and two case reports' notes (its "
        "report_source column says which)",
    )
    data.add_argument("--image-column", default="file", help="column of image paths")
    data.add_argument("--text-column", default=embedded_sample.REPORT_COLUMN, help="column of report texts")
    data.add_argument("--patient-column", default="patient", help="no patient is in both splits")
    data.add_argument("--val-fraction", type=float, default=0.2, help="share of patients held out")
    data.add_argument("--instruction", default=DEFAULT_INSTRUCTION, help="the user turn's text after the image")
    data.add_argument("--max-report-tokens", type=int, default=96, help="reports are cut to this many tokens")

    model = report.add_argument_group("model")
    model.add_argument(
        "--encoder",
        default=RELEASED_MODEL_ID,
        help=f"RAD-DINO encoder: Hub id, directory or 'random' (default {RELEASED_MODEL_ID}; on CPU use a small one, "
        "e.g. outputs/pretrain/export)",
    )
    model.add_argument(
        "--lm", default=TINY_LM, help="causal LM: Hub id or directory, or 'tiny' (a local Llama trained on the reports)"
    )
    model.add_argument("--image-token-pooling", type=int, default=1, help="k x k average pooling of the patch grid")
    model.add_argument(
        "--vision-feature-select-strategy",
        choices=["default", "full"],
        default="default",
        help="default: patch tokens only; full: the CLS token too",
    )
    model.add_argument("--chat-template", help="Jinja chat template file (default: LLaVA-1.5 style USER/ASSISTANT)")
    model.add_argument("--generator", help="evaluate this saved generator instead of training one")
    model.add_argument("--tiny-hidden-size", type=int, default=256, help="tiny LM width")
    model.add_argument("--tiny-layers", type=int, default=4, help="tiny LM depth")
    model.add_argument("--tiny-vocab-size", type=int, default=2000, help="tiny LM tokenizer size")

    training = report.add_argument_group("training")
    training.add_argument("--lm-epochs", type=int, default=20, help="text-only epochs of the tiny LM")
    training.add_argument("--stage1-epochs", type=int, default=10, help="projector-only epochs")
    training.add_argument("--stage1-lr", type=float, default=1e-3, help="projector learning rate")
    training.add_argument("--stage2-epochs", type=int, default=30, help="LoRA epochs")
    training.add_argument("--stage2-lr", type=float, default=2e-3, help="LoRA (and projector) learning rate")
    training.add_argument("--lora-rank", type=int, default=16, help="LoRA rank r")
    training.add_argument("--lora-alpha", type=int, default=32, help="LoRA updates are scaled by alpha / r")
    training.add_argument("--lora-dropout", type=float, default=0.05, help="dropout on the LoRA input")
    training.add_argument(
        "--lora-targets",
        nargs="+",
        default=list(DEFAULT_LM_LORA_TARGETS),
        help="module-name suffixes inside the LM, or 'all-linear'",
    )
    training.add_argument("--lora-encoder", action="store_true", help="also put LoRA adapters on the encoder")
    training.add_argument(
        "--freeze-projector-in-stage2", action="store_true", help="stage 2 trains the LoRA adapters only"
    )
    training.add_argument(
        "--vision-cache",
        choices=["auto", "on", "off"],
        default="auto",
        help=f"encode each training image once and keep the frozen encoder's output in memory (auto: if it fits in "
        f"{VISION_CACHE_AUTO_GIB:g} GiB)",
    )
    training.add_argument("--batch-size", type=int, default=8, help="pairs per batch (training and generation)")
    add_accelerator_arguments(training)
    training.add_argument(
        "--gradient-checkpointing", action="store_true", help="recompute activations in backward: less memory"
    )
    training.add_argument("--seed", type=int, default=0, help="seed of the split and of training")

    generation = report.add_argument_group("generation and evaluation")
    generation.add_argument("--max-new-tokens", type=int, default=96, help="longest generated report")
    generation.add_argument("--num-beams", type=int, default=1, help="1 = greedy")
    generation.add_argument("--repetition-penalty", type=float, default=1.0, help="> 1 discourages repeats")
    generation.add_argument(
        "--train-eval-size", type=int, default=0, help="training pairs also scored (0: all of them)"
    )
    report.add_argument("--output", default="outputs/report", help="output folder")
    report.add_argument("--push-to-hub", metavar="REPO_ID", help="upload the merged generator and its processor")


def run(options: Options, accelerator: Accelerator) -> dict | None:
    """`rad_dino_hf.report.pipeline.run` on `--data`, which must be there when it is the embedded sample."""
    embedded_sample.require(options.data.data, "--data")
    return pipeline.run(options, accelerator)
