"""A small Llama-style language model and a tokenizer trained locally, for tests and CPU demos.

No pretrained LM can be downloaded on an offline machine. These stand in for one: a byte-level BPE tokenizer trained
with the `tokenizers` library on the training reports, and a few-layer `LlamaForCausalLM` trained on the same text
(`pretrain_on_text`) before the LLaVA stages, playing the role of the pretrained LM. With network access, pass any
real causal LM id instead (`--lm`).
"""

from pathlib import Path

import torch
from accelerate import Accelerator
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from torch.utils.data import DataLoader
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from rad_dino_hf.report.data import IGNORE_INDEX
from rad_dino_hf.report.training import train_loop

SPECIAL_TOKENS = {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}


def train_tokenizer(texts: list[str], vocab_size: int = 2000) -> PreTrainedTokenizerFast:
    """Byte-level BPE (GPT-2 style, so any text round-trips) trained on `texts`."""
    tokenizer = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS["unk_token"]))
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, **SPECIAL_TOKENS)


def tiny_llama(
    tokenizer: PreTrainedTokenizerFast,
    hidden_size: int = 256,
    num_layers: int = 4,
    num_heads: int = 4,
    max_positions: int = 2048,
    seed: int = 0,
) -> LlamaForCausalLM:
    """A randomly initialised Llama with the tokenizer's vocabulary and special-token ids."""
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 8 // 3,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def pretrain_on_text(
    model: LlamaForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    texts: list[str],
    accelerator: Accelerator,
    epochs: int = 20,
    lr: float = 1e-3,
    batch_size: int = 8,
    max_tokens: int = 128,
    metrics_path: Path | None = None,
) -> list[float]:
    """Next-token training on `texts` (each ends with EOS; padding unlabelled). Returns the per-step losses;
    `metrics_path`: the training loop's JSONL (`rad_dino_hf.supervised`)."""

    def collate(batch: list[str]) -> dict[str, torch.Tensor]:
        encoded = tokenizer(
            [text + tokenizer.eos_token for text in batch],
            truncation=True,
            max_length=max_tokens,
            padding=True,
            return_tensors="pt",
        )
        labels = encoded["input_ids"].masked_fill(encoded["attention_mask"] == 0, IGNORE_INDEX)
        return {**encoded, "labels": labels}

    generator = torch.Generator().manual_seed(0)
    loader = DataLoader(texts, batch_size=batch_size, shuffle=True, collate_fn=collate, generator=generator)
    return train_loop(
        model, loader, accelerator, epochs, lr, description="language model on text", metrics_path=metrics_path
    )
