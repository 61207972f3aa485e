"""Length-bucketed SFT batches: every example once an epoch, less padding, still resumable."""

from __future__ import annotations

import itertools
import random

from trainers.data import BatchStream

_RNG = random.Random(3)
LENGTHS = [_RNG.randint(1, 200) for _ in range(300)]


def _padding(stream: BatchStream) -> int:
    return sum(
        max(LENGTHS[i] for i in batch) * len(batch) - sum(LENGTHS[i] for i in batch)
        for batch in stream.epoch(0)
    )


def _bucketed(start: int = 0) -> BatchStream:
    return BatchStream(
        range(len(LENGTHS)), 8, list, seed=5, start=start, length=LENGTHS.__getitem__
    )


def test_bucketing_keeps_each_epoch_whole_and_cuts_padding():
    plain = BatchStream(range(len(LENGTHS)), 8, list, seed=5)
    bucketed = _bucketed()
    for epoch in (0, 1):
        batches = bucketed.epoch(epoch)
        assert len(batches) == len(plain.epoch(epoch)) == 38  # ceil(300 / 8)
        assert sorted(i for batch in batches for i in batch) == list(range(len(LENGTHS)))
        assert sorted(map(len, batches))[1:] == [8] * 37  # one short batch, as before
    assert _padding(bucketed) < _padding(plain) / 4


def test_bucketed_batches_do_not_depend_on_resuming():
    whole = list(itertools.islice(iter(_bucketed()), 50))  # into the second epoch
    resumed = list(itertools.islice(iter(_bucketed(start=30)), 20))
    assert resumed == whole[30:]
    assert whole[:38] != _bucketed().epoch(1)  # each epoch draws its own order
