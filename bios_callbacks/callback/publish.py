"""Where a finished round goes: every logger, `trainer.callback_metrics`, transcripts in each
logger's own form (`bios_callbacks.callback.transcripts`), `eval_results.jsonl`, and warnings
for its failures.

Example:
    >>> publish(trainer, record, transcripts={}, results=ResultsFile(log_dir))  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch

from bios_callbacks.callback.results import ResultsFile, RoundRecord
from bios_callbacks.callback.transcripts import Transcripts, write_transcripts

log = logging.getLogger("bios_callbacks.callback")


def publish(
    trainer: Any,
    record: RoundRecord,
    *,
    transcripts: Transcripts,
    results: ResultsFile | None,
) -> None:
    """Logs `record` at its step on every logger and in `callback_metrics` (all ranks, so
    monitors agree); on rank 0 also appends it to the results file and writes transcripts to
    every logger (one that fails to take them gets a warning; training goes on).

    A round's own counts go to ``eval/failures`` and ``eval/time_s``, a background round's to
    ``eval/background_failures`` and ``eval/background_time_s``, so a step with both kinds
    logs each key once."""
    prefix = "eval/background_" if record.background else "eval/"
    metrics = {
        **record.metrics,
        f"{prefix}failures": float(len(record.failures)),
        f"{prefix}time_s": record.time_s,
    }
    for key, value in metrics.items():
        trainer.callback_metrics[key] = torch.tensor(value)
    for logger in trainer.loggers:
        logger.log_metrics(metrics, step=record.step)
    if not trainer.is_global_zero:
        return
    if results is not None:
        results.append(record)
    for logger in trainer.loggers:
        try:
            write_transcripts(logger, record.step, transcripts)
        except Exception:
            log.warning(
                "could not write transcripts to %s at step %d",
                type(logger).__name__,
                record.step,
                exc_info=True,
            )


def report_failures(trainer: Any, record: RoundRecord, tracebacks: Sequence[str]) -> None:
    """A warning per failure, then each traceback (rank 0 only)."""
    if not trainer.is_global_zero:
        return
    for failure in record.failures:
        log.warning(
            "evaluator %r failed at step %d (%s): %s",
            failure["evaluator"],
            record.step,
            failure["kind"],
            failure["message"],
        )
    for text in tracebacks:
        log.warning("evaluator traceback at step %d:\n%s", record.step, text)
