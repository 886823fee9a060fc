"""Downstream use of a RAD-DINO encoder. `rad-dino-downstream COMMAND --help` describes each command.

Commands:
  features      encode images, DICOM, tables or Hub datasets into an embeddings dataset (Parquet shards; resumable)
  similar       most similar images in an embeddings dataset (table + contact sheet); --duplicates: near-duplicates
  visualize     patch-feature PCA and the last layer's CLS attention per head, for each image or DICOM given
  segment       segmentation decoder on a frozen encoder's patch maps; lung Dice, overlays, saved model
  linear-probe  logistic regression on frozen features of a labelled table (CSV, parquet, JSON lines, folder with a
                metadata.csv, or Hub dataset; multi-class or multi-label); patient split; accuracy, AUROC, AUPRC
                with 95 % bootstrap CIs, ROC curves, confusion matrix, per-image predictions; features cached
  knn           DINO's weighted k-nearest-neighbour classification of the same table on cached frozen features
  demographics  sex (AUROC) and age (MAE, Pearson r) probes on frozen features of folders with a metadata.csv
  finetune      fine-tune a classifier end to end (LoRA, full or head only) with Accelerate; saved for from_pretrained
  report        LLaVA-style report generator (encoder -> projector -> causal LM, LoRA), trained and scored against
                a most-common-report baseline (ROUGE-L, BLEU-4, finding F1)

Every command runs as a plain process or under `accelerate launch` (the processes share the encoding or the
training; the main process fits, scores and writes). A fault in your input (a missing file or column, a bad option)
prints one line `error: ...` naming it and exits with code 2; `--debug` shows its traceback.
`rad-dino-downstream` and `python train_downstream.py` are the same command; `accelerate launch` takes the script.

Examples:
  rad-dino-downstream features
  rad-dino-downstream features --images /path/to/your/dicom --model ./my-rad-dino --output outputs/dicom
  rad-dino-downstream linear-probe --model outputs/pretrain/export
  rad-dino-downstream knn --model outputs/pretrain/export --k 20
  rad-dino-downstream linear-probe --table /path/to/your/labels.csv --label-column finding
  rad-dino-downstream linear-probe --table labels.parquet --label-column edema effusion consolidation
  rad-dino-downstream demographics --model outputs/pretrain/export
  rad-dino-downstream finetune --model outputs/learning_check/pretrain/export --epochs 3
  accelerate launch --config_file configs/accelerate/ddp.yaml train_downstream.py finetune --model microsoft/rad-dino
  rad-dino-downstream segment --model outputs/pretrain/export
  rad-dino-downstream visualize data/sample/dicom/RG1_UNCR.dcm --model outputs/pretrain/export
  rad-dino-downstream report --encoder outputs/pretrain/export
  rad-dino-downstream report --encoder microsoft/rad-dino --lm Qwen/Qwen2.5-0.5B --image-token-pooling 2
"""

import argparse
import dataclasses
import logging

from rad_dino_hf.distributed import AcceleratorOptions, make_accelerator
from rad_dino_hf.errors import reported_user_errors
from rad_dino_hf.tasks import (
    demographics,
    features,
    finetune,
    knn,
    linear_probe,
    report_generator,
    segment,
    similar,
    visualize,
)
from rad_dino_hf.tasks.arguments import from_namespace

TASKS = {
    "features": features,
    "visualize": visualize,
    "segment": segment,
    "linear-probe": linear_probe,
    "knn": knn,
    "demographics": demographics,
    "finetune": finetune,
    "report": report_generator,
    "similar": similar,
}


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Descriptions as written; every option with a default shows it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    """One subcommand per task; each task's module docstring is its description."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, task in TASKS.items():
        command = commands.add_parser(name, description=task.__doc__, formatter_class=HelpFormatter)
        task.add_arguments(command)
        command.add_argument("--debug", action="store_true", help="show the traceback of errors in your input too")
    return parser


def parse_options(argv: list[str] | None = None) -> tuple[str, object]:
    """The command's name and its task's typed `Options`."""
    return _options(build_parser().parse_args(argv))


def _options(args: argparse.Namespace) -> tuple[str, object]:
    return args.command, from_namespace(TASKS[args.command].Options, args)


def main(argv: list[str] | None = None):
    """Run the command; returns the task's results (None on a process that only shared the work)."""
    args = build_parser().parse_args(argv)
    with reported_user_errors(args.debug):
        return _run(*_options(args))


def _run(command: str, options: object):
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    accelerator = make_accelerator(**dataclasses.asdict(getattr(options, "accelerator", AcceleratorOptions())))
    try:
        return TASKS[command].run(options, accelerator)
    finally:
        # Every process leaves together: one that exits while a peer still holds the gloo/NCCL group can make the
        # peer's teardown fail or hang.
        accelerator.wait_for_everyone()
        accelerator.end_training()


def entry_point() -> None:
    """The `rad-dino-downstream` console script: exits 0 after a run (returning the results would make the script
    wrapper print them and exit 1)."""
    main()
