"""Token-id conventions shared by loading, sampling and training.

Example:
    >>> class Tokenizer:
    ...     pad_token_id, eos_token_id = None, 2
    >>> pad_token_id(Tokenizer())
    2
"""

from __future__ import annotations

from typing import Any


def pad_token_id(tokenizer: Any) -> int:
    """The id to pad batches with: the tokenizer's pad token, else its EOS, else 0.

    Padded positions are masked out, so any id works; this picks the conventional one.
    """
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0
