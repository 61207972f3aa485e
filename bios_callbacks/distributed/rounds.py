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
from contextlib import AbstractContextManager
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

    def run(
        self, module: Any, make_round: RoundFactory, root: torch.nn.Module | None = None
    ) -> RoundOutcome:
        """Runs one round. On rank 0 it returns the evaluators' outcome; elsewhere an empty
        one, once rank 0 has ended the round (its numbers come by broadcast).

        `root`: the module the strategy wraps. Under FSDP1 its own parameters (those in no
        inner unit, e.g. the embeddings) stay sharded outside its forward pass, and the rounds
        call the inner model: they are gathered for the round, on every rank.
        """
        around = _full_root_params(root)
        if self.exchange.rank != 0:
            self.worker.serve(self.exchange, leader=None, around=around)
            return RoundOutcome()
        leader = Leader(self.exchange.world_size)
        model_name = self.sampling_options.get("model_name")
        clients = SplitClients(module, leader, self.worker, model_name=model_name)
        ticks = threading.Thread(
            target=self._serve, args=(leader, around), name="bios-split-round", daemon=True
        )
        ticks.start()
        try:
            return run_sync(make_round(clients))
        finally:
            leader.stop()
            ticks.join()
            leader.fail_all(RuntimeError("the evaluation round ended before this call"))
            self.served = list(leader.served)

    def close(self) -> None:
        """Releases the worker's engine and the ticks' process group (every rank calls it)."""
        self.worker.close()
        self.exchange.close()

    def _serve(self, leader: Leader, around: AbstractContextManager | None) -> None:
        device = self.worker.engine.runner.device
        if device.type == "cuda":  # a new thread starts on cuda:0, whatever the rank's device
            torch.cuda.set_device(device)
        try:
            self.worker.serve(self.exchange, leader, around)
        except BaseException as error:  # the exchange broke: nothing will answer the calls
            leader.fail_all(
                RuntimeError(
                    f"the ranks of this evaluation round lost contact ({error!r}): another "
                    "rank died or stopped answering for the exchange timeout; its log says why."
                )
            )


def _full_root_params(root: torch.nn.Module | None) -> AbstractContextManager | None:
    """FSDP1's root gathers its own parameters only in its forward pass, which rounds do not
    call; None for anything else (DDP, FSDP2 units gather their own)."""
    from torch.distributed.fsdp import FullyShardedDataParallel

    if not isinstance(root, FullyShardedDataParallel):
        return None
    return FullyShardedDataParallel.summon_full_params(root, recurse=False, writeback=False)
