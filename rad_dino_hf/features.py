"""Frozen-encoder feature extraction: image files in, CLS embeddings and patch-token maps out."""

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from configuration_rad_dino import RadDinoConfig
from image_processing_rad_dino import RadDinoImageProcessor
from modeling_rad_dino import RadDinoModel
from rad_dino_hf.data import IMAGE_SUFFIXES
from rad_dino_hf.fingerprint import files_digest, parameter_digest

logger = logging.getLogger(__name__)

RELEASED_MODEL_ID = "microsoft/rad-dino"
RANDOM_INIT = "random"


def load_encoder(
    name_or_path: str, random_fallback: bool | None = None
) -> tuple[RadDinoModel, RadDinoImageProcessor, str]:
    """Load an encoder and its processor from a Hub id or directory, or build a random full-size one.

    `name_or_path="random"` builds a randomly initialised RAD-DINO. With `random_fallback`, a Hub id that cannot be
    loaded (offline, no cache) falls back to random weights with a warning instead of failing; the returned name
    says which happened. By default (None) only the released model, every command's default, falls back: a
    mistyped path or id the user gave still fails.
    """
    if random_fallback is None:
        random_fallback = name_or_path == RELEASED_MODEL_ID
    if name_or_path == RANDOM_INIT:
        torch.manual_seed(0)
        return RadDinoModel(RadDinoConfig()).eval(), RadDinoImageProcessor(), RANDOM_INIT
    try:
        model = RadDinoModel.from_pretrained(name_or_path).eval()
        processor = RadDinoImageProcessor.from_pretrained(name_or_path)
        return model, processor, name_or_path
    except OSError as error:
        if not random_fallback:
            raise
        logger.warning(
            "Could not load %s (%s). Using a RANDOMLY INITIALISED RAD-DINO instead: the pipeline runs, but the "
            "features mean nothing. Connect to the Hub once or pass --model DIR to use real weights.",
            name_or_path,
            str(error).splitlines()[0],
        )
        return load_encoder(RANDOM_INIT)


def list_images(folder: str | Path) -> list[Path]:
    """Image and DICOM files under `folder`, sorted, recursively."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"Image folder not found: {folder}")
    files = sorted(path for path in folder.rglob("*") if path.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"No images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {folder}")
    return files


@torch.inference_mode()
def extract_features(
    model: RadDinoModel,
    processor: RadDinoImageProcessor,
    files: Sequence[Path],
    batch_size: int = 4,
    progress: bool = True,
    accelerator: Accelerator | None = None,
) -> dict[str, torch.Tensor]:
    """Encode `files` with `model`.

    Returns `cls` `(N, D)` and `patch` `(N, D, H/p, W/p)` float32 CPU tensors, in the order of `files`. With an
    `accelerator` (e.g. under `accelerate launch`), each process encodes a contiguous share of `files` on its
    device and every process gets all features back.
    """
    if accelerator is not None and accelerator.num_processes > 1:
        with accelerator.split_between_processes(list(range(len(files)))) as share:
            local = extract_features(model, processor, [files[i] for i in share], batch_size, progress)
        # Shares are contiguous and in rank order, so concatenating the gathered shares restores the file order.
        shares = gather_object([local])
        return {name: torch.cat([share[name] for share in shares]) for name in local}
    device = accelerator.device if accelerator is not None else next(model.parameters()).device
    model = model.to(device)
    cls_batches, patch_batches = [], []
    with tqdm(total=len(files), desc="Encoding", unit="img", disable=not progress) as bar:
        for start in range(0, len(files), batch_size):
            batch_files = files[start : start + batch_size]
            # Paths, not arrays: the processor reads them and applies the DICOM / 16-bit conversion itself.
            pixels = processor([str(path) for path in batch_files], return_tensors="pt")["pixel_values"]
            output = model(pixels.to(device))
            cls_batches.append(output.cls_embeddings.float().cpu())
            patch_batches.append(output.patch_embeddings.float().cpu())
            bar.update(len(batch_files))
    if not files:  # a process with no share
        hidden, patch, crop = model.config.hidden_size, model.config.patch_size, processor.crop_size
        return {
            "cls": torch.empty(0, hidden),
            "patch": torch.empty(0, hidden, crop["height"] // patch, crop["width"] // patch),
        }
    return {"cls": torch.cat(cls_batches), "patch": torch.cat(patch_batches)}


def cached_features(
    model: RadDinoModel,
    processor: RadDinoImageProcessor,
    files: Sequence[Path],
    cache_dir: str | Path,
    batch_size: int = 4,
    progress: bool = True,
    accelerator: Accelerator | None = None,
) -> tuple[dict[str, torch.Tensor], bool]:
    """`extract_features`, cached in `cache_dir` as safetensors keyed by weights, config, preprocessing and files.

    Returns the features and whether they came from the cache (then the encoder did not run). With several
    processes, they share the encoding and the main process writes the cache entry.
    """
    key = hashlib.sha256(
        "|".join(
            [parameter_digest(model), model.config.to_json_string(), processor.to_json_string(), files_digest(files)]
        ).encode()
    ).hexdigest()[:32]
    path = Path(cache_dir) / f"{key}.safetensors"
    if path.exists():
        logger.info("Features from cache %s", path)
        return load_file(path), True
    features = extract_features(model, processor, files, batch_size, progress, accelerator)
    if accelerator is None or accelerator.is_main_process:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        save_file({name: tensor.contiguous() for name, tensor in features.items()}, tmp)
        tmp.replace(path)  # a killed run never leaves a truncated cache entry
    return features, False
