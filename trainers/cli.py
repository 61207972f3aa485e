"""The `key=value` command line shared by `python -m trainers.sft` and `python -m trainers.rl`.

Example:
    python -m trainers.sft train_data=train.jsonl steps=20 lora_rank=8
    python -m trainers.sft --help
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from trainers.config import TrainConfig


def usage(config_cls: type[TrainConfig], doc: str | None) -> str:
    """Help text: the trainer's docstring and every key with its default."""
    lines = [(doc or "").strip(), "", "Keys (key=value):"]
    for f in dataclasses.fields(config_cls):
        default = f.default if f.default is not dataclasses.MISSING else "[]"
        lines.append(f"  {f.name}={default}")
    return "\n".join(lines)


def run_cli(
    config_cls: type[TrainConfig],
    train: Callable[[Any], Any],
    argv: Sequence[str],
    *,
    doc: str | None = None,
) -> int:
    """Parses `argv` into a config and trains; returns the process exit status."""
    if not argv or any(a in ("-h", "--help", "help") for a in argv):
        print(usage(config_cls, doc))
        return 0 if argv else 2
    try:
        cfg = config_cls.from_cli(argv)
    except (ValueError, TypeError) as exc:
        print(f"error: {exc}")
        return 2
    train(cfg)
    return 0
