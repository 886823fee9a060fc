"""Export a pretrained teacher as a HF checkpoint in the `microsoft/rad-dino` format, with its model card, and push it
to the Hub."""

import copy
import json
import logging
from collections.abc import Sequence
from pathlib import Path

from huggingface_hub import HfApi

from configuration_rad_dino import RadDinoConfig
from image_processing_rad_dino import RadDinoImageProcessor
from rad_dino_hf.convert import DINO_HEAD_FILENAME, save_dino_head
from rad_dino_hf.model_card import model_card
from rad_dino_hf.pretraining_data import DataSource
from rad_dino_hf.recipe import RecipeConfig
from rad_dino_hf.ssl_model import SelfDistillationNetwork, model_config

logger = logging.getLogger(__name__)


def exported_config(config: RadDinoConfig) -> RadDinoConfig:
    """The config an export writes: the teacher's, with `interpolate_offset` reset to 0 so the export resizes
    position embeddings as a stock `Dinov2Model` does."""
    config = copy.deepcopy(config)
    config.interpolate_offset = 0.0
    return config


def exported_processor(recipe: RecipeConfig) -> RadDinoImageProcessor:
    """Resize and crop to the run's global crop size, the resolution it last trained at (518 after RAD-DINO's
    stage 2; position embeddings interpolate), normalised with the recipe's mean and std."""
    size = recipe.crops.global_crops_size
    return RadDinoImageProcessor(
        size={"shortest_edge": size},
        crop_size={"height": size, "width": size},
        image_mean=[recipe.crops.mean] * 3,
        image_std=[recipe.crops.std] * 3,
    )


def export_teacher(
    teacher: SelfDistillationNetwork,
    output_dir: str | Path,
    recipe: RecipeConfig,
    summary: dict,
    sources: Sequence[DataSource] | None = None,
    repo_id: str | None = None,
) -> Path:
    """Write the teacher backbone (release format), its DINO head, a processor and the checkpoint's model card.

    The config written is the teacher's (`ssl_model.make_teacher`, then `exported_config`): it describes the shipped
    `dino_head.safetensors`, so `load_dino_head(path, config)` rebuilds it. `summary` is the trainer's run summary
    (`world_size` and counters); `sources` the run's parsed data sources and `repo_id` the Hub repository it will be
    pushed to, for the card (`rad_dino_hf.model_card`)."""
    output_dir = Path(output_dir)
    teacher.backbone.save_pretrained(output_dir)
    config = exported_config(teacher.backbone.config)
    config.save_pretrained(output_dir)
    save_dino_head(teacher.dino_head, output_dir / DINO_HEAD_FILENAME)
    processor = exported_processor(recipe)
    processor.save_pretrained(output_dir)
    card = model_card(config, processor, recipe, summary, sources, model_id=repo_id or str(output_dir))
    (output_dir / "README.md").write_text(card, encoding="utf-8")
    (output_dir / "training_summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    logger.info("Exported teacher backbone to %s", output_dir)
    return output_dir


def recipe_card(recipe: RecipeConfig, backbone_config: RadDinoConfig | None = None) -> str:
    """The card an export of `recipe` would carry, written before training (no run counts).

    `backbone_config`: the pretrained backbone's config when `student.pretrained` is not "random" (None: read it
    from `student.pretrained`, a folder or a Hub id)."""
    if backbone_config is None and recipe.student.pretrained != "random":
        backbone_config = RadDinoConfig.from_pretrained(recipe.student.pretrained)
    # The student's config: the teacher's differs only in stochastic depth, which the card does not state.
    config = exported_config(model_config(recipe, backbone_config))
    return model_card(config, exported_processor(recipe), recipe)


def push_to_hub(folder: str | Path, repo_id: str, private: bool = True) -> str:
    """Create `repo_id` if needed and upload `folder` to it (the real Hub API; needs a token and network)."""
    api = HfApi()
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    commit = api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message="Upload RAD-DINO checkpoint")
    logger.info("Pushed %s to %s", folder, commit.commit_url if hasattr(commit, "commit_url") else repo_id)
    return repo_id
