"""The scheduler alone: admission, waves and bounds, with no model and no torch."""

from __future__ import annotations

from bios_callbacks.sampling.request import Request
from bios_callbacks.sampling.scheduler import Scheduler
from bios_callbacks.types import SamplingParams


def request(prompt_len: int = 4, num_samples: int = 1, max_new: int = 8) -> Request:
    return Request(list(range(1, prompt_len + 1)), num_samples, SamplingParams(), max_new)


def admitted(parts) -> list[tuple[int, list[int]]]:
    return [(id(r), list(samples)) for r, samples in parts]


def test_a_request_larger_than_the_batch_joins_in_waves():
    scheduler = Scheduler(max_batch_size=4, max_cache_tokens=10_000, max_prefill_tokens=1_000)
    big = request(num_samples=10)
    scheduler.add(big)
    assert admitted(scheduler.admit(rows=0, longest=0)) == [(id(big), [0, 1, 2, 3])]
    assert admitted(scheduler.admit(rows=4, longest=12)) == []  # no free row
    assert admitted(scheduler.admit(rows=1, longest=12)) == [(id(big), [4, 5, 6])]
    assert admitted(scheduler.admit(rows=0, longest=0)) == [(id(big), [7, 8, 9])]
    assert not scheduler.queue


def test_the_cache_bound_limits_rows_by_the_longest_reservation():
    # 100 cache tokens, rows reserving 4 + 21 = 25 positions each: at most 4 rows
    scheduler = Scheduler(max_batch_size=32, max_cache_tokens=100, max_prefill_tokens=1_000)
    first, second = request(max_new=21, num_samples=3), request(max_new=21, num_samples=3)
    scheduler.add(first)
    scheduler.add(second)
    parts = scheduler.admit(rows=0, longest=0)
    assert admitted(parts) == [(id(first), [0, 1, 2]), (id(second), [0])]
    assert sum(len(samples) for _, samples in parts) * 25 <= 100


def test_requests_keep_queue_order_and_cancelled_ones_are_skipped():
    scheduler = Scheduler(max_batch_size=8, max_cache_tokens=10_000, max_prefill_tokens=1_000)
    a, b, c = request(), request(), request()
    for r in (a, b, c):
        scheduler.add(r)
    b.future.cancel()
    assert admitted(scheduler.admit(rows=0, longest=0)) == [(id(a), [0]), (id(c), [0])]
    assert scheduler.held == [a, c]


def test_failing_takes_every_held_and_queued_request_once():
    scheduler = Scheduler(max_batch_size=1, max_cache_tokens=10_000, max_prefill_tokens=1_000)
    a, b = request(), request()
    scheduler.add(a)
    scheduler.add(b)
    scheduler.admit(rows=0, longest=0)
    assert scheduler.take_pending() == [a, b]
    assert scheduler.take_pending() == []


def test_prefill_groups_stay_within_the_padded_token_bound():
    scheduler = Scheduler(max_batch_size=32, max_cache_tokens=10_000, max_prefill_tokens=30)
    for length in (10, 10, 10, 5, 20):
        scheduler.add(request(prompt_len=length))
    chunks = scheduler.prefill_chunks(scheduler.admit(rows=0, longest=0))
    widths = [[len(r.prompt) for r, _ in chunk] for chunk in chunks]
    assert widths == [[10, 10, 10], [5], [20]]
    assert all(len(chunk) * max(w) <= 30 for chunk, w in zip(chunks, widths, strict=True))
