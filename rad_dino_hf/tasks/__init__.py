"""The downstream tasks of `train_downstream.py`, one module each: `add_arguments(parser)` registers the task's
options, `Options` is their typed form, `run(options, accelerator)` does the task and returns its results."""
