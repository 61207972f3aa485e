"""The `key=value` command line shared by `python -m trainers.sft` and `python -m trainers.rl`.

Example:
    python -m trainers.sft train_data=train.jsonl steps=20 lora_rank=8
    python -m trainers.sft --help
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Sequence
from typing import Any

import lightning as L

from trainers.config import TrainConfig

# What bad input (settings, data files, model names) raises before training starts.
INPUT_ERRORS = (ValueError, TypeError, OSError, ImportError)


def usage(config_cls: type[TrainConfig], doc: str | None) -> str:
    """Help text: the trainer's docstring and every key with its default."""
    lines = [(doc or "").strip(), "", "Keys (key=value):"]
    for f in dataclasses.fields(config_cls):
        default = f.default if f.default is not dataclasses.MISSING else "[]"
        lines.append(f"  {f.name}={default}")
    return "\n".join(lines)


def run_cli(
    config_cls: type[TrainConfig],
    train: Callable[..., Any],
    argv: Sequence[str],
    *,
    doc: str | None = None,
) -> int:
    """Parses `argv` into a config and trains; returns the process exit status.

    Bad input (a setting, a data file, a model or renderer name) found before training starts
    is one `error: ...` line on stderr and status 2. Errors during training propagate with
    their traceback (status 1); SIGTERM ends with status 143 (see `trainers.policy.fit`).
    """
    if not argv or any(a in ("-h", "--help", "help") for a in argv):
        print(usage(config_cls, doc))
        return 0 if argv else 2
    started = TrainingStarted()
    try:
        train(config_cls.from_cli(argv), callbacks=[started])
    except INPUT_ERRORS as exc:
        if started.started:
            raise
        message = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        print(f"error: {message}", file=sys.stderr)
        return 2
    return 0


class TrainingStarted(L.Callback):
    """Tells errors of the training loop apart from bad input found while setting up."""

    def __init__(self) -> None:
        self.started = False

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.started = True
