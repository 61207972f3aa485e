"""Transcripts on MLflow: a table artifact per evaluator and step, `eval/<name>/step_<N>.json`
(MLflow's split-JSON table: `{"columns": [...], "data": [[...], ...]}`), with columns prompt,
response, score, explanation; the run's artifact view shows it as a table.

Example:
    >>> write(MLFlowLogger(tracking_uri="http://mlflow:5000"), 10,
    ...       {"qa": [Transcript("2+2?", "4", 1.0)]})  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from bios_callbacks.evaluators.base import Transcript


def artifact_file(name: str, step: int) -> str:
    """Where an evaluator's transcripts of one step go in the run's artifacts.

    Example:
        >>> artifact_file("qa", 10)
        'eval/qa/step_10.json'
    """
    return f"eval/{name}/step_{step}.json"


def write(logger: Any, step: int, transcripts: Mapping[str, Sequence[Transcript]]) -> None:
    """`MlflowClient.log_table` per evaluator in the logger's run (needs pandas)."""
    for name, items in transcripts.items():
        columns = {field: [getattr(item, field) for item in items] for field in Transcript._fields}
        logger.experiment.log_table(
            logger.run_id, data=columns, artifact_file=artifact_file(name, step)
        )
