"""Downstream use of a RAD-DINO encoder.

Subcommands:
  features      encode a folder of radiographs (PNG, JPEG, 16-bit, DICOM) and save CLS + patch features and a
                patch-feature PCA picture. With no arguments it runs on the embedded sample in data/sample.
  segment       train a segmentation decoder (linear or upsampling) on a frozen encoder's patch maps from
                folders with a metadata.csv (file, patient, lung_mask columns); patient split; lung Dice with a 95 %
                bootstrap interval, pooled Dice/IoU, overlay pictures, and the model saved for from_pretrained.
  visualize     for each image or DICOM given: patch-feature PCA and the last layer's CLS attention per head.
  linear-probe  logistic regression on frozen features (CLS + mean patch token) of images listed in a table with an
                image-path, a label and a patient column (--table: CSV, parquet or JSON lines file, a folder with
                a metadata.csv, or a Hub dataset id, read with HF datasets); several --label-column's make a
                multi-label task (0/1 columns, one binary regression per label); patient-level split; accuracy,
                AUROC, AUPRC with 95 % bootstrap CIs, ROC curves, a confusion matrix (multi-class) and per-image
                predictions. Features are cached, so reruns skip the encoder.
  knn           weighted k-nearest-neighbour classification of the same table on cached frozen features, as DINO's
                k-NN evaluation (cosine similarity, k = 20, votes weighted by exp(similarity / 0.07)); same split,
                metrics and pictures as linear-probe.
  demographics  sex (logistic regression, AUROC) and age (ridge regression, MAE and Pearson r) on frozen features
                of folders with a metadata.csv (default: covid-chestxray); rows missing a value are dropped for that
                target; patient split; 95 % bootstrap CIs, an age scatter plot and a sex ROC curve.
  finetune      fine-tune RadDinoForImageClassification end to end on the table's images (LoRA by default, or full,
                or only the head) with Accelerate (plain or under `accelerate launch`); AdamW, cosine schedule with
                warmup; linear-probe's metrics and pictures plus a loss curve; saves the model for from_pretrained
                (LoRA: the adapter, and the model with the adapter merged in). On a CPU use a small encoder.
  report        LLaVA-style report generator: the encoder's patch tokens -> 2-layer GELU MLP projector -> any causal
                LM (a tiny local Llama by default, since none can be downloaded offline). Stage 1 trains the
                projector, stage 2 LoRA adapters on the LM; loss on report tokens only. Generates for held-out and
                training cases (greedy or beam search) and scores ROUGE-L, BLEU-4 and CheXpert-style finding F1
                next to a most-common-report baseline. Default data: covid-chestxray clinical notes.

Examples:
  python train_downstream.py features
  python train_downstream.py features --images ../shared/data/dicom --model ./my-rad-dino --output outputs/dicom
  python train_downstream.py linear-probe --model outputs/pretrain/export
  python train_downstream.py knn --model outputs/pretrain/export --k 20
  python train_downstream.py linear-probe --table ../shared/data/covid-chestxray --label-column finding
  python train_downstream.py linear-probe --table labels.parquet --label-column edema effusion consolidation
  python train_downstream.py demographics --model outputs/pretrain/export
  python train_downstream.py finetune --model outputs/learning_check/pretrain/export --epochs 3
  accelerate launch --config_file configs/accelerate/ddp.yaml train_downstream.py finetune --model microsoft/rad-dino
  python train_downstream.py segment --model outputs/pretrain/export
  python train_downstream.py visualize ../shared/data/dicom/RG1_UNCR.dcm --model outputs/pretrain/export
  python train_downstream.py report --encoder outputs/pretrain/export
  python train_downstream.py report --encoder microsoft/rad-dino --lm Qwen/Qwen2.5-0.5B --image-token-pooling 2
"""

import argparse
import copy
import csv
import json
import logging
import time
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from configuration_rad_dino import POOLINGS
from image_processing_rad_dino import RadDinoImageProcessor
from modeling_rad_dino import RadDinoForSemanticSegmentation, RadDinoModel
from rad_dino_hf.demographics import demographics_probe, read_demographics
from rad_dino_hf.distributed import make_accelerator
from rad_dino_hf.plots import (
    plot_confusion_matrix,
    plot_regression_scatter,
    plot_roc_curves,
    plot_segmentation_overlay,
)
from rad_dino_hf.features import RELEASED_MODEL_ID, cached_features, extract_features, list_images, load_encoder
from rad_dino_hf.finetune import (
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
from rad_dino_hf.knn import DEFAULT_K, DEFAULT_TEMPERATURE, knn_classify
from rad_dino_hf.lora import DEFAULT_LORA_TARGETS
from rad_dino_hf.metrics import classification_metrics
from rad_dino_hf.plots import (
    cls_attention_maps,
    patch_pca_rgb,
    plot_finetune_curves,
    save_attention_figure,
    save_pca_figure,
)
from rad_dino_hf.report.cli import add_report_parser
from rad_dino_hf.probe import linear_probe, patient_split
from rad_dino_hf.segmentation import foreground_dice, mask_like_processor, predict, train_decoder
from rad_dino_hf.tables import UNCERTAIN_POLICIES, LabelledTable, load_table, read_labelled_table

logger = logging.getLogger("rad_dino_hf")
REPO = Path(__file__).resolve().parent
SAMPLE_IMAGES = REPO / "data" / "sample" / "images"
SHARED_DATA = REPO.parent / "shared" / "data"
PEDIATRIC_CSV = SHARED_DATA / "pediatric-pneumonia" / "train.csv"
MASKED_SETS = [SHARED_DATA / "hannover-covid", SHARED_DATA / "covid-chestxray"]
DEMOGRAPHICS_SET = SHARED_DATA / "covid-chestxray"


def encoder_view(processor, pixel_values: torch.Tensor) -> np.ndarray:
    """The radiograph as the encoder saw it: `(1, 3, H, W)` normalised pixels -> `(H, W)` grey in [0, 1]."""
    return (pixel_values[0, 0] * processor.image_std[0] + processor.image_mean[0]).clamp(0, 1).numpy()


class SecondaryProcessDone(Exception):
    """A non-main process has contributed its share of the encoding; the rest of the command is the main one's."""


def encode_once(
    model: RadDinoModel, processor: RadDinoImageProcessor, files: list[Path], batch_size: int, cache_dir: str | None
) -> tuple[dict[str, torch.Tensor], bool]:
    """Features of `files` (cached in `cache_dir` unless None) and whether they came from the cache. Under
    `accelerate launch` the processes share the encoding, then all but the main process stop here (they wait in
    `main`), so that fitting, metrics and files happen once."""
    accelerator = make_accelerator()
    if cache_dir is None:
        features, from_cache = extract_features(model, processor, files, batch_size, accelerator=accelerator), False
    else:
        features, from_cache = cached_features(model, processor, files, cache_dir, batch_size, accelerator=accelerator)
    if not accelerator.is_main_process:
        raise SecondaryProcessDone
    return features, from_cache


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    """A CSV file with `header` and `rows` (floats at full precision)."""
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def run_features(args: argparse.Namespace) -> None:
    files = list_images(args.images)
    model, processor, model_name = load_encoder(args.model)
    logger.info("Encoding %d images from %s with %s", len(files), args.images, model_name)
    start = time.perf_counter()
    features, _ = encode_once(model, processor, files, args.batch_size, cache_dir=None)
    seconds = time.perf_counter() - start

    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    save_file(
        {name: tensor.contiguous() for name, tensor in features.items()},
        output / "features.safetensors",
        metadata={"model": model_name, "files": json.dumps([str(path) for path in files])},
    )
    shown = files[: args.max_pictures]
    views = [encoder_view(processor, processor(str(path), return_tensors="pt")["pixel_values"]) for path in shown]
    picture = save_pca_figure(
        views,
        patch_pca_rgb(features["patch"][: len(shown)]),
        [path.name for path in shown],
        output / "patch_pca.png",
    )
    summary = {
        "model": model_name,
        "images": len(files),
        "seconds": round(seconds, 2),
        "images_per_second": round(len(files) / seconds, 3),
        "cls_shape": list(features["cls"].shape),
        "patch_shape": list(features["patch"].shape),
    }
    (output / "summary.json").write_text(json.dumps(summary, indent=2))
    logger.info(
        "Features: %s; picture: %s; %.2f images/s", output / "features.safetensors", picture, len(files) / seconds
    )


def run_visualize(args: argparse.Namespace) -> list[Path]:
    model, processor, model_name = load_encoder(args.model)
    # Attention maps need the eager attention path (sdpa never materialises the weights).
    eager = RadDinoModel._from_config(model.config, attn_implementation="eager").eval()
    eager.load_state_dict(model.state_dict())
    output, pictures = Path(args.output), []
    for source in args.images:
        pixels = processor(str(source), return_tensors="pt")["pixel_values"]
        with torch.inference_mode():
            result = eager(pixels, output_attentions=True)
        grid = tuple(result.patch_embeddings.shape[-2:])
        view = encoder_view(processor, pixels)
        path = output / f"{Path(source).stem}_attention.png"
        save_attention_figure(
            view, cls_attention_maps(result.attentions[-1], grid)[0], patch_pca_rgb(result.patch_embeddings)[0], path
        )
        pictures.append(path)
        logger.info("%s -> %s (%s)", source, path, model_name)
    return pictures


def read_masked_sets(folders: list[str], mask_column: str) -> tuple[list[Path], list[Path], np.ndarray]:
    """(image, mask, patient) of every row with a mask in each folder's metadata.csv; patients namespaced by folder."""
    images, masks, patients = [], [], []
    for folder in map(Path, folders):
        table, root = load_table(str(folder))
        for row in table:
            if row.get(mask_column):
                images.append(root / row["file"])
                masks.append(root / row[mask_column])
                patients.append(f"{folder.name}/{row['patient']}")
    if not images:
        raise ValueError(f"No rows with a {mask_column!r} mask in {folders}")
    return images, masks, np.array(patients)


def run_segment(args: argparse.Namespace) -> dict:
    images, mask_files, patients = read_masked_sets(args.data, args.mask_column)
    encoder, processor, model_name = load_encoder(args.model)
    features, from_cache = encode_once(encoder, processor, images, args.batch_size, args.cache_dir)
    masks = torch.from_numpy(np.stack([mask_like_processor(str(path), processor) for path in mask_files]))
    train, val = patient_split(patients, args.val_fraction, args.seed)
    logger.info("Segmentation: %d train / %d validation images, no patient in both", len(train), len(val))

    config = copy.deepcopy(encoder.config)
    config.num_labels, config.segmentation_decoder = 2, args.decoder
    config.id2label, config.label2id = {0: "background", 1: "lung"}, {"background": 0, "lung": 1}
    torch.manual_seed(args.seed)
    model = RadDinoForSemanticSegmentation(config)
    model.dinov2.load_state_dict(encoder.state_dict())
    start = time.perf_counter()
    losses = train_decoder(model, features["patch"][train], masks[train], args.epochs, args.lr, seed=args.seed)
    train_seconds = time.perf_counter() - start
    predictions = predict(model.eval(), features["patch"][val], tuple(masks.shape[-2:]))
    results = foreground_dice(predictions, masks[val].numpy(), seed=args.seed)
    results.update(
        model=model_name,
        decoder=args.decoder,
        epochs=args.epochs,
        final_train_loss=losses[-1],
        train_seconds=round(train_seconds, 1),
        features_from_cache=from_cache,
        n_train=int(len(train)),
    )
    output = Path(args.output)
    model.save_pretrained(output / "model")
    processor.save_pretrained(output / "model")
    for index in val[: args.pictures]:
        view = encoder_view(processor, processor(str(images[index]), return_tensors="pt")["pixel_values"])
        view = (view * 255).astype(np.uint8)
        position = int(np.where(val == index)[0][0])
        plot_segmentation_overlay(
            view,
            predictions[position],
            masks[index].numpy(),
            output / f"overlay_{images[index].stem}.png",
            class_names=["background", "lung"],
        )
    (output / "metrics.json").write_text(json.dumps(results, indent=2))
    dice = results["lung_dice_per_image"]
    logger.info(
        "lung Dice %.3f (95%% CI %.3f-%.3f) over %d validation images; model, metrics and overlays in %s",
        dice["value"],
        dice["ci_low"],
        dice["ci_high"],
        results["n_images"],
        output,
    )
    return results


@dataclass
class LabelledSplit(LabelledTable):
    """A labelled table (`rad_dino_hf.tables.LabelledTable`) and the `train` / `val` indices of a patient-level split."""

    train: np.ndarray
    val: np.ndarray


def labelled_split(args: argparse.Namespace, task: str) -> LabelledSplit:
    """`--table`'s rows split by patient (`--val-fraction`, `--seed`)."""
    table = read_labelled_table(
        args.table,
        args.image_column,
        args.label_column,
        args.patient_column,
        args.image_root,
        args.split,
        args.uncertain_as,
    )
    train, val = patient_split(table.patients, args.val_fraction, args.seed)
    kind = f"{len(table.classes)} labels" if table.multilabel else f"{len(table.classes)} classes"
    logger.info("%s (%s): %d train / %d validation images, no patient in both", task, kind, len(train), len(val))
    return LabelledSplit(**{field.name: getattr(table, field.name) for field in fields(table)}, train=train, val=val)


def frozen_features(args: argparse.Namespace, files: list[Path], pooling: str = "cls_mean") -> tuple[np.ndarray, dict]:
    """`(N, F)` frozen features of `files` (CLS ⊕ mean patch token, or the CLS token alone), cached in `--cache-dir`,
    and the run's facts for metrics.json."""
    model, processor, model_name = load_encoder(args.model)
    start = time.perf_counter()
    features, from_cache = encode_once(model, processor, files, args.batch_size, args.cache_dir)
    parts = [features["cls"]] + ([features["patch"].mean(dim=(2, 3))] if pooling == "cls_mean" else [])
    info = {
        "model": model_name,
        "n_images": len(files),
        "features_from_cache": from_cache,
        "encode_seconds": round(time.perf_counter() - start, 2),
    }
    return torch.cat(parts, dim=1).numpy(), info


def write_classification_outputs(output: Path, results: dict, data: LabelledSplit, probabilities: np.ndarray) -> dict:
    """metrics.json (`results`), ROC curves, a confusion matrix (multi-class only) and the validation predictions
    `(N_val, C)` per image (predictions.csv; multi-label: the positive labels, and those at probability >= 0.5,
    joined by ";"); logs accuracy and macro AUROC with their intervals. Returns `results`."""
    output.mkdir(parents=True, exist_ok=True)
    labels = data.labels[data.val]
    plot_roc_curves(labels, probabilities, output / "roc_curves.png", data.classes, multilabel=data.multilabel)
    if data.multilabel:
        logger.info("Multi-label: one ROC curve per label, no confusion matrix")
        names = np.array(data.classes)
        truth = [";".join(names[row == 1]) for row in labels]
        guesses = [";".join(names[row >= 0.5]) for row in probabilities]
    else:
        predicted = probabilities.argmax(axis=1)
        plot_confusion_matrix(labels, predicted, output / "confusion_matrix.png", class_names=data.classes)
        truth, guesses = [data.classes[i] for i in labels], [data.classes[i] for i in predicted]
    write_csv(
        output / "predictions.csv",
        ["file", "patient", "label", "predicted"] + [f"p_{name}" for name in data.classes],
        [
            [str(data.files[index]), data.patients[index], label, guess, *row.tolist()]
            for index, label, guess, row in zip(data.val, truth, guesses, probabilities)
        ],
    )
    (output / "metrics.json").write_text(json.dumps(results, indent=2))
    accuracy, auroc = results["accuracy"], results["auroc"]["macro"]
    logger.info(
        "accuracy %.3f (95%% CI %.3f-%.3f), macro AUROC %.3f (%.3f-%.3f); metrics and pictures in %s",
        accuracy["value"],
        accuracy["ci_low"],
        accuracy["ci_high"],
        auroc["value"],
        auroc["ci_low"],
        auroc["ci_high"],
        output,
    )
    return results


def run_linear_probe(args: argparse.Namespace) -> dict:
    data = labelled_split(args, "Probe")
    vectors, info = frozen_features(args, data.files)
    train, val = data.train, data.val
    results = linear_probe(
        vectors[train],
        data.labels[train],
        data.patients[train],
        vectors[val],
        data.labels[val],
        data.classes,
        args.seed,
        multilabel=data.multilabel,
    )
    probabilities = results.pop("probabilities")
    results.update(info, table=str(args.table), seed=args.seed)
    return write_classification_outputs(Path(args.output), results, data, probabilities)


def run_knn(args: argparse.Namespace) -> dict:
    data = labelled_split(args, "k-NN")
    vectors, info = frozen_features(args, data.files, args.features)
    probabilities = knn_classify(
        vectors[data.train], data.labels[data.train], vectors[data.val], len(data.classes), args.k, args.temperature
    ).numpy()
    results = classification_metrics(
        data.labels[data.val], probabilities, data.classes, multilabel=data.multilabel, seed=args.seed
    )
    results.update(info, k=args.k, temperature=args.temperature, features=args.features, n_train=len(data.train))
    results.update(table=str(args.table), seed=args.seed)
    return write_classification_outputs(Path(args.output), results, data, probabilities)


def run_demographics(args: argparse.Namespace) -> dict:
    table = read_demographics(args.data, args.sex_column, args.age_column)
    vectors, info = frozen_features(args, table.files)
    train, val = patient_split(table.patients, args.val_fraction, args.seed)
    logger.info("Demographics: %d train / %d validation images, no patient in both", len(train), len(val))
    results, predictions = demographics_probe(vectors, table, train, val, seed=args.seed)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    summary = []
    if "age" in predictions:
        mae, r = results["age"]["mae"], results["age"]["pearson_r"]
        summary.append(
            f"age MAE {mae['value']:.1f} y ({mae['ci_low']:.1f}-{mae['ci_high']:.1f}), "
            f"r {r['value']:.2f} ({r['ci_low']:.2f}-{r['ci_high']:.2f})"
        )
        age = predictions["age"]
        plot_regression_scatter(age.targets, age.predictions, output / "age_scatter.png", title=summary[-1])
    if "sex" in predictions:
        auroc = results["sex"]["auroc"]
        summary.append(f"sex AUROC {auroc['value']:.3f} ({auroc['ci_low']:.3f}-{auroc['ci_high']:.3f})")
        sex = predictions["sex"]
        plot_roc_curves(
            sex.targets[:, None],
            sex.predictions[:, None],
            output / "sex_roc.png",
            class_names=["male"],
            multilabel=True,
            title=summary[-1],
        )
    write_csv(
        output / "predictions.csv",
        ["target", "file", "patient", "true", "predicted"],
        [
            [name, str(table.files[row]), table.patients[row], truth, guess]
            for name, target in predictions.items()
            for row, truth, guess in zip(target.rows, target.targets, target.predictions)
        ],
    )
    results.update(info, data=[str(folder) for folder in args.data], seed=args.seed)
    (output / "metrics.json").write_text(json.dumps(results, indent=2))
    logger.info("%s; metrics and pictures in %s", "; ".join(summary), output)
    return results


def run_finetune(args: argparse.Namespace) -> dict:
    accelerator = make_accelerator(
        mixed_precision=args.mixed_precision, gradient_accumulation_steps=args.gradient_accumulation_steps
    )
    data = labelled_split(args, "Fine-tuning")
    encoder, processor, model_name = load_encoder(args.model)
    size = args.image_size or int(np.min(encoder.config.image_size))
    processor = processor_at(processor, size)
    model = classifier_from_encoder(encoder, data.classes, args.pooling, args.seed, multilabel=data.multilabel)
    options = FinetuneOptions(**{option.name: getattr(args, option.name) for option in fields(FinetuneOptions)})
    train_files, val_files = [data.files[i] for i in data.train], [data.files[i] for i in data.val]
    augment = augment_radiograph if args.augment else None
    train_set = ImageDataset(train_files, data.labels[data.train], processor, augment)
    val_set = ImageDataset(val_files, data.labels[data.val], processor)
    logger.info("Fine-tuning (%s) %s at %d px on %s", args.method, model_name, size, accelerator.device)
    start = time.perf_counter()
    result = finetune(accelerator, model, train_set, val_set, options)
    results = classification_metrics(
        data.labels[data.val], result.probabilities, data.classes, multilabel=data.multilabel, seed=args.seed
    )
    results.update(
        model=model_name,
        method=args.method,
        image_size=size,
        trainable_parameters=sum(p.numel() for p in result.model.parameters() if p.requires_grad),
        history=result.history,
        train_seconds=round(time.perf_counter() - start, 1),
        n_train=len(data.train),
        table=str(args.table),
        seed=args.seed,
        options={name: value for name, value in vars(args).items() if name not in ("run", "command")},
    )
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:  # every process holds the gathered predictions; one writes
        output = Path(args.output)
        write_classification_outputs(output, results, data, result.probabilities)
        plot_finetune_curves(
            result.batch_losses, [epoch["val_accuracy"] for epoch in result.history], output / "loss_curve.png"
        )
        save_finetuned(result.model, processor, output)
    return results


def add_model_arguments(parser: argparse.ArgumentParser, batch_size: int = 4) -> None:
    parser.add_argument(
        "--model",
        default=RELEASED_MODEL_ID,
        help=f"Hub id or directory (default {RELEASED_MODEL_ID}; offline without a cache it falls back to random "
        "weights with a warning), or 'random'",
    )
    parser.add_argument("--batch-size", type=int, default=batch_size)


def add_labelled_table_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--table",
        "--csv",
        dest="table",
        default=str(PEDIATRIC_CSV),
        help="labelled images: a .csv, .parquet or .jsonl/.json file, a folder with a metadata.csv, or a Hub dataset "
        "id; image-path, label and patient columns",
    )
    parser.add_argument("--split", default="train", help="the Hub dataset's split (Hub ids only)")
    parser.add_argument(
        "--image-root",
        help="folder the image paths are relative to (default: the table's; required for a Hub id with relative paths)",
    )
    parser.add_argument("--image-column", default="file")
    parser.add_argument(
        "--label-column",
        nargs="+",
        default=["label"],
        help="one column: multi-class (its values are the classes); several: multi-label, one 0/1 label per column "
        "(1/0, true/false, yes/no; blank is an error)",
    )
    parser.add_argument(
        "--uncertain-as",
        choices=UNCERTAIN_POLICIES,
        default="negative",
        help="multi-label value -1 (CheXpert's uncertain) counts as this",
    )
    parser.add_argument("--patient-column", default="patient", help="no patient is in both splits")


def add_split_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--val-fraction", type=float, default=0.25, help="share of patients held out")
    parser.add_argument("--seed", type=int, default=0)


def add_cache_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cache-dir", default="outputs/feature_cache", help="where computed features are kept")


def add_finetune_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--method", choices=METHODS, default="lora", help="frozen: only the head trains")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument(
        "--lr",
        type=float,
        help=f"encoder (or LoRA) learning rate; default per method: {DEFAULT_LR['full']} full, "
        f"{DEFAULT_LR['lora']} lora",
    )
    parser.add_argument("--head-lr", type=float, default=1e-3, help="learning rate of the classifier head")
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument("--layer-decay", type=float, default=1.0, help="layer-wise lr decay, e.g. 0.75; 1 is off")
    parser.add_argument("--warmup-fraction", type=float, default=0.1, help="share of updates with linear warmup")
    parser.add_argument("--max-grad-norm", type=float, default=1.0, help="gradient clipping; 0 is off")
    parser.add_argument("--lora-rank", type=int, default=8)
    parser.add_argument("--lora-alpha", type=float, default=16.0)
    parser.add_argument("--lora-dropout", type=float, default=0.0)
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
    parser.add_argument("--mixed-precision", choices=["no", "bf16", "fp16"], default="no")
    parser.add_argument("--gradient-accumulation-steps", type=int, default=1)
    parser.add_argument("--num-workers", type=int, default=0, help="data loader processes")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    features = commands.add_parser("features", help="encode images; save features and a patch-PCA picture")
    features.add_argument(
        "--images", default=str(SAMPLE_IMAGES), help="folder of images/DICOM (default: embedded sample)"
    )
    add_model_arguments(features)
    features.add_argument("--output", default="outputs/features", help="output folder")
    features.add_argument("--max-pictures", type=int, default=8, help="images shown in the PCA picture")
    features.set_defaults(run=run_features)

    segment = commands.add_parser("segment", help="segmentation decoder on a frozen encoder, lung Dice")
    add_model_arguments(segment)
    segment.add_argument(
        "--data",
        nargs="+",
        default=[str(p) for p in MASKED_SETS],
        help="folders with metadata.csv (file, patient and mask columns)",
    )
    segment.add_argument("--mask-column", default="lung_mask")
    segment.add_argument("--decoder", choices=["linear", "upsample"], default="linear")
    segment.add_argument("--epochs", type=int, default=30)
    segment.add_argument("--lr", type=float, default=1e-3)
    add_split_arguments(segment)
    segment.add_argument("--pictures", type=int, default=4, help="overlay pictures of validation images")
    add_cache_argument(segment)
    segment.add_argument("--output", default="outputs/segment")
    segment.set_defaults(run=run_segment)

    visualize = commands.add_parser("visualize", help="patch PCA and CLS attention maps of images or DICOM files")
    visualize.add_argument("images", nargs="+", help="image or DICOM files")
    add_model_arguments(visualize)
    visualize.add_argument("--output", default="outputs/visualize")
    visualize.set_defaults(run=run_visualize)

    probe = commands.add_parser("linear-probe", help="logistic regression on frozen features, patient split")
    knn = commands.add_parser("knn", help="weighted k-NN on frozen features (DINO's k-NN evaluation), patient split")
    finetune_parser = commands.add_parser("finetune", help="fine-tune a classifier end to end (full, LoRA or head)")
    for command in (probe, knn, finetune_parser):
        add_model_arguments(command, batch_size=16 if command is finetune_parser else 4)
        add_labelled_table_arguments(command)
        add_split_arguments(command)
    for command in (probe, knn):
        add_cache_argument(command)
    probe.add_argument("--output", default="outputs/linear_probe")
    probe.set_defaults(run=run_linear_probe)
    knn.add_argument("--k", type=int, default=DEFAULT_K, help="neighbours that vote")
    knn.add_argument("--temperature", type=float, default=DEFAULT_TEMPERATURE, help="votes weigh exp(cosine / T)")
    knn.add_argument("--features", choices=["cls", "cls_mean"], default="cls", help="CLS (as DINO) or CLS ⊕ mean patch")
    knn.add_argument("--output", default="outputs/knn")
    knn.set_defaults(run=run_knn)
    add_finetune_arguments(finetune_parser)
    finetune_parser.add_argument("--output", default="outputs/finetune")
    finetune_parser.set_defaults(run=run_finetune)

    demographics = commands.add_parser("demographics", help="sex (AUROC) and age (MAE, r) probes on frozen features")
    add_model_arguments(demographics)
    demographics.add_argument(
        "--data", nargs="+", default=[str(DEMOGRAPHICS_SET)], help="folders with metadata.csv (file, patient, ...)"
    )
    demographics.add_argument("--sex-column", default="sex", help="m/male -> male (1), f/female -> female (0)")
    demographics.add_argument("--age-column", default="age", help="years (52, 52.5 or 052Y)")
    add_split_arguments(demographics)
    add_cache_argument(demographics)
    demographics.add_argument("--output", default="outputs/demographics")
    demographics.set_defaults(run=run_demographics)
    add_report_parser(commands)
    return parser


def main(argv: list[str] | None = None):
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.run(args)
    except SecondaryProcessDone:
        return None
    finally:
        # Every process leaves together: one that exits while a peer still holds the gloo/NCCL group can make the
        # peer's teardown fail or hang.
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
