"""Rounds that run beside training: on a snapshot of the weights, in a thread of their own.

`BackgroundRounds.submit(model, step, slots)` copies `model`'s weights into a `WeightSnapshot`
and runs the round on it in a worker thread with its own event loop and its own sampling and
training clients over the snapshot, while the caller goes on training. At most one round is
in flight: the snapshot is reused, so the caller finishes (`wait`) the pending round before
submitting the next. Nothing here knows Lightning or loggers; `EvalCallback` decides when to
submit, polls `ready()` from the training thread and publishes the outcome there, at the
round's own step.

Console lines the round produces are queued and handed out by `lines()`, so they are printed
from the training thread too.

Example:
    >>> rounds = BackgroundRounds(tokenizer, timeout_s=None)                # doctest: +SKIP
    >>> rounds.submit(module.model, 10, slots)  # training goes on meanwhile   # doctest: +SKIP
    >>> done = rounds.wait()                                                   # doctest: +SKIP
    >>> done.step, done.outcome.metrics                                        # doctest: +SKIP
    (10, {'eval/qa/accuracy': 0.75})
"""

from __future__ import annotations

import asyncio
import queue
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from bios_callbacks.callback.console import RoundConsole
from bios_callbacks.callback.live_clients import LiveClients
from bios_callbacks.callback.round import EvaluatorSlot, RoundOutcome, run_round
from bios_callbacks.callback.snapshot import SeededSampling, WeightSnapshot


class SnapshotClients(LiveClients):
    """Clients over the snapshot model, made once and reused by every background round (the
    snapshot is refilled in place). Unseeded sampling draws its seeds from a generator seeded
    by the round's step, never from torch's global one."""

    def __init__(self, model: Any, tokenizer: Any, sampling_options: dict[str, Any]) -> None:
        super().__init__(SimpleNamespace(model=model, tokenizer=tokenizer), sampling_options)
        self._seeded: SeededSampling | None = None
        self.step = 0

    def sampling(self) -> Any:
        if self._seeded is None:
            self._seeded = SeededSampling(super().sampling(), seed=self.step)
        return self._seeded

    def start_round(self, step: int) -> None:
        """Seeds the round at `step`: the same step samples the same tokens."""
        self.step, self._seeded = step, None


@dataclass
class FinishedRound:
    """A background round's outcome and its wall time, for the round at `step`."""

    step: int
    outcome: RoundOutcome
    time_s: float


@dataclass
class _Pending:
    step: int
    future: Future[FinishedRound]


class BackgroundRounds:
    """Runs evaluation rounds on a weight snapshot in a worker thread, one at a time.

    Args:
        tokenizer: the model's tokenizer, for the snapshot's clients.
        timeout_s: per-evaluator limit, as for synchronous rounds.
        sampling_options: keyword arguments for the snapshot's `SamplingClient.from_module`.
        snapshot_device: where the copy lives and the round computes (None: the model's
            device).
        progress_every_s: seconds between "still running" lines.
        log_dir: handed to evaluators' `set_run_context` with the step.
        verbose: queue console lines (read them with `lines()`).
    """

    def __init__(
        self,
        tokenizer: Any,
        *,
        timeout_s: float | None,
        sampling_options: dict[str, Any] | None = None,
        snapshot_device: Any = None,
        progress_every_s: float = 15.0,
        log_dir: Path | None = None,
        verbose: bool = True,
    ) -> None:
        self.tokenizer = tokenizer
        self.timeout_s = timeout_s
        self.sampling_options = sampling_options or {}
        self.snapshot = WeightSnapshot(snapshot_device)
        self.progress_every_s = progress_every_s
        self.log_dir = log_dir
        self.verbose = verbose
        self._clients: SnapshotClients | None = None
        self._pending: _Pending | None = None
        self._lines: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bios-eval-background")

    @property
    def pending_step(self) -> int | None:
        """The step of the round in flight (finished but not yet collected included)."""
        return None if self._pending is None else self._pending.step

    def submit(self, model: Any, step: int, slots: Sequence[EvaluatorSlot]) -> None:
        """Snapshots `model` now and starts the round for `step` on the snapshot."""
        if self._pending is not None:
            raise RuntimeError(
                f"the background round of step {self._pending.step} is still pending; wait() "
                "for it before submitting another (they share one snapshot)"
            )
        try:
            snapshot = self.snapshot.take(model)
        except (RuntimeError, MemoryError) as error:
            raise RuntimeError(
                f"async_infrequent: could not copy the weights to snapshot_device="
                f"{self.snapshot.device or 'the model device'} ({error}). Free memory, set "
                "snapshot_device='cpu' (slower rounds on the CPU), or async_infrequent=False."
            ) from error
        if self._clients is None or self._clients.module.model is not snapshot:
            self._close_clients()
            self._clients = SnapshotClients(snapshot, self.tokenizer, self.sampling_options)
        self._clients.start_round(step)
        console = RoundConsole(
            self._lines.put if self.verbose else None,
            step,
            [slot.name for slot in slots],
            self._clients,
            where="in the background",
        )
        console.started(["infrequent"])
        future = self._worker.submit(self._run, self._clients, console, step, list(slots))
        self._pending = _Pending(step, future)

    def ready(self) -> bool:
        """True when the pending round has finished (False when there is none)."""
        return self._pending is not None and self._pending.future.done()

    def wait(self) -> FinishedRound | None:
        """Waits for the pending round and returns it (None when there is none)."""
        if self._pending is None:
            return None
        try:
            return self._pending.future.result()
        finally:
            self._pending = None

    def lines(self) -> list[str]:
        """The console lines queued since the last call."""
        lines = []
        while not self._lines.empty():
            lines.append(self._lines.get_nowait())
        return lines

    def close(self) -> None:
        """Stops the worker (a round still running has its requests cancelled) and frees the
        snapshot and its clients."""
        self._pending = None
        self._close_clients()
        self._worker.shutdown(wait=False, cancel_futures=True)
        self.snapshot.release()

    def _close_clients(self) -> None:
        if self._clients is not None:
            self._clients.close()
            self._clients = None

    def _run(
        self,
        clients: SnapshotClients,
        console: RoundConsole,
        step: int,
        slots: list[EvaluatorSlot],
    ) -> FinishedRound:
        start = time.perf_counter()
        outcome = asyncio.run(
            run_round(
                slots,
                clients,
                timeout_s=self.timeout_s,
                context={"log_dir": self.log_dir, "step": step},
                on_done=console.evaluator_done,
                on_progress=console.still_running,
                progress_every_s=self.progress_every_s,
            )
        )
        clients.settle()  # the snapshot is refilled only once its clients stopped reading it
        return FinishedRound(step, outcome, time.perf_counter() - start)
