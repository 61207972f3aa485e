"""Cached tokenizer lookup by model name, directory or checkpoint.

Example:
    >>> from bios_callbacks.tokenizer_utils import get_tokenizer
    >>> tokenizer = get_tokenizer("HuggingFaceTB/SmolLM2-135M-Instruct")  # doctest: +SKIP
    >>> tokenizer.eos_token  # doctest: +SKIP
    '<|im_end|>'
"""

from __future__ import annotations

import functools
from typing import Any


@functools.cache
def get_tokenizer(model_name: str) -> Any:
    """The tokenizer for `model_name` (hub id, embedded model, local dir or checkpoint).

    Loaded once per process and name; callers share the returned object, so do not mutate it.
    """
    from bios_callbacks.model_loading import load_tokenizer

    return load_tokenizer(model_name)


def pad_token_id(tokenizer: Any) -> int:
    """The id to pad batches with: the tokenizer's pad token, else its EOS, else 0.

    Padded positions are masked out, so any id works; this picks the conventional one.
    """
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0
