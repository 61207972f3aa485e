"""Sampling data types: what goes into a sampling client and what comes back.

Example:
    >>> from bios_callbacks import types
    >>> prompt = types.ModelInput.from_ints([1, 2, 3])
    >>> prompt.length
    3
    >>> params = types.SamplingParams(max_tokens=8, temperature=0.0, stop=["\\n"])
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

StopReason = Literal["stop", "length"]


@dataclass(frozen=True)
class ModelInput:
    """A tokenized prompt.

    Example:
        >>> ModelInput.from_ints([5, 6]).to_ints()
        [5, 6]
    """

    tokens: tuple[int, ...]

    @classmethod
    def from_ints(cls, tokens: Sequence[int]) -> ModelInput:
        """Wraps a list of token ids."""
        return cls(tuple(int(t) for t in tokens))

    @classmethod
    def coerce(cls, tokens: ModelInput | Sequence[int]) -> ModelInput:
        """A `ModelInput` as is, or token ids wrapped.

        Example:
            >>> ModelInput.coerce([1, 2]).length
            2
        """
        return tokens if isinstance(tokens, ModelInput) else cls.from_ints(tokens)

    def to_ints(self) -> list[int]:
        """The token ids as a list."""
        return list(self.tokens)

    @property
    def length(self) -> int:
        """Number of tokens."""
        return len(self.tokens)


@dataclass(frozen=True)
class SamplingParams:
    """How to sample.

    Attributes:
        max_tokens: most new tokens per sequence (> 0).
        temperature: 0 means greedy; otherwise logits are divided by it.
        top_p: nucleus sampling mass in (0, 1]; 1 disables it.
        top_k: keep the k most likely tokens; 0 or -1 disables it.
        seed: same seed, same prompt, same weights -> same tokens. Without one, a seed is drawn
            from torch's global generator, so `torch.manual_seed` (or Lightning's
            `seed_everything`) makes unseeded sampling reproducible too, as with `generate`.
        stop: strings, or token ids, that end a sequence (kept in the output).

    Example:
        >>> SamplingParams(max_tokens=32, temperature=0.7, top_p=0.9, seed=0)
        SamplingParams(max_tokens=32, temperature=0.7, top_p=0.9, top_k=-1, seed=0, stop=None)
    """

    max_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    seed: int | None = None
    stop: str | Sequence[str] | Sequence[int] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.max_tokens, int) or self.max_tokens <= 0:
            raise ValueError(
                f"SamplingParams.max_tokens={self.max_tokens!r}: expected a positive integer, "
                "e.g. max_tokens=64."
            )
        if not _is_finite_number(self.temperature) or self.temperature < 0:
            raise ValueError(
                f"SamplingParams.temperature={self.temperature!r}: expected a finite number >= 0 "
                "(0 means greedy decoding)."
            )
        if not _is_finite_number(self.top_p) or not 0 < self.top_p <= 1:
            raise ValueError(
                f"SamplingParams.top_p={self.top_p!r}: expected a value in (0, 1]; "
                "use 1.0 to disable nucleus sampling."
            )
        if not isinstance(self.top_k, int) or self.top_k < -1:
            raise ValueError(
                f"SamplingParams.top_k={self.top_k!r}: expected a positive integer, "
                "or 0 / -1 to disable top-k."
            )
        entries = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        for i, entry in enumerate(entries):
            is_id = (
                isinstance(entry, numbers.Integral) and not isinstance(entry, bool) and entry >= 0
            )
            if not (is_id or (isinstance(entry, str) and entry)):
                raise ValueError(
                    f"SamplingParams.stop[{i}]={entry!r}: expected a non-empty string or a "
                    "token id (an int >= 0), e.g. stop=['\\n\\n'] or stop=[tokenizer.eos_token_id]."
                )

    def stop_strings(self) -> list[str]:
        """The stop sequences given as strings."""
        if self.stop is None:
            return []
        if isinstance(self.stop, str):
            return [self.stop]
        return [s for s in self.stop if isinstance(s, str)]

    def stop_token_ids(self) -> list[int]:
        """The stop sequences given as token ids."""
        if self.stop is None or isinstance(self.stop, str):
            return []
        return [int(s) for s in self.stop if not isinstance(s, str)]


def _is_finite_number(value: object) -> bool:
    return isinstance(value, numbers.Real) and math.isfinite(value)


@dataclass
class SampledSequence:
    """One generated continuation.

    `tokens` include the stop sequence when `stop_reason == "stop"`; `logprobs[i]` is the
    log-probability of `tokens[i]` under the distribution it was sampled from (for greedy
    decoding, the model's unmodified distribution).
    """

    tokens: list[int]
    logprobs: list[float]
    stop_reason: StopReason


@dataclass
class SampleResponse:
    """All sequences generated for one prompt."""

    sequences: list[SampledSequence] = field(default_factory=list)
