"""Pretrain a RAD-DINO encoder with the DINOv2 recipe (DINO + iBOT + KoLeo, EMA teacher) on Accelerate.

With no arguments: a small ViT/14 from scratch on the embedded sample (the repository's configs/cpu_small.yaml), a few
minutes on a CPU, exported to outputs/pretrain/export as a HF checkpoint that `AutoModel.from_pretrained` loads. An
installation without the repository has no default recipe: pass --config.

`rad-dino-pretrain` and `python train_pretrain.py` are the same command; `accelerate launch` takes the script.

Examples:
  rad-dino-pretrain
  rad-dino-pretrain --data data/sample/images --data /path/to/your/images@2
  rad-dino-pretrain --config configs/cpu_small.yaml --set optim.epochs=100 train.max_minutes=20
  accelerate launch --config_file configs/accelerate/ddp.yaml train_pretrain.py --config configs/rad_dino_vitb14.yaml
  rad-dino-pretrain --print-config            # the full recipe with its defaults

Recipe values come from, in order: rad_dino_hf/recipe.py defaults (DINOv2 ViT-B / RAD-DINO), --config YAML, --set.
A run resumes from its latest checkpoint in train.output_dir that verifies, unless --resume never.

Exit codes: 0 done; 2 a fault you can fix (one line `error: ...` names the file or option); 143 preempted
(SIGTERM or SIGUSR1, to the process or its whole group: a checkpoint was saved after the current step; run the same
command again to resume); 130 Ctrl-C (the same; a second Ctrl-C stops at once, keeping the last checkpoint).
"""

import argparse
import logging
import sys
from pathlib import Path

import yaml

from rad_dino_hf.errors import UserError, reported_user_errors
from rad_dino_hf.recipe import RecipeConfig, apply_overrides
from rad_dino_hf.trainer import RunOptions, pretrain

# The repository holding this package (the parent folder of `rad_dino_hf`); a wheel installed without it has no
# configs/ folder there, and --config becomes required.
DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "cpu_small.yaml"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--config",
        help=f"recipe YAML; '' for the recipe.py defaults alone (default: {DEFAULT_CONFIG}, in a repository checkout)",
    )
    parser.add_argument(
        "--set",
        nargs="+",
        action="extend",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="recipe overrides (repeatable)",
    )
    parser.add_argument(
        "--data",
        action="append",
        metavar="[KIND:]LOCATION[@WEIGHT]",
        help="data source (repeatable; replaces train.data_sources): Hub id, image/DICOM folder, parquet, .tar shards",
    )
    parser.add_argument("--output-dir", help="replaces train.output_dir")
    parser.add_argument("--resume", default="auto", help="'auto' (latest checkpoint if any), 'never', or a folder")
    parser.add_argument("--export-dir", help="where to export the teacher (default: OUTPUT_DIR/export)")
    parser.add_argument("--push-to-hub", metavar="REPO_ID", help="upload the export to this Hub repo")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved recipe and exit")
    parser.add_argument("--debug", action="store_true", help="show the traceback of errors in your input too")
    return parser


def resolve_recipe(args: argparse.Namespace) -> RecipeConfig:
    config = str(default_config()) if args.config is None else args.config
    if config and not Path(config).is_file():
        raise UserError(f"--config {config}: no such file")
    try:
        recipe = RecipeConfig.from_yaml(config) if config else RecipeConfig()
    except (KeyError, TypeError, ValueError, yaml.YAMLError) as error:
        raise UserError(f"--config {config}: {_reason(error)}") from error
    overrides = list(args.set)
    if args.data:
        overrides.append("train.data_sources=[" + ", ".join(f'"{source}"' for source in args.data) + "]")
    if args.output_dir:
        overrides.append(f"train.output_dir={args.output_dir}")
    try:
        return apply_overrides(recipe, overrides)
    except (KeyError, TypeError, ValueError) as error:
        raise UserError(f"--set: {_reason(error)} (see --print-config for every key and its type)") from error


def default_config() -> Path:
    """The repository's CPU demo recipe, the recipe of a run without --config."""
    if not DEFAULT_CONFIG.is_file():
        raise UserError(
            f"no --config given and the default recipe {DEFAULT_CONFIG} is not here (an installation without the "
            "repository): pass --config RECIPE.yaml"
        )
    return DEFAULT_CONFIG


def _reason(error: Exception) -> str:
    """An exception's message without the quotes `KeyError` adds."""
    return str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)


def main(argv: list[str] | None = None) -> dict | None:
    """Run (or print) the recipe; returns the run summary. Faults in the user's input exit with code 2."""
    args = build_parser().parse_args(argv)
    with reported_user_errors(args.debug):
        return _main(args)


def _main(args: argparse.Namespace) -> dict | None:
    recipe = resolve_recipe(args)
    if args.print_config:
        sys.stdout.write(recipe.to_yaml())
        return None
    # INFO on the main process only; the trainer lowers other ranks once Accelerate knows who is who.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    options = RunOptions(
        resume=args.resume, export_dir=args.export_dir, push_to_hub=args.push_to_hub, progress=not args.no_progress
    )
    return pretrain(recipe, options)


def entry_point() -> None:
    """The `rad-dino-pretrain` console script: exits 0 after a run (returning the summary would make the script
    wrapper print it and exit 1)."""
    main()
