"""The two command lines, `rad-dino-pretrain` and `rad-dino-downstream` (also run as `python train_pretrain.py` and
`python train_downstream.py` from the repository): argparse ends at each module's `main`; the machinery never imports
them."""
