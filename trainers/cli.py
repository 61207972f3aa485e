"""The `key=value` command line of `python -m trainers.sft`, `python -m trainers.rl` and the
examples: words parsed by `trainers.config.parse_words`, `--help` lists the keys, bad input is
one `error: ...` line and exit status 2. Nothing heavy is imported here, so a trainer can answer
`--help` and bad words before it loads torch and Lightning (`exit_on_bad_words`).

Example:
    python -m trainers.sft train_data=train.jsonl steps=20 lora_rank=8
    python -m trainers.sft --help
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from trainers.config import TrainConfig, parse_words

if TYPE_CHECKING:
    import lightning as L

# What bad input (settings, data files, model names) raises before training starts.
INPUT_ERRORS = (ValueError, TypeError, OSError, ImportError)
HELP_WORDS = ("-h", "--help", "help")
T = TypeVar("T")


def usage(fields: type, doc: str | None, defaults: Mapping[str, Any] | None = None) -> str:
    """Help text: the docstring and every key of the dataclass `fields` with its default
    (`defaults` replace the dataclass's own; values that are not short words are not shown)."""
    lines = [(doc or "").strip(), "", "Keys (key=value):"]
    for f in dataclasses.fields(fields):
        default = f.default if f.default is not dataclasses.MISSING else "[]"
        if defaults and f.name in defaults:
            value = defaults[f.name]
            plain = value is None or isinstance(value, (str, int, float))
            default = value if plain else "(set by this command)"
        lines.append(f"  {f.name}={default}")
    return "\n".join(lines)


def run_cli(
    config_cls: type[TrainConfig],
    train: Callable[..., Any],
    argv: Sequence[str],
    *,
    doc: str | None = None,
    defaults: Mapping[str, Any] | None = None,
) -> int:
    """Parses `argv` into a config and trains; returns the process exit status.

    `defaults` (an example's settings) are the values the words change; without them an empty
    command line prints the usage. Bad input (a setting, a data file, a model or renderer name)
    found before training starts is one `error: ...` line on stderr and status 2. Errors during
    training propagate with their traceback (status 1); SIGTERM ends with status 143 (see
    `trainers.policy.fit`).
    """
    cfg = parse_config(config_cls, argv, doc=doc, defaults=defaults)
    if isinstance(cfg, int):
        return cfg
    started = training_started()
    try:
        train(cfg, callbacks=[started])
    except INPUT_ERRORS as exc:
        if started.started:
            raise
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 2
    return 0


def parse_config(
    config_cls: type[TrainConfig],
    argv: Sequence[str],
    *,
    doc: str | None = None,
    defaults: Mapping[str, Any] | None = None,
) -> TrainConfig | int:
    """The config `argv` asks for; or, after printing the usage or one `error: ...` line, the
    exit status (0 for `--help`, 2 for bad words or, without `defaults`, no words)."""
    if any(a in HELP_WORDS for a in argv) or (not argv and defaults is None):
        print(usage(config_cls, doc, defaults))
        return 0 if argv else 2
    try:
        return config_cls.from_dict({**(defaults or {}), **config_cls.parse_cli(argv)})
    except INPUT_ERRORS as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 2


def exit_on_bad_words(config_cls: type[TrainConfig], argv: Sequence[str], doc: str | None) -> None:
    """For `python -m trainers.<name>`, before its heavy imports (torch and Lightning take
    seconds): `--help` and bad words end the process at once, as `run_cli` would end it; good
    words return, for `run_cli` to train."""
    cfg = parse_config(config_cls, argv, doc=doc)
    if isinstance(cfg, int):
        raise SystemExit(cfg)


def parse_args(fields: type[T], argv: Sequence[str], *, doc: str | None = None) -> T:
    """`key=value` words as an instance of the dataclass `fields`, for a script that is not a
    trainer (e.g. `examples/inline_evals.py`). `--help` prints the keys and exits with status 0;
    a bad word is one `error: ...` line on stderr and exit status 2."""
    if any(a in HELP_WORDS for a in argv):
        print(usage(fields, doc))
        raise SystemExit(0)
    try:
        return fields(**parse_words(fields, argv))
    except ValueError as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        raise SystemExit(2) from None


def one_line(exc: BaseException) -> str:
    """An error message on one line."""
    return " ".join(line.strip() for line in str(exc).splitlines() if line.strip())


def training_started() -> L.Callback:
    """A callback whose `started` tells errors of the training loop apart from bad input found
    while setting up (Lightning is imported only when training does)."""
    import lightning as L

    class TrainingStarted(L.Callback):
        def __init__(self) -> None:
            self.started = False

        def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
            self.started = True

    return TrainingStarted()
