"""EvalCallback under faults a real run meets: raising hooks, Ctrl-C mid-round, timeouts that
leave a worker behind, a results file torn by a killed process."""

from __future__ import annotations

import asyncio
import functools
import json
import signal

import lightning.pytorch as pl
import pytest
from lit_tiny import TinyLM, make_trainer, scalars, steps, token_loader
from tiny import make_tiny_model

from bios_callbacks.callback import EvalCallback
from bios_callbacks.callback.results import ResultsFile, RoundRecord, read_records
from bios_callbacks.evaluators import (
    NLLEvaluator,
    SamplingClientEvaluator,
    TrainingClientEvaluator,
)

HELD_OUT = [[1, 200, 300, 400, 500], [1, 600, 700, 800]]


class BadHooks(TrainingClientEvaluator):
    """Scores fine, but both optional hooks raise."""

    name = "bad_hooks"

    async def __call__(self, training_client):
        return {"ok": 1.0}

    def eval_prompts(self):
        raise RuntimeError("prompts unavailable")

    def transcripts(self):
        raise RuntimeError("transcripts unavailable")


def test_raising_optional_hooks_are_counted_failures(tmp_path, tiny_model, tokenizer, caplog):
    callback = EvalCallback(
        evaluator_builders=[BadHooks], eval_every=2, training_texts=["some training text"]
    )
    trainer = make_trainer(tmp_path, [callback], max_steps=2)
    trainer.fit(TinyLM(tiny_model, tokenizer), token_loader())
    assert trainer.global_step == 2
    tags = scalars(trainer.log_dir)
    assert tags["eval/bad_hooks/ok"] == [(0, 1.0), (2, 1.0)]
    # step 0: eval_prompts() (held-out guard) and transcripts(); step 2: transcripts()
    assert [v for _, v in tags["eval/failures"]] == [2.0, 1.0]
    first = read_records(f"{trainer.log_dir}/eval_results.jsonl")[0]
    messages = sorted(f["message"] for f in first.failures)
    assert [f["kind"] for f in first.failures] == ["hook", "hook"]
    assert "eval_prompts() raised" in messages[0] and "transcripts() raised" in messages[1]
    assert "prompts unavailable" in caplog.text


class InterruptOnce(TrainingClientEvaluator):
    """Presses Ctrl-C (raises KeyboardInterrupt) the first time it runs at `step`."""

    name = "interrupt"
    interrupted = False

    def __init__(self, step: int):
        self.step = step
        self.current = 0

    def set_run_context(self, *, log_dir=None, step=None):
        self.current = step

    async def __call__(self, training_client):
        if self.current == self.step and not InterruptOnce.interrupted:
            InterruptOnce.interrupted = True
            raise KeyboardInterrupt
        return {"step_seen": float(self.current)}


class SaveOnInterrupt(pl.Callback):
    """What `trainers/` (and many user scripts) do on Ctrl-C: save a checkpoint to resume."""

    def __init__(self, path):
        self.path = path

    def on_exception(self, trainer, pl_module, exception):
        if isinstance(exception, KeyboardInterrupt):
            trainer.save_checkpoint(self.path)


@pytest.fixture
def keep_sigint():
    """Lightning ignores SIGINT after a KeyboardInterrupt; give the test process it back."""
    handler = signal.getsignal(signal.SIGINT)
    yield
    signal.signal(signal.SIGINT, handler)


def test_round_interrupted_by_ctrl_c_runs_after_resume(tmp_path, tokenizer, keep_sigint):
    InterruptOnce.interrupted = False
    ckpt = tmp_path / "interrupted.ckpt"
    builder = functools.partial(InterruptOnce, 2)
    first = make_trainer(
        tmp_path / "a",
        [EvalCallback(evaluator_builders=[builder], eval_every=2), SaveOnInterrupt(ckpt)],
        max_steps=6,
    )
    with pytest.raises(SystemExit):  # Lightning's graceful shutdown after Ctrl-C
        first.fit(TinyLM(make_tiny_model(tokenizer), tokenizer), token_loader())
    assert InterruptOnce.interrupted and ckpt.exists()
    assert steps(first.log_dir, "eval/interrupt/step_seen") == [0]

    second = make_trainer(
        tmp_path / "b", [EvalCallback(evaluator_builders=[builder], eval_every=2)], max_steps=4
    )
    second.fit(TinyLM(make_tiny_model(tokenizer), tokenizer), token_loader(), ckpt_path=str(ckpt))
    assert steps(second.log_dir, "eval/interrupt/step_seen") == [2, 4]


class CountEvalForwards:
    """Counts forward passes the model makes in eval mode (the scoring worker's)."""

    def __init__(self, model):
        self.count = 0
        model.register_forward_hook(self._hook)

    def _hook(self, module, args, output):
        if not module.training:
            self.count += 1


def test_timed_out_scoring_does_not_hold_the_round(tmp_path, tiny_model, tokenizer):
    """A training-client evaluator past its timeout stops its worker after the current batch;
    the round (and training) does not wait for the remaining batches."""
    many = [[1, *range(100, 160)]] * 2000
    batches = len(many) // 8  # the live training client scores 8 sequences per forward
    counter = CountEvalForwards(tiny_model)
    callback = EvalCallback(
        evaluator_builders=[functools.partial(NLLEvaluator, many)],
        eval_every=5,
        evaluator_timeout_s=0.2,
    )
    trainer = make_trainer(tmp_path, [callback], max_steps=1)
    trainer.fit(TinyLM(tiny_model, tokenizer), token_loader())
    assert trainer.global_step == 1
    assert [v for _, v in scalars(trainer.log_dir)["eval/failures"]] == [1.0, 1.0]
    # two timed-out rounds (step 0 and the final step), together far from one full round
    assert counter.count < batches


def test_torn_last_line_is_skipped_with_a_warning(tmp_path):
    results = ResultsFile(tmp_path)
    results.append(RoundRecord(step=0, metrics={"eval/qa/accuracy": 0.5}))
    with results.path.open("a") as f:
        f.write('{"step": 5, "metrics": {"eval/qa/acc')  # the process was killed here
    with pytest.warns(UserWarning, match=r"eval_results.jsonl:2: skipping an incomplete"):
        assert [r.step for r in read_records(results.path)] == [0]

    with pytest.warns(UserWarning):  # a resumed run reads the torn file, then appends
        resumed = ResultsFile(tmp_path)
    resumed.append(RoundRecord(step=5, metrics={"eval/qa/accuracy": 0.75}))
    lines = results.path.read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [0, 5]


def test_bad_line_in_the_middle_names_file_and_line(tmp_path):
    path = tmp_path / "eval_results.jsonl"
    path.write_text('{"step": 0, "metrics": {}}\nnot json\n{"step": 1, "metrics": {}}\n')
    with pytest.raises(ValueError, match=r"eval_results.jsonl:2: not a round record"):
        read_records(path)


def test_resumed_run_does_not_append_rounds_already_in_the_file(tmp_path, tokenizer):
    """Resuming from an earlier checkpoint into the same log dir goes over steps whose rounds
    are already in eval_results.jsonl: each step's round stays there once."""
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    def run(max_steps, ckpt_path=None):
        callback = EvalCallback(
            evaluator_builders=[functools.partial(NLLEvaluator, HELD_OUT)], eval_every=2
        )
        saver = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=2, save_top_k=-1)
        trainer = make_trainer(
            tmp_path,
            [callback, saver],
            max_steps=max_steps,
            enable_checkpointing=True,
            logger=CSVLogger(str(tmp_path), name="run", version=0),
        )
        trainer.fit(
            TinyLM(make_tiny_model(tokenizer), tokenizer), token_loader(), ckpt_path=ckpt_path
        )
        return trainer

    first = run(6)
    second = run(6, ckpt_path=str(tmp_path / "ckpt" / "epoch=0-step=2.ckpt"))
    assert first.log_dir == second.log_dir
    records = read_records(f"{second.log_dir}/eval_results.jsonl")
    assert [r.step for r in records] == [0, 2, 4, 6]


def test_schedule_state_from_older_checkpoints_still_loads():
    callback = EvalCallback(evaluator_builders=[lambda: NLLEvaluator(HELD_OUT)], eval_every=2)
    callback.load_state_dict(
        {"last_seen_step": 4, "last_evaluated": {"regular": 4, "infrequent": -1}, "latest": None}
    )
    assert callback.last_evaluated["regular"] == 4


class SlowQA(SamplingClientEvaluator):
    """Samples 6 answers one after another, slowly enough for a progress line or two."""

    name = "slow_qa"

    async def __call__(self, sampling_client):
        from bios_callbacks.types import SamplingParams

        params = SamplingParams(max_tokens=2, temperature=0.0)
        for _ in range(6):
            await sampling_client.sample_async(prompt=[1, 2, 3], sampling_params=params)
            await asyncio.sleep(0.1)
        return {"accuracy": 0.5}


def test_console_shows_each_evaluators_values_and_progress(tmp_path, tiny_model, tokenizer, capsys):
    callback = EvalCallback(
        evaluator_builders=[functools.partial(NLLEvaluator, HELD_OUT), SlowQA],
        eval_every=5,
        progress_every_s=0.2,
    )
    trainer = make_trainer(tmp_path, [callback], max_steps=1)
    trainer.fit(TinyLM(tiny_model, tokenizer), token_loader())
    out = capsys.readouterr().out
    losses = dict(scalars(trainer.log_dir)["eval/nll/loss"])
    for step in (0, 1):
        [nll] = [line for line in out.splitlines() if line.startswith(f"[eval] step {step} nll:")]
        assert f" loss={losses[step]:.4g} " in nll
        assert f"[eval] step {step} slow_qa: accuracy=0.5 (" in out
    progress = [line for line in out.splitlines() if "waiting for slow_qa" in line]
    assert progress, out
    done, requested = map(int, progress[-1].split(", ")[1].split()[0].split("/"))
    assert 0 < done <= requested <= 6


class DuckTypedNLL:
    """An evaluator that subclasses nothing: its first parameter's name asks for scoring."""

    name = "duck"

    async def __call__(self, training_client):
        logprobs = await training_client.compute_logprobs_async(HELD_OUT)
        return {"loss": -sum(map(sum, logprobs)) / sum(len(lp) for lp in logprobs)}


def test_duck_typed_evaluators_get_the_client_they_name(tmp_path, tiny_model, tokenizer):
    callback = EvalCallback(
        evaluator_builders=[DuckTypedNLL, functools.partial(NLLEvaluator, HELD_OUT)],
        eval_every=5,
    )
    trainer = make_trainer(tmp_path, [callback], max_steps=1)
    trainer.fit(TinyLM(tiny_model, tokenizer), token_loader())
    tags = scalars(trainer.log_dir)
    duck, nll = dict(tags["eval/duck/loss"]), dict(tags["eval/nll/loss"])
    assert list(duck) == [0, 1] and duck == pytest.approx(nll)
    assert [v for _, v in tags["eval/failures"]] == [0.0, 0.0]


def test_a_builder_returning_a_non_evaluator_is_a_build_failure(tmp_path, tiny_model, tokenizer):
    callback = EvalCallback(evaluator_builders=[lambda: "not an evaluator"], eval_every=5)
    trainer = make_trainer(tmp_path, [callback], max_steps=1)
    trainer.fit(TinyLM(tiny_model, tokenizer), token_loader())
    [failure] = read_records(f"{trainer.log_dir}/eval_results.jsonl")[0].failures
    assert failure["kind"] == "build" and "async def __call__" in failure["message"]
