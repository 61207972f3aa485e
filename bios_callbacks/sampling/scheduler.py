"""Admission: which queued samples join the running batch next. Pure Python, no model.

Samples join in queue order while the batch has rows and cache room; a request that does not
fit whole joins in waves, its later samples as rows free up. Requests resolved while queued
(cancelled by their caller) are skipped.

Example:
    >>> from bios_callbacks.types import SamplingParams
    >>> scheduler = Scheduler(max_batch_size=4, max_cache_tokens=1_000, max_prefill_tokens=64)
    >>> request = Request([1, 2, 3], num_samples=6, params=SamplingParams(), max_new_tokens=8)
    >>> scheduler.add(request)
    >>> [list(samples) for _, samples in scheduler.admit(rows=0, longest=0)]
    [[0, 1, 2, 3]]
    >>> [list(samples) for _, samples in scheduler.admit(rows=2, longest=11)]
    [[4, 5]]
"""

from __future__ import annotations

from collections import deque

from bios_callbacks.sampling.request import Part, Request


class Scheduler:
    """The request queue, the requests taken from it, and the admission rule.

    Not thread-safe: the engine calls it under its own lock.
    """

    def __init__(self, *, max_batch_size: int, max_cache_tokens: int, max_prefill_tokens: int):
        self.max_batch_size = max_batch_size
        self.max_cache_tokens = max_cache_tokens
        self.max_prefill_tokens = max_prefill_tokens
        self.queue: deque[Request] = deque()
        self.held: list[Request] = []  # taken off the queue, not resolved yet

    def add(self, request: Request) -> None:
        """Queues a request."""
        self.queue.append(request)

    def admit(self, *, rows: int, longest: int) -> list[Part]:
        """Takes the samples that fit beside `rows` running rows whose longest reservation is
        `longest` cache positions."""
        parts: list[Part] = []
        while self.queue:
            request = self.queue[0]
            if request.future.done():  # cancelled, or failed, while it waited
                self.queue.popleft()
                continue
            new_longest = max(longest, request.reserved_tokens)
            room = min(self.max_batch_size, self.max_cache_tokens // new_longest) - rows
            if room < 1:
                break
            count = min(room, request.num_samples - request.admitted)
            parts.append((request, range(request.admitted, request.admitted + count)))
            request.admitted += count
            rows, longest = rows + count, new_longest
            if request.admitted < request.num_samples:
                break  # the rest of its samples wait for rows to free up
            self.queue.popleft()
        held = [r for r in self.held if not r.future.done()]
        self.held = held + [r for r, _ in parts if r not in held]
        return parts

    def prefill_chunks(self, parts: list[Part]) -> list[list[Part]]:
        """Groups `parts` so each group's padded prompts stay within `max_prefill_tokens`."""
        chunks: list[list[Part]] = []
        for part in parts:
            if chunks:
                chunk = chunks[-1]
                width = max(len(part[0].prompt), *(len(r.prompt) for r, _ in chunk))
                if (len(chunk) + 1) * width <= self.max_prefill_tokens:
                    chunk.append(part)
                    continue
            chunks.append([part])
        return chunks

    def take_pending(self) -> list[Request]:
        """Every request held or queued, which the caller is about to fail; both lists empty."""
        pending = [*self.held, *self.queue]
        self.held = []
        self.queue.clear()
        return pending
