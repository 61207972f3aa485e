"""A tiny random Llama that shares the SmolLM2 tokenizer, for fast mechanical tests and benches.

Example:
    >>> from bios_callbacks.models import EMBEDDED_MODEL
    >>> from bios_callbacks.tokenizer_utils import get_tokenizer
    >>> model = make_tiny_model(get_tokenizer(EMBEDDED_MODEL))  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import LlamaConfig, LlamaForCausalLM


def make_tiny_model(tokenizer: Any, *, seed: int = 0) -> LlamaForCausalLM:
    """A fresh 2-layer random LlamaForCausalLM (fp32, eval mode) sized for `tokenizer`."""
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(torch.float32)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.eval()
