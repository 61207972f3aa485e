"""Putting a module in evaluation mode for a while and restoring every submodule's flag after."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch

_lock = threading.Lock()
# id(module) -> (how many blocks are inside, the flags to restore when the last one leaves)
_active: dict[int, tuple[int, list[tuple[torch.nn.Module, bool]]]] = {}


@contextmanager
def evaluation_mode(module: torch.nn.Module) -> Iterator[None]:
    """Runs the block with `module.eval()` and restores each submodule's `training` flag.

    Restoring the flags one by one (rather than calling `module.train()`) keeps submodules that
    were deliberately frozen in eval mode, such as a frozen base under a LoRA adapter. Blocks may
    overlap, in one thread or several (the sampling and training clients of one evaluation
    round do): the module stays in eval mode until the last of them ends.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Dropout(), torch.nn.Linear(2, 2))
        >>> with evaluation_mode(net):
        ...     net.training
        False
        >>> net.training
        True
    """
    key = id(module)
    with _lock:
        inside, flags = _active.get(key, (0, []))
        if inside == 0:
            flags = [(sub, sub.training) for sub in module.modules()]
            module.eval()
        _active[key] = (inside + 1, flags)
    try:
        yield
    finally:
        with _lock:
            inside, flags = _active.pop(key)
            if inside > 1:
                _active[key] = (inside - 1, flags)
            else:
                for sub, training in flags:
                    sub.training = training
