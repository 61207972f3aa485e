"""Inspect AI tasks as an inline evaluator for `EvalCallback`.

Example:
    >>> from bios_callbacks import EvalCallback
    >>> from bios_callbacks.eval.inspect_evaluators import InspectEvaluatorBuilder
    >>> builder = InspectEvaluatorBuilder(
    ...     tasks=["examples/offline_inspect_eval.py@capitals"], renderer_name="chatml", limit=20,
    ...     log_dir="runs/demo")
    >>> callback = EvalCallback(infrequent_evaluator_builders=[builder], infrequent_eval_every=100)
    ... # doctest: +SKIP

Metrics go under the task's name: `EvalCallback` logs the builder above as
`eval/capitals/<scorer>/<metric>` (the evaluator is named after its task, and returns
`<scorer>/<metric>`). A second evaluator of the same task is `eval/capitals_2/...`. A builder of
several tasks runs them together in one Inspect `eval` and logs each task's metrics under its
name as well, `eval/<task>/<scorer>/<metric>`: it returns `<task>/<scorer>/<metric>` and names
its tasks as its `metric_groups` (so `EvalCallback` gives a task that another evaluator has
too `<task>_2`), and it is named after them, `capitals+echo`, on the console and in failures.
Transcripts go under each task's name the same way.

Each scorer's metrics come with `<scorer>/scored` and `<scorer>/unscored` next to them:
Inspect's metrics count only the samples a scorer scored (a judge may give no verdict, a sample
may fail), and a warning names the unscored ones. Inspect's own standard error stays
`<scorer>/stderr`; it is the standard error of the scorer's mean, so it is also reported under
this package's `<metric>_stderr` name next to each mean metric (`accuracy`, `mean`):
`<scorer>/accuracy_stderr` (see `with_stderr_names`).

The Inspect log goes under `<log_dir>/inspect_logs`, tagged `step-<N>` (see them with
`inspect view --log-dir <log_dir>/inspect_logs`): under `EvalCallback` the run's log directory,
else the builder's `log_dir`, else `$BIOS_CHECKPOINT_ROOT` (`./runs`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from bios_callbacks.evaluators import SamplingClientEvaluator, Transcript

logger = logging.getLogger(__name__)

LOG_SUBDIR = "inspect_logs"
V = TypeVar("V")
MEAN_METRICS = ("accuracy", "mean")
"""Inspect metrics that are the mean of a scorer's values, the mean its `stderr()` is for."""


def with_stderr_names(metrics: dict[str, V]) -> dict[str, V]:
    """`metrics` plus `[<task>/]<scorer>/<mean metric>_stderr` copies of each scorer's Inspect
    `stderr`, the name every other evaluator's standard error has (the values may be numbers
    or anything else kept per metric, such as values by step).

    Example:
        >>> with_stderr_names({"qa/match/accuracy": 0.5, "qa/match/stderr": 0.1})
        {'qa/match/accuracy': 0.5, 'qa/match/stderr': 0.1, 'qa/match/accuracy_stderr': 0.1}
    """
    named = dict(metrics)
    for key, value in metrics.items():
        prefix, _, metric = key.rpartition("/")
        if metric == "stderr":
            for mean in MEAN_METRICS:
                if f"{prefix}/{mean}" in metrics:
                    named.setdefault(f"{prefix}/{mean}_stderr", value)
    return named


class InspectEvaluatorBuilder:
    """A zero-argument builder of `InspectEvaluator`s (a regular or infrequent builder).

    Args:
        tasks: task names (see `bios_callbacks.eval.inspect_tasks`), `Task`s or task functions.
        renderer_name: chat format of the model being trained.
        model_name: name shown in Inspect logs.
        limit: at most this many samples per task and round.
        log_dir: where `inspect_logs/` goes when the evaluator runs outside `EvalCallback`
            (default `$BIOS_CHECKPOINT_ROOT`, i.e. `./runs`); the callback's run directory
            replaces it.
        temperature, max_tokens: generation settings (0 = greedy).
        max_connections: samples in flight at once; default: the sampling client's
            `max_batch_size`, so a round fills the engine's batch (64 unless
            `EvalCallback(sampling_options=...)` says otherwise; every rank's rows in a round
            split over DDP/FSDP ranks).
        include_reasoning: hand a thinking renderer's reasoning to Inspect as well (see
            `InspectAPIFromBiosSampling`); by default scorers get the answer's text only.
    """

    def __init__(
        self,
        tasks: Sequence[str | Any | Callable[[], Any]],
        renderer_name: str,
        *,
        model_name: str = "trained-model",
        limit: int | None = None,
        log_dir: str | Path | None = None,
        temperature: float = 0.0,
        max_tokens: int | None = None,
        max_connections: int | None = None,
        include_reasoning: bool = False,
    ) -> None:
        if isinstance(tasks, str) or not tasks:
            raise ValueError(
                f"InspectEvaluatorBuilder(tasks={tasks!r}): expected a non-empty list of tasks, "
                "e.g. tasks=['path/to/file.py@my_task']."
            )
        if max_connections is not None and max_connections < 1:
            raise ValueError(
                f"InspectEvaluatorBuilder(max_connections={max_connections!r}): expected at "
                "least 1, or None for the sampling client's batch size."
            )
        self.tasks = list(tasks)
        self.renderer_name = renderer_name
        self.model_name = model_name
        self.limit = limit
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.max_connections = max_connections
        self.include_reasoning = include_reasoning

    def __call__(self) -> InspectEvaluator:
        """A new evaluator; its tasks are loaded now, so bad names fail before training."""
        from bios_callbacks.eval.inspect_tasks import resolve_task

        return InspectEvaluator(self, [resolve_task(task) for task in self.tasks])


class InspectEvaluator(SamplingClientEvaluator):
    """Runs Inspect tasks on the sampling client it is called with; made by the builder.

    `name` (where `EvalCallback` logs it, `eval/<name>/...`) is its task's name. With several
    tasks its `metric_groups` are their names (each task's metrics go to `eval/<task>/...`)
    and `name` is them joined by `+`.
    """

    def __init__(self, builder: InspectEvaluatorBuilder, tasks: list[Any]) -> None:
        from bios_callbacks.eval.inspect_tasks import task_short_name

        self.builder = builder
        self.tasks = tasks
        names = [task_short_name(task.name) for task in tasks]
        self.metric_groups = names if len(tasks) > 1 else []
        self.name = "+".join(names)
        self.log_dir: Path | None = builder.log_dir
        self.step: int | None = None
        self.rounds = 0
        self._transcripts: dict[str, list[Transcript]] = {}

    def set_run_context(
        self, *, log_dir: str | Path | None = None, step: int | None = None
    ) -> None:
        """Called by the callback before a round: the run's log directory and the step."""
        if log_dir is not None:
            self.log_dir = Path(log_dir)
        self.step = step

    async def __call__(self, sampling_client: Any) -> dict[str, float]:
        """Runs every task once and returns `<scorer>/<metric>` metrics, or
        `<task>/<scorer>/<metric>` when it runs several tasks (with `accuracy_stderr` beside
        Inspect's `stderr`)."""
        from inspect_ai.model import GenerateConfig, Model

        from bios_callbacks.eval.inspect_runner import run_tasks
        from bios_callbacks.eval.inspect_utils import InspectAPIFromBiosSampling

        b = self.builder
        api = InspectAPIFromBiosSampling(
            model_name=b.model_name,
            renderer_name=b.renderer_name,
            sampling_client=sampling_client,
            include_reasoning=b.include_reasoning,
        )
        config = GenerateConfig(
            max_connections=b.max_connections or api.max_connections(),
            temperature=b.temperature,
            max_tokens=b.max_tokens,
        )
        step_tag = f"step-{self.step}" if self.step is not None else f"round-{self.rounds}"
        self.rounds += 1
        results = await run_tasks(
            self.tasks,
            Model(api, config),
            log_dir=str(self.inspect_log_dir()),
            limit=b.limit,
            tags=[step_tag],
            metadata={"step": self.step},
        )
        failed = [r for r in results if r.status != "success"]
        summary = "; ".join(f"{r.task}: {r.error} (log: {r.log_location})" for r in failed)
        if len(failed) == len(results):
            raise RuntimeError(f"Inspect task(s) failed: {summary}")
        if failed:
            logger.error("Inspect task(s) failed, reporting the others: %s", summary)
        self._transcripts = {r.task: list(r.transcripts) for r in results}
        metrics = {key: value for r in results for key, value in r.metrics.items()}
        if len(self.tasks) == 1:  # the evaluator's name is the task's
            metrics = {key.removeprefix(f"{results[0].task}/"): v for key, v in metrics.items()}
        return with_stderr_names(metrics)

    def inspect_log_dir(self) -> Path:
        """Where this evaluator's Inspect logs go: `<run log dir or root>/inspect_logs`."""
        from bios_callbacks.checkpoints import checkpoint_root

        return (self.log_dir if self.log_dir is not None else checkpoint_root()) / LOG_SUBDIR

    def eval_prompts(self) -> Sequence[str]:
        """The tasks' sample inputs, for the callback's held-out check."""
        return [
            s.input if isinstance(s.input, str) else s.input[-1].text
            for task in self.tasks
            for s in task.dataset
        ]

    def transcripts(self) -> Sequence[Transcript] | dict[str, list[Transcript]]:
        """A few samples of each task from the latest round, with the first scorer's value and
        explanation (an LLM judge's verdict and reasoning): a list for one task, else a list
        per task (its metric group)."""
        if len(self.tasks) == 1:
            return [item for items in self._transcripts.values() for item in items]
        return self._transcripts
