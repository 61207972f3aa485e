"""The engine's work one forward pass at a time: admit, prefill a group, or decode a step.

`DecodeEngine`'s thread calls `step()` until it returns False; a multi-process round calls it
once per lockstep tick, so every rank makes the same number of forward passes (sharded
weights gather their shards inside each one). Nothing here knows threads: the caller passes
the lock that guards the scheduler's queue.

Example:
    >>> stepper = Stepper(runner, scheduler, threading.Lock())  # doctest: +SKIP
    >>> with runner.serving():                                 # doctest: +SKIP
    ...     while stepper.step():
    ...         pass
"""

from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager

from bios_callbacks.sampling.request import Part, fail
from bios_callbacks.sampling.runner import Batch, ModelRunner
from bios_callbacks.sampling.scheduler import Scheduler


class Stepper:
    """The running batch and the prefill groups waiting to join it.

    Failures: an error in one prefill or decode step fails the requests in it and the stepper
    goes on; any other error propagates to the caller.
    """

    def __init__(
        self,
        runner: ModelRunner,
        scheduler: Scheduler,
        lock: AbstractContextManager | None = None,
    ) -> None:
        self.runner, self.scheduler = runner, scheduler
        self.lock = lock if lock is not None else contextlib.nullcontext()
        self.batch: Batch | None = None
        self._chunks: list[list[Part]] = []  # admitted, not prefilled yet
        self._headroom = 0  # cache positions the admitted rows may reach

    def busy(self) -> bool:
        """Whether anything is decoding, waiting to be prefilled, or queued."""
        with self.lock:
            queued = bool(self.scheduler.queue)
        return queued or bool(self._chunks) or (self.batch is not None and len(self.batch) > 0)

    def step(self) -> bool:
        """Runs at most one forward pass; returns False when there was nothing to do."""
        if self.batch is not None:
            self.batch.drop_abandoned()
            if not len(self.batch):
                self.batch = None  # new rows start a fresh batch, not one padded to its width
        if not self._chunks:
            self._admit()
        if self._chunks:
            self._prefill(self._chunks.pop(0))
            return True
        if self.batch is None:
            return False
        try:
            self.runner.decode(self.batch)
        except Exception as error:  # a failed step fails its requests, not the engine
            fail([s.request for s in self.batch.seqs], error)
            self.batch = None
        return True

    def requests(self) -> list:
        """The requests in the batch or waiting to be prefilled (not those still queued)."""
        waiting = [request for chunk in self._chunks for request, _ in chunk]
        running = [s.request for s in self.batch.seqs] if self.batch is not None else []
        return running + waiting

    def clear(self) -> None:
        """Forgets the batch and the waiting groups (their requests are failed by the caller)."""
        self.batch, self._chunks = None, []

    def _admit(self) -> None:
        """Takes the samples the scheduler admits and groups them for prefill."""
        with self.lock:
            if not self.scheduler.queue:
                return
            batch = self.batch
            rows = len(batch) if batch else 0
            longest = batch.longest_reservation() if batch else 0
            parts = self.scheduler.admit(rows=rows, longest=longest)
        if parts:
            self._headroom = max([longest, *(request.reserved_tokens for request, _ in parts)])
            self._chunks = self.scheduler.prefill_chunks(parts)

    def _prefill(self, chunk: list[Part]) -> None:
        try:
            admitted = self.runner.prefill(chunk)
        except Exception as error:  # e.g. out of memory: fail these requests only
            fail([request for request, _ in chunk], error)
            return
        if self.batch is None:
            self.batch = admitted if len(admitted) else None
        elif len(admitted):
            self.batch.extend(admitted, headroom=self._headroom)
