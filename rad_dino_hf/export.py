"""Export a pretrained teacher as a HF checkpoint in the `microsoft/rad-dino` format, and push it to the Hub."""

import copy
import json
import logging
from pathlib import Path

from huggingface_hub import HfApi

from image_processing_rad_dino import RadDinoImageProcessor
from rad_dino_hf.convert import DINO_HEAD_FILENAME, save_dino_head
from rad_dino_hf.recipe import RecipeConfig
from rad_dino_hf.ssl_model import SelfDistillationNetwork

logger = logging.getLogger(__name__)

MODEL_CARD_TEMPLATE = Path(__file__).resolve().parents[1] / "model_card.md"


def training_section(recipe: RecipeConfig, summary: dict) -> str:
    """Markdown describing how this checkpoint was trained, appended to the model card."""
    config_yaml = recipe.to_yaml()
    lines = [
        "## This checkpoint",
        "",
        "Trained with this repository's `train_pretrain.py` (DINO + iBOT + KoLeo, EMA teacher); the exported weights",
        "are the teacher's backbone.",
        "",
        "| | |",
        "|---|---|",
        f"| initialisation | `{recipe.student.pretrained}` |",
        f"| data | {', '.join(f'`{source}`' for source in recipe.train.data_sources) or 'n/a'} |",
        f"| iterations | {summary.get('step', 'n/a')} |",
        f"| images seen | {summary.get('images_seen', 'n/a')} |",
        f"| global batch | {recipe.train.global_batch_size(summary['world_size'])} |",
        f"| crops | 2 × {recipe.crops.global_crops_size} px + {recipe.crops.local_crops_number} × "
        f"{recipe.crops.local_crops_size} px |",
        f"| skipped unreadable samples | {summary.get('skipped_samples', 'n/a')} |",
        f"| skipped non-finite steps | {summary.get('skipped_nan_steps', 'n/a')} |",
        "",
        "<details><summary>Full recipe</summary>",
        "",
        "```yaml",
        config_yaml.rstrip(),
        "```",
        "</details>",
        "",
    ]
    return "\n".join(lines)


def export_teacher(
    teacher: SelfDistillationNetwork, output_dir: str | Path, recipe: RecipeConfig, summary: dict
) -> Path:
    """Write the teacher backbone (release format), its DINO head, a processor and a filled-in model card.

    The config written is the teacher's (`ssl_model.make_teacher`): it describes the shipped
    `dino_head.safetensors`, so `load_dino_head(path, config)` rebuilds it. Only `interpolate_offset` is reset to 0,
    so the export resizes position embeddings as a stock `Dinov2Model` does. `summary` is the trainer's run summary
    (`world_size` and counters). The processor resizes and crops to the global crop size of the run (position
    embeddings interpolate)."""
    output_dir = Path(output_dir)
    teacher.backbone.save_pretrained(output_dir)
    config = copy.deepcopy(teacher.backbone.config)
    config.interpolate_offset = 0.0
    config.save_pretrained(output_dir)
    save_dino_head(teacher.dino_head, output_dir / DINO_HEAD_FILENAME)
    size = recipe.crops.global_crops_size  # the resolution it was last trained at (518 after RAD-DINO's stage 2)
    RadDinoImageProcessor(
        size={"shortest_edge": size},
        crop_size={"height": size, "width": size},
        image_mean=[recipe.crops.mean] * 3,
        image_std=[recipe.crops.std] * 3,
    ).save_pretrained(output_dir)
    card = MODEL_CARD_TEMPLATE.read_text(encoding="utf-8").rstrip() + "\n\n" + training_section(recipe, summary)
    (output_dir / "README.md").write_text(card, encoding="utf-8")
    (output_dir / "training_summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    logger.info("Exported teacher backbone to %s", output_dir)
    return output_dir


def push_to_hub(folder: str | Path, repo_id: str, private: bool = True) -> str:
    """Create `repo_id` if needed and upload `folder` to it (the real Hub API; needs a token and network)."""
    api = HfApi()
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    commit = api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message="Upload RAD-DINO checkpoint")
    logger.info("Pushed %s to %s", folder, commit.commit_url if hasattr(commit, "commit_url") else repo_id)
    return repo_id
