"""A sampling request as the engine queues it, and how its future is resolved.

Torch-free: the scheduler works on these alone.

Example:
    >>> from bios_callbacks.types import SamplingParams
    >>> request = Request([1, 2, 3], num_samples=2, params=SamplingParams(), max_new_tokens=8)
    >>> request.reserved_tokens
    11
"""

from __future__ import annotations

import contextlib
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field

from bios_callbacks.types import ModelInput, SampledSequence, SampleResponse, SamplingParams


@dataclass(eq=False)
class Request:
    """One `sample` call: a prompt, how many samples, how to sample, where the answer goes.

    `seed` seeds sample i with `seed + (first_sample + i) * stride`: the params' seed, else one
    drawn by the caller. `first_sample` is nonzero when this request is a slice of a larger
    one (another process decodes the other samples), so each sample keeps its own seed.
    A request with more samples than fit at once joins the batch in waves; `admitted` counts the
    samples already in it. Cancelling `future` drops its rows at the next decode step.
    """

    prompt: list[int]
    num_samples: int
    params: SamplingParams
    max_new_tokens: int
    seed: int = 0
    first_sample: int = 0
    future: Future = field(default_factory=Future)
    results: list[SampledSequence | None] = field(default_factory=list)
    admitted: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self.results = [None] * self.num_samples

    @property
    def reserved_tokens(self) -> int:
        """Cache positions one of its samples can reach: prompt plus new tokens."""
        return len(self.prompt) + self.max_new_tokens

    def record(self, index: int, sequence: SampledSequence) -> None:
        """Stores sample `index`; resolves the future once every sample is in."""
        self.results[index] = sequence
        if all(r is not None for r in self.results):
            settle(self.future, SampleResponse(sequences=list(self.results)))


Part = tuple[Request, range]
"""A request and the indices of its samples joining the batch now."""


def settle(future: Future, result: object = None, error: BaseException | None = None) -> None:
    """Resolves `future` unless it is done already (its caller may cancel it at any moment)."""
    if future.done():
        return
    with contextlib.suppress(InvalidStateError):  # cancelled since the check
        if error is None:
            future.set_result(result)
        else:
            future.set_exception(error)


def fail(requests: list[Request], error: BaseException) -> None:
    """Fails every request in `requests` that is not resolved yet."""
    for request in requests:
        settle(request.future, error=error)


def checked_inputs(
    prompt: ModelInput | list[int] | tuple[int, ...],
    num_samples: int,
    params: SamplingParams | None,
    *,
    vocab_size: int | None,
    context_length: int | None,
    context_fix: str = "shorten the prompt (e.g. fewer few-shot examples) or truncate it",
) -> tuple[list[int], SamplingParams, int]:
    """A sampling call's inputs checked the same way for every client: `(prompt tokens, params,
    most new tokens that fit the context)`, or a ValueError naming the bad value and the fix
    (`context_fix` says how to make room: local and server clients differ).

    Example:
        >>> checked_inputs([1, 2], 1, SamplingParams(max_tokens=8), vocab_size=10,
        ...                context_length=6)[2]
        4
    """
    tokens = ModelInput.coerce(prompt).to_ints()
    if not tokens:
        raise ValueError(
            "The prompt is empty: sampling needs at least one token. Build prompts with "
            "renderer.build_generation_prompt(messages) or ModelInput.from_ints(ids)."
        )
    if not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples={num_samples!r}: expected a positive integer.")
    bad = [t for t in tokens if vocab_size is not None and not 0 <= t < vocab_size]
    if bad:
        raise ValueError(
            f"The prompt has token ids outside the model's vocabulary [0, {vocab_size}): "
            f"{bad[:5]}. Was it tokenized with another model's tokenizer?"
        )
    params = params or SamplingParams()
    max_new = params.max_tokens
    if context_length is not None:
        if len(tokens) >= context_length:
            raise ValueError(
                f"The prompt has {len(tokens)} tokens but the model's context holds "
                f"{context_length}; {context_fix}."
            )
        max_new = min(max_new, context_length - len(tokens))
    return tokens, params, max_new
