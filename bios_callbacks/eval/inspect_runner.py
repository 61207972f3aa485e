"""Running Inspect tasks on a model in-process and reading their metrics back.

Shared by the inline evaluator and the offline CLI. `run_tasks` runs quietly (no Inspect
display), leaves the terminal as it found it (Inspect reconfigures Rich's global console and the
root logger; both are restored, so Lightning's TQDM and Rich progress bars keep working), and
keeps going when some samples fail: their errors are reported, the rest are scored.

Every scorer's metrics come with how many samples it scored: a scorer may leave a sample
unscored (a judge that gives no verdict, a scorer returning `Score.unscored()`), and a failed
sample is never scored, yet Inspect computes `accuracy` over the scored samples only. So each
scorer also reports `scored` and `unscored` (with failed samples counted as unscored), and a
warning names the unscored samples and why.

Example:
    >>> results = await run_tasks([task], model, log_dir="runs/x/inspect_logs")  # doctest: +SKIP
    >>> results[0].metrics  # doctest: +SKIP
    {'capitals/match/accuracy': 1.0, 'capitals/match/stderr': 0.0, 'capitals/match/scored': 8.0,
     'capitals/match/unscored': 0.0}
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from inspect_ai import Task, eval_async
from inspect_ai.log import EvalLog
from inspect_ai.model import Model
from inspect_ai.scorer import CORRECT, INCORRECT, NOANSWER, PARTIAL, value_to_float

from bios_callbacks.eval import inspect_private
from bios_callbacks.eval.inspect_private import preserved_terminal
from bios_callbacks.eval.inspect_tasks import task_short_name
from bios_callbacks.evaluators.base import Transcript

logger = logging.getLogger(__name__)

# Inspect allows one eval_async at a time per process. Evaluators of one round share an event
# loop, a background round (EvalCallback(async_infrequent=True)) has its own in another thread:
# one lock for all, taken without blocking any event loop.
_EVAL_LOCK = threading.Lock()
_LOCK_POLL_S = 0.05


@dataclass
class TaskResult:
    """What one Inspect task run gave.

    `metrics` are keyed `<task>/<scorer>/<metric>`, including `<task>/<scorer>/scored` and
    `<task>/<scorer>/unscored`: the metrics count the scored samples only. `errors` maps failed
    sample ids to their error messages (never scored); `unscored` maps each scorer to the ids of
    the samples it left without a value and why; `log_location` is the Inspect log file (open it
    with `inspect view`).
    """

    task: str
    status: str
    metrics: dict[str, float]
    samples: int
    errors: dict[str, str] = field(default_factory=dict)
    unscored: dict[str, dict[str, str]] = field(default_factory=dict)
    log_location: str = ""
    error: str | None = None
    transcripts: list[Transcript] = field(default_factory=list)


async def run_tasks(
    tasks: Sequence[Task],
    model: Model,
    *,
    log_dir: str,
    limit: int | None = None,
    tags: list[str] | None = None,
    metadata: dict[str, Any] | None = None,
    model_roles: dict[str, Model] | None = None,
) -> list[TaskResult]:
    """Runs `tasks` on `model` with `eval_async` and returns one `TaskResult` per task.

    Inspect runs one evaluation at a time per process, so a call made while another is running
    (another evaluator of the round, or a background round in its own thread) waits for it.
    """
    async with _one_eval_at_a_time():
        with preserved_terminal():
            inspect_private.quiet_display()
            logs = await eval_async(
                list(tasks),
                model=model,
                model_roles=model_roles,
                log_dir=log_dir,
                limit=limit,
                tags=tags,
                metadata=metadata,
                fail_on_error=False,
                score_display=False,
                ctl_server=False,
                log_level="warning",
            )
    return [result_from_log(log) for log in logs]


@asynccontextmanager
async def _one_eval_at_a_time() -> AsyncIterator[None]:
    """Holds the process-wide Inspect lock. Waiting polls it, so the event loop goes on, and a
    cancelled wait (an evaluator's timeout) leaves the lock as it was."""
    if not _EVAL_LOCK.acquire(blocking=False):
        logger.info(
            "Waiting for another Inspect evaluation in this process to finish (Inspect runs "
            "one at a time)."
        )
        while not _EVAL_LOCK.acquire(blocking=False):
            await asyncio.sleep(_LOCK_POLL_S)
    try:
        yield
    finally:
        _EVAL_LOCK.release()


def result_from_log(log: EvalLog) -> TaskResult:
    """The metrics, scored counts, sample errors and a few transcripts of one Inspect log."""
    task = task_short_name(log.eval.task)
    samples = log.samples or []
    errors = {str(s.id): s.error.message for s in samples if s.error is not None}
    if errors:
        logger.warning(
            "Inspect task %s: %d of %d samples failed and are left out of its metrics: %s",
            task,
            len(errors),
            len(samples),
            "; ".join(f"{sample_id}: {message}" for sample_id, message in errors.items()),
        )
    unscored = _unscored_samples(samples)
    total = len({s.id for s in samples})
    metrics: dict[str, float] = {}
    for score in log.results.scores if log.results else []:
        for metric in score.metrics.values():
            metrics[f"{task}/{score.name}/{metric.name}"] = float(metric.value)
        scored = score.scored_samples or 0
        metrics[f"{task}/{score.name}/scored"] = float(scored)
        metrics[f"{task}/{score.name}/unscored"] = float(total - scored)
        if scored < total:
            _warn_unscored(task, score.name, scored, total, unscored.get(score.scorer, {}), errors)
    transcripts = [_transcript(sample) for sample in samples[:3] if sample.error is None]
    return TaskResult(
        task=task,
        status=log.status,
        metrics=metrics,
        samples=len(samples),
        errors=errors,
        unscored=unscored,
        log_location=log.location,
        error=log.error.message if log.error else None,
        transcripts=transcripts,
    )


def _unscored_samples(samples: Sequence[Any]) -> dict[str, dict[str, str]]:
    """Per scorer, the samples it gave no value (Inspect's NaN sentinel) and the reason."""
    unscored: dict[str, dict[str, str]] = {}
    for sample in samples:
        if sample.error is not None:
            continue
        for name, score in (sample.scores or {}).items():
            if isinstance(score.value, float) and math.isnan(score.value):
                reason = ": ".join(str(part) for part in (score.reason, score.explanation) if part)
                unscored.setdefault(name, {})[str(sample.id)] = reason or "no value"
    return unscored


def _warn_unscored(
    task: str,
    scorer: str,
    scored: int,
    total: int,
    reasons: dict[str, str],
    errors: dict[str, str],
) -> None:
    details = [f"{sample_id}: {_shorten(reason)}" for sample_id, reason in reasons.items()]
    details += [f"{sample_id}: failed" for sample_id in errors]
    counted = f"its metrics count only the {scored} scored" if scored else "it has no metrics"
    logger.warning(
        "Inspect task %s: %s scored %d of %d samples; %s. Unscored: %s",
        task,
        scorer,
        scored,
        total,
        counted,
        "; ".join(details) or "(not listed in the log)",
    )


def _shorten(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _transcript(sample: Any) -> Transcript:
    """A sample's prompt and completion with its first scorer's value as a number (Inspect's
    C / I / P / N grades as 1 / 0 / 0.5 / 0, as its `value_to_float` does; None for an
    unscored sample or a value that is no number) and the scorer's reason and explanation (a
    judge's reasoning, or why it gave no verdict)."""
    prompt = sample.input if isinstance(sample.input, str) else sample.input[-1].text
    score = next(iter((sample.scores or {}).values()), None)
    if score is None:
        return Transcript(prompt, sample.output.completion)
    value, number = score.value, None
    if isinstance(value, bool | int | float) or value in (CORRECT, INCORRECT, PARTIAL, NOANSWER):
        number = value_to_float()(value)
        number = None if math.isnan(number) else number
    parts = (score.reason, score.explanation)
    explanation = ": ".join(str(part) for part in parts if part) or None
    return Transcript(prompt, sample.output.completion, number, explanation)
