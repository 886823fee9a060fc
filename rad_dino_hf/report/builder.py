"""Assemble, save and load a report generator: RAD-DINO encoder + MLP projector + any causal LM, and its processor.

The processor is transformers' own `LlavaProcessor`: the RAD-DINO image processor, the LM's tokenizer with an
`<image>` placeholder token, and a chat template. It expands the placeholder to one token per projected image
token; pooling k is expressed to it as a patch size of k * 14, which gives the same floored grid as the model's
`avg_pool2d`.
"""

import logging
from pathlib import Path

from huggingface_hub import CommitOperationAdd, HfApi
from tokenizers import AddedToken
from transformers import Dinov2Config, LlavaProcessor, PreTrainedModel, PreTrainedTokenizerBase

from configuration_rad_dino import RadDinoLlavaConfig
from image_processing_rad_dino import RadDinoImageProcessor
from modeling_rad_dino import RadDinoLlavaForConditionalGeneration, RadDinoModel

logger = logging.getLogger(__name__)

IMAGE_TOKEN = "<image>"
DEFAULT_INSTRUCTION = "Describe the findings of this chest X-ray."
# LLaVA-1.5's conversation format; a message's content is a list of {"type": "image"} / {"type": "text"} parts.
DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ message['role'] | upper }}: "
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}" + IMAGE_TOKEN + "\n{% else %}{{ part['text'] }}{% endif %}"
    "{% endfor %}"
    "{% if message['role'] == 'user' %} {% else %}{{ eos_token }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def prepare_tokenizer(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Add the `<image>` placeholder (one special token) and a pad token (the EOS token) if the tokenizer lacks them."""
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_tokens([AddedToken(IMAGE_TOKEN, special=True, normalized=False)], special_tokens=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def image_token_count(config: RadDinoLlavaConfig, height: int, width: int) -> int:
    """Placeholder tokens per image of `height` x `width` pixels."""
    step = config.vision_config.patch_size * config.image_token_pooling
    return (height // step) * (width // step) + (config.vision_feature_select_strategy == "full")


def build_processor(
    image_processor: RadDinoImageProcessor,
    tokenizer: PreTrainedTokenizerBase,
    config: RadDinoLlavaConfig,
    chat_template: str | None = None,
) -> LlavaProcessor:
    """A `LlavaProcessor` whose placeholder expansion matches `config`'s token count (CLS dropped or kept, pooling)."""
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=prepare_tokenizer(tokenizer),
        patch_size=config.vision_config.patch_size * config.image_token_pooling,
        vision_feature_select_strategy=config.vision_feature_select_strategy,
        num_additional_image_tokens=1,  # the CLS token, removed again by the "default" strategy
        chat_template=chat_template or DEFAULT_CHAT_TEMPLATE,
        image_token=IMAGE_TOKEN,
    )


def build_generator(
    encoder: RadDinoModel,
    image_processor: RadDinoImageProcessor,
    language_model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    image_token_pooling: int = 1,
    vision_feature_select_strategy: str = "default",
    chat_template: str | None = None,
) -> tuple[RadDinoLlavaForConditionalGeneration, LlavaProcessor]:
    """A generator holding copies of `encoder`'s and `language_model`'s weights and a new, randomly initialised
    projector, with its processor. The tokenizer gains `<image>` (and a pad token); the LM's embeddings are resized
    to match before they are copied.
    """
    tokenizer = prepare_tokenizer(tokenizer)
    if len(tokenizer) > language_model.get_input_embeddings().num_embeddings:
        language_model.resize_token_embeddings(len(tokenizer))
    # A stock Dinov2Config: the tower is then a plain Dinov2Model, loadable without this repository's code.
    vision_config = Dinov2Config.from_dict({**encoder.config.to_dict(), "model_type": "dinov2"})
    config = RadDinoLlavaConfig(
        vision_config=vision_config,
        text_config=language_model.config,
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        image_token_pooling=image_token_pooling,
        vision_feature_select_strategy=vision_feature_select_strategy,
        tie_word_embeddings=bool(language_model.config.tie_word_embeddings),
    )
    crop = image_processor.crop_size
    config.image_seq_length = image_token_count(config, crop["height"], crop["width"])
    model = RadDinoLlavaForConditionalGeneration(config)
    model.model.vision_tower.load_state_dict(encoder.state_dict())
    model.model.language_model.load_state_dict(language_model.base_model.state_dict())
    model.lm_head.load_state_dict(language_model.get_output_embeddings().state_dict())
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    logger.info(
        "Generator: %s encoder, %d image tokens, projector %d -> %d, LM %s (%.1f M parameters in all)",
        f"{encoder.config.hidden_size}-wide",
        config.image_seq_length,
        vision_config.hidden_size,
        config.text_config.hidden_size,
        type(language_model).__name__,
        model.num_parameters() / 1e6,
    )
    return model.eval(), build_processor(image_processor, tokenizer, config, chat_template)


def save_generator(model: RadDinoLlavaForConditionalGeneration, processor: LlavaProcessor, path: str | Path) -> Path:
    """Save model (weights, config, remote code) and processor (image processor, tokenizer, chat template)."""
    path = Path(path)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    processor.image_processor.save_pretrained(path)  # as the RAD-DINO processor, with its auto_map (DICOM reading)
    return path


def push_generator(path: str | Path, repo_id: str, private: bool = False) -> str:
    """Upload a folder written by `save_generator` (weights, remote code, processor, tokenizer) to the Hub."""
    api, path = HfApi(), Path(path)
    repo = api.create_repo(repo_id, private=private, exist_ok=True)
    files = sorted(file for file in path.rglob("*") if file.is_file())
    operations = [CommitOperationAdd(str(file.relative_to(path)), str(file)) for file in files]
    api.create_commit(repo.repo_id, operations, commit_message="Upload RAD-DINO report generator")
    return repo.repo_id


def load_generator(path: str | Path) -> tuple[RadDinoLlavaForConditionalGeneration, LlavaProcessor]:
    """Load what `save_generator` wrote (or a Hub id of such a folder)."""
    model = RadDinoLlavaForConditionalGeneration.from_pretrained(path).eval()
    processor = LlavaProcessor.from_pretrained(path)
    processor.image_processor = RadDinoImageProcessor.from_pretrained(path)
    return model, processor
