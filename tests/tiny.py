"""A tiny random Llama (or Mistral, Qwen2, Qwen3) that shares the SmolLM2 tokenizer, for fast
mechanical tests and benches.

Example:
    >>> from bios_callbacks.models import EMBEDDED_MODEL
    >>> from bios_callbacks.tokenizer_utils import get_tokenizer
    >>> model = make_tiny_model(get_tokenizer(EMBEDDED_MODEL))  # doctest: +SKIP
    >>> qwen3 = make_tiny_model(get_tokenizer(EMBEDDED_MODEL), family="qwen3")  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import torch
import transformers

FAMILIES = {
    "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
    "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
    "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
    "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM),
}


def make_tiny_model(
    tokenizer: Any, *, seed: int = 0, family: str = "llama", **overrides: Any
) -> transformers.PreTrainedModel:
    """A fresh 2-layer random causal LM of `family` (fp32, eval mode) sized for `tokenizer`;
    `overrides` go to its config (Mistral's sliding window is off unless one is given)."""
    config_class, model_class = FAMILIES[family]
    if family == "mistral":
        overrides.setdefault("sliding_window", None)
    config = config_class(
        **{
            "vocab_size": len(tokenizer),
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 512,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
            **overrides,
        }
    )
    torch.manual_seed(seed)
    model = model_class(config).to(torch.float32)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.eval()
