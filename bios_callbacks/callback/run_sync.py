"""Run a coroutine to completion from synchronous code, even inside a running event loop.

Lightning's hooks are synchronous; evaluators are async. In a plain script there is no running
loop and `asyncio.run` does the job; in Jupyter a loop is already running in this thread, so
the coroutine runs on a fresh loop in a helper thread instead.

Example:
    >>> async def two():
    ...     return 2
    >>> run_sync(two())
    2
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Runs ``coro`` and returns its result (or raises its exception)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="bios-eval") as pool:
        return pool.submit(asyncio.run, coro).result()
