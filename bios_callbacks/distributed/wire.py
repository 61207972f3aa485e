"""What the ranks of a split round tell each other at each tick. Plain picklable values.

Rank 0 sends a `Tick` (new jobs, cancellations, whether the round is over); every rank sends a
`Report` (the jobs it finished since the last tick, whether it still has work). A job is a
slice of one client call: some samples of one `sample` call, or some sequences of one
`compute_logprobs` call.

Example:
    >>> from bios_callbacks.types import SamplingParams
    >>> job = SampleJob(7, 1, [1, 2, 3], SamplingParams(max_tokens=4), 4, seed=0, first=2,
    ...                 count=2)
    >>> job.rows
    2
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bios_callbacks.types import SampledSequence, SamplingParams


@dataclass
class SampleJob:
    """Samples `first .. first + count - 1` of one `sample` call, decoded on `rank`."""

    job_id: int
    rank: int
    prompt: list[int]
    params: SamplingParams
    max_new_tokens: int
    seed: int
    first: int
    count: int

    @property
    def rows(self) -> int:
        """How many sequences it decodes."""
        return self.count

    @property
    def load(self) -> int:
        """Cache positions it reserves: what balancing the ranks weighs."""
        return self.count * (len(self.prompt) + self.max_new_tokens)


@dataclass
class ScoreJob:
    """Some sequences of one `compute_logprobs` call, scored on `rank` in batches of
    `batch_size` (one forward pass each)."""

    job_id: int
    rank: int
    sequences: list[list[int]]
    batch_size: int

    @property
    def rows(self) -> int:
        """How many sequences it scores."""
        return len(self.sequences)

    @property
    def load(self) -> int:
        """Tokens it runs through the model."""
        return sum(len(s) for s in self.sequences)


Job = SampleJob | ScoreJob


@dataclass
class Done:
    """A finished job: its sequences or log-probs, or the error that failed it."""

    job_id: int
    result: list[SampledSequence] | list[list[float]] | None = None
    error: str | None = None


@dataclass
class Tick:
    """Rank 0's instructions for this tick."""

    jobs: list[Job] = field(default_factory=list)
    cancelled: list[int] = field(default_factory=list)
    stop: bool = False


@dataclass
class Report:
    """One rank's news since the last tick: finished jobs, whether work is left, and the rows
    it has served this round."""

    done: list[Done] = field(default_factory=list)
    busy: bool = False
    served: int = 0
