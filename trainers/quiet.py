"""The library chatter a trainer run does not need, silenced while the trainers run.

Only the messages listed here are dropped, and only inside `quiet_training()` (the trainers'
`fit`), `quiet_warnings()` (loading the model) or `no_progress_bars()` (each checkpoint
write): Lightning's hardware report and tips, its "fit stopped" and "restoring" lines (the
trainers print their own), deprecation warnings one library triggers in another, and
transformers' per-save progress bar. Everything else, warnings about your data or settings
included, still shows.

Example:
    >>> from trainers.quiet import quiet_training
    >>> with quiet_training():  # doctest: +SKIP
    ...     trainer = L.Trainer(...)
    ...     trainer.fit(module, loader)
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

from bios_callbacks.models.loading import no_progress_bars

__all__ = ["no_progress_bars", "quiet_training", "quiet_warnings"]

# Info lines (message starts) and the Lightning loggers that emit them.
LIGHTNING_INFO_NOISE = (
    "GPU available: ",
    "TPU available: ",
    "HPU available: ",
    "LOCAL_RANK: ",
    "💡 Tip: ",
    "`Trainer.fit` stopped: ",
    "Restoring states from the checkpoint path at ",
    "Restored all states from the checkpoint at ",
)
LIGHTNING_INFO_LOGGERS = (
    "lightning.pytorch.utilities.rank_zero",  # rank_zero_info(...)
    "lightning.pytorch.accelerators.cuda",  # LOCAL_RANK: 0 - CUDA_VISIBLE_DEVICES: [0]
)
# Warnings (message regexes, matched at the start) that one library causes in another.
LIBRARY_WARNING_NOISE = (
    # lightning/pytorch/utilities/_pytree.py checks isinstance(spec, LeafSpec) (torch >= 2.10)
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning),
    # peft's PeftModel reads model.is_gradient_checkpointing (transformers >= 5)
    (r"`is_gradient_checkpointing` is deprecated", FutureWarning),
)


@contextmanager
def quiet_warnings() -> Iterator[None]:
    """Drops the warnings in `LIBRARY_WARNING_NOISE` inside (also usable as a decorator)."""
    with warnings.catch_warnings():
        for message, category in LIBRARY_WARNING_NOISE:
            warnings.filterwarnings("ignore", message=message, category=category)
        yield


class _DropMessages(logging.Filter):
    """Drops log records whose message starts with one of `prefixes`."""

    def __init__(self, prefixes: tuple[str, ...]):
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefixes)


@contextmanager
def quiet_training() -> Iterator[None]:
    """Drops Lightning's info lines in `LIGHTNING_INFO_NOISE` and `LIBRARY_WARNING_NOISE`."""
    drop = _DropMessages(LIGHTNING_INFO_NOISE)
    loggers = [logging.getLogger(name) for name in LIGHTNING_INFO_LOGGERS]
    with quiet_warnings():
        for logger in loggers:
            logger.addFilter(drop)
        try:
            yield
        finally:
            for logger in loggers:
                logger.removeFilter(drop)
