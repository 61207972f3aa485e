"""Transcripts to each logger in the form it shows best, behind one function.

| logger | what it gets |
| --- | --- |
| `TensorBoardLogger` | Text tab: `eval/<name>/samples` at the round's step |
| `WandbLogger` | a `wandb.Table` `eval/<name>/transcripts` at the round's step |
| `MLFlowLogger` | a table artifact `eval/<name>/step_<N>.json` (MLflow's table view) |
| `CSVLogger` | `transcripts.jsonl` beside `metrics.csv`, one line per item |

A logger of another type gets none, and one warning per logger type says so (its metrics
still arrive). Each logger's code is a module here; wandb and mlflow are only touched when a
run has their logger.

Example:
    >>> from bios_callbacks.evaluators import Transcript
    >>> write_transcripts(trainer.logger, 10, {"qa": [Transcript("2+2?", "4", 1.0)]})
    ... # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from bios_callbacks.evaluators.base import Transcript

log = logging.getLogger("bios_callbacks.callback")

Transcripts = Mapping[str, Sequence[Transcript]]
"""Evaluator name -> its transcripts of one round."""

Writer = Callable[[Any, int, Transcripts], None]

_warned: set[type] = set()


def _writers() -> list[tuple[type, Writer]]:
    from lightning.pytorch.loggers import CSVLogger, MLFlowLogger, TensorBoardLogger, WandbLogger

    from bios_callbacks.callback.transcripts import (
        csv_jsonl,
        mlflow_table,
        tensorboard_text,
        wandb_table,
    )

    return [
        (TensorBoardLogger, tensorboard_text.write),
        (WandbLogger, wandb_table.write),
        (MLFlowLogger, mlflow_table.write),
        (CSVLogger, csv_jsonl.write),
    ]


def write_transcripts(logger: Any, step: int, transcripts: Transcripts) -> None:
    """Writes one round's `transcripts` (evaluator name -> items) to `logger` at `step`; a
    logger type it does not know gets a warning, once per type, and nothing else."""
    if not transcripts:
        return
    for logger_type, write in _writers():
        if isinstance(logger, logger_type):
            write(logger, step, transcripts)
            return
    if type(logger) not in _warned:
        _warned.add(type(logger))
        log.warning(
            "transcripts are not written to %s: it is none of TensorBoardLogger, WandbLogger, "
            "MLFlowLogger, CSVLogger (its eval metrics are logged as usual)",
            type(logger).__name__,
        )
