"""The evaluator interfaces: what the callback calls, and what a builder returns.

An evaluator is an object with an async ``__call__(client) -> dict[str, float]``. Which client
it gets depends on its base class: a `SamplingClientEvaluator` gets a sampling client (text
generation), a `TrainingClientEvaluator` gets a `TrainingClient` (log-probs and losses of given
token sequences). An object subclassing neither works too: it gets a training client when the
first parameter of its ``__call__`` is named ``training_client``, else a sampling client
(`client_kind`). An `EvaluatorBuilder` is a zero-argument callable returning an evaluator; the
callback calls it once and reuses the evaluator in every round.

Example:
    >>> class LengthEvaluator(SamplingClientEvaluator):
    ...     async def __call__(self, sampling_client):
    ...         return {"mean_len": 3.0}
    >>> builder: EvaluatorBuilder = LengthEvaluator
    >>> isinstance(builder(), SamplingClientEvaluator)
    True
"""

from __future__ import annotations

import inspect
import math
import numbers
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

if TYPE_CHECKING:
    from bios_callbacks.training_client import TrainingClient


class Transcript(NamedTuple):
    """One evaluated item as the loggers show it: the prompt, the model's response, the item's
    score (1.0 / 0.0 for a pass / fail grade; None when it has none) and an optional
    explanation (a judge's reasoning, why the item was left unscored).

    Example:
        >>> Transcript("2+2?", "4", score=1.0)
        Transcript(prompt='2+2?', response='4', score=1.0, explanation=None)
    """

    prompt: str
    response: str
    score: float | None = None
    explanation: str | None = None


def as_transcript(item: Any) -> Transcript:
    """The `Transcript` for an item a ``transcripts()`` hook returned: a `Transcript` or a
    ``(prompt, response[, score[, explanation]])`` tuple. A non-finite score becomes None.

    Raises TypeError naming the item and the expected form otherwise.

    Example:
        >>> as_transcript(("2+2?", "4"))
        Transcript(prompt='2+2?', response='4', score=None, explanation=None)
        >>> as_transcript(("2+2?", "5", False)).score
        0.0
    """
    if isinstance(item, (tuple, list)) and 2 <= len(item) <= 4:
        prompt, response, score, explanation = (*item, None, None)[:4]
        if score is None or isinstance(score, numbers.Real):
            if score is not None and not math.isfinite(score):
                score = None
            return Transcript(
                str(prompt),
                str(response),
                None if score is None else float(score),
                None if explanation is None else str(explanation),
            )
    raise TypeError(
        f"transcript item {item!r} is not a (prompt, response) pair: return "
        "Transcript(prompt, response, score=None, explanation=None) items or "
        "(prompt, response) tuples from transcripts(), with score a number or None."
    )


class _EvaluatorHooks:
    """Optional hooks the callback uses when an evaluator offers them."""

    metric_groups: Sequence[str] = ()
    """Top-level names for the keys, instead of the evaluator's name: with
    `metric_groups = ["capitals", "echo"]` a key `capitals/match/accuracy` is logged as
    `eval/capitals/match/accuracy` (a group another evaluator uses too becomes `capitals_2`),
    and `transcripts()` may return a mapping of group to items."""

    def eval_prompts(self) -> Sequence[str]:
        """The prompt texts this evaluator asks about (checked against the training data).

        Return an empty sequence when there is nothing to check.
        """
        return ()

    def transcripts(
        self,
    ) -> Sequence[Transcript | tuple[str, str]] | Mapping[str, Sequence[Transcript]]:
        """`Transcript`s (or plain (prompt, response) pairs) from the latest call, all written
        to every logger (TensorBoard text, a W&B table, an MLflow table, a CSV run's
        transcripts.jsonl): return a few (e.g. `QAEvaluator(num_transcripts=3)`). With
        `metric_groups`, a mapping of group to items puts each group's under its name."""
        return ()

    def set_run_context(
        self, *, log_dir: str | os.PathLike[str] | None = None, step: int | None = None
    ) -> None:
        """Called before each round with the run's log directory and the step being evaluated
        (e.g. to write the evaluator's own logs there). Ignored by default."""


class SamplingClientEvaluator(_EvaluatorHooks, ABC):
    """Evaluates a model through a sampling client (generation).

    Example:
        >>> from bios_callbacks import types
        >>> class Says42(SamplingClientEvaluator):
        ...     def __init__(self, prompt_tokens):
        ...         self.prompt = types.ModelInput.from_ints(prompt_tokens)
        ...     async def __call__(self, sampling_client):
        ...         params = types.SamplingParams(max_tokens=8, temperature=0.0)
        ...         result = await sampling_client.sample_async(
        ...             prompt=self.prompt, num_samples=1, sampling_params=params)
        ...         text = sampling_client.tokenizer.decode(result.sequences[0].tokens)
        ...         return {"says_42": float("42" in text)}
    """

    @abstractmethod
    async def __call__(self, sampling_client: Any) -> dict[str, float]:
        """Runs the evaluation and returns named numbers."""


class TrainingClientEvaluator(_EvaluatorHooks, ABC):
    """Evaluates a model through a `TrainingClient` (log-probs of given tokens, no generation).

    Example:
        >>> class FirstTokenNLL(TrainingClientEvaluator):
        ...     async def __call__(self, training_client):
        ...         logprobs = await training_client.compute_logprobs_async([[1, 2, 3]])
        ...         return {"nll": -sum(logprobs[0]) / len(logprobs[0])}
    """

    @abstractmethod
    async def __call__(self, training_client: TrainingClient) -> dict[str, float]:
        """Runs the evaluation and returns named numbers."""


Evaluator = SamplingClientEvaluator | TrainingClientEvaluator

EvaluatorBuilder = Callable[[], Evaluator]
"""A zero-argument callable returning an evaluator, e.g. a class or ``functools.partial``.

Example:
    >>> import functools
    >>> from bios_callbacks.evaluators import NLLEvaluator
    >>> builder = functools.partial(NLLEvaluator, [[1, 2, 3, 4]])
    >>> builder().name
    'nll'
"""
SamplingClientEvaluatorBuilder = Callable[[], SamplingClientEvaluator]
"""A builder of a `SamplingClientEvaluator` (the RL config's `evaluator_builders`)."""
TrainingClientEvaluatorBuilder = Callable[[], TrainingClientEvaluator]
"""A builder of a `TrainingClientEvaluator`."""


def client_kind(evaluator: Any) -> Literal["sampling", "training"]:
    """Which client `evaluator` is called with: by its base class, else by the name of its
    ``__call__``'s first parameter (``training_client``: training; anything else: sampling).

    Raises TypeError naming the fix when it has no async ``__call__``.

    Example:
        >>> class Plain:
        ...     async def __call__(self, training_client):
        ...         return {"loss": 1.0}
        >>> client_kind(Plain())
        'training'
    """
    if isinstance(evaluator, SamplingClientEvaluator):
        return "sampling"
    if isinstance(evaluator, TrainingClientEvaluator):
        return "training"
    call = inspect.getattr_static(evaluator, "__call__", None)
    if not inspect.iscoroutinefunction(call):
        raise TypeError(
            f"{evaluator!r} is not an evaluator: expected an object with "
            "`async def __call__(self, client) -> dict[str, float]` (or a subclass of "
            "SamplingClientEvaluator / TrainingClientEvaluator)."
        )
    parameters = list(inspect.signature(call).parameters)[1:]
    return "training" if parameters[:1] == ["training_client"] else "sampling"
