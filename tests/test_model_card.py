"""An export's model card describes that checkpoint: its architecture, size and data, computed at export.

Run `python tests/test_model_card.py` to rewrite `model_card.md` (the ViT-B/14 recipe's card) after changing the card.
"""

from pathlib import Path

import pytest
import yaml
from huggingface_hub import ModelCard

from configuration_rad_dino import RadDinoConfig
from modeling_rad_dino import RadDinoModel
from rad_dino_hf.export import export_teacher, recipe_card
from rad_dino_hf.model_card import architecture_name, parameter_count
from rad_dino_hf.pretraining_data import IMAGE_SUFFIXES
from rad_dino_hf.recipe import RecipeConfig, apply_overrides
from rad_dino_hf.ssl_model import SelfDistillationNetwork
from rad_dino_hf.trainer import RunOptions, pretrain

REPO = Path(__file__).resolve().parents[1]
VITB14_RECIPE = REPO / "configs" / "rad_dino_vitb14.yaml"
EXAMPLE_CARD = REPO / "model_card.md"
# facebook/dinov2-base and microsoft/rad-dino: ViT-B/14 at 518 px, the defaults of `RadDinoConfig` (its docstring).
RELEASED_VITB14 = RadDinoConfig()
# Parameters of the released ViT-B/14 backbone (microsoft/rad-dino and facebook/dinov2-base list 86.6 M).
RELEASED_VITB14_PARAMETERS = 86_580_480


def front_matter_and_body(card: str) -> tuple[dict, str]:
    """The card's YAML metadata (as the Hub reads it) and its Markdown body."""
    parsed = ModelCard(card, ignore_metadata_errors=False)
    return parsed.data.to_dict(), parsed.text


def rows(body: str) -> dict[str, str]:
    """The `| name | value |` rows of the card's tables."""
    table = {}
    for line in body.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("| ") and len(cells) == 2 and cells[0]:
            table[cells[0]] = cells[1]
    return table


def own_part(body: str) -> str:
    """Everything before the Background section: what the card says about this checkpoint."""
    return body.split("## Background", 1)[0]


def vitb14_card(*overrides: str, backbone: RadDinoConfig = RELEASED_VITB14) -> str:
    return recipe_card(apply_overrides(RecipeConfig.from_yaml(VITB14_RECIPE), overrides), backbone)


@pytest.fixture(scope="module")
def default_run(tmp_path_factory) -> tuple[dict, str, Path]:
    """The default recipe (configs/cpu_small.yaml) for one iteration on the embedded sample: summary, card, export.

    Its data source is the relative `data/sample/images`, so it runs from the repository root as the default does.
    """
    output = tmp_path_factory.mktemp("default_run")
    recipe = apply_overrides(
        RecipeConfig.from_yaml(REPO / "configs" / "cpu_small.yaml"),
        ["train.max_iterations=1", "train.num_workers=0", f"train.output_dir={output}"],
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(REPO)
        summary = pretrain(recipe, RunOptions(progress=False))
    export = Path(summary["export_dir"])
    return summary, (export / "README.md").read_text(encoding="utf-8"), export


def test_the_default_export_states_its_own_architecture_size_and_data(default_run):
    summary, card, export = default_run
    metadata, body = front_matter_and_body(card)
    table = rows(body)
    model = RadDinoModel.from_pretrained(export)

    assert table["architecture"].startswith("ViT/14: 4 layers, hidden 128, 2 heads, patch 14, MLP ratio 4")
    assert body.lstrip().startswith("# Chest X-ray encoder, ViT/14, 4 layers, hidden 128, heads 2 ")
    assert (model.config.num_hidden_layers, model.config.hidden_size) == (4, 128)
    assert "ViT-B" not in own_part(body)
    count = sum(parameter.numel() for parameter in model.parameters())
    assert table["parameters"] == f"{count:,} ({count / 1e6:.1f} M) in the backbone"
    # The model sees the processor's crop: 112 px, an 8 x 8 grid of 14 px patches.
    assert table["input"].startswith("112 × 112 px")
    assert table["patch grid"].startswith("8 × 8 = 64 patch tokens")

    # Its data: the sample folder, counted on disk; no Hub dataset, no base model, none of RAD-DINO's sets.
    images = [path for path in (REPO / "data" / "sample" / "images").iterdir() if path.suffix.lower() in IMAGE_SUFFIXES]
    assert table["data"] == f"`data/sample/images` (image folder, {len(images)} images)"
    assert "datasets" not in metadata and "base_model" not in metadata
    for name in ("MIMIC", "CheXpert", "PadChest", "BRAX", "882,775 chest"):
        assert name not in own_part(body), name
    assert "882,775 chest radiographs from MIMIC-CXR" in body.split("## Background", 1)[1]

    assert table["initialisation"] == "random weights (trained from scratch)"
    assert table["iterations"] == "1 (schedule: 900)"
    assert table["images seen"] == f"{summary['images_seen']:,}" == "16"
    assert table["global batch"] == "16 (16 per device × 1 device × 1 accumulation step)"
    assert table["crops"] == "2 × 112 px + 2 × 56 px"
    assert f"saw {summary['images_seen']:,} training images drawn from {len(images)} files" in body
    assert "Trained from random weights on fewer images than RAD-DINO's" in body
    assert "## Evaluation" not in body


def test_parameter_count_is_the_real_models(tiny_config):
    assert parameter_count(tiny_config) == sum(
        parameter.numel() for parameter in RadDinoModel(tiny_config).parameters()
    )


def test_an_export_for_the_hub_names_its_repository_and_hub_data(tiny_config, tmp_path):
    """`export_teacher` writes the card: the usage snippet loads the repository it is pushed to, and a Hub source
    (never opened here) is the card's `datasets:` entry."""
    recipe = apply_overrides(RecipeConfig(), ["student.pretrained=random", "train.data_sources=[hub:org/cxr@2]"])
    summary = {"step": 3, "images_seen": 12, "skipped_samples": 1, "skipped_nan_steps": 0, "world_size": 2}
    export_teacher(SelfDistillationNetwork(tiny_config), tmp_path, recipe, summary, repo_id="someone/cxr-dino")
    metadata, body = front_matter_and_body((tmp_path / "README.md").read_text(encoding="utf-8"))
    assert metadata["datasets"] == ["org/cxr"]
    assert 'AutoModel.from_pretrained("someone/cxr-dino", trust_remote_code=True)' in body
    table = rows(body)
    assert (table["images seen"], table["skipped unreadable samples"]) == ("12", "1")
    assert table["global batch"] == "128 (64 per device × 2 devices × 1 accumulation step)"
    assert table["parameters"].startswith(f"{parameter_count(tiny_config):,} ")


def test_a_vitb14_recipe_card_states_the_released_size_and_its_sources():
    metadata, body = front_matter_and_body(vitb14_card("train.data_sources=[/data/mimic-cxr/files,hub:org/name@0.5]"))
    table = rows(body)

    assert table["architecture"].startswith("ViT-B/14: 12 layers, hidden 768, 12 heads, patch 14, MLP ratio 4")
    assert table["parameters"] == f"{RELEASED_VITB14_PARAMETERS:,} (86.6 M) in the backbone"
    assert table["data"] == (
        "`/data/mimic-cxr/files` (local path); "
        "[`org/name`](https://huggingface.co/datasets/org/name) (Hub dataset, weight 0.5)"
    )
    assert metadata["datasets"] == ["org/name"]
    assert metadata["base_model"] == "facebook/dinov2-base"
    assert table["initialisation"] == "[`facebook/dinov2-base`](https://huggingface.co/facebook/dinov2-base)"
    assert table["iterations"] == "100,000 scheduled" and "images seen" not in table
    assert table["input"].startswith("224 × 224 px")  # stage 1 trains and exports at 224 px
    assert "generated from the recipe alone, before training" in body


def test_a_hub_id_without_the_prefix_is_a_hub_dataset_and_a_missing_path_is_not():
    metadata, body = front_matter_and_body(vitb14_card("train.data_sources=[someone/cxr-set,./missing/folder]"))
    assert metadata["datasets"] == ["someone/cxr-set"]
    assert rows(body)["data"].endswith("`./missing/folder` (local path)")


def test_continuing_from_the_release_says_so():
    metadata, body = front_matter_and_body(vitb14_card("student.pretrained=microsoft/rad-dino"))
    assert metadata["base_model"] == "microsoft/rad-dino"
    assert "This checkpoint was initialised from `microsoft/rad-dino` and continued on `/data/mimic-cxr/files`" in body


def test_a_local_initialisation_is_not_a_base_model(tmp_path):
    RELEASED_VITB14.save_pretrained(tmp_path)
    metadata, body = front_matter_and_body(vitb14_card(f"student.pretrained={tmp_path}", backbone=None))
    assert "base_model" not in metadata
    assert rows(body)["initialisation"] == f"`{tmp_path}` (a local checkpoint)"


@pytest.mark.parametrize(
    ("shape", "name"),
    [
        ((384, 12, 6, 14), "ViT-S/14"),
        ((1024, 24, 16, 14), "ViT-L/14"),
        ((768, 12, 12, 16), "ViT/16, 12 layers, hidden 768, heads 12"),  # ViT-B's width, DINOv2's patch-16 grid
        ((768, 6, 12, 14), "ViT/14, 6 layers, hidden 768, heads 12"),
    ],
)
def test_architecture_name(shape, name):
    hidden, layers, heads, patch = shape
    config = RadDinoConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, patch_size=patch)
    assert architecture_name(config) == name


def test_the_card_is_yaml_front_matter_and_markdown():
    card = vitb14_card()
    assert card.startswith("---\n")
    _, front, body = card.split("---\n", 2)
    metadata = yaml.safe_load(front)
    assert metadata == front_matter_and_body(card)[0]
    assert {"license", "library_name", "pipeline_tag", "tags"} <= set(metadata)
    assert (metadata["library_name"], metadata["pipeline_tag"]) == ("transformers", "image-feature-extraction")
    fenced, headings = False, []
    for line in body.splitlines():
        fenced ^= line.startswith("```")
        if line.startswith("#") and not fenced:
            headings.append(line)
    assert headings[0].startswith("# Chest X-ray encoder, ViT-B/14")
    assert [h for h in headings if h.startswith("## ")] == [
        "## Model",
        "## Training",
        "## How to load",
        "## Intended use and limits",
        "## Background",
    ]
    assert body.count("```") % 2 == 0 and body.count("<details>") == body.count("</details>") == 1


def test_the_example_card_is_what_the_generator_writes():
    expected = vitb14_card()
    assert EXAMPLE_CARD.read_text(encoding="utf-8") == expected, "run `python tests/test_model_card.py`"


if __name__ == "__main__":
    EXAMPLE_CARD.write_text(vitb14_card(), encoding="utf-8")
    print(f"wrote {EXAMPLE_CARD}")
