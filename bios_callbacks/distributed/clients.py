"""Rank 0's clients in a split round: the usual client classes, their work spread over ranks.

Evaluators get a `SamplingClient` and a `TrainingClient` as in a single process; behind them,
calls go to the `Leader`, which hands slices to every rank's `RankWorker`. Validation (prompt
length, vocabulary, cache room) happens here, at the call, as in a single process.

Example:
    >>> clients = SplitClients(module, leader, worker)  # doctest: +SKIP
    >>> await clients.sampling().sample_async(prompt, 4, params)  # doctest: +SKIP
"""

from __future__ import annotations

import concurrent.futures
import threading
from concurrent.futures import Future
from typing import Any

from bios_callbacks.callback.live_clients import LiveClients
from bios_callbacks.distributed.leader import Leader
from bios_callbacks.distributed.worker import RankWorker
from bios_callbacks.sampling.client import SamplingClient
from bios_callbacks.sampling.engine import check_fits
from bios_callbacks.sampling.request import Request
from bios_callbacks.training_client import TrainingClient

_POLL_S = 0.05  # how often a waiting scoring call checks whether its caller gave up


class SplitEngine:
    """What a `SamplingClient` needs of an engine, with `submit` going to every rank."""

    def __init__(self, leader: Leader, worker: RankWorker) -> None:
        local = worker.engine
        self._leader, self._local = leader, local
        self.model, self.tokenizer = local.model, local.tokenizer
        self.vocab_size, self.context_length = local.vocab_size, local.context_length
        # Integrations size their concurrency by it: every rank's rows are there to fill.
        self.max_batch_size = local.max_batch_size * leader.world_size

    def submit(self, request: Request) -> Future:
        check_fits(request, self._local.max_cache_tokens)
        return self._leader.submit_sample(request)

    def wait_idle(self, timeout: float | None = None) -> bool:
        return True  # the ranks stop touching the model when the round ends

    def close(self) -> None:
        """Nothing to close: the round owns the worker."""


class SplitTrainingClient(TrainingClient):
    """A `TrainingClient` whose sequences are scored on every rank, a slice each."""

    def __init__(self, leader: Leader, worker: RankWorker, *, max_batch_size: int = 8) -> None:
        super().__init__(worker.model, tokenizer=worker.engine.tokenizer)
        self.max_batch_size = max_batch_size
        self._leader = leader

    def _score(
        self, token_lists: list[list[int]], stop: threading.Event | None
    ) -> list[list[float]]:
        future = self._leader.submit_score(token_lists, self.max_batch_size)
        while True:  # as in one process, a caller that stops waiting stops the work
            try:
                return future.result(timeout=_POLL_S)
            except concurrent.futures.TimeoutError:
                if stop is not None and stop.is_set():
                    future.cancel()  # its slices are cancelled at the next tick
                    raise concurrent.futures.CancelledError("the caller stopped waiting") from None


class SplitClients(LiveClients):
    """`LiveClients` for rank 0 of a split round: the same interface, split clients."""

    def __init__(
        self, module: Any, leader: Leader, worker: RankWorker, model_name: str | None = None
    ) -> None:
        super().__init__(module)
        engine = SplitEngine(leader, worker)
        self._sampling = SamplingClient(engine, model_name=model_name)
        self._training = SplitTrainingClient(leader, worker)
