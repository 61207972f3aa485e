"""Rank 0's side of a split round: it cuts client calls into jobs, spreads them over the
ranks, and resolves each call's future when its jobs are back.

A `sample` call with several samples is cut into one slice per rank (each sample keeps its own
seed, so results do not depend on the split); a single sample goes to the rank with the least
outstanding work (reserved cache positions). A `compute_logprobs` call is cut into one
contiguous slice of sequences per rank. A call whose future is cancelled (an evaluator timed
out) has its jobs cancelled at the next tick.

Example:
    >>> leader = Leader(world_size=2)
    >>> future = leader.submit_score([[1, 2, 3], [4, 5], [6, 7]], batch_size=8)
    >>> [(job.rank, job.sequences) for job in leader.next_tick().jobs]
    [(0, [[1, 2, 3], [4, 5]]), (1, [[6, 7]])]
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from dataclasses import dataclass, field

from bios_callbacks.distributed.wire import Job, Report, SampleJob, ScoreJob, Tick
from bios_callbacks.sampling.request import Request, settle
from bios_callbacks.types import SampleResponse


@dataclass(eq=False)
class _Call:
    """One client call: its future, its jobs and the results back so far."""

    future: Future
    jobs: list[Job] = field(default_factory=list)
    results: dict[int, list] = field(default_factory=dict)

    def finished(self) -> bool:
        return len(self.results) == len(self.jobs)

    def outcome(self) -> SampleResponse | list[list[float]]:
        """The jobs' results joined in call order."""
        parts = [self.results[job.job_id] for job in self.jobs]
        joined = [item for part in parts for item in part]
        return SampleResponse(sequences=joined) if isinstance(self.jobs[0], SampleJob) else joined


class Leader:
    """Thread-safe `submit_*` (the evaluators' thread); `next_tick` / `receive` (the tick
    thread); `stop` ends the round at the next tick.

    Args:
        world_size: how many ranks decode and score.
    """

    def __init__(self, world_size: int) -> None:
        self.world_size = world_size
        self.served = [0] * world_size  # rows each rank decoded or scored this round
        self._lock = threading.Lock()
        self._new: list[tuple[_Call, list[Job]]] = []
        self._calls: dict[int, _Call] = {}  # job id -> its call, while outstanding
        self._load = [0] * world_size
        self._next_id = 0
        self._stop = False
        self._failed: BaseException | None = None  # why the round cannot go on, if it cannot

    def submit_sample(self, request: Request) -> Future:
        """Queues a validated request's samples; its future gets the `SampleResponse`."""
        with self._lock:
            sizes = _split(request.num_samples, self.world_size)
            first = 0
            jobs: list[Job] = []
            for count in sizes:
                jobs.append(
                    SampleJob(
                        self._take_id(), 0, request.prompt, request.params,
                        request.max_new_tokens, request.seed, request.first_sample + first, count,
                    )
                )  # fmt: skip
                first += count
            self._queue(_Call(request.future), jobs)
        return request.future

    def submit_score(self, sequences: list[list[int]], batch_size: int) -> Future:
        """Queues checked sequences for scoring; the future gets their log-probs, in order."""
        future: Future = Future()
        with self._lock:
            jobs: list[Job] = []
            start = 0
            for count in _split(len(sequences), self.world_size):
                chunk = sequences[start : start + count]
                jobs.append(ScoreJob(self._take_id(), 0, chunk, batch_size))
                start += count
            self._queue(_Call(future), jobs)
        return future

    def stop(self) -> None:
        """Ends the round at the next tick."""
        with self._lock:
            self._stop = True

    def next_tick(self) -> Tick:
        """The new jobs, each given a rank, and the jobs of cancelled calls."""
        with self._lock:
            new, self._new = self._new, []
            stop = self._stop
        jobs: list[Job] = []
        for call, call_jobs in new:
            for job in sorted(call_jobs, key=lambda j: -j.load):  # biggest slice first
                job.rank = min(range(self.world_size), key=lambda r: (self._load[r], r))
                self._load[job.rank] += job.load
            call.jobs = call_jobs
            jobs += call_jobs
            for job in call_jobs:
                self._calls[job.job_id] = call
        cancelled = [
            job_id
            for job_id, call in list(self._calls.items())
            if call.future.done() and job_id not in call.results
        ]
        for job_id in cancelled:
            self._retire(job_id)
        return Tick(jobs=jobs, cancelled=cancelled, stop=stop)

    def receive(self, reports: list[Report]) -> None:
        """Records finished jobs and resolves the calls that are complete."""
        for rank, report in enumerate(reports):
            self.served[rank] = report.served
            for done in report.done:
                call = self._retire(done.job_id)
                if call is None:
                    continue  # cancelled meanwhile
                if done.error is not None:
                    settle(call.future, error=RuntimeError(f"rank {rank}: {done.error}"))
                    continue
                call.results[done.job_id] = done.result
                if call.finished():
                    settle(call.future, call.outcome())

    def fail_all(self, error: BaseException) -> None:
        """Fails every call not resolved yet (the round cannot go on)."""
        with self._lock:
            self._failed = error
            new, self._new = self._new, []
        for call in [c for c, _ in new] + list(self._calls.values()):
            settle(call.future, error=error)
        self._calls.clear()

    def _take_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def _queue(self, call: _Call, jobs: list[Job]) -> None:
        if self._failed is not None:
            settle(call.future, error=self._failed)
        elif not jobs:  # nothing to compute (e.g. no sequences to score)
            settle(call.future, [])
        else:
            self._new.append((call, jobs))

    def _retire(self, job_id: int) -> _Call | None:
        call = self._calls.pop(job_id, None)
        if call is not None:
            job = next(j for j in call.jobs if j.job_id == job_id)
            self._load[job.rank] -= job.load
        return call


def _split(total: int, parts: int) -> list[int]:
    """`total` items as at most `parts` nonempty slices whose sizes differ by at most one.

    Example:
        >>> _split(5, 2), _split(1, 4)
        ([3, 2], [1])
    """
    base, extra = divmod(total, parts)
    sizes = [base + (i < extra) for i in range(parts)]
    return [size for size in sizes if size]
