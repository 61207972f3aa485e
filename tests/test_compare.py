"""`python -m bios_callbacks.eval.compare` on real short runs, and where standard errors go.

Two real Lightning runs of the tiny model (run `a` does not learn, lr=0; run `b` does) with a
QAEvaluator logging every answer, an NLLEvaluator, a custom evaluator reporting its own
`_stderr`, and an inline Inspect task; then run_inspect_evals on each run's checkpoint.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
import torch
from compare_tasks import parity
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lit_tiny import TinyLM, make_trainer, scalars, token_loader
from tiny import make_tiny_model

from bios_callbacks import EvalCallback
from bios_callbacks.callback.results import read_records
from bios_callbacks.eval import compare
from bios_callbacks.eval.inspect_evaluators import InspectEvaluatorBuilder
from bios_callbacks.eval.inspect_runner import preserved_terminal
from bios_callbacks.evaluators import NLLEvaluator, QAEvaluator, TrainingClientEvaluator
from bios_callbacks.evaluators.stats import (
    Z95,
    mean_stderr,
    mean_with_stderr,
    normal_interval,
    paired_difference,
    wilson_interval,
)
from bios_callbacks.models import EMBEDDED_MODEL

TASKS_FILE = str(Path(__file__).with_name("compare_tasks.py"))
QUESTIONS = [{"input": f"Question {i}?", "target": "x"} for i in range(8)]
HELD_OUT = [[101 + 7 * i + j for j in range(4 + i)] for i in range(4)]
INSPECT_KEY = "eval/parity/even_length/accuracy"
OFFLINE_KEY = "parity/even_length/accuracy"


def even_length(response: str, target: str) -> bool:
    """The QA grader: a random model's replies pass about half the time."""
    return len(response) % 2 == 0


class FirstTokenLogprob(TrainingClientEvaluator):
    """A custom evaluator reporting its own standard error."""

    name = "first_token"

    async def __call__(self, training_client):
        logprobs = await training_client.compute_logprobs_async(HELD_OUT)
        return mean_with_stderr("logprob", [lps[0] for lps in logprobs])


@pytest.fixture(scope="module", autouse=True)
def _restore_terminal():
    with preserved_terminal():
        yield


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tokenizer) -> Path:
    """`<root>/a` and `<root>/b`: eval_results.jsonl, transcripts.jsonl, inspect_logs/, a
    Lightning checkpoint and a bios checkpoint with run_inspect_evals results."""
    from bios_callbacks.checkpoints import save_checkpoint
    from bios_callbacks.eval import run_inspect_evals

    root = tmp_path_factory.mktemp("runs")
    for name, lr in (("a", 0.0), ("b", 0.5)):
        run = root / name
        builders = [
            lambda: QAEvaluator(
                QUESTIONS, even_length, renderer_name="chatml", max_tokens=4, num_transcripts=None
            ),
            lambda: NLLEvaluator(HELD_OUT),
            FirstTokenLogprob,
            InspectEvaluatorBuilder(tasks=[parity], renderer_name="chatml", max_tokens=4),
        ]
        callback = EvalCallback(evaluator_builders=builders, eval_every=2, progress=False)
        loggers = [
            CSVLogger(str(run), name="", version=""),
            TensorBoardLogger(str(run), name="", version=""),
        ]
        trainer = make_trainer(run, [callback], max_steps=4, logger=loggers)
        module = TinyLM(make_tiny_model(tokenizer, seed=0), tokenizer, lr=lr)
        trainer.fit(module, token_loader())
        trainer.save_checkpoint(run / "trainer.ckpt")
        checkpoint = save_checkpoint(
            run / "checkpoints" / "step_000004",
            module.model,
            tokenizer,
            base_model=EMBEDDED_MODEL,
            renderer_name="chatml",
            step=4,
        )
        assert (
            run_inspect_evals.main([f"model_path={checkpoint}", f"tasks={TASKS_FILE}@parity"]) == 0
        )
    return root


def compare_out(capsys, *words: str) -> str:
    assert compare.main(list(words)) == 0
    return capsys.readouterr().out


def table(out: str, metric: str) -> dict[str, list[str]]:
    """The printed table of `metric`: step -> its cells (header row under 'step')."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(metric + "  ("))
    rows = {}
    for line in lines[start + 1 :]:
        if not re.match(r"\s+(step|\d+)\s", line):
            break
        first, *cells = re.split(r"\s{2,}", line.strip())
        rows[first] = cells
    return rows


def records(run: Path) -> dict[int, dict[str, float]]:
    merged: dict[int, dict[str, float]] = {}
    for record in read_records(run / "eval_results.jsonl"):
        merged.setdefault(record.step, {}).update(record.metrics)
    return merged


def grades(run: Path, step: int) -> dict[str, float]:
    """The QA grade of each question at `step`, read from the CSV logger's transcripts."""
    rows = [json.loads(line) for line in (run / "transcripts.jsonl").read_text().splitlines()]
    return {r["prompt"]: r["score"] for r in rows if r["step"] == step and r["evaluator"] == "qa"}


def test_standard_errors_reach_every_logger_the_results_file_and_checkpoints(runs):
    run = runs / "b"
    rounds = records(run)
    keys = [
        "eval/qa/accuracy_stderr",
        "eval/nll/loss_stderr",
        "eval/first_token/logprob_stderr",
        "eval/parity/even_length/accuracy_stderr",
        "eval/parity/even_length/stderr",
    ]
    assert all(key in rounds[step] for key in keys for step in (0, 2, 4))
    # the QA standard error is the items' (sample stdev / sqrt(n)); Inspect's keeps its name too
    assert rounds[4]["eval/qa/accuracy_stderr"] == pytest.approx(
        mean_stderr(list(grades(run, 4).values()))
    )
    inspect_prefix = "eval/parity/even_length/"
    assert rounds[4][inspect_prefix + "accuracy_stderr"] == rounds[4][inspect_prefix + "stderr"]
    tensorboard = scalars(run)
    with (run / "metrics.csv").open() as f:
        columns = set(next(csv.reader(f)))
    saved = torch.load(run / "trainer.ckpt", weights_only=False)["eval_results"]["metrics"]
    for key in keys:
        assert [step for step, _ in tensorboard[key]] == [0, 2, 4]
        assert key in columns and key in saved


def test_one_run_prints_each_metric_with_its_interval_and_best_step(runs, capsys):
    out = compare_out(capsys, f"runs={runs / 'b'}")
    rounds = records(runs / "b")
    for metric, direction in [
        ("eval/qa/accuracy", "higher"),
        ("eval/nll/loss", "lower"),
        ("eval/first_token/logprob", "higher"),
        (INSPECT_KEY, "higher"),
    ]:
        assert f"{metric}  ({direction} is better; * marks each run's best step)" in out
        rows = table(out, metric)
        assert rows["step"] == ["value"] and list(rows)[1:] == ["0", "2", "4"]
        values = {step: rounds[step][metric] for step in (0, 2, 4)}
        pick = min if direction == "lower" else max
        best = pick(values, key=lambda s: (values[s], -s if pick is max else s))
        for step in (0, 2, 4):
            value, stderr = rounds[step][metric], rounds[step][metric + "_stderr"]
            if stderr == 0 and value in (0.0, 1.0):
                low, high = wilson_interval(value * 8, 8)
                expected = f"{value:.3f} [{low:.3f}, {high:.3f}]"
            else:
                expected = f"{value:.3f} ± {Z95 * stderr:.3f}"
            assert rows[str(step)] == [expected + (" *" if step == best else "")]
    # the run_inspect_evals result beside the checkpoint is a metric of its own at its step
    assert list(table(out, OFFLINE_KEY))[1:] == ["4"]
    assert "eval/qa/scored" not in out and "_stderr  (" not in out


def test_two_runs_side_by_side_with_a_paired_difference_and_the_flipped_items(runs, capsys):
    out = compare_out(capsys, f"runs={runs / 'a'},{runs / 'b'}", "metrics=qa/accuracy")
    assert table(out, "eval/qa/accuracy")["step"] == ["a", "b"]
    before, after = grades(runs / "a", 4), grades(runs / "b", 4)
    assert len(before) == len(after) == len(QUESTIONS)
    ids = sorted(before)
    diff, stderr = paired_difference([before[i] for i in ids], [after[i] for i in ids])
    low, high = normal_interval(diff, stderr)
    [line] = [line for line in out.splitlines() if line.startswith("  b - a at step 4")]
    assert f": {diff:+.3f}, 95% [{low:+.3f}, {high:+.3f}] (paired over 8 items;" in line
    assert line.endswith("excludes 0)" if low > 0 or high < 0 else "not a clear change)")
    worse = sorted(q for q in ids if after[q] < before[q])
    better = sorted(q for q in ids if after[q] > before[q])
    assert worse or better, "the two runs should answer some questions differently"
    assert f"  changed items of 8 items: {len(worse)} worse, {len(better)} better" in out
    assert changed(out) == [
        *((q, before[q], after[q]) for q in worse),
        *((q, before[q], after[q]) for q in better),
    ]


def test_inspect_items_are_paired_from_the_logs_and_loss_is_unpaired(runs, capsys, monkeypatch):
    monkeypatch.setenv("BIOS_CHECKPOINT_ROOT", str(runs))
    out = compare_out(
        capsys, f"runs=bios://a,{runs / 'b'}", "metrics=even_length/accuracy,nll/loss"
    )
    diffs = [line for line in out.splitlines() if line.startswith("  b - a at step 4")]
    inline, offline, loss = diffs  # in the order the names were asked for, then by name
    assert "(paired over 8 items;" in inline and "(paired over 8 items;" in offline
    assert "(unpaired;" in loss  # an NLLEvaluator leaves no per-item results
    expected = []
    for logs in ("inspect_logs", "checkpoints/step_000004/evals/logs"):
        before, after = sample_grades(runs / "a" / logs), sample_grades(runs / "b" / logs)
        flips = [(f"{i}: Say {i}", before[i], after[i]) for i in range(8)]
        expected += [flip for flip in flips if flip[2] < flip[1]]
        expected += [flip for flip in flips if flip[2] > flip[1]]
    assert expected, "the two runs should pass different samples"
    assert changed(out) == expected


def sample_grades(log_dir: Path) -> dict[int, float]:
    """Each sample's grade in the step-4 Inspect log of a directory, read with Inspect."""
    from inspect_ai.log import read_eval_log

    logs = [read_eval_log(str(p)) for p in log_dir.glob("*.eval")]
    [log] = [log for log in logs if log.eval.metadata in ({"step": 4}, None)]
    return {s.id: s.scores["even_length"].value for s in log.samples}


def changed(out: str) -> list[tuple[str, float, float]]:
    """The listed changed items: (item, before, after), in the printed order."""
    found = re.findall(r"(?m)^    (?:worse|better)\s+(\S+) -> (\S+)  (.+)$", out)
    return [(item, float(old), float(new)) for old, new, item in found]


def test_plot_writes_one_panel_per_metric(runs, tmp_path, capsys):
    from matplotlib.image import imread

    path = tmp_path / "curves.png"
    out = compare_out(
        capsys, f"runs={runs / 'a'},{runs / 'b'}", "metrics=qa/accuracy,loss", f"plot={path}"
    )
    assert out.endswith(f"plot: {path}\n")
    image = imread(path)
    assert image.shape[:2] == (520, 700)  # 2 panels of 2.6 x 7 inches at 100 dpi
    assert image[..., :3].std() > 0.05  # curves and bands, not a blank canvas


@pytest.mark.parametrize(
    ("words", "message"),
    [
        (["runs=nope"], r"no such run 'nope': it is no directory, and .*/nope does not exist "),
        (["runs=a,bios://b/step_1"], r"run 'bios://b/step_1': expected bios://<run> \(a run, not"),
        (["runs=empty"], r"run 'empty' \(.*empty\) has no eval results: no eval_results.jsonl"),
        (["runs=a", "metrics=acuracy"], r"metrics='acuracy': no such metric in a; the metrics "),
    ],
)
def test_bad_input_is_one_error_line_and_exit_2(runs, words, message, capsys, monkeypatch):
    monkeypatch.setenv("BIOS_CHECKPOINT_ROOT", str(runs))
    (runs / "empty").mkdir(exist_ok=True)
    assert compare.main(words) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    [line] = captured.err.splitlines()
    assert re.match("error: " + message, line), line


@pytest.mark.parametrize(
    ("words", "message"),
    [
        (["run=a"], r"Unknown CompareArgs key\(s\) \['run'\]\. Valid keys: runs, metrics, plot\."),
        (["a"], r"Argument 'a' is not key=value\. Valid keys: runs, metrics, plot\."),
        (["metrics=loss"], r"missing runs=\.\.\.: e\.g\. runs=runs/sft-a"),
        (["runs=a", "plot=curves.pdf"], r"plot='curves.pdf': expected a \.png file name"),
    ],
)
def test_a_bad_word_is_an_error_line_then_the_usage_and_exit_2(words, message, capsys):
    assert compare.main(words) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    line, rest = captured.err.split("\n", 1)
    assert re.match("error: " + message, line), line
    assert rest.strip() == compare.USAGE.strip()


def test_errors_list_what_there_is(runs, capsys, monkeypatch):
    monkeypatch.setenv("BIOS_CHECKPOINT_ROOT", str(runs))
    assert compare.main(["runs=nope"]) == 2
    assert "(runs under " + str(runs) + ": a, b, empty" in capsys.readouterr().err
    assert compare.main(["runs=a", "metrics=acuracy"]) == 2
    listed = capsys.readouterr().err.split("the metrics there: ")[1].rstrip(".\n").split(", ")
    assert "eval/qa/accuracy" in listed and OFFLINE_KEY in listed and INSPECT_KEY in listed
    assert not any(name.endswith(("_stderr", "/stderr", "scored")) for name in listed)


def test_help_lists_the_keys_and_imports_nothing_heavy(capsys):
    from test_imports import heavy_modules_after

    assert compare.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(f"\n  {key}  " in out for key in ("runs", "metrics", "plot"))

    command = "bios_callbacks.eval.compare"
    code = (
        "import runpy, sys, contextlib, io\n"
        f"sys.argv = [{command!r}, '--help']\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        f"    runpy.run_module({command!r}, run_name='__main__')"
    )
    assert heavy_modules_after(code) == []
