"""Batch report generation with `generate` (greedy or beam search) over image–report pairs, to JSON lines."""

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import LlavaProcessor

from modeling_rad_dino import RadDinoLlavaForConditionalGeneration
from rad_dino_hf.report.data import ReportCollator, ReportPair


@dataclass
class GenerationSettings:
    """Decoding options passed to `generate` (greedy when `num_beams` is 1; never sampling, so runs repeat)."""

    max_new_tokens: int = 128
    num_beams: int = 1
    repetition_penalty: float = 1.0
    batch_size: int = 8
    min_new_tokens: int = 0  # > 0 forbids the end token before that many tokens (fixed-length timing)


def report_lengths(new_tokens: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """Tokens each generated report took, its end token not counted: the position of the first end token in each
    row of `new_tokens` `(B, T)`, or T for a row that never ended. Counting the tokens that are neither pad nor end
    would also drop a pad token the model generated mid-report (its pad may be a real token); `generate` pads only
    after a row's end token."""
    ended = new_tokens == eos_token_id
    first_end = ended.int().argmax(dim=1)  # 0 when the row has no end token, hence the `where`
    return torch.where(ended.any(dim=1), first_end, new_tokens.shape[1])


@torch.inference_mode()
def generate_reports(
    model: RadDinoLlavaForConditionalGeneration,
    processor: LlavaProcessor,
    pairs: list[ReportPair],
    instruction: str,
    settings: GenerationSettings = GenerationSettings(),
    progress: bool = True,
) -> list[dict[str, str]]:
    """Generate a report for each pair's image. Returns `[{"id", "reference", "generated", "tokens"}]` in the pairs'
    order; `tokens` counts each report's generated tokens, its end token not counted."""
    collator = ReportCollator(processor, instruction, for_generation=True)
    loader = DataLoader(pairs, batch_size=settings.batch_size, collate_fn=collator)
    device = next(model.parameters()).device
    rows = []
    for batch in tqdm(loader, desc="Generating", disable=not progress):
        ids, references = batch.pop("ids"), batch.pop("references")
        inputs = {name: tensor.to(device) for name, tensor in batch.items()}
        output = model.generate(
            **inputs,
            max_new_tokens=settings.max_new_tokens,
            min_new_tokens=settings.min_new_tokens,
            num_beams=settings.num_beams,
            repetition_penalty=settings.repetition_penalty,
            do_sample=False,
            pad_token_id=processor.tokenizer.pad_token_id,
            eos_token_id=processor.tokenizer.eos_token_id,
        )
        new_tokens = output[:, inputs["input_ids"].shape[1] :]
        texts = processor.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        lengths = report_lengths(new_tokens, processor.tokenizer.eos_token_id).tolist()
        rows.extend(
            {"id": i, "reference": reference, "generated": text.strip(), "tokens": length}
            for i, reference, text, length in zip(ids, references, texts, lengths)
        )
    return rows


def write_jsonl(rows: list[dict], path: str | Path) -> Path:
    """One JSON object per line (UTF-8, non-ASCII kept)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path
