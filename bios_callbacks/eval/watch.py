"""Evaluate a run's checkpoints as they appear, off the training path.

    python -m bios_callbacks.eval.watch run=bios://my-run \\
        tasks=examples/offline_inspect_eval.py@capitals limit=50 until_step=2000

Each checkpoint of the run (`<run>/checkpoints/<name>`, in step order) that has not been
evaluated yet gets the Inspect `tasks` (as `run_inspect_evals` runs them: `evals/<task>.json`
and Inspect logs in `evals/logs` inside the checkpoint) and the `evaluator_builders`
(`module:attribute` builders, as the trainers take them, run on clients over the checkpoint:
`evals/<evaluator>.json`). Its metrics are written as TensorBoard scalars at the checkpoint's
step into `<run>/watch/`, so `tensorboard --logdir <run>` shows them beside the training
curves: `eval/<task>/<scorer>/<metric>` and `eval/<evaluator>/<key>`, the names an inline
round would log. Names never clash: an evaluator named like one of the tasks (a builder of the
same Inspect task) is `<name>_2`, with its own file and metrics; the same task twice in
tasks= is an error.

A checkpoint counts as evaluated for a task or evaluator once its `evals/` file exists, so a
second pass evaluates nothing, and adding a task later evaluates only that task; delete a file
to evaluate it again (a failed task's file records the failure and is not retried either).
Hidden staging directories of a checkpoint still being written are never looked at.

Following a live run: without `once=true` the watcher polls every `poll_s` seconds. It stops
after evaluating a checkpoint of step `until_step` or later (give the run's `steps`: the
trainers write their final checkpoint at that step), after `idle_timeout_s` seconds without a
new checkpoint (0: never), or on Ctrl-C.

Sampling on a server: with base_url=URL (an OpenAI-compatible endpoint: llama.cpp, vLLM,
SGLang) the tasks and sampling evaluators sample each checkpoint there instead of loading it
here, as `run_inspect_evals base_url=...` does: the server must serve the checkpoint under its
directory path (`python -m bios_callbacks.serving serve --model <checkpoint>` and
`vllm serve <checkpoint>` do), and `$BIOS_API_KEY`, if set, is sent as its bearer token. The
tokenizer still loads from the checkpoint, and evaluators that need log-probs (a
`TrainingClientEvaluator` such as `NLLEvaluator`) still load the weights here. A checkpoint
the server does not serve fails with the names it does serve, and is tried again by the next
watcher.

Keys (key=value): run (bios://<run> or the run directory; required), tasks (comma-separated
Inspect task names), evaluator_builders (comma-separated module:attribute), renderer_name
(default: the checkpoint's), temperature (0: greedy), max_tokens, limit, max_connections,
dtype (float32 or bfloat16), base_url (a server to sample on), once (true: one pass), poll_s
(5), until_step, idle_timeout_s (0). Exit status: 0 when everything evaluated succeeded, 1 when
a task or evaluator failed, 2 on bad arguments, 130 on Ctrl-C.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bios_callbacks.eval.run_inspect_evals import check_sampling_args
from bios_callbacks.key_value import UsageError, command_main, parse_words
from bios_callbacks.models.atomic_dirs import is_staging_dir
from bios_callbacks.models.loading import no_progress_bars
from bios_callbacks.models.references import (
    BIOS_URI_PREFIX,
    CHECKPOINT_METADATA_FILE,
    checkpoint_root,
    read_checkpoint_metadata,
)
from bios_callbacks.sampling.defaults import DEFAULT_MAX_BATCH_SIZE as DEFAULT_MAX_CONNECTIONS

USAGE = __doc__ or ""
WATCH_SUBDIR = "watch"
RESULTS_SUBDIR = "evals"


@dataclass
class WatchArgs:
    """The watcher's keys, parsed."""

    run: str | None = None
    tasks: list[str] | None = None
    evaluator_builders: list[str] | None = None
    renderer_name: str | None = None
    temperature: float = 0.0
    max_tokens: int | None = None
    limit: int | None = None
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    dtype: str = "float32"
    base_url: str | None = None
    once: bool = False
    poll_s: float = 5.0
    until_step: int | None = None
    idle_timeout_s: float = 0.0


def parse_args(argv: list[str]) -> WatchArgs:
    """Parses and checks `key=value` words (before any model or task loads).

    Example:
        >>> parse_args(["run=bios://demo", "tasks=a.py@t", "once=true"]).once
        True
        >>> parse_args(["run=bios://demo"])
        Traceback (most recent call last):
        ...
        bios_callbacks.key_value.UsageError: Nothing to evaluate: give tasks=... \
(Inspect tasks) and/or evaluator_builders=module:attribute,...
    """
    try:
        args = WatchArgs(**parse_words(WatchArgs, argv))
    except ValueError as error:
        raise UsageError(str(error)) from None
    if not args.run:
        raise UsageError("Missing run=...: e.g. run=bios://my-run or run=runs/my-run.")
    if not args.tasks and not args.evaluator_builders:
        raise UsageError(
            "Nothing to evaluate: give tasks=... (Inspect tasks) and/or "
            "evaluator_builders=module:attribute,..."
        )
    if args.until_step is not None and args.until_step < 0:
        raise UsageError(f"until_step={args.until_step}: expected a step >= 0.")
    if args.poll_s <= 0:
        raise UsageError(f"poll_s={args.poll_s}: expected seconds > 0.")
    if args.idle_timeout_s < 0:
        raise UsageError(f"idle_timeout_s={args.idle_timeout_s}: expected seconds >= 0 (0: never).")
    check_sampling_args(args, renderer_fallback="each checkpoint's")
    return args


def run_directory(run: str) -> Path:
    """The run directory `run=` names: `bios://<run>` is `$BIOS_CHECKPOINT_ROOT/<run>`.

    Example:
        >>> import os; os.environ["BIOS_CHECKPOINT_ROOT"] = "runs"
        >>> run_directory("bios://demo").as_posix(), run_directory("logs/x").as_posix()
        ('runs/demo', 'logs/x')
    """
    if not run.startswith(BIOS_URI_PREFIX):
        return Path(run).expanduser()
    name = run[len(BIOS_URI_PREFIX) :].strip("/")
    if not name or "/" in name or name in {".", ".."}:
        raise UsageError(
            f"run={run!r}: expected bios://<run> naming a run (not a checkpoint: the watcher "
            "evaluates all of a run's checkpoints), e.g. run=bios://my-run."
        )
    return checkpoint_root() / name


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """`(step, directory)` of every finished checkpoint of the run, in step order; staging
    directories and anything without readable metadata are left out."""
    folder = run_dir / "checkpoints"
    found = []
    for path in folder.iterdir() if folder.is_dir() else ():
        if path.name.startswith(".") or is_staging_dir(path) or not path.is_dir():
            continue
        if not (path / CHECKPOINT_METADATA_FILE).is_file():
            continue
        try:
            step = read_checkpoint_metadata(path).step
        except (ValueError, TypeError, KeyError, OSError):
            continue
        found.append((step, path))
    return sorted(found, key=lambda item: (item[0], item[1].name))


class Watcher:
    """Evaluates what is new in a run's checkpoints; `pass_once()` is one look at the run."""

    def __init__(self, args: WatchArgs) -> None:
        from bios_callbacks.eval.inspect_tasks import resolve_task, task_short_name

        self.args = args
        self.run_dir = run_directory(str(args.run))
        # task name -> its results file name; resolving now makes a bad name fail at once
        self.tasks: dict[str, str] = {}
        for name in args.tasks or []:
            file = f"{task_short_name(resolve_task(name).name)}.json"
            other = next((n for n, f in self.tasks.items() if f == file), None)
            if other is not None:
                raise UsageError(
                    f"tasks={other!r} and {name!r} are the same task name, so both would write "
                    f"evals/{file} and the same metrics: give each task once."
                )
            self.tasks[name] = file
        # an evaluator named like a task gets `_2`: its own evals/ file and metric names
        taken = [file.removesuffix(".json") for file in self.tasks.values()]
        self.slots = _builder_slots(args.evaluator_builders or [], taken)
        self.failed: set[tuple[Path, str]] = set()  # not retried by this process
        self.failures = 0
        self._writer: Any = None

    def todo(self, path: Path) -> tuple[list[str], list[Any]]:
        """The tasks and evaluator slots not yet evaluated on the checkpoint at `path`."""
        results = path / RESULTS_SUBDIR
        tasks = [
            name
            for name, file in self.tasks.items()
            if not (results / file).exists() and (path, name) not in self.failed
        ]
        slots = [
            slot
            for slot in self.slots
            if not (results / f"{slot.name}.json").exists() and (path, slot.name) not in self.failed
        ]
        return tasks, slots

    def pass_once(self) -> list[int]:
        """Evaluates every checkpoint with something left to do, in step order; returns their
        steps."""
        evaluated = []
        for step, path in list_checkpoints(self.run_dir):
            tasks, slots = self.todo(path)
            if tasks or slots:
                self.evaluate(step, path, tasks, slots)
                evaluated.append(step)
        return evaluated

    def finished(self) -> bool:
        """True once a checkpoint of step `until_step` or later has nothing left to do."""
        until = self.args.until_step
        return until is not None and any(
            step >= until and self.todo(path) == ([], [])
            for step, path in list_checkpoints(self.run_dir)
        )

    def evaluate(self, step: int, path: Path, tasks: list[str], slots: list[Any]) -> None:
        """Runs `tasks` and `slots` on one checkpoint and logs their metrics at `step`."""
        what = ", ".join([*tasks, *(slot.name for slot in slots)])
        print(f"[watch] step {step}: evaluating {path} ({what})", flush=True)
        metrics: dict[str, float] = {}
        if tasks:
            metrics.update(self._run_tasks(path, tasks))
        if slots:
            metrics.update(self._run_evaluators(step, path, slots))
        if metrics:
            writer = self._tensorboard()
            for key, value in sorted(metrics.items()):
                writer.add_scalar(key, value, global_step=step)
            writer.flush()
        print(f"[watch] step {step}: {len(metrics)} metric(s) logged to {self.watch_dir}")

    @property
    def watch_dir(self) -> Path:
        """Where the TensorBoard event files go: `<run>/watch`."""
        return self.run_dir / WATCH_SUBDIR

    def close(self) -> None:
        """Flushes and closes the TensorBoard writer."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _tensorboard(self) -> Any:
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(self.watch_dir))
        return self._writer

    def _run_tasks(self, path: Path, tasks: list[str]) -> dict[str, float]:
        """`run_inspect_evals` on the checkpoint; the metrics of the tasks that succeeded."""
        from bios_callbacks.eval.run_inspect_evals import EvalArgs, run

        args = self.args
        try:
            with no_progress_bars():
                run(
                    EvalArgs(
                        tasks=tasks,
                        model_path=str(path),
                        renderer_name=args.renderer_name,
                        limit=args.limit,
                        temperature=args.temperature,
                        max_tokens=args.max_tokens,
                        max_connections=args.max_connections,
                        dtype=args.dtype,
                        base_url=args.base_url,
                    )
                )
        except Exception as error:  # this checkpoint fails; the watcher goes on
            print(f"[watch] error: {path}: {type(error).__name__}: {error}", file=sys.stderr)
        metrics = {}
        for name in tasks:
            file = path / RESULTS_SUBDIR / self.tasks[name]
            record = json.loads(file.read_text()) if file.exists() else {}
            if record.get("status") == "success":
                metrics.update({f"eval/{k}": float(v) for k, v in record["metrics"].items()})
            else:
                self._failed(path, name)
        return metrics

    def _run_evaluators(self, step: int, path: Path, slots: list[Any]) -> dict[str, float]:
        """The evaluator slots on clients over the checkpoint; writes `evals/<name>.json`."""
        from bios_callbacks.callback.console import format_values
        from bios_callbacks.callback.live_clients import LiveClients
        from bios_callbacks.callback.round import metric_groups, run_round
        from bios_callbacks.callback.run_sync import run_sync

        try:
            with no_progress_bars():
                checkpoint = _Checkpoint(path, self.args, slots)
        except Exception as error:
            print(f"[watch] error: {path}: {type(error).__name__}: {error}", file=sys.stderr)
            for slot in slots:
                self._failed(path, slot.name)
            return {}
        clients = LiveClients(checkpoint)
        try:
            outcome = run_sync(
                run_round(
                    slots,
                    clients,
                    timeout_s=None,
                    context={"log_dir": self.run_dir, "step": step},
                )
            )
        finally:
            clients.close()
            checkpoint.close()
        results = path / RESULTS_SUBDIR
        results.mkdir(parents=True, exist_ok=True)
        for slot in slots:
            values = outcome.values.get(slot.name, {})
            failures = [f for f in outcome.failures if f["evaluator"] == slot.name]
            for failure in failures:
                print(
                    f"[watch] step {step}: evaluator {slot.name!r} failed ({failure['kind']}): "
                    f"{failure['message']}",
                    file=sys.stderr,
                )
            if failures:
                self.failures += 1
            print(f"[watch] step {step} {slot.name}: {format_values(values)}")
            # Keys as run_inspect_evals writes them (`eval/` left out), so `compare` reads
            # evaluator and task files alike: `heldout/loss`, `<task>/<scorer>/<metric>`.
            named = "" if metric_groups(slot.evaluator) else f"{slot.name}/"
            record = {
                "model_path": str(path),
                "step": step,
                "metrics": {f"{named}{key}": value for key, value in values.items()},
                "failures": failures,
            }
            _write_json(results / f"{slot.name}.json", record)
        return outcome.metrics

    def _failed(self, path: Path, name: str) -> None:
        self.failed.add((path, name))
        self.failures += 1


class _Checkpoint:
    """The clients of one checkpoint for `LiveClients`: over its weights loaded here, or, with
    `base_url`, a sampling client on the server (made now, so a checkpoint it does not serve
    fails before the round) and the weights loaded here only when an evaluator needs
    log-probs."""

    def __init__(self, path: Path, args: WatchArgs, slots: list[Any]) -> None:
        self.path, self.args = path, args
        self.model: Any = None
        self.tokenizer: Any = None
        self._sampling: Any = None
        if args.base_url is None:
            self._load()
        elif any(_kind(slot) == "sampling" for slot in slots):
            self._sampling = self.make_sampling_client()

    def _load(self) -> None:
        from bios_callbacks.checkpoints import load_checkpoint

        if self.model is None:
            dtype = _torch_dtype(self.args.dtype)
            self.model, self.tokenizer = load_checkpoint(self.path, dtype=dtype)

    def make_sampling_client(self) -> Any:
        """The sampling client: over the loaded weights, or on the server."""
        from bios_callbacks.eval.inspect_utils import API_KEY_ENV
        from bios_callbacks.sampling.client import SamplingClient
        from bios_callbacks.sampling.service import ServiceClient

        if self._sampling is None:
            if self.args.base_url is None:
                self._sampling = SamplingClient.from_module(self.model, self.tokenizer)
            else:
                service = ServiceClient(
                    base_url=self.args.base_url,
                    api_key=os.environ.get(API_KEY_ENV),
                    max_batch_size=self.args.max_connections,
                )
                self._sampling = service.create_sampling_client(model_path=str(self.path))
        return self._sampling

    def make_training_client(self) -> Any:
        """The training client over the weights, loaded here (log-probs need them)."""
        from bios_callbacks.training_client import TrainingClient

        with no_progress_bars():
            self._load()
        return TrainingClient.from_module(self.model, self.tokenizer)

    def close(self) -> None:
        """Closes the sampling client."""
        if self._sampling is not None:
            self._sampling.close()
            self._sampling = None


def _kind(slot: Any) -> str | None:
    """The client the slot's evaluator takes, "sampling" or "training" (None: not built)."""
    from bios_callbacks.evaluators.base import client_kind

    return None if slot.evaluator is None else client_kind(slot.evaluator)


def _builder_slots(specs: list[str], taken: list[str]) -> list[Any]:
    """Named evaluator slots for `module:attribute` builder names, none of them one of the
    `taken` names (UsageError when one does not import or is not callable)."""
    from bios_callbacks.callback.round import name_slots

    builders = []
    for spec in specs:
        module_name, sep, attribute = spec.partition(":")
        if not sep:
            raise UsageError(
                f"evaluator_builders entry {spec!r}: expected 'module:attribute', e.g. "
                "'my_evals:qa_builder'."
            )
        try:
            builder = getattr(importlib.import_module(module_name), attribute)
        except (ImportError, AttributeError) as error:
            raise UsageError(
                f"Cannot import {spec!r}: {error}. Name a module importable from the current "
                "directory (or on PYTHONPATH) and a builder it defines."
            ) from None
        if not callable(builder):
            raise UsageError(f"{spec!r} is not callable: expected an evaluator builder.")
        builders.append(builder)
    return name_slots(builders, taken)


def _torch_dtype(name: str) -> Any:
    import torch

    return getattr(torch, name)


def _write_json(path: Path, record: dict[str, Any]) -> None:
    """Writes `record` so that a reader never sees half a file."""
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps(record, indent=2) + "\n")
    partial.replace(path)


def watch(args: WatchArgs) -> int:
    """Evaluates the run's checkpoints as `args` says; returns the exit status."""
    run_dir = run_directory(str(args.run))
    if args.once and not run_dir.is_dir():
        raise UsageError(
            f"run={args.run!r}: there is no run directory {run_dir} (bios://<run> is under "
            "$BIOS_CHECKPOINT_ROOT, default ./runs); without once=true the watcher waits for it."
        )
    watcher = Watcher(args)
    if not args.once:
        print(f"[watch] following {run_dir} (Ctrl-C stops)", flush=True)
    last_new, evaluated = time.monotonic(), 0
    try:
        while True:
            new = watcher.pass_once()
            if new:
                last_new, evaluated = time.monotonic(), evaluated + len(new)
            if args.once or watcher.finished():
                break
            if args.idle_timeout_s and time.monotonic() - last_new > args.idle_timeout_s:
                print(f"[watch] no new checkpoint for {args.idle_timeout_s:g}s; stopping")
                break
            time.sleep(args.poll_s)
    except KeyboardInterrupt:
        print("[watch] interrupted", file=sys.stderr)
        return 130
    finally:
        watcher.close()
    count = len(list_checkpoints(run_dir))
    print(
        f"[watch] evaluated {evaluated} of the {count} checkpoint(s) in {run_dir} "
        f"(the others were done before); {watcher.failures} failure(s). "
        f"View: tensorboard --logdir {run_dir}"
    )
    return 1 if watcher.failures else 0


def main(argv: list[str] | None = None) -> int:
    """Entry point: parses `argv`, watches, and returns the exit status."""
    return command_main(argv, USAGE, parse_args, watch, report_errors=False)


if __name__ == "__main__":
    sys.exit(main())
