"""Pretrain a RAD-DINO encoder: `python train_pretrain.py --help`, the same command as the installed
`rad-dino-pretrain` (rad_dino_hf/cli/pretrain.py). This script is what `accelerate launch` runs."""

from rad_dino_hf.cli.pretrain import main

if __name__ == "__main__":
    main()
