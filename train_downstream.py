"""Downstream use of a RAD-DINO encoder: `python train_downstream.py COMMAND --help`, the same command as the
installed `rad-dino-downstream` (rad_dino_hf/cli/downstream.py). This script is what `accelerate launch` runs."""

from rad_dino_hf.cli.downstream import main

if __name__ == "__main__":
    main()
