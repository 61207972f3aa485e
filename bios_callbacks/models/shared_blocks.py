"""Blocks that may overlap on one object and share one setup: the first to start sets it up,
the last to end takes it down (two clients of one round over the same live model do this).

Example:
    >>> blocks = SharedBlocks()
    >>> log = []
    >>> with blocks.block(log, lambda: log.append("up"), lambda _: log.append("down")):
    ...     with blocks.block(log, lambda: log.append("up"), lambda _: log.append("down")):
    ...         pass
    >>> log
    ['up', 'down']
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

T = TypeVar("T")


class SharedBlocks:
    """Counts the blocks open on each object (by identity), in any threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: dict[int, tuple[int, Any]] = {}  # id(obj): (blocks open, setup's result)

    @contextmanager
    def block(
        self, obj: object, setup: Callable[[], T], teardown: Callable[[T], None]
    ) -> Iterator[T]:
        """Runs `setup()` if no block is open on `obj`, and `teardown(its result)` when the
        last open one ends; every block gets that result."""
        key = id(obj)
        with self._lock:
            inside, state = self._open.get(key, (0, None))
            if inside == 0:
                state = setup()
            self._open[key] = (inside + 1, state)
        try:
            yield state
        finally:
            with self._lock:
                inside, state = self._open.pop(key)
                if inside > 1:
                    self._open[key] = (inside - 1, state)
                else:
                    teardown(state)
