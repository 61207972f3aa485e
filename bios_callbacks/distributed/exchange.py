"""The channel a split round's ticks travel on: a gloo group of its own, with a timeout.

Its own group, so its collectives never interleave with training's (NCCL or gloo) ones, and
gloo, so plain Python objects travel on the host even when training uses NCCL. The timeout
turns a rank that died mid-round into an error on the others instead of a hang.

Example:
    >>> exchange = Exchange.create(timeout_s=600)          # doctest: +SKIP
    >>> exchange.all_gather({"rank": exchange.rank})       # doctest: +SKIP
    [{'rank': 0}, {'rank': 1}]
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import torch.distributed as dist

DEFAULT_TIMEOUT_S = 600.0


class Exchange:
    """`all_gather` of one picklable object per rank over a dedicated gloo group."""

    def __init__(self, group: Any, rank: int, world_size: int) -> None:
        self.group, self.rank, self.world_size = group, rank, world_size

    @classmethod
    def create(cls, timeout_s: float = DEFAULT_TIMEOUT_S) -> Exchange:
        """Creates the group; every rank must call it at the same point (a collective)."""
        group = dist.new_group(backend="gloo", timeout=timedelta(seconds=timeout_s))
        return cls(group, dist.get_rank(), dist.get_world_size())

    def all_gather(self, value: Any) -> list[Any]:
        """Every rank's `value`, in rank order."""
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, value, group=self.group)
        return out

    def close(self) -> None:
        """Destroys the group (a collective too: every rank calls it)."""
        dist.destroy_process_group(self.group)
