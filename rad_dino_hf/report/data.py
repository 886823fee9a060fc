"""Image–report pairs from HF Datasets, and the batches the generator trains and generates on.

Training batches put the prompt (chat template with the expanded `<image>` placeholder) before the report and label
only the report tokens and the closing EOS: prompt, image and padding positions are -100, so the loss never
rewards predicting the prompt or the image placeholders.
"""

import logging
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image
from transformers import LlavaProcessor

from rad_dino_hf.tables import load_table

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100  # what transformers' causal-LM loss skips


@dataclass
class ReportPair:
    """One image (a file path, or a PIL image from a Hub dataset) with its report and patient."""

    id: str
    image: str | Image.Image
    text: str
    patient: str


def load_report_pairs(
    source: str,
    image_column: str = "file",
    text_column: str = "clinical_notes",
    patient_column: str | None = "patient",
    id_column: str | None = None,
    split: str = "train",
) -> list[ReportPair]:
    """Pairs from a folder with `metadata.csv`, a CSV / parquet / JSON-lines file, or a Hub dataset id.

    In files, the image column holds paths relative to the file; in Hub datasets an `Image` feature or paths. Rows
    with an empty report are dropped (counted in the log). Without a patient column every row is its own patient.
    """
    dataset, root = load_table(source, split)
    missing = {image_column, text_column} - set(dataset.column_names)
    if missing:
        raise ValueError(f"{source} lacks column(s) {sorted(missing)}; columns: {dataset.column_names}")
    pairs, empty = [], 0
    for index, row in enumerate(dataset):
        text = (row[text_column] or "").strip()
        if not text:
            empty += 1
            continue
        image = row[image_column]
        if isinstance(image, str) and root is not None:
            image = str(root / image)
        identifier = str(row[id_column]) if id_column else (image if isinstance(image, str) else str(index))
        patient = str(row[patient_column]) if patient_column else identifier
        pairs.append(ReportPair(identifier, image, text, patient))
    logger.info("%d image-report pairs from %s (%d rows without a report dropped)", len(pairs), source, empty)
    if not pairs:
        raise ValueError(f"No rows with a non-empty {text_column!r} in {source}")
    return pairs


def prompt_text(processor: LlavaProcessor, instruction: str) -> str:
    """The chat-templated user turn (image + instruction) followed by the assistant's turn opening."""
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": instruction}]}]
    return processor.apply_chat_template(conversation, add_generation_prompt=True)


class ReportCollator:
    """Turns a list of `ReportPair` into model inputs.

    Training (`for_generation=False`): `input_ids`, `attention_mask`, `labels` `(B, L)` right-padded, and
    `pixel_values` `(B, 3, H, W)`; reports are cut to `max_report_tokens` (EOS included).
    Generation: left-padded prompts only, plus `ids` and `references` (lists) for bookkeeping.
    """

    def __init__(
        self, processor: LlavaProcessor, instruction: str, max_report_tokens: int = 128, for_generation: bool = False
    ) -> None:
        self.processor, self.max_report_tokens, self.for_generation = processor, max_report_tokens, for_generation
        self.prompt = prompt_text(processor, instruction)
        if for_generation:
            # Decoder-only LMs continue from the last position: pad prompts on the left. (Training builds its own
            # right-padded rows from the unpadded prompt ids, so the side does not matter there.)
            processor.tokenizer.padding_side = "left"

    def __call__(self, pairs: list[ReportPair]) -> dict[str, Any]:
        tokenizer = self.processor.tokenizer
        prompts = self.processor(
            images=[pair.image for pair in pairs], text=[self.prompt] * len(pairs), return_tensors="pt", padding=True
        )
        if self.for_generation:
            return {**prompts, "ids": [pair.id for pair in pairs], "references": [pair.text for pair in pairs]}
        reports = tokenizer(
            [" " + pair.text for pair in pairs],
            add_special_tokens=False,
            truncation=True,
            max_length=self.max_report_tokens - 1,
        )["input_ids"]
        sequences, labels = [], []
        for prompt_ids, prompt_mask, report_ids in zip(prompts["input_ids"], prompts["attention_mask"], reports):
            prompt_ids = prompt_ids[prompt_mask.bool()].tolist()
            target = report_ids + [tokenizer.eos_token_id]
            sequences.append(prompt_ids + target)
            labels.append([IGNORE_INDEX] * len(prompt_ids) + target)
        length = max(map(len, sequences))
        input_ids = torch.full((len(pairs), length), tokenizer.pad_token_id)
        label_ids = torch.full((len(pairs), length), IGNORE_INDEX)
        attention_mask = torch.zeros((len(pairs), length), dtype=torch.long)
        for row, (sequence, label) in enumerate(zip(sequences, labels)):
            input_ids[row, : len(sequence)] = torch.tensor(sequence)
            label_ids[row, : len(label)] = torch.tensor(label)
            attention_mask[row, : len(sequence)] = 1
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": label_ids,
            "pixel_values": prompts["pixel_values"],
        }
