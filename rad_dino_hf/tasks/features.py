"""Encode radiographs into an embeddings dataset (rad_dino_hf/embeddings.py): Parquet shards with one row per image
(index, id, path, the input table's columns, CLS token, mean patch token, optionally the patch maps) and
embeddings.json (model config and weights digest, processor settings, dtype), written as they fill. Input: a folder
of images/DICOM (recursive), a table (CSV, parquet, JSON lines, a folder with a metadata.csv) or a Hub dataset id
(--streaming reads it as a stream). Rerunning the same command resumes: complete shards are skipped. Unreadable
images are skipped and listed in errors.jsonl. Under `accelerate launch` every process writes its own shards.
Also draws a patch-feature PCA picture of the first images. With no arguments it runs on the embedded sample."""

import argparse
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from accelerate import Accelerator
from huggingface_hub import HfApi

from rad_dino_hf.embeddings import DTYPES, PATCH_DTYPES, EmbeddingSettings, open_input, write_embeddings
from rad_dino_hf.encoders import extract_features, load_encoder
from rad_dino_hf.plots import patch_pca_rgb, save_pca_figure
from rad_dino_hf import embedded_sample
from rad_dino_hf.tasks.arguments import EncoderOptions, add_encoder_arguments
from rad_dino_hf.tasks.common import encoder_view

logger = logging.getLogger("rad_dino_hf")
DEFAULT_OUTPUT = "outputs/features"  # also the similar command's default index


@dataclass
class Options:
    encoder: EncoderOptions
    images: str
    image_column: str
    hub_split: str
    streaming: bool
    image_root: str | None
    output: str
    shard_size: int
    num_workers: int
    dtype: str
    save_patches: str | None
    patch_grid: int | None
    compile: bool
    max_pictures: int
    push_to_hub: str | None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--images",
        default=str(embedded_sample.IMAGES),
        help="folder of images/DICOM, a table (.csv, .parquet, .jsonl, folder with metadata.csv) or a Hub dataset id; "
        "by default the embedded sample's radiographs",
    )
    parser.add_argument("--image-column", default="file", help="a table's column of image paths or images")
    parser.add_argument("--split", dest="hub_split", default="train", help="the Hub dataset's split")
    parser.add_argument("--streaming", action="store_true", help="read the Hub dataset as a stream")
    parser.add_argument("--image-root", help="folder a table's relative image paths start from")
    add_encoder_arguments(parser, batch_size=16)
    parser.add_argument("--output", default=DEFAULT_OUTPUT, help="folder of the embeddings dataset")
    parser.add_argument("--shard-size", type=int, default=1024, help="rows per Parquet shard")
    parser.add_argument("--num-workers", type=int, default=2, help="DataLoader workers reading and preprocessing")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="forward precision")
    parser.add_argument(
        "--save-patches",
        nargs="?",
        const="fp16",
        choices=sorted(PATCH_DTYPES),
        help="also store the patch-token maps (default fp16)",
    )
    parser.add_argument("--patch-grid", type=int, help="average-pool stored patch maps to N x N (with --save-patches)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the encoder")
    parser.add_argument("--max-pictures", type=int, default=8, help="images shown in the PCA picture (0: none)")
    parser.add_argument("--push-to-hub", metavar="REPO", help="push the dataset, with a card, to this dataset repo")


def run(options: Options, accelerator: Accelerator) -> dict | None:
    if options.patch_grid and not options.save_patches:
        raise ValueError("--patch-grid pools the stored patch maps: pass --save-patches too")
    images = embedded_sample.require(options.images, "--images")
    source = open_input(images, options.image_column, options.hub_split, options.streaming, options.image_root)
    model, processor, name = load_encoder(options.encoder.model)
    settings = EmbeddingSettings(
        batch_size=options.encoder.batch_size,
        shard_size=options.shard_size,
        num_workers=options.num_workers,
        dtype=options.dtype,
        patches=options.save_patches,
        patch_grid=options.patch_grid,
        compile=options.compile,
        progress=accelerator.is_local_main_process,
    )
    start = time.perf_counter()
    summary = write_embeddings(model, processor, source, options.output, settings, name, accelerator)
    seconds = time.perf_counter() - start
    if not accelerator.is_main_process:
        return None
    output = Path(options.output)
    summary.update(model=name, seconds=round(seconds, 2), images_per_second=round(summary["rows"] / seconds, 3))
    if options.max_pictures and source.files:
        shown = source.files[: options.max_pictures]
        patch = extract_features(model, processor, shown, progress=False)["patch"]
        views = [encoder_view(processor, processor(str(path), return_tensors="pt")["pixel_values"]) for path in shown]
        save_pca_figure(views, patch_pca_rgb(patch), [path.name for path in shown], output / "patch_pca.png")
    (output / "summary.json").write_text(json.dumps(summary, indent=2))
    logger.info(
        "Embeddings of %d images (%d unreadable, listed in errors.jsonl) in %s: %d shards, %d skipped as complete",
        summary["rows"],
        summary["errors"],
        output,
        summary["shards"],
        summary["skipped_shards"],
    )
    if options.push_to_hub:
        summary["pushed"] = push_embeddings(output, options.push_to_hub)
    return summary


def dataset_card(output: Path, repo_id: str) -> str:
    """A dataset card: what the rows hold and which model and preprocessing made them."""
    metadata = json.loads((output / "embeddings.json").read_text())
    patches = (
        f"`patch`: patch-token maps {metadata['patch_shape']} (channels, rows, columns), flattened, "
        f"{metadata['patches']}."
        if metadata["patches"]
        else "No patch maps."
    )
    return f"""---
configs:
- config_name: default
  data_files: "shard-*.parquet"
tags:
- embeddings
- radiology
- rad-dino
---
# {repo_id}

Frozen RAD-DINO embeddings of {metadata["rows"]} images of `{metadata["input"]}` ({metadata["errors"]} unreadable
images are listed in `errors.jsonl`).

- Model: `{metadata["model"]}` (weights SHA-256 `{metadata["weights_sha256"]}`), forward in {metadata["dtype"]}.
- Columns: `index`, `id`, `path`, the input table's columns, `cls` (CLS token) and `mean_patch` (mean patch token),
  {metadata["hidden_size"]} float32 values each. {patches}
- `embeddings.json` holds the model config and the image processor's settings.

```python
from datasets import load_dataset
embeddings = load_dataset("{repo_id}", split="train")
```
"""


def push_embeddings(output: Path, repo_id: str, private: bool = True) -> str:
    """Upload the embeddings dataset at `output` with a README card to the dataset repo `repo_id`; its URL."""
    (output / "README.md").write_text(dataset_card(output, repo_id))
    api = HfApi()
    repo_id = api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True).repo_id
    api.upload_folder(
        repo_id=repo_id,
        repo_type="dataset",
        folder_path=str(output),
        allow_patterns=["shard-*.parquet", "*.json", "errors.jsonl", "README.md", "*.png"],
        commit_message="Upload RAD-DINO embeddings",
    )
    logger.info("Pushed the embeddings to https://huggingface.co/datasets/%s", repo_id)
    return repo_id
