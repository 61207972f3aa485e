"""Prompt-prefix caching: the keys and values of a prefix that many prompts share, computed once.

Eval prompts come from one template, so they usually open with the same tokens (a system
prompt, few-shot examples, an instruction). The decode engine remembers the longest prefix
shared by the prompts it has just seen; a later prompt that starts with it prefills only its
own remaining tokens, with the prefix's cached keys and values placed in front of them.

Only what was actually seen twice is cached, and the entry is dropped as soon as the model's
weights change (a live training model changes between evaluation rounds).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from bios_callbacks.sampling.kv_cache import BatchCache, BufferedLayer

MIN_SHARED_TOKENS = 16


@dataclass(frozen=True)
class SharedPrefix:
    """Prompt tokens and their per-layer keys and values, each (1, heads, len(tokens), dim)."""

    tokens: tuple[int, ...]
    keys: tuple[torch.Tensor, ...]
    values: tuple[torch.Tensor, ...]

    def cache_for(self, rows: int, headroom: int) -> BatchCache:
        """A fresh cache holding this prefix in `rows` rows, with room for `headroom` more."""
        cache = BatchCache()
        for keys, values in zip(self.keys, self.values, strict=True):
            layer = BufferedLayer()
            layer.set_states(
                keys.expand(rows, -1, -1, -1), values.expand(rows, -1, -1, -1), headroom
            )
            cache.layers.append(layer)
        return cache

    def truncated(self, length: int) -> SharedPrefix:
        """The first `length` tokens of this prefix (attention is causal: an exact slice)."""
        return SharedPrefix(
            self.tokens[:length],
            tuple(k[:, :, :length] for k in self.keys),
            tuple(v[:, :, :length] for v in self.values),
        )


class PrefixCache:
    """Remembers one shared prompt prefix at a time.

    Args:
        compute: runs the model over a token list and returns its `SharedPrefix`.
        min_tokens: shorter shared prefixes are not worth a separate forward pass.

    Example:
        >>> cache = PrefixCache(compute=encode_prefix)           # doctest: +SKIP
        >>> prefix = cache.find([prompt_a, prompt_b])            # doctest: +SKIP
        >>> prompt_a[len(prefix.tokens):]  # what is left to prefill  # doctest: +SKIP
    """

    def __init__(
        self, compute: Callable[[list[int]], SharedPrefix], min_tokens: int = MIN_SHARED_TOKENS
    ) -> None:
        self._compute = compute
        self.min_tokens = min_tokens
        self._entry: SharedPrefix | None = None
        self._last_prompt: Sequence[int] | None = None
        self._weights: tuple | None = None

    def check_weights(self, model: torch.nn.Module) -> None:
        """Forgets everything if `model`'s weights changed since the last check.

        In-place updates (optimizer steps, `load_state_dict`) bump each tensor's version
        counter; replaced tensors change identity or storage.
        """
        weights = tuple((id(p), p.data_ptr(), p._version) for p in model.parameters())
        if weights != self._weights:
            self.clear()
            self._weights = weights

    def find(self, prompts: Sequence[Sequence[int]]) -> SharedPrefix | None:
        """A cached prefix that every prompt starts with (and goes beyond), or None.

        Prefers the current entry; a longer prefix that these prompts share with each other
        and with the previous prompt replaces it (the template changed). New prefixes are
        computed once; a shorter part of the entry is an exact slice of it.
        """
        previous, self._last_prompt = self._last_prompt, prompts[-1]
        # Leave at least one token of every prompt to prefill: it yields the first logits.
        room = min(len(p) for p in prompts) - 1
        entry = self._entry
        reused = 0
        if entry is not None:
            reused = min(_common_prefix_length([*prompts, entry.tokens]), room)
            if reused == len(entry.tokens):
                return entry
        seen = [*prompts, previous] if previous is not None else list(prompts)
        fresh = min(_common_prefix_length(seen), room) if len(seen) > 1 else 0
        if fresh >= self.min_tokens and fresh > reused:
            self._entry = self._compute(list(prompts[0][:fresh]))
            return self._entry
        if entry is not None and reused >= self.min_tokens:
            return entry.truncated(reused)
        return None

    def clear(self) -> None:
        """Forgets every prompt and prefix seen."""
        self._entry, self._last_prompt = None, None


def _common_prefix_length(sequences: Sequence[Sequence[int]]) -> int:
    shortest = min(len(s) for s in sequences)
    first = sequences[0]
    for i in range(shortest):
        token = first[i]
        if any(s[i] != token for s in sequences):
            return i
    return shortest
