"""Evaluation rounds split over the ranks of a multi-process run (DDP, FSDP, FSDP2).

Rank 0 runs the evaluators, exactly as in one process; their sampling and scoring calls are
cut into slices that every rank decodes or scores on its own weights (a replica under DDP, its
shards under FSDP), each about 1/world_size of the rows. Meanwhile the other ranks serve
those slices in `RankWorker.serve` until rank 0 ends the round. Rank 0's metrics are then
broadcast by the callback, so every rank ends with the same ones.

Never a hang: an evaluator that fails or times out is reported as usual and the round ends on
every rank at the same tick; a failed slice fails its call on rank 0 (naming the rank); a rank
that dies makes the others' next exchange fail after `timeout_s` instead of waiting forever.

Example:
    >>> rounds = SplitRounds(module.model, module.tokenizer, sharded=False)  # doctest: +SKIP
    >>> outcome = rounds.run(module, lambda clients: run_round(slots, clients, timeout_s=None))
    ... # doctest: +SKIP
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Coroutine
from typing import Any

import torch

from bios_callbacks.callback.round import RoundOutcome
from bios_callbacks.callback.run_sync import run_sync
from bios_callbacks.distributed.clients import SplitClients
from bios_callbacks.distributed.exchange import DEFAULT_TIMEOUT_S, Exchange
from bios_callbacks.distributed.leader import Leader
from bios_callbacks.distributed.worker import RankWorker

RoundFactory = Callable[[SplitClients], Coroutine[Any, Any, RoundOutcome]]


class SplitRounds:
    """Runs rounds with the work spread over every rank. Create it on every rank at the same
    point (it creates a process group).

    Args:
        model: this rank's live model.
        tokenizer: its tokenizer.
        sharded: the weights are sharded (FSDP, FSDP2): forward passes go in lockstep.
        sampling_options: `SamplingClient.from_module` keyword arguments.
        timeout_s: how long a rank waits for the others at one tick before failing the round.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        *,
        sharded: bool,
        sampling_options: dict[str, Any] | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        self.exchange = Exchange.create(timeout_s)
        self.sampling_options = dict(sampling_options or {})
        self.worker = RankWorker(
            model, tokenizer, sharded=sharded, sampling_options=self.sampling_options
        )
        self.served: list[int] = [0] * self.exchange.world_size  # rows per rank, last round

    def run(self, module: Any, make_round: RoundFactory) -> RoundOutcome:
        """Runs one round. On rank 0 it returns the evaluators' outcome; elsewhere an empty
        one, once rank 0 has ended the round (its numbers come by broadcast)."""
        if self.exchange.rank != 0:
            self.worker.serve(self.exchange, leader=None)
            return RoundOutcome()
        leader = Leader(self.exchange.world_size)
        model_name = self.sampling_options.get("model_name")
        clients = SplitClients(module, leader, self.worker, model_name=model_name)
        ticks = threading.Thread(
            target=self._serve, args=(leader,), name="bios-split-round", daemon=True
        )
        ticks.start()
        try:
            return run_sync(make_round(clients))
        finally:
            leader.stop()
            ticks.join()
            self.served = list(leader.served)

    def close(self) -> None:
        """Releases the worker's engine (the process group stays until the run ends)."""
        self.worker.close()

    def _serve(self, leader: Leader) -> None:
        try:
            self.worker.serve(self.exchange, leader)
        except BaseException as error:  # the exchange broke: nothing will answer the calls
            leader.fail_all(
                RuntimeError(f"the ranks of this evaluation round lost contact: {error!r}")
            )
