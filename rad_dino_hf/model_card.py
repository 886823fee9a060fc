"""The model card (`README.md`) of an exported checkpoint, computed from what the export holds.

Every fact on the card comes from the objects the export writes or was trained with: the architecture and the
parameter count from the model config, the input from the image processor, the training from the recipe and the
run summary, the data from the recipe's sources. RAD-DINO's own model and data appear only as the paper's, in a
background paragraph, unless the checkpoint was initialised from the released `microsoft/rad-dino`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import yaml
from transformers.image_utils import PILImageResampling

from configuration_rad_dino import RadDinoConfig
from image_processing_rad_dino import RadDinoImageProcessor
from modeling_rad_dino import RadDinoModel
from rad_dino_hf.encoders import RELEASED_MODEL_ID
from rad_dino_hf.errors import UserError
from rad_dino_hf.pretraining_data import DataSource, parse_source
from rad_dino_hf.recipe import RecipeConfig

# DINOv2's patch-14 backbones by (hidden size, layers, heads).
STANDARD_SIZES = {(384, 12, 6): "S", (768, 12, 12): "B", (1024, 24, 16): "L", (1536, 40, 24): "g"}
# RAD-DINO's pretraining set as the paper describes it: the paper's data, never an export's unless it starts from
# the released weights.
PAPER_IMAGES = 882_775
PAPER_DATASETS = "MIMIC-CXR, CheXpert, NIH ChestX-ray14, PadChest and BRAX"
TAGS = [
    "rad-dino",
    "dinov2",
    "vision-transformer",
    "self-supervised-learning",
    "chest-x-ray",
    "radiology",
    "medical-imaging",
]
SOURCE_KIND_NAMES = {
    "hub": "Hub dataset",
    "folder": "image folder",
    "parquet": "parquet files",
    "webdataset": "WebDataset shards",
    None: "local path",  # a recipe card written where the data is not (yet) present
}
CITATION = """```bibtex
@article{perezgarcia2025raddino,
  title   = {Exploring scalable medical image encoders beyond text supervision},
  author  = {P{\\'e}rez-Garc{\\'i}a, Fernando and Sharma, Harshita and Bond-Taylor, Sam and Bouzid, Kenza and
             Salvatelli, Valentina and Ilse, Maximilian and Bannur, Shruthi and Castro, Daniel C. and
             Schwaighofer, Anton and Lungren, Matthew P. and Wetscherek, Maria Teodora and Codella, Noel and
             Hyland, Stephanie L. and Alvarez-Valle, Javier and Oktay, Ozan},
  journal = {Nature Machine Intelligence},
  year    = {2025}
}
```"""


@dataclass
class SourceFacts:
    """One `train.data_sources` entry as the card states it."""

    spec: str
    location: str
    kind: str | None  # a `SOURCE_KINDS` name; None when the location cannot be resolved here
    weight: float
    images: int | None  # files in an image folder; None for other kinds

    @property
    def hub_id(self) -> str | None:
        return self.location if self.kind == "hub" else None

    def describe(self) -> str:
        """Markdown for the card's data row, e.g. "`data/sample/images` (image folder, 24 images)"."""
        if self.hub_id:
            name = f"[`{self.hub_id}`](https://huggingface.co/datasets/{self.hub_id})"
        else:
            name = f"`{self.location}`"
        details = [SOURCE_KIND_NAMES[self.kind]]
        if self.images is not None:
            details.append(f"{self.images:,} images")
        if self.weight != 1.0:
            details.append(f"weight {self.weight:g}")
        return f"{name} ({', '.join(details)})"


def source_facts(spec: str, source: DataSource | None = None) -> SourceFacts:
    """What the card says about the source `spec`; `source` is its parsed form when the run already parsed it (a
    folder is then not listed again)."""
    source = source or parse_source(spec)
    try:
        kind = source.resolved_kind()
    except UserError:
        kind = None
    images = len(source.folder_files) if kind == "folder" else None
    return SourceFacts(spec=spec, location=source.location, kind=kind, weight=source.weight, images=images)


def is_hub_model_id(name: str) -> bool:
    """Whether `student.pretrained` names a Hub model: not "random", not a file or folder here, and shaped as a Hub
    id (the rule data sources use)."""
    if name == "random" or name.endswith(".safetensors"):
        return False
    try:
        return DataSource(location=name).resolved_kind() == "hub"
    except UserError:
        return False


def parameter_count(config: RadDinoConfig) -> int:
    """Parameters of the backbone `RadDinoModel(config)`, the weights an export ships in `model.safetensors`.

    Built on the meta device: shapes only, no memory or time for the weights.
    """
    with torch.device("meta"):
        model = RadDinoModel(config)
    return sum(parameter.numel() for parameter in model.parameters())


def standard_size(config: RadDinoConfig) -> str | None:
    """ "S", "B", "L" or "g" when `config` is that DINOv2 patch-14 backbone, else None."""
    if config.patch_size != 14:
        return None
    return STANDARD_SIZES.get((config.hidden_size, config.num_hidden_layers, config.num_attention_heads))


def family(config: RadDinoConfig) -> str:
    """ "ViT-B/14" for a DINOv2 standard size, else "ViT/14" (the patch size)."""
    size = standard_size(config)
    return f"ViT-{size}/14" if size else f"ViT/{config.patch_size}"


def architecture_name(config: RadDinoConfig) -> str:
    """The backbone's name: "ViT-B/14" for a DINOv2 standard size, else "ViT/14, 4 layers, hidden 128, heads 2"."""
    if standard_size(config):
        return family(config)
    return (
        f"{family(config)}, {config.num_hidden_layers} layers, hidden {config.hidden_size}, "
        f"heads {config.num_attention_heads}"
    )


def architecture_details(config: RadDinoConfig, from_scratch: bool) -> str:
    """The architecture row: depth, width, heads, MLP, LayerScale and registers. The LayerScale initial value is
    stated only `from_scratch`: a pretrained backbone brings its learned values."""
    registers = getattr(config, "num_register_tokens", 0)
    parts = [
        f"{config.num_hidden_layers} layers",
        f"hidden {config.hidden_size}",
        f"{config.num_attention_heads} heads",
        f"patch {config.patch_size}",
        f"MLP ratio {config.mlp_ratio:g}" + (" (SwiGLU)" if config.use_swiglu_ffn else ""),
        f"LayerScale (initialised at {config.layerscale_value:g})" if from_scratch else "LayerScale",
        f"{registers} registers" if registers else "no registers",
    ]
    return f"{family(config)}: " + ", ".join(parts)


def plural(count: int, noun: str) -> str:
    return f"{count:,} {noun}" + ("" if count == 1 else "s")


def _grey_value(values: Sequence[float]) -> str:
    """One number when the three channels share it (grey replicated), else the triple."""
    return f"{values[0]:g}" if len(set(values)) == 1 else "(" + ", ".join(f"{value:g}" for value in values) + ")"


def processor_facts(processor: RadDinoImageProcessor) -> dict[str, str]:
    """Input, patch-grid and preprocessing rows from the processor the export ships (its saved settings).

    The model sees `crop_size` pixels; the patch grid is that size over the patch size.
    """
    height, width = processor.crop_size["height"], processor.crop_size["width"]
    steps = []
    if processor.do_resize:
        resample = PILImageResampling(processor.resample).name.lower()
        steps.append(f"shortest edge {processor.size['shortest_edge']} ({resample})")
    if processor.do_center_crop:
        steps.append(f"centre crop {height} × {width}")
    if processor.do_rescale:
        factor = processor.rescale_factor
        steps.append("rescale 1/255" if abs(factor - 1 / 255) < 1e-12 else f"rescale × {factor:g}")
    if processor.do_normalize:
        steps.append(f"normalise (mean {_grey_value(processor.image_mean)}, std {_grey_value(processor.image_std)})")
    steps.append("DICOM: modality LUT, VOI LUT / window, MONOCHROME1 inversion, min-max to [0, 255]")
    return {"height": height, "width": width, "steps": ", ".join(steps)}


def metadata(recipe: RecipeConfig, sources: Sequence[SourceFacts]) -> dict:
    """The card's YAML front matter: `datasets` only for Hub sources, `base_model` only for a Hub initialisation."""
    data = {
        "license": "apache-2.0",
        "library_name": "transformers",
        "pipeline_tag": "image-feature-extraction",
        "tags": list(TAGS),
    }
    hub_datasets = [source.hub_id for source in sources if source.hub_id]
    if hub_datasets:
        data["datasets"] = hub_datasets
    if is_hub_model_id(recipe.student.pretrained):
        data["base_model"] = recipe.student.pretrained
    return data


def initialisation(recipe: RecipeConfig) -> str:
    pretrained = recipe.student.pretrained
    if pretrained == "random":
        return "random weights (trained from scratch)"
    if is_hub_model_id(pretrained):
        return f"[`{pretrained}`](https://huggingface.co/{pretrained})"
    return f"`{pretrained}` (a local checkpoint)"


def distinct_images(sources: Sequence[SourceFacts]) -> int | None:
    """Files the run could draw from, when every source is an image folder (other kinds are not counted)."""
    if sources and all(source.images is not None for source in sources):
        return sum(source.images for source in sources)
    return None


def training_rows(recipe: RecipeConfig, summary: dict | None, sources: Sequence[SourceFacts]) -> list[str]:
    """The training table's rows; without a summary (a card written from the recipe alone) the run's counts are
    the schedule's plan."""
    crops = recipe.crops
    per_device = recipe.train.batch_size_per_gpu
    accumulation = recipe.train.gradient_accumulation_steps
    rows = [
        "| objective | DINO + iBOT + KoLeo (weights "
        f"{recipe.dino.loss_weight:g}, {recipe.ibot.loss_weight:g}, {recipe.dino.koleo_loss_weight:g}), "
        f"EMA teacher (momentum {recipe.teacher.momentum_teacher:g} → {recipe.teacher.final_momentum_teacher:g}) |",
        f"| initialisation | {initialisation(recipe)} |",
    ]
    if recipe.student.dino_head:
        rows.append(f"| DINO head initialisation | `{recipe.student.dino_head}` |")
    rows.append(f"| data | {'; '.join(source.describe() for source in sources) or 'none'} |")
    if summary is None:
        rows += [
            f"| iterations | {recipe.total_iterations:,} scheduled |",
            f"| global batch | {per_device} per device × devices × {plural(accumulation, 'accumulation step')} |",
        ]
    else:
        world_size = summary["world_size"]
        rows += [
            f"| iterations | {summary['step']:,} (schedule: {recipe.total_iterations:,}) |",
            f"| images seen | {summary['images_seen']:,} |",
            f"| global batch | {recipe.train.global_batch_size(world_size)} ({per_device} per device × "
            f"{plural(world_size, 'device')} × {plural(accumulation, 'accumulation step')}) |",
        ]
    rows.append(
        f"| crops | {crops.global_crops_number} × {crops.global_crops_size} px + {crops.local_crops_number} × "
        f"{crops.local_crops_size} px |"
    )
    if summary is not None:
        rows += [
            f"| skipped unreadable samples | {summary['skipped_samples']:,} |",
            f"| skipped non-finite steps | {summary['skipped_nan_steps']:,} |",
        ]
        if "seconds" in summary:
            rows.append(f"| training time | {summary['seconds'] / 60:.1f} min |")
    return rows


def data_limitation(recipe: RecipeConfig, summary: dict | None, sources: Sequence[SourceFacts]) -> str | None:
    """How much data this checkpoint saw, and a warning when a from-scratch model saw little of it."""
    if summary is None:
        return None
    seen = summary["images_seen"]
    distinct = distinct_images(sources)
    text = f"This checkpoint saw {seen:,} training images"
    text += f" drawn from {distinct:,} files." if distinct is not None else "."
    if recipe.student.pretrained == "random" and (distinct if distinct is not None else seen) < PAPER_IMAGES:
        text += (
            f" Trained from random weights on fewer images than RAD-DINO's {PAPER_IMAGES:,} radiographs (RAD-DINO"
            f" also started from DINOv2's weights): expect much weaker features than `{RELEASED_MODEL_ID}`'s."
        )
    return text


def usage(model_id: str, config: RadDinoConfig, grid: tuple[int, int]) -> list[str]:
    hidden, tokens = config.hidden_size, grid[0] * grid[1]
    return [
        "```python",
        "import torch",
        "from transformers import AutoImageProcessor, AutoModel",
        "",
        f'model = AutoModel.from_pretrained("{model_id}")  # stock Dinov2Model',
        "# or, with the repository's RadDinoModel and RadDinoImageProcessor (CLS + patch-map outputs, DICOM input):",
        f'model = AutoModel.from_pretrained("{model_id}", trust_remote_code=True)',
        f'processor = AutoImageProcessor.from_pretrained("{model_id}", trust_remote_code=True)',
        "",
        'inputs = processor(image_or_dicom_path, return_tensors="pt")',
        "with torch.inference_mode():",
        "    outputs = model(**inputs)",
        f"cls = outputs.pooler_output  # (1, {hidden})",
        f"patches = outputs.last_hidden_state[:, 1:]  # (1, {tokens}, {hidden}); RadDinoModel: "
        f".patch_embeddings (1, {hidden}, {grid[0]}, {grid[1]})",
        "```",
    ]


def background(recipe: RecipeConfig, sources: Sequence[SourceFacts]) -> str:
    """The paper's model and data, kept apart from this checkpoint's."""
    text = (
        "RAD-DINO (Pérez-García et al., 2025) is a ViT-B/14 initialised from DINOv2 and pretrained with this "
        f"recipe on {PAPER_IMAGES:,} chest radiographs from {PAPER_DATASETS}; its weights are released as "
        f"[`{RELEASED_MODEL_ID}`](https://huggingface.co/{RELEASED_MODEL_ID}). "
    )
    if recipe.student.pretrained == RELEASED_MODEL_ID:
        data = ", ".join(f"`{source.location}`" for source in sources) or "the data above"
        return text + f"This checkpoint was initialised from `{RELEASED_MODEL_ID}` and continued on {data}."
    return text + (
        "Those are the paper's model and data; this checkpoint's architecture and data are the ones stated above."
    )


def model_card(
    config: RadDinoConfig,
    processor: RadDinoImageProcessor,
    recipe: RecipeConfig,
    summary: dict | None = None,
    sources: Sequence[DataSource] | None = None,
    model_id: str | None = None,
) -> str:
    """The card of a pretraining export, as Markdown with YAML front matter.

    `config` and `processor` are what the export saves; `summary` the trainer's run summary (None for a card written
    from the recipe alone, before training); `sources` the run's parsed `train.data_sources`, in order (parsed here
    when None); `model_id` the name the usage snippet loads (default: the export folder under the recipe's output).
    """
    specs = recipe.train.data_sources
    facts = [source_facts(spec, source) for spec, source in zip(specs, sources or [None] * len(specs))]
    pre = processor_facts(processor)
    grid = (pre["height"] // config.patch_size, pre["width"] // config.patch_size)
    count = parameter_count(config)
    model_id = model_id or f"{recipe.train.output_dir}/export"
    lines = ["---", yaml.safe_dump(metadata(recipe, facts), sort_keys=False).rstrip(), "---", ""]
    lines += [f"# Chest X-ray encoder, {architecture_name(config)} (RAD-DINO recipe)", ""]
    lines += [
        "An image encoder for chest radiographs, pretrained with the RAD-DINO recipe: DINOv2's self-supervised",
        "objective (DINO, iBOT and KoLeo losses; a student and an EMA teacher), images only, no text or labels. The",
        "weights are the teacher's backbone. The folder is in the `microsoft/rad-dino` format: a stock `Dinov2Model`",
        "checkpoint (`model_type: dinov2`) with `auto_map` entries for the repository's `RadDinoModel` and",
        "`RadDinoImageProcessor`, plus `dino_head.safetensors` (the DINO projection head, for continued pretraining).",
        "",
    ]
    if summary is None:
        lines += [
            "This card was generated from the recipe alone, before training: the export of a run states the",
            "iterations it ran, the images it saw and the samples it skipped.",
            "",
        ]
    lines += [
        "## Model",
        "",
        "| | |",
        "|---|---|",
        f"| architecture | {architecture_details(config, recipe.student.pretrained == 'random')} |",
        f"| parameters | {count:,} ({count / 1e6:.1f} M) in the backbone |",
        f"| input | {pre['height']} × {pre['width']} px, 3 channels (grey replicated) |",
        f"| patch grid | {grid[0]} × {grid[1]} = {grid[0] * grid[1]:,} patch tokens + 1 CLS token, "
        f"{config.hidden_size} each |",
        f"| preprocessing | {pre['steps']} |",
        f"| DINO head | {config.dino_head_n_layers}-layer MLP (hidden {config.dino_head_hidden_size}, bottleneck "
        f"{config.dino_head_bottleneck_size}), {config.dino_head_n_prototypes:,} prototypes |",
        "",
        "## Training",
        "",
        "| | |",
        "|---|---|",
        *training_rows(recipe, summary, facts),
        "",
        "<details><summary>Full recipe</summary>",
        "",
        "```yaml",
        recipe.to_yaml().rstrip(),
        "```",
        "</details>",
        "",
        "## How to load",
        "",
        *usage(model_id, config, grid),
        "",
        "## Intended use and limits",
        "",
        "Research on chest radiograph representation learning: frozen-encoder features for classification,",
        "segmentation and demographic probing, the vision tower of report generators, continued pretraining.",
        "",
        "- **Not for clinical use.** No output of this model, or of a head trained on it, has been validated for",
        "  diagnosis, triage or any decision about a patient.",
    ]
    data_note = data_limitation(recipe, summary, facts)
    if data_note:
        lines.append(f"- {data_note}")
    lines += [
        "- No evaluation was run for this card. Measure the features on your task before relying on them (the",
        "  repository's `linear-probe`, `knn` and `segment` commands take this folder as `--model`).",
        "- Chest radiographs are its domain; other body parts and modalities are out of distribution. Public CXR",
        "  archives over-represent some hospitals, scanners and age groups, and such features encode demographics,",
        "  so downstream models can learn shortcuts and biases.",
        f"- Images are resized and centre-cropped to {pre['height']} px: detail finer than that and content at the",
        "  long edges of non-square images are lost.",
        "",
        "## Background",
        "",
        background(recipe, facts),
        "",
        CITATION,
        "",
    ]
    return "\n".join(lines)
