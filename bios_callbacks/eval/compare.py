"""Compare evaluation results over steps and between runs, with 95% intervals.

    python -m bios_callbacks.eval.compare runs=runs/sft-a,runs/sft-b [metrics=accuracy,loss]
        [plot=curves.png]

Keys (key=value):
  runs      one or more runs, comma-separated: a run directory, bios://<run>, or a run name
            under $BIOS_CHECKPOINT_ROOT (default ./runs)
  metrics   metrics to show, comma-separated: a full name (eval/qa/accuracy) or its last
            part(s) (accuracy, qa/accuracy); default: every metric the runs report
  plot      write a PNG of the curves with their interval bands here, one panel per metric
            (needs matplotlib: pip install 'bios-callbacks[plot]')

A run's results are its eval_results.jsonl (written by EvalCallback) and the
checkpoints/*/evals/*.json beside its checkpoints (written by run_inspect_evals).

For each metric it prints a table of steps with value ± the 95% interval (1.96 standard errors,
from the metric's `<metric>_stderr`; a Wilson interval where a rate is 0 or 1 over its scored
items, since every item then agrees) and marks each run's best step (lower is better for
loss-, nll-, bpb-, perplexity- and error-like names, higher otherwise). With two or more runs
each later run is compared with the first at the last step both evaluated: the difference, its
interval (paired over the items where both runs' per-item results are there: Inspect logs,
or a QAEvaluator's transcripts.jsonl from a CSVLogger; else unpaired), and the items that
changed, regressions first.

Exit status: 0, or 2 with an `error:` line for bad input (an unknown key, no such run, no
results, an unknown metric name: the line lists the ones there are).
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bios_callbacks.evaluators.stats import (
    STDERR_SUFFIX,
    Z95,
    is_binary_mean,
    newcombe_interval,
    normal_interval,
    paired_difference,
    pass_at_k,
    unpaired_stderr,
    wilson_interval,
)
from bios_callbacks.key_value import UsageError, command_main, parse_words

USAGE = __doc__ or ""
NOT_METRICS = ("stderr", "scored", "unscored")  # last parts of standard errors and counts
LOWER_IS_BETTER = ("loss", "nll", "bpb", "bits", "perplexity", "ppl", "error", "wer", "cer")
SHOWN_ITEMS = 10  # changed items listed per direction


@dataclass
class Point:
    """One metric at one step: its value, standard error and how many items it is over."""

    value: float
    stderr: float | None = None
    count: int | None = None

    def binary(self) -> bool:
        """Whether this is a rate of 0/1 grades (its stderr is a binomial one)."""
        return self.count is not None and is_binary_mean(self.value, self.stderr, self.count)

    def interval(self) -> tuple[float, float] | None:
        """The 95% interval: Wilson's for a rate of 0 or 1, else value ± 1.96 stderr."""
        if self.stderr is None:
            return None
        if self.stderr == 0 and self.value in (0.0, 1.0) and self.count:
            return wilson_interval(self.value * self.count, self.count)
        return normal_interval(self.value, self.stderr)

    def text(self) -> str:
        """`0.500 ± 0.196`, `0.000 [0.000, 0.194]` (Wilson), or the value alone."""
        if self.stderr is None:
            return f"{self.value:.3f}"
        low, high = self.interval() or (0.0, 0.0)
        if self.stderr == 0 and (low, high) != (self.value, self.value):
            return f"{self.value:.3f} [{low:.3f}, {high:.3f}]"
        return f"{self.value:.3f} ± {Z95 * self.stderr:.3f}"


@dataclass
class Items:
    """Per-item values behind one metric at one step; `complete` when they are all of them
    (their mean is the metric)."""

    values: dict[str, float]
    labels: dict[str, str]
    complete: bool


@dataclass
class Run:
    """One run's metrics by name and step, and the per-item results found for them."""

    label: str
    path: Path
    series: dict[str, dict[int, Point]]
    items: dict[tuple[str, int], Items] = field(default_factory=dict)


def lower_is_better(metric: str) -> bool:
    """Whether smaller values of `metric` are better, judged by its last part.

    Example:
        >>> lower_is_better("eval/nll/loss"), lower_is_better("eval/qa/accuracy")
        (True, False)
    """
    words = re.split(r"[^a-z0-9]+", metric.rsplit("/", 1)[-1].lower())
    return any(word.startswith(LOWER_IS_BETTER) for word in words)


def resolve_run(spec: str) -> Path:
    """The directory of a run given as a path, `bios://<run>` or a name under the root."""
    from bios_callbacks.checkpoints import checkpoint_root

    root = checkpoint_root()
    if spec.startswith("bios://"):
        name = spec.removeprefix("bios://").strip("/")
        if not name or "/" in name:
            raise UsageError(
                f"run {spec!r}: expected bios://<run> (a run, not a checkpoint), e.g. bios://sft-a."
            )
        path = root / name
    else:
        path = Path(spec).expanduser()
        if not path.is_dir() and not path.is_absolute():
            path = root / spec
    if not path.is_dir():
        there = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
        raise UsageError(
            f"no such run {spec!r}: it is no directory, and {root / spec.removeprefix('bios://')} "
            f"does not exist (runs under {root}: {', '.join(there) or 'none'}; "
            "set BIOS_CHECKPOINT_ROOT to look elsewhere)."
        )
    return path


def results_file(path: Path) -> Path | None:
    """The run's eval_results.jsonl: in the directory, else the one file below it."""
    from bios_callbacks.callback.results import RESULTS_FILE_NAME

    if (path / RESULTS_FILE_NAME).is_file():
        return path / RESULTS_FILE_NAME
    found = sorted(path.rglob(RESULTS_FILE_NAME))
    if len(found) > 1:
        raise UsageError(
            f"run {path} holds {len(found)} {RESULTS_FILE_NAME} files "
            f"({', '.join(str(f.parent) for f in found)}); name one of those directories."
        )
    return found[0] if found else None


def load_run(spec: str, label: str) -> Run:
    """Reads a run's eval_results.jsonl, its checkpoints' evals/*.json and per-item results."""
    from bios_callbacks.callback.results import read_records
    from bios_callbacks.eval.inspect_evaluators import with_stderr_names

    path = resolve_run(spec)
    raw: dict[str, dict[int, float]] = {}
    results = results_file(path)
    if results is not None:
        try:
            records = read_records(results)
        except ValueError as error:
            raise UsageError(str(error)) from error
        for record in records:
            for key, value in record.metrics.items():
                raw.setdefault(key, {})[record.step] = value
    offline_logs: list[tuple[Path, int]] = []
    for file in sorted(path.glob("checkpoints/*/evals/*.json")):
        try:
            result = json.loads(file.read_text())
            step, metrics = result["step"], result["metrics"]
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise UsageError(
                f"{file} is not a run_inspect_evals result ({type(error).__name__}: {error}); "
                "move it out of the checkpoint's evals/ or run the evaluation again."
            ) from error
        if step is None:
            continue
        for key, value in metrics.items():
            raw.setdefault(key, {})[step] = value
        offline_logs += [(log, step) for log in _offline_log(file, result)]
    if not raw:
        raise UsageError(
            f"run {spec!r} ({path}) has no eval results: no eval_results.jsonl (written by "
            "EvalCallback) and no checkpoints/*/evals/*.json (written by run_inspect_evals)."
        )
    run = Run(label, path, _series(with_stderr_names(raw)))
    log_dir = results.parent if results is not None else path
    _attach_transcripts(run, log_dir)
    inline_logs = sorted({*log_dir.glob("inspect_logs/*.eval"), *path.glob("inspect_logs/*.eval")})
    _attach_inspect_logs(run, [(log, None) for log in inline_logs] + offline_logs)
    return run


def _offline_log(results_json: Path, record: dict[str, Any]) -> list[Path]:
    """The Inspect log a run_inspect_evals result names, also when the run was moved."""
    location = str(record.get("log_location") or "")
    if not location:
        return []
    for candidate in (Path(location), results_json.parent / "logs" / Path(location).name):
        if candidate.is_file():
            return [candidate]
    return []


def _series(raw: dict[str, dict[int, float]]) -> dict[str, dict[int, Point]]:
    """Metric -> step -> Point, each with its `_stderr` and its scorer's `scored` count."""
    series: dict[str, dict[int, Point]] = {}
    for key, by_step in raw.items():
        prefix, _, last = key.rpartition("/")
        if key.endswith(STDERR_SUFFIX) or last in NOT_METRICS:
            continue
        stderrs = raw.get(key + STDERR_SUFFIX, {})
        counts = raw.get(f"{prefix}/scored", {}) if last == "accuracy" else {}
        series[key] = {
            step: Point(
                value,
                stderrs.get(step),
                int(counts[step]) if step in counts else None,
            )
            for step, value in sorted(by_step.items())
        }
    return series


def _attach(run: Run, key: str, step: int, items: Items, partial_ok: bool) -> None:
    point = run.series.get(key, {}).get(step)
    if point is None or not items.values:
        return
    mean = math.fsum(items.values.values()) / len(items.values)
    items.complete = math.isclose(mean, point.value, rel_tol=1e-6, abs_tol=1e-9)
    if items.complete or partial_ok:
        run.items[(key, step)] = items


def _attach_transcripts(run: Run, log_dir: Path) -> None:
    """Per-item grades of QAEvaluator-style transcripts in a CSVLogger's transcripts.jsonl."""
    from bios_callbacks.callback.transcripts.csv_jsonl import FILE_NAME

    grades: dict[tuple[str, int], dict[str, list[float]]] = {}
    for file in sorted({*log_dir.rglob(FILE_NAME), *run.path.rglob(FILE_NAME)}):
        for line in file.read_text(encoding="utf-8").splitlines():
            row = json.loads(line) if line.strip() else {}
            if isinstance(row.get("score"), int | float):
                prompts = grades.setdefault((row["evaluator"], row["step"]), {})
                prompts.setdefault(str(row["prompt"]), []).append(float(row["score"]))
    for (evaluator, step), prompts in grades.items():
        prefix = f"eval/{evaluator}/"
        for key in [k for k in run.series if k.startswith(prefix) and "/" not in k[len(prefix) :]]:
            last = key[len(prefix) :]
            k = int(last[5:]) if re.fullmatch(r"pass@\d+", last) else 1
            values = {
                prompt: pass_at_k(len(g), int(sum(g)), k) if k > 1 else sum(g) / len(g)
                for prompt, g in prompts.items()
                if len(g) >= k
            }
            items = Items(values, {p: p for p in values}, complete=False)
            _attach(run, key, step, items, partial_ok=last == "accuracy" or k > 1)


def _attach_inspect_logs(run: Run, logs: Sequence[tuple[Path, int | None]]) -> None:
    """Per-sample values (epochs averaged) of every scorer in the run's Inspect logs."""
    if not logs:
        return
    from inspect_ai.log import read_eval_log
    from inspect_ai.scorer import value_to_float

    to_float = value_to_float()
    skip = {"messages", "events", "store", "attachments"}
    for file, known_step in logs:
        try:
            log = read_eval_log(str(file), exclude_fields=skip)
        except Exception:  # a log being written or damaged: its metric is compared unpaired
            continue
        step = known_step if known_step is not None else _log_step(log)
        if step is None or not log.results:
            continue
        task = log.eval.task.rsplit("/", 1)[-1]
        for score in log.results.scores:
            values: dict[str, list[float]] = {}
            labels: dict[str, str] = {}
            for sample in log.samples or []:
                found = (sample.scores or {}).get(score.name)
                number = _as_number(to_float, found.value) if found and not sample.error else None
                if number is not None:
                    values.setdefault(str(sample.id), []).append(number)
                    labels[str(sample.id)] = f"{sample.id}: {_input_text(sample.input)}"
            means = {i: math.fsum(v) / len(v) for i, v in values.items()}
            suffixes = [f"{task}/{score.name}/{mean}" for mean in ("accuracy", "mean")]
            for key in run.series:
                inline = key.startswith("eval/") and key.endswith(tuple("/" + s for s in suffixes))
                if (inline and known_step is None) or (key in suffixes and known_step is not None):
                    _attach(run, key, step, Items(dict(means), labels, False), partial_ok=False)


def _log_step(log: Any) -> int | None:
    """The training step an inline evaluator's log is for (its metadata, else its tag)."""
    step = (log.eval.metadata or {}).get("step")
    if isinstance(step, int):
        return step
    tags = [t for t in log.eval.tags or [] if re.fullmatch(r"step-\d+", t)]
    return int(tags[0][5:]) if tags else None


def _as_number(to_float: Any, value: Any) -> float | None:
    try:
        number = float(to_float(value))
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def _input_text(value: Any) -> str:
    text = value if isinstance(value, str) else getattr(value[-1], "text", "") if value else ""
    return _shorten(text)


def _shorten(text: str, limit: int = 60) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def select_metrics(runs: Sequence[Run], wanted: Sequence[str]) -> list[str]:
    """The metrics to show: every one, or those named (fully or by their last parts).

    Example:
        >>> run = Run("a", Path("a"), {"eval/qa/accuracy": {}, "eval/nll/loss": {}})
        >>> select_metrics([run], ["accuracy"])
        ['eval/qa/accuracy']
    """
    available = sorted({key for run in runs for key in run.series})
    if not wanted:
        return available
    chosen: list[str] = []
    for name in wanted:
        matches = [key for key in available if key == name or key.endswith("/" + name)]
        if not matches:
            raise UsageError(
                f"metrics={name!r}: no such metric in {', '.join(r.label for r in runs)}; "
                f"the metrics there: {', '.join(available)}."
            )
        chosen += [key for key in matches if key not in chosen]
    return chosen


def best_step(points: dict[int, Point], lower: bool) -> int | None:
    """The step with the best value (the earliest of equals).

    Example:
        >>> best_step({0: Point(2.0), 5: Point(1.5), 9: Point(1.5)}, lower=True)
        5
    """
    if not points:
        return None
    sign = 1 if lower else -1
    return min(points, key=lambda step: (sign * points[step].value, step))


def metric_table(metric: str, runs: Sequence[Run]) -> list[str]:
    """The metric's steps x runs table with each run's best step marked."""
    lower = lower_is_better(metric)
    direction = "lower" if lower else "higher"
    lines = [f"{metric}  ({direction} is better; * marks each run's best step)"]
    columns = [run.series.get(metric, {}) for run in runs]
    best = [best_step(points, lower) for points in columns]
    steps = sorted({step for points in columns for step in points})
    cells = [
        [
            (points[step].text() + (" *" if step == b else "")) if step in points else "-"
            for points, b in zip(columns, best, strict=True)
        ]
        for step in steps
    ]
    headers = ["value"] if len(runs) == 1 else [run.label for run in runs]
    widths = [max(len(h), *(len(row[i]) for row in cells)) for i, h in enumerate(headers)]
    step_width = max(4, *(len(str(s)) for s in steps))
    for first, row in [("step", headers), *zip(map(str, steps), cells, strict=True)]:
        padded = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        lines.append(f"  {first:>{step_width}}  " + "  ".join(padded))
    return [line.rstrip() for line in lines]


def difference(metric: str, base: Run, other: Run) -> list[str]:
    """`other - base` at their last common step with its interval, and the changed items."""
    common = sorted(set(base.series.get(metric, {})) & set(other.series.get(metric, {})))
    name = f"{other.label} - {base.label}"
    if not common:
        return [f"  {name}: no step both runs evaluated"]
    step = common[-1]
    a, b = base.series[metric][step], other.series[metric][step]
    items_a, items_b = base.items.get((metric, step)), other.items.get((metric, step))
    diff = b.value - a.value
    interval: tuple[float, float] | None = None
    if items_a and items_b and _same_items(items_a, items_b):
        ids = sorted(items_a.values)
        diff, stderr = paired_difference(
            [items_a.values[i] for i in ids], [items_b.values[i] for i in ids]
        )
        how = f"paired over {len(ids)} items"
        interval = normal_interval(diff, stderr) if stderr is not None else None
    elif a.binary() and b.binary() and a.count and b.count:
        how = "unpaired, Newcombe's interval for two rates"
        interval = newcombe_interval(a.value * a.count, a.count, b.value * b.count, b.count)
    else:
        how = "unpaired"
        if a.stderr is not None and b.stderr is not None:
            interval = normal_interval(diff, unpaired_stderr(a.stderr, b.stderr))
    if interval is None:
        verdict = "no interval: a run reported no standard error"
        text = f"{diff:+.3f}"
    else:
        low, high = interval
        verdict = "excludes 0" if low > 0 or high < 0 else "includes 0: not a clear change"
        text = f"{diff:+.3f}, 95% [{low:+.3f}, {high:+.3f}]"
    lines = [f"  {name} at step {step} (the last both evaluated): {text} ({how}; {verdict})"]
    if items_a and items_b:
        lines += changed_items(metric, items_a, items_b)
    return lines


def _same_items(a: Items, b: Items) -> bool:
    """Whether both hold every item of their metric, and the same items: then pair them."""
    return a.complete and b.complete and a.values.keys() == b.values.keys()


def changed_items(metric: str, before: Items, after: Items) -> list[str]:
    """The items whose value changed between two runs, regressions first."""
    shared = sorted(before.values.keys() & after.values.keys())
    sign = -1 if lower_is_better(metric) else 1
    worse = [i for i in shared if sign * (after.values[i] - before.values[i]) < 0]
    better = [i for i in shared if sign * (after.values[i] - before.values[i]) > 0]
    scope = f"of {len(shared)} items"
    if not (before.complete and after.complete):
        scope += " (only these are in the transcripts; QAEvaluator(num_transcripts=None) logs all)"
    lines = [f"  changed items {scope}: {len(worse)} worse, {len(better)} better"]
    for kind, ids in (("worse", worse), ("better", better)):
        for item in ids[:SHOWN_ITEMS]:
            label = after.labels.get(item) or before.labels.get(item) or item
            lines.append(
                f"    {kind:<6}  {before.values[item]:.3f} -> {after.values[item]:.3f}  "
                f"{_shorten(label)}"
            )
        if len(ids) > SHOWN_ITEMS:
            lines.append(f"    ... and {len(ids) - SHOWN_ITEMS} more {kind}")
    return lines


def report(runs: Sequence[Run], metrics: Sequence[str]) -> str:
    """The whole printed comparison."""
    lines = [f"run {run.label}: {run.path}" for run in runs]
    lines.append(
        "Intervals are 95%: value ± 1.96 standard errors (the metric's _stderr), [low, high] a "
        "Wilson interval where every item agrees; no ± where no standard error was reported."
    )
    for metric in metrics:
        lines += ["", *metric_table(metric, runs)]
        for other in runs[1:]:
            lines += difference(metric, runs[0], other)
    return "\n".join(lines)


def plot(runs: Sequence[Run], metrics: Sequence[str], path: Path) -> None:
    """Writes a PNG with one panel per metric: each run's curve, its 95% band and best step."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=(7, 2.6 * len(metrics)), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(metrics), 1, squeeze=False)[:, 0]
    for ax, metric in zip(axes, metrics, strict=True):
        lower = lower_is_better(metric)
        for run in runs:
            points = run.series.get(metric, {})
            if not points:
                continue
            steps = sorted(points)
            (line,) = ax.plot(
                steps, [points[s].value for s in steps], marker="o", ms=3, label=run.label
            )
            banded = [(s, points[s].interval()) for s in steps if points[s].interval()]
            if banded:
                ax.fill_between(
                    [s for s, _ in banded],
                    [i[0] for _, i in banded],
                    [i[1] for _, i in banded],
                    color=line.get_color(),
                    alpha=0.2,
                    linewidth=0,
                )
            best = best_step(points, lower)
            ax.plot([best], [points[best].value], marker="*", ms=12, color=line.get_color())
        ax.set_title(f"{metric} ({'lower' if lower else 'higher'} is better)", fontsize=9)
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)


@dataclass
class CompareArgs:
    """The comparison's keys, parsed."""

    runs: list[str] | None = None
    metrics: list[str] | None = None
    plot: str | None = None


def parse_args(argv: list[str]) -> CompareArgs:
    """Parses `key=value` words, typed by `CompareArgs`'s fields (`bios_callbacks.key_value`,
    the parser of every command line here), and checks them.

    Example:
        >>> parse_args(["runs=a,b", "metrics=accuracy"])
        CompareArgs(runs=['a', 'b'], metrics=['accuracy'], plot=None)
        >>> parse_args(["runs=a", "plot=curves.pdf"])
        Traceback (most recent call last):
        ...
        bios_callbacks.key_value.UsageError: plot='curves.pdf': expected a .png file name, \
e.g. plot=runs.png.
    """
    try:
        args = CompareArgs(**parse_words(CompareArgs, argv))
    except ValueError as error:
        raise UsageError(str(error)) from None
    if not args.runs:
        raise UsageError("missing runs=...: e.g. runs=runs/sft-a or runs=sft-a,sft-b.")
    if args.plot and Path(args.plot).suffix.lower() != ".png":
        raise UsageError(f"plot={args.plot!r}: expected a .png file name, e.g. plot=runs.png.")
    return args


def compare(args: CompareArgs) -> int:
    """Prints the comparison (and writes the plot); returns the exit status."""
    if args.plot:
        _check_matplotlib()
    specs = args.runs or []
    runs = [load_run(spec, label) for spec, label in zip(specs, _labels(specs), strict=True)]
    metrics = select_metrics(runs, args.metrics or [])
    print(report(runs, metrics))
    if args.plot:
        plot(runs, metrics, Path(args.plot))
        print(f"\nplot: {args.plot}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point: parses `argv`, prints the comparison, and returns the exit status."""
    return command_main(argv, USAGE, parse_args, compare, report_errors=False)


def _labels(specs: Sequence[str]) -> list[str]:
    """Each run's short name (its directory name), the whole spec where names repeat."""
    names = [Path(spec.removeprefix("bios://").rstrip("/")).name or spec for spec in specs]
    return [n if names.count(n) == 1 else s for n, s in zip(names, specs, strict=True)]


def _check_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError as error:
        raise UsageError(
            "plot= needs matplotlib, which is not installed: pip install 'bios-callbacks[plot]'."
        ) from error


if __name__ == "__main__":
    sys.exit(main())
