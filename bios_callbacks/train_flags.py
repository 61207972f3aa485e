"""Putting a module in evaluation mode for a while and restoring every submodule's flag after."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def evaluation_mode(module: torch.nn.Module) -> Iterator[None]:
    """Runs the block with `module.eval()` and restores each submodule's `training` flag.

    Restoring the flags one by one (rather than calling `module.train()`) keeps submodules that
    were deliberately frozen in eval mode, such as a frozen base under a LoRA adapter.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Dropout(), torch.nn.Linear(2, 2))
        >>> with evaluation_mode(net):
        ...     net.training
        False
        >>> net.training
        True
    """
    flags = [(sub, sub.training) for sub in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for sub, training in flags:
            sub.training = training
