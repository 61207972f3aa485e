"""One rank's share of a split round: it decodes and scores the jobs assigned to it.

Every rank runs `RankWorker.serve`: at each tick the ranks exchange news (`Exchange`), then each
makes at most one forward pass. Under a sharded strategy (FSDP, FSDP2) a forward pass gathers
weight shards from every rank, so on a tick where any rank computes, every rank makes exactly
one forward pass, an empty one (one token) when it has nothing to do; the collectives inside
them then line up. Whether a tick computes is decided from what all ranks sent, so every rank
decides the same way.

Example:
    >>> worker = RankWorker(model, tokenizer, sharded=False)  # doctest: +SKIP
    >>> worker.serve(Exchange.create(), leader=None)           # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from concurrent.futures import Future
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

import torch

from bios_callbacks.distributed.exchange import Exchange
from bios_callbacks.distributed.wire import Done, Job, Report, SampleJob, ScoreJob, Tick
from bios_callbacks.models.token_logprobs import score_sequences
from bios_callbacks.models.tokens import pad_token_id
from bios_callbacks.sampling.engine import DecodeEngine
from bios_callbacks.sampling.request import Request, fail

if TYPE_CHECKING:
    from bios_callbacks.distributed.leader import Leader

_IDLE_SLEEP_S = (0.001, 0.02)  # between ticks when no rank computes: first, most


class RankWorker:
    """The jobs of one rank and the engine that runs them, one forward pass per tick.

    Args:
        model: this rank's live model (a replica under DDP, shards under FSDP).
        tokenizer: its tokenizer.
        sharded: make an empty forward pass on ticks where another rank computes.
        sampling_options: `SamplingClient.from_module` keyword arguments (prefix caching is
            off when sharded: its extra forward pass would break the count).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        *,
        sharded: bool,
        sampling_options: dict[str, Any] | None = None,
    ) -> None:
        options = dict(sampling_options or {})
        options.pop("model_name", None)  # the clients' business, not the engine's
        if sharded:
            options["prefix_caching"] = False
        # Stepped here, one forward pass per tick: its own decode thread never starts.
        self.engine = DecodeEngine(model, tokenizer, **options)
        self.model, self.sharded = model, sharded
        self.served = 0  # rows decoded or scored this round
        self._forwards = 0  # finished forward passes
        self._started = 0  # started ones
        self._pad_id = pad_token_id(tokenizer)
        self._samples: dict[int, Request] = {}
        self._scores: deque[tuple[ScoreJob, list[list[float]]]] = deque()
        self._done: list[Done] = []

    def serve(
        self,
        exchange: Exchange,
        leader: Leader | None,
        around: AbstractContextManager | None = None,
    ) -> None:
        """Ticks until rank 0 ends the round. `leader` is rank 0's (None elsewhere); `around`
        is entered on every rank for the whole round (FSDP1: the root's own parameters).

        An error in one job fails that job; an error in the exchange (a rank died, the
        timeout passed) ends the round here and is raised.
        """
        report, pause = Report(), 0.0
        counters = []  # sharded ranks count forward passes to keep their gathers in line
        if self.sharded:
            counters = [
                self.model.register_forward_pre_hook(self._count_start),
                self.model.register_forward_hook(self._count_forward),
            ]
        try:
            with around or contextlib.nullcontext(), self.engine.runner.serving():
                while True:
                    tick = _lead(leader) if leader is not None else None
                    gathered = exchange.all_gather((tick, report))
                    tick = gathered[0][0]
                    reports = [r for _, r in gathered]
                    if leader is not None:
                        _receive(leader, reports)
                    if tick.stop:
                        return
                    computes = bool(tick.jobs) or any(r.busy for r in reports)
                    before = self._forwards
                    try:
                        self._apply(tick, exchange.rank)
                        if computes:
                            self._compute()
                    except Exception as error:  # never leave the others waiting: report it
                        self._fail_all(error)
                    if self.sharded and self._started != self._forwards:
                        raise RuntimeError(
                            f"a forward pass failed partway on rank {exchange.rank}, after "
                            "some of its weight gathers: the ranks' collectives can no longer "
                            "line up, so this round cannot go on. The error above says why "
                            "(if out of memory: a smaller sampling_options max_batch_size or "
                            "max_cache_tokens)."
                        )
                    if computes and self.sharded and self._forwards == before:
                        self._empty_forward()  # another rank computes: gather with it
                    if computes:
                        pause = 0.0
                    else:
                        time.sleep(pause)
                        pause = min(_IDLE_SLEEP_S[1], pause * 2 or _IDLE_SLEEP_S[0])
                    report = Report(self._take_done(), self._busy(), self.served)
        finally:
            for counter in counters:
                counter.remove()
            self._abandon()

    def close(self) -> None:
        """Releases the engine."""
        self.engine.close()

    # ---- one tick ---------------------------------------------------------------------------

    def _apply(self, tick: Tick, rank: int) -> None:
        for job in tick.jobs:
            if job.rank != rank:
                continue
            try:
                self._accept(job)
            except Exception as error:  # this job fails; the others go on
                message = f"evaluation worker failed: {_describe(error)}"
                self._done.append(Done(job.job_id, error=message))
        for job_id in tick.cancelled:
            request = self._samples.pop(job_id, None)
            if request is not None:
                request.future.cancel()
            self._scores = deque(item for item in self._scores if item[0].job_id != job_id)

    def _accept(self, job: Job) -> None:
        if isinstance(job, ScoreJob):
            self._scores.append((job, []))
            return
        request = Request(
            job.prompt, job.count, job.params, job.max_new_tokens, job.seed, job.first
        )
        self._samples[job.job_id] = request
        request.future.add_done_callback(lambda future: self._sampled(job, future))
        with self.engine.stepper.lock:
            self.engine.scheduler.add(request)

    def _sampled(self, job: SampleJob, future: Future) -> None:
        if future.cancelled() or self._samples.pop(job.job_id, None) is None:
            return
        error = future.exception()
        if error is None:
            self.served += job.rows
            self._done.append(Done(job.job_id, result=future.result().sequences))
        else:
            self._done.append(Done(job.job_id, error=_describe(error)))

    def _compute(self) -> None:
        """One forward pass: a scoring batch, else the engine's next step (if any)."""
        if self._scores:
            self._score_next_batch()
            return
        try:
            self.engine.stepper.step()
        except Exception as error:  # beyond one request: fail every sample job here
            with self.engine.stepper.lock:
                pending = self.engine.scheduler.take_pending()
            fail(pending, RuntimeError(f"sampling engine failed: {_describe(error)}"))
            self.engine.stepper.clear()

    def _empty_forward(self) -> None:
        """A one-token forward pass whose result nobody reads (its collectives are the point)."""
        ids = torch.tensor([[self._pad_id]], device=self.engine.runner.device)
        self.model(input_ids=ids, use_cache=False)

    def _score_next_batch(self) -> None:
        job, results = self._scores[0]
        batch = job.sequences[len(results) : len(results) + job.batch_size]
        device_type = self.engine.runner.device.type
        try:
            # In the weights' dtype, as a single process's TrainingClient scores (the round's
            # autocast is for sampling only).
            with torch.autocast(device_type, enabled=False):
                results.extend(score_sequences(self.model, batch))
        except Exception as error:
            self._scores.popleft()
            self._done.append(Done(job.job_id, error=_describe(error)))
            return
        if len(results) == len(job.sequences):
            self._scores.popleft()
            self.served += job.rows
            self._done.append(Done(job.job_id, result=results))

    def _count_start(self, *args: Any) -> None:
        self._started += 1

    def _count_forward(self, *args: Any) -> None:
        self._forwards += 1

    def _busy(self) -> bool:
        return bool(self._scores) or self.engine.stepper.busy()

    def _take_done(self) -> list[Done]:
        done, self._done = self._done, []
        return done

    def _fail_all(self, error: Exception) -> None:
        """Fails every job held here, naming `error` (this rank goes on ticking)."""
        message = f"evaluation worker failed: {_describe(error)}"
        for job_id in list(self._samples):
            self._samples.pop(job_id).future.cancel()
            self._done.append(Done(job_id, error=message))
        for job, _ in self._scores:
            self._done.append(Done(job.job_id, error=message))
        self._scores = deque()
        with self.engine.stepper.lock:
            self.engine.scheduler.take_pending()
        self.engine.stepper.clear()

    def _abandon(self) -> None:
        """Drops what is left when the round ends (nobody waits for it any more)."""
        for request in list(self._samples.values()):
            request.future.cancel()
        with self.engine.stepper.lock:
            self.engine.scheduler.take_pending()
        self.engine.stepper.clear()
        self._samples, self._scores, self._done = {}, deque(), []
        self.served = 0


def _lead(leader: Leader) -> Tick:
    """Rank 0's next tick; if the leader itself breaks, the tick that ends the round."""
    try:
        return leader.next_tick()
    except Exception as error:
        leader.fail_all(RuntimeError(f"the round's leader failed: {_describe(error)}"))
        return Tick(stop=True)


def _receive(leader: Leader, reports: list[Report]) -> None:
    """Hands rank 0's leader the reports; if it breaks, fails every call and ends the round
    at the next tick."""
    try:
        leader.receive(reports)
    except Exception as error:
        leader.fail_all(RuntimeError(f"the round's leader failed: {_describe(error)}"))
        leader.stop()


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"
