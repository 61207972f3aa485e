"""Putting a module in evaluation mode for a while and restoring every submodule's flag after."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from bios_callbacks.models.shared_blocks import SharedBlocks

_blocks = SharedBlocks()  # the flags to restore when the last block on a module ends


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

    def record_and_eval() -> list[tuple[torch.nn.Module, bool]]:
        flags = [(sub, sub.training) for sub in module.modules()]
        module.eval()
        return flags

    def restore(flags: list[tuple[torch.nn.Module, bool]]) -> None:
        for sub, training in flags:
            sub.training = training

    with _blocks.block(module, record_and_eval, restore):
        yield
