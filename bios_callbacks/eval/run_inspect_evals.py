"""Run Inspect AI tasks on a saved checkpoint or a base model.

    python -m bios_callbacks.eval.run_inspect_evals \\
        model_path=bios://my-run/final \\
        model_name=HuggingFaceTB/SmolLM2-135M-Instruct \\
        tasks=inspect_evals/ifeval,examples/offline_inspect_eval.py@capitals \\
        renderer_name=chatml limit=50

base_url=URL samples on a serving engine's OpenAI-compatible endpoint (llama.cpp from
`make serve`, vLLM, SGLang) instead of loading the model here; model_name is the name it serves
(`$BIOS_API_KEY`, if set, is sent as its bearer token).

Keys (key=value): model_path (checkpoint directory or bios://run/name; omit it to evaluate
model_name), model_name, tasks (comma-separated: registry names, file.py@task, module:task),
renderer_name (default: the checkpoint's, else the model's default), limit, temperature
(default 0: greedy), max_tokens, max_connections (samples decoded together, default 64),
log_dir (Inspect logs), dtype (weights: float32, the default, or bfloat16, measured 1.2-1.7x
faster on CPUs with AVX512-BF16 or AMX and 0.3x on AVX2-only ones).

Prints a metrics table (each scorer's metrics count only the samples it scored: its `scored`
row reads `<scored> of <samples>`, and a warning names any unscored sample) and writes
`<task>.json` per task, exiting 1 when a task fails, 2 on bad arguments (checked before the
model loads; an unknown task too). Where results and Inspect logs go:

- a checkpoint: `<checkpoint>/evals/<task>.json`, logs in `<checkpoint>/evals/logs`;
- a base model: `$BIOS_CHECKPOINT_ROOT/base_model_evals/<model>/<task>.json` (root `./runs`),
  logs in its `logs/`;
- with log_dir=DIR: logs in DIR (and a base model's results in DIR/evals).
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bios_callbacks.key_value import UsageError, command_main, parse_words
from bios_callbacks.sampling.defaults import DEFAULT_MAX_BATCH_SIZE as DEFAULT_MAX_CONNECTIONS

USAGE = __doc__ or ""


@dataclass
class EvalArgs:
    """The CLI's keys, parsed."""

    tasks: list[str]
    model_path: str | None = None
    model_name: str | None = None
    renderer_name: str | None = None
    limit: int | None = None
    temperature: float = 0.0
    max_tokens: int | None = None
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    log_dir: str | None = None
    dtype: str = "float32"
    base_url: str | None = None


DTYPES = ("float32", "bfloat16")


def parse_args(argv: list[str]) -> EvalArgs:
    """Parses `key=value` arguments, typed by `EvalArgs`'s fields (`bios_callbacks.key_value`,
    the parser of every command line here), then checks them together.

    Example:
        >>> parse_args(["tasks=a.py@t,b:t", "model_name=m", "limit=5"]).tasks
        ['a.py@t', 'b:t']
        >>> parse_args(["tasks=a.py@t", "model_name=m", "limit=0"])
        Traceback (most recent call last):
        ...
        bios_callbacks.key_value.UsageError: limit=0: expected an integer >= 1.
    """
    try:  # `--limit=5` reads as `limit=5`
        values = parse_words(EvalArgs, [word.lstrip("-") for word in argv])
    except ValueError as error:
        raise UsageError(str(error)) from None
    if not values.get("tasks"):
        raise UsageError("Missing tasks=...: e.g. tasks=inspect_evals/ifeval,my_tasks.py@qa.")
    args = EvalArgs(**values)
    if not args.model_path and not args.model_name:
        raise UsageError("Give model_path=<checkpoint dir or bios://run/name> or model_name=...")
    check_sampling_args(args, renderer_fallback="the checkpoint's (else the model's default)")
    return args


def check_sampling_args(args: Any, *, renderer_fallback: str) -> None:
    """The checks this CLI and the watcher share, on the fields both have: a `UsageError`
    naming the bad value. `renderer_fallback` says what an omitted renderer_name means.

    Example:
        >>> check_sampling_args(EvalArgs(tasks=["t"], temperature=-1), renderer_fallback="")
        Traceback (most recent call last):
        ...
        bios_callbacks.key_value.UsageError: temperature=-1: expected >= 0 (0 is greedy).
    """
    for key in ("limit", "max_tokens", "max_connections"):
        value = getattr(args, key)
        if value is not None and value < 1:
            raise UsageError(f"{key}={value}: expected an integer >= 1.")
    if args.temperature < 0:
        raise UsageError(f"temperature={args.temperature}: expected >= 0 (0 is greedy).")
    if args.dtype not in DTYPES:
        raise UsageError(f"dtype={args.dtype!r}: expected one of {list(DTYPES)}.")
    if args.base_url is not None and not re.match(r"https?://[^/]+", args.base_url):
        raise UsageError(
            f"base_url={args.base_url!r}: expected an http(s) URL such as http://127.0.0.1:8000/v1."
        )
    if args.renderer_name is not None:
        from bios_callbacks.renderers import renderer_names

        if args.renderer_name not in renderer_names():
            raise UsageError(
                f"renderer_name={args.renderer_name!r}: expected one of {renderer_names()}, or "
                f"omit it to use {renderer_fallback}."
            )


def run(args: EvalArgs) -> int:
    """Evaluates, prints the table, writes the results; returns the exit status."""
    import asyncio

    from inspect_ai.model import GenerateConfig, Model

    from bios_callbacks.eval.inspect_runner import run_tasks
    from bios_callbacks.eval.inspect_tasks import resolve_task, task_short_name
    from bios_callbacks.eval.inspect_utils import InspectAPIFromBiosSampling

    tasks = [resolve_task(name) for name in args.tasks]
    step, model_name = None, args.model_name
    source = model_name  # what the provider loads
    if args.model_path:
        from bios_callbacks.checkpoints import read_checkpoint_metadata, resolve_model_path

        checkpoint = resolve_model_path(args.model_path)
        metadata = read_checkpoint_metadata(checkpoint)
        model_name, step = model_name or metadata.base_model, metadata.step
        source = str(checkpoint)
        results_dir = checkpoint / "evals"
        log_dir = Path(args.log_dir) if args.log_dir else results_dir / "logs"
    elif args.log_dir:
        log_dir = Path(args.log_dir)
        results_dir = log_dir / "evals"
    else:
        results_dir = base_model_results_dir(str(model_name))
        log_dir = results_dir / "logs"

    config = GenerateConfig(
        max_connections=args.max_connections,
        temperature=args.temperature,
        max_tokens=args.max_tokens,
    )
    # The provider loads the model (sized by max_connections) and closes it when done; a
    # checkpoint's renderer comes from its metadata unless renderer_name is given.
    api = InspectAPIFromBiosSampling(
        model_name=source,
        renderer_name=args.renderer_name,
        dtype=args.dtype,
        base_url=args.base_url,
        config=config,
    )
    try:
        results = asyncio.run(
            run_tasks(tasks, Model(api, config), log_dir=str(log_dir), limit=args.limit)
        )
    finally:
        api.close()

    results_dir.mkdir(parents=True, exist_ok=True)
    for task, result in zip(tasks, results, strict=True):
        record = {
            "model_path": args.model_path,
            "model_name": model_name,
            "renderer_name": api.renderer_name,
            "step": step,
            **dataclasses.asdict(result),
        }
        path = results_dir / f"{task_short_name(task.name)}.json"
        path.write_text(json.dumps(record, indent=2) + "\n")
    print(format_table(results))
    print(f"Results: {results_dir}  Inspect logs: {log_dir} (inspect view --log-dir {log_dir})")
    return 0 if all(r.status == "success" for r in results) else 1


def base_model_results_dir(model_name: str) -> Path:
    """Where a base model's results go: under the checkpoint root, never the working directory.

    Example:
        >>> base_model_results_dir("HuggingFaceTB/SmolLM2-135M-Instruct").parts[-2:]
        ('base_model_evals', 'HuggingFaceTB--SmolLM2-135M-Instruct')
    """
    from bios_callbacks.checkpoints import checkpoint_root

    return checkpoint_root() / "base_model_evals" / _safe_name(model_name)


def _safe_name(model_name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "--", model_name).strip("-.") or "model"


def format_table(results: list[Any]) -> str:
    """A plain-text table: one row per metric, then failed samples and failed tasks.

    Each scorer's `scored` row reads `<scored> of <samples>`; its metrics count only those.

    Example:
        >>> from bios_callbacks.eval.inspect_runner import TaskResult
        >>> metrics = {"qa/judge/accuracy": 1.0, "qa/judge/scored": 1.0, "qa/judge/unscored": 1.0}
        >>> print(format_table([TaskResult("qa", "success", metrics, samples=2)]))
        metric             value
        qa/judge/accuracy  1.0000
        qa/judge/scored    1 of 2 (1 unscored: the metrics count only the scored)
        qa/judge/unscored  1
    """
    rows = [("metric", "value")]
    for result in results:
        for key, value in result.metrics.items():
            rows.append((key, _format_metric(key, value, result.metrics)))
        if result.errors:
            rows.append((f"{result.task}/failed_samples", str(len(result.errors))))
        if result.status != "success":
            rows.append((f"{result.task}/status", f"{result.status}: {result.error}"))
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def _format_metric(key: str, value: float, metrics: dict[str, float]) -> str:
    prefix, _, name = key.rpartition("/")
    if name == "unscored":
        return str(int(value))
    if name == "scored":
        unscored = int(metrics.get(f"{prefix}/unscored", 0))
        text = f"{int(value)} of {int(value) + unscored}"
        if unscored:
            text += f" ({unscored} unscored: the metrics count only the scored)"
        return text
    return f"{value:.4f}"


def main(argv: list[str] | None = None) -> int:
    """Entry point: parses `argv`, runs, and returns the exit status."""
    return command_main(argv, USAGE, parse_args, run, report_errors=True)


if __name__ == "__main__":
    sys.exit(main())
