"""Transcripts on Weights & Biases: a `wandb.Table` per evaluator, logged at the round's step
(`trainer/global_step`) under `eval/<name>/transcripts`, with columns prompt, response, score,
explanation.

Example:
    >>> write(WandbLogger(project="demo"), 10, {"qa": [Transcript("2+2?", "4", 1.0)]})
    ... # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from bios_callbacks.evaluators.base import Transcript


def write(logger: Any, step: int, transcripts: Mapping[str, Sequence[Transcript]]) -> None:
    """`WandbLogger.log_table` per evaluator (wandb is imported by the logger, not here)."""
    for name, items in transcripts.items():
        logger.log_table(
            key=f"eval/{name}/transcripts",
            columns=list(Transcript._fields),
            data=[list(item) for item in items],
            step=step,
        )
