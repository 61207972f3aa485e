"""InspectEvaluatorBuilder inside real Lightning runs, with TQDM and Rich progress bars."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import rich
from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar
from lit_tiny import TinyLM, make_trainer, scalars, token_loader
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from bios_callbacks.callback import EvalCallback
from bios_callbacks.callback.results import read_records
from bios_callbacks.eval.inspect_evaluators import InspectEvaluatorBuilder
from bios_callbacks.evaluators import SamplingClientEvaluator

FIXTURE = str(Path(__file__).with_name("inspect_tasks_fixture.py"))
SCORING = str(Path(__file__).with_name("inspect_scoring_tasks.py"))


@pytest.mark.parametrize("bar", [TQDMProgressBar(), RichProgressBar()], ids=["tqdm", "rich"])
def test_inline_inspect_rounds_keep_progress_bars_working(
    bar, tiny_model, tokenizer, tmp_path, capsys
):
    builder = InspectEvaluatorBuilder(
        tasks=[f"{FIXTURE}@echo"], renderer_name="chatml", limit=3, max_tokens=3, log_dir=tmp_path
    )
    callback = EvalCallback(evaluator_builders=[builder], eval_every=2, progress=False)
    trainer = make_trainer(tmp_path, [callback, bar], enable_progress_bar=True, max_steps=4)
    trainer.fit(TinyLM(tiny_model, tokenizer), token_loader(num=8))

    assert rich.get_console().quiet is False
    out = capsys.readouterr()
    assert "Epoch 0" in out.out + out.err  # the bar kept drawing after the rounds
    assert "total time" not in out.out + out.err  # Inspect's own summary stayed quiet each round
    logged = scalars(trainer.log_dir)
    assert [step for step, _ in logged["eval/echo/match/accuracy"]] == [0, 2, 4]
    assert [value for _, value in logged["eval/echo/match/scored"]] == [3, 3, 3]  # limit=3
    # The callback hands the run's log directory and the step to the evaluator.
    logs = sorted((Path(trainer.log_dir) / "inspect_logs").glob("*.eval"))
    from inspect_ai.log import read_eval_log

    tags = sorted(read_eval_log(str(p), header_only=True).eval.tags[0] for p in logs)
    assert tags == ["step-0", "step-2", "step-4"]
    rows = [json.loads(line) for line in (Path(trainer.log_dir) / "eval_results.jsonl").open()]
    assert len(rows) == 3


def test_inspect_metrics_go_under_task_names_that_never_clash(
    tiny_model, tokenizer, tmp_path, capsys
):
    def builder(*tasks: str) -> InspectEvaluatorBuilder:
        return InspectEvaluatorBuilder(
            tasks=[f"{FIXTURE}@{task}" for task in tasks],
            renderer_name="chatml",
            limit=2,
            max_tokens=2,
        )

    callback = EvalCallback(
        evaluator_builders=[builder("echo"), builder("partly_broken")],
        infrequent_evaluator_builders=[builder("echo"), builder("echo", "partly_broken")],
        eval_every=5,
        infrequent_eval_every=5,
    )
    trainer = make_trainer(tmp_path, [callback], max_steps=1)
    trainer.fit(TinyLM(tiny_model, tokenizer), token_loader(num=2))

    tags = {tag for tag in scalars(trainer.log_dir) if tag.startswith("eval/")}
    assert {
        "eval/echo/match/accuracy",
        "eval/partly_broken/fails_on_sample_one/accuracy",
        "eval/echo_2/match/accuracy",  # a second evaluator of the same task
        "eval/echo_3/match/accuracy",  # a builder of two tasks logs each under its name
        "eval/partly_broken_2/fails_on_sample_one/accuracy",
    } <= tags, tags
    assert not [tag for tag in tags if "InspectEvaluator" in tag or tag.startswith("eval/inspect")]
    # its transcripts go under each task's name too, and the console names the two tasks
    texts = EventAccumulator(trainer.log_dir)
    texts.Reload()
    assert {"eval/echo_3/samples", "eval/partly_broken_2/samples"} <= {
        tag.rsplit("/text_summary", 1)[0] for tag in texts.Tags()["tensors"]
    }
    out = capsys.readouterr().out
    [line] = [line for line in out.splitlines() if "step 0 echo_3+partly_broken_2:" in line]
    assert line.startswith("[eval] step 0 echo_3+partly_broken_2: echo_3/match/accuracy=")
    assert "partly_broken_2/fails_on_sample_one/accuracy=" in line
    records = read_records(Path(trainer.log_dir) / "eval_results.jsonl")
    assert [record.failures for record in records] == [[], []]


class Grouped(SamplingClientEvaluator):
    """Reports under two groups of its own, and one key under none of them."""

    metric_groups = ("qa", "extra")

    async def __call__(self, sampling_client):
        return {"qa/accuracy": 1.0, "extra/length/mean": 3.0, "loose": 1.0}


class Named(SamplingClientEvaluator):
    """Reports `mean` under its name."""

    def __init__(self, name: str) -> None:
        self.name = name

    async def __call__(self, sampling_client):
        return {"mean": 4.0}


def test_metric_groups_never_clash_and_a_clashing_key_is_a_failure(tiny_model, tokenizer, tmp_path):
    # "qa" is taken when Grouped is named; "extra/length" reports a key Grouped reports too
    builders = [lambda: Named("qa"), Grouped, lambda: Named("extra/length")]
    callback = EvalCallback(evaluator_builders=builders, eval_every=5)
    trainer = make_trainer(tmp_path, [callback], max_steps=1)
    trainer.fit(TinyLM(tiny_model, tokenizer), token_loader(num=2))

    logged = scalars(trainer.log_dir)
    assert logged["eval/qa/mean"] == [(0, 4.0), (1, 4.0)]
    assert logged["eval/qa_2/accuracy"] == [(0, 1.0), (1, 1.0)]  # "qa" was taken
    assert logged["eval/extra/length/mean"][0][1] in (3.0, 4.0)  # whichever finished first
    failures = read_records(Path(trainer.log_dir) / "eval_results.jsonl")[0].failures
    kinds = sorted((f["evaluator"], f["kind"]) for f in failures)
    assert ("qa_2+extra", "invalid_value") in kinds
    [loose] = [f for f in failures if f["kind"] == "invalid_value"]
    assert loose["message"] == (
        "key 'loose' is not '<group>/<metric>': name every key after one of its "
        "metric_groups ['qa', 'extra']"
    )
    [clash] = [f for f in failures if f["kind"] == "duplicate_key"]
    assert clash["message"] == "eval/extra/length/mean already set this round"


def test_unscored_samples_are_counted_and_named(
    tiny_model, tokenizer, tmp_path, monkeypatch, caplog
):
    from bios_callbacks.sampling.client import SamplingClient

    monkeypatch.setenv("BIOS_CHECKPOINT_ROOT", str(tmp_path / "runs"))
    monkeypatch.chdir(tmp_path)
    builder = InspectEvaluatorBuilder(
        tasks=[f"{SCORING}@half_unscored", f"{SCORING}@judged"], renderer_name="chatml"
    )
    with SamplingClient.from_module(tiny_model, tokenizer) as client:
        metrics = asyncio.run(builder()(client))

    # accuracy is over the 2 scored samples only; the counts say so
    assert metrics["half_unscored/verdict_on_even_ids/accuracy"] == 1.0
    assert metrics["half_unscored/verdict_on_even_ids/scored"] == 2
    assert metrics["half_unscored/verdict_on_even_ids/unscored"] == 2
    # a random grader never writes GRADE: X, so the judge scored nothing
    assert metrics["judged/model_graded_qa/scored"] == 0
    assert metrics["judged/model_graded_qa/unscored"] == 3
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(
        "half_unscored: verdict_on_even_ids scored 2 of 4 samples" in w
        and "1: no_verdict: the judge said nothing" in w
        for w in warnings
    ), warnings
    assert any(
        "judged: model_graded_qa scored 0 of 3 samples" in w
        and "grader_failed: Grade not found in model output" in w
        for w in warnings
    )
    # outside EvalCallback the Inspect logs go under the checkpoint root, not the cwd
    assert len(list((tmp_path / "runs" / "inspect_logs").glob("*.eval"))) == 2
    assert not (tmp_path / "inspect_logs").exists()
