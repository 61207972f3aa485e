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
