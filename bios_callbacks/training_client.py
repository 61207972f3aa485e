"""Log-probabilities of given token sequences under a live causal LM, without changing it.

A `TrainingClient` shares the model's weights (no copy). Each call runs under ``no_grad`` in
eval mode and puts every submodule's training flag back afterwards, so gradients, weights and
dropout behaviour of the training run are untouched.

Example:
    >>> client = TrainingClient.from_module(model)            # doctest: +SKIP
    >>> client.compute_logprobs([[1, 2, 3]])                  # doctest: +SKIP
    [[-10.3, -9.8]]
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from bios_callbacks.types import ModelInput

if TYPE_CHECKING:
    import torch

TokenSequence = ModelInput | Sequence[int]


class TrainingClient:
    """Scores token sequences with a live causal LM (a ``transformers`` model or any module
    whose ``forward(input_ids=, attention_mask=)`` returns an object with ``.logits``).

    Args:
        model: the live model; its weights are shared, never copied or changed.
        tokenizer: optional, handed to evaluators that want to decode tokens.
        max_batch_size: most sequences per forward pass.

    Example:
        >>> client = TrainingClient(model, tokenizer=tokenizer)   # doctest: +SKIP
        >>> logprobs = await client.compute_logprobs_async([[1, 2, 3], [4, 5]])  # doctest: +SKIP
        >>> [len(x) for x in logprobs]                               # doctest: +SKIP
        [2, 1]
    """

    def __init__(self, model: torch.nn.Module, *, tokenizer: Any = None, max_batch_size: int = 8):
        if not isinstance(max_batch_size, int) or max_batch_size < 1:
            raise ValueError(
                f"max_batch_size={max_batch_size!r}: expected a positive integer, e.g. 8."
            )
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self._lock = threading.Lock()

    @classmethod
    def from_module(
        cls, model: torch.nn.Module, tokenizer: Any = None, *, max_batch_size: int = 8
    ) -> TrainingClient:
        """Wraps a live model, sharing its weights.

        Example:
            >>> client = TrainingClient.from_module(module.model)  # doctest: +SKIP
        """
        return cls(model, tokenizer=tokenizer, max_batch_size=max_batch_size)

    def compute_logprobs(self, sequences: Sequence[TokenSequence]) -> list[list[float]]:
        """For each sequence, ``log p(tokens[j] | tokens[:j])`` for ``j = 1 .. len - 1``.

        The first token has no prefix, so a sequence of n tokens gives n - 1 numbers.

        Example:
            >>> client.compute_logprobs([[1, 2, 3]])  # doctest: +SKIP
            [[-10.3, -9.8]]
        """
        return self._compute_logprobs(sequences, stop=None)

    async def compute_logprobs_async(self, sequences: Sequence[TokenSequence]) -> list[list[float]]:
        """`compute_logprobs` in a worker thread, so the event loop keeps serving others.

        Cancelling the call (an evaluator timeout, a cancelled task) stops the worker after
        the batch it is scoring; nothing waits for the rest.
        """
        stop = threading.Event()
        future: concurrent.futures.Future[list[list[float]]] = concurrent.futures.Future()

        def work() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                future.set_result(self._compute_logprobs(sequences, stop=stop))
            except BaseException as error:
                future.set_exception(error)

        # Not the event loop's default executor: `asyncio.run` joins that one on exit, so a
        # timed-out call would keep the whole round waiting for its worker.
        threading.Thread(target=work, name="bios-score", daemon=True).start()
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            stop.set()
            raise

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Waits until no scoring runs on the model (a cancelled call finishes its batch).

        Returns False on timeout.
        """
        if not self._lock.acquire(timeout=-1 if timeout is None else timeout):
            return False
        self._lock.release()
        return True

    def _compute_logprobs(
        self, sequences: Sequence[TokenSequence], *, stop: threading.Event | None
    ) -> list[list[float]]:
        token_lists = [ModelInput.coerce(s).to_ints() for s in sequences]
        for i, tokens in enumerate(token_lists):
            if len(tokens) < 2:
                raise ValueError(
                    f"sequence {i} has {len(tokens)} token(s): log-probs need at least 2 tokens "
                    "(a prefix and a token to score)."
                )
        return self._score(token_lists, stop)

    def _score(
        self, token_lists: list[list[int]], stop: threading.Event | None
    ) -> list[list[float]]:
        """Scores checked sequences on this process's model, batch by batch."""
        import torch

        from bios_callbacks.models.token_logprobs import score_sequences
        from bios_callbacks.models.train_flags import evaluation_mode

        def stopped() -> bool:
            return stop is not None and stop.is_set()

        results: list[list[float]] = []
        with self._lock:
            if stopped():  # cancelled before it started: never touch the training model
                raise concurrent.futures.CancelledError("the caller stopped waiting")
            with torch.no_grad(), evaluation_mode(self.model):
                for start in range(0, len(token_lists), self.max_batch_size):
                    if stopped():
                        raise concurrent.futures.CancelledError("the caller stopped waiting")
                    batch = token_lists[start : start + self.max_batch_size]
                    results.extend(score_sequences(self.model, batch))
        return results
