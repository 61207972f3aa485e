"""The one place that reads Lightning's private attributes, so an upgrade breaks here only.

Example:
    >>> from lightning.pytorch.callbacks import ModelCheckpoint
    >>> every_n_train_steps(ModelCheckpoint(every_n_train_steps=3))
    3
"""

from __future__ import annotations

from typing import Any


def every_n_train_steps(checkpoint_callback: Any) -> int:
    """A `ModelCheckpoint`'s `every_n_train_steps` (Lightning keeps it private)."""
    return int(checkpoint_callback._every_n_train_steps or 0)


def step_checkpoint_due(trainer: Any) -> bool:
    """True when a `ModelCheckpoint(every_n_train_steps=N)` saves after this batch."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    step = trainer.global_step
    for callback in trainer.checkpoint_callbacks:
        every = every_n_train_steps(callback) if isinstance(callback, ModelCheckpoint) else 0
        if every > 0 and step % every == 0:
            return True
    return False
