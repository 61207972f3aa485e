"""EvalCallback in real Lightning runs: schedule, logging, failures, checkpoints, results file."""

from __future__ import annotations

import asyncio
import functools
import json
import math
import random
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lit_tiny import LazyTinyLM, TinyLM, make_trainer, scalars, steps, token_loader
from tiny import make_tiny_model

from bios_callbacks.callback import EvalCallback
from bios_callbacks.callback.results import read_records
from bios_callbacks.evaluators import NLLEvaluator, SamplingClientEvaluator, TrainingClientEvaluator
from bios_callbacks.training_client import TrainingClient

HELD_OUT = [[1, 200, 300, 400, 500], [1, 600, 700, 800]]


def nll_builder(examples=HELD_OUT, **kwargs):
    return functools.partial(NLLEvaluator, examples, **kwargs)


def fit(
    tmp_path,
    tiny_model,
    tokenizer,
    callback,
    *,
    max_steps,
    extra_callbacks=(),
    ckpt_path=None,
    **kwargs,
):
    module = TinyLM(tiny_model, tokenizer)
    trainer = make_trainer(tmp_path, [callback, *extra_callbacks], max_steps=max_steps, **kwargs)
    trainer.fit(module, token_loader(), ckpt_path=ckpt_path)
    return trainer, module


@pytest.mark.parametrize(
    ("every", "slow_every", "max_steps", "regular", "slow"),
    [(3, 5, 7, [0, 3, 6, 7], [0, 5, 7]), (0, 2, 3, [], [0, 2, 3])],
    ids=["multiples_and_final_step", "interval_zero_disables_a_list"],
)
def test_schedule(tmp_path, tiny_model, tokenizer, every, slow_every, max_steps, regular, slow):
    callback = EvalCallback(
        evaluator_builders=[nll_builder()],
        eval_every=every,
        infrequent_evaluator_builders=[nll_builder(name="slow")],
        infrequent_eval_every=slow_every,
    )
    trainer, _ = fit(tmp_path, tiny_model, tokenizer, callback, max_steps=max_steps)
    assert trainer.global_step == max_steps
    tags = scalars(trainer.log_dir)
    assert [s for s, _ in tags.get("eval/nll/loss", [])] == regular
    assert steps(trainer.log_dir, "eval/slow/loss") == slow
    # one round per step, even when both lists run at it
    assert steps(trainer.log_dir, "eval/time_s") == sorted({*regular, *slow})
    losses = dict(tags["eval/slow/loss"])
    assert losses[max_steps] != losses[0]  # the live weights were evaluated, not a copy


def test_gradient_accumulation_evaluates_each_step_once(tmp_path, tiny_model, tokenizer):
    callback = EvalCallback(evaluator_builders=[nll_builder()], eval_every=2)
    trainer, _ = fit(
        tmp_path, tiny_model, tokenizer, callback, max_steps=4, accumulate_grad_batches=3
    )
    assert steps(trainer.log_dir, "eval/nll/loss") == [0, 2, 4]


def test_resume_mid_run_neither_repeats_nor_restarts(tmp_path, tiny_model, tokenizer):
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=2, save_top_k=-1)
    first = EvalCallback(evaluator_builders=[nll_builder()], eval_every=2)
    trainer, _ = fit(
        tmp_path / "a",
        tiny_model,
        tokenizer,
        first,
        max_steps=5,
        extra_callbacks=[checkpoints],
        enable_checkpointing=True,
    )
    assert steps(trainer.log_dir, "eval/nll/loss") == [0, 2, 4, 5]
    ckpt = next(p for p in (tmp_path / "ckpt").iterdir() if "step=4" in p.name)

    second = EvalCallback(evaluator_builders=[nll_builder()], eval_every=2)
    resumed, _ = fit(
        tmp_path / "b",
        make_tiny_model(tokenizer, seed=1),
        tokenizer,
        second,
        max_steps=7,
        ckpt_path=str(ckpt),
    )
    assert steps(resumed.log_dir, "eval/nll/loss") == [6, 7]


class Raises(TrainingClientEvaluator):
    name = "raises"

    async def __call__(self, training_client):
        raise ValueError("grader exploded")


class Sleeps(SamplingClientEvaluator):
    name = "sleeps"

    async def __call__(self, sampling_client):
        await asyncio.sleep(60)
        return {"never": 1.0}


class BadValues(TrainingClientEvaluator):
    name = "bad"

    async def __call__(self, training_client):
        return {"nan": math.nan, "text": "high", "ok": 2.0, "tensor": torch.tensor(3.0)}


def broken_builder():
    raise RuntimeError("could not load the eval set")


def test_failures_are_reported_and_training_continues(tmp_path, tiny_model, tokenizer, caplog):
    callback = EvalCallback(
        evaluator_builders=[nll_builder(), Raises, Sleeps, BadValues, broken_builder],
        eval_every=2,
        evaluator_timeout_s=0.5,
    )
    trainer, _ = fit(tmp_path, tiny_model, tokenizer, callback, max_steps=2)
    assert trainer.global_step == 2
    tags = scalars(trainer.log_dir)
    assert [s for s, _ in tags["eval/nll/loss"]] == [0, 2]
    assert tags["eval/bad/ok"] == [(0, 2.0), (2, 2.0)]
    assert tags["eval/bad/tensor"] == [(0, 3.0), (2, 3.0)]
    assert "eval/bad/nan" not in tags and "eval/bad/text" not in tags
    # raises + sleeps (timeout) + 2 bad values + broken builder
    assert [v for _, v in tags["eval/failures"]] == [5.0, 5.0]
    records = read_records(f"{trainer.log_dir}/eval_results.jsonl")
    kinds = {(f["evaluator"], f["kind"]) for f in records[0].failures}
    assert kinds == {
        ("raises", "exception"),
        ("sleeps", "timeout"),
        ("bad", "invalid_value"),
        ("broken_builder", "build"),
    }
    assert "grader exploded" in caplog.text and "Traceback" in caplog.text


def test_fail_fast_reraises(tmp_path, tiny_model, tokenizer):
    callback = EvalCallback(evaluator_builders=[Raises], eval_every=2, fail_fast=True)
    with pytest.raises(ValueError, match="grader exploded"):
        fit(tmp_path, tiny_model, tokenizer, callback, max_steps=2)

    # the first failure is the one raised, even when a later one carries an exception
    callback = EvalCallback(evaluator_builders=[BadValues, Raises], eval_every=2, fail_fast=True)
    with pytest.raises(RuntimeError, match=r"evaluator 'bad' failed \(invalid_value\)"):
        fit(tmp_path / "b", tiny_model, tokenizer, callback, max_steps=2)


def test_same_keys_from_two_evaluators_both_survive(tmp_path, tiny_model, tokenizer):
    callback = EvalCallback(
        evaluator_builders=[nll_builder(HELD_OUT[:1]), nll_builder(HELD_OUT[1:])], eval_every=5
    )
    trainer, _ = fit(tmp_path, tiny_model, tokenizer, callback, max_steps=1)
    tags = scalars(trainer.log_dir)
    assert tags["eval/nll/loss"][0][1] != tags["eval/nll_2/loss"][0][1]


def test_results_file_checkpoints_and_monitor(tmp_path, tiny_model, tokenizer):
    checkpoints = ModelCheckpoint(
        dirpath=tmp_path / "ckpt", every_n_train_steps=3, save_top_k=-1, monitor="eval/nll/loss"
    )
    callback = EvalCallback(
        evaluator_builders=[nll_builder()], eval_every=100, eval_on_checkpoint=True
    )
    trainer, _ = fit(
        tmp_path,
        tiny_model,
        tokenizer,
        callback,
        max_steps=6,
        extra_callbacks=[checkpoints],
        enable_checkpointing=True,
    )
    lines = (tmp_path / "run" / "version_0" / "eval_results.jsonl").read_text().splitlines()
    rounds = [json.loads(line) for line in lines]
    assert [r["step"] for r in rounds] == [0, 3, 6]
    assert set(rounds[1]) >= {"step", "metrics", "failures", "time_s"}
    assert rounds[1]["metrics"]["eval/nll/loss"] > 0
    for path in sorted((tmp_path / "ckpt").iterdir()):
        saved = torch.load(path, weights_only=False)
        assert saved["eval_results"]["step"] == saved["global_step"]
        assert "eval/nll/loss" in saved["eval_results"]["metrics"]
    # each checkpoint is ranked by the loss of its own step, not the previous round's
    losses = dict(scalars(trainer.log_dir)["eval/nll/loss"])
    ranked = {Path(k).name: v.item() for k, v in checkpoints.best_k_models.items()}
    assert ranked == {
        "epoch=0-step=3.ckpt": pytest.approx(losses[3]),
        "epoch=0-step=6.ckpt": pytest.approx(losses[6]),
    }
    assert "eval/nll/loss" in trainer.callback_metrics


def _with_dropout(model):
    for module in model.modules():
        if hasattr(module, "attention_dropout"):
            module.attention_dropout = 0.5
    return model


class Generates(SamplingClientEvaluator):
    """Samples, and draws from the global RNGs the way a user's subsampling might."""

    name = "gen"

    async def __call__(self, sampling_client):
        from bios_callbacks.types import SamplingParams

        torch.randperm(100)
        random.random()

        params = SamplingParams(max_tokens=3, temperature=1.0)
        results = await asyncio.gather(
            *(
                sampling_client.sample_async(prompt=[1, 2, 3], sampling_params=params)
                for _ in range(3)
            )
        )
        return {"tokens": float(sum(len(r.sequences[0].tokens) for r in results))}


class FlagRecorder(TinyLM):
    """Keeps one submodule frozen in eval mode and records the flags every batch sees."""

    def on_train_start(self):
        self.model.model.embed_tokens.eval()
        self.seen = []

    def on_train_batch_start(self, batch, batch_idx):
        embed = self.model.model.embed_tokens
        self.seen.append((self.training, self.model.training, embed.training))


def test_rounds_leave_weights_flags_and_rng_as_without_callback(tmp_path, tokenizer):
    def run(callbacks, where):
        module = FlagRecorder(_with_dropout(make_tiny_model(tokenizer, seed=0)), tokenizer)
        torch.manual_seed(123)
        make_trainer(tmp_path / where, callbacks, max_steps=4).fit(module, token_loader())
        return module

    callback = EvalCallback(evaluator_builders=[nll_builder(), Generates], eval_every=1)
    evaluated = run([callback], "with")
    plain = run([], "without")
    assert evaluated.seen == plain.seen == [(True, True, False)] * 4
    for a, b in zip(evaluated.parameters(), plain.parameters(), strict=True):
        assert torch.equal(a, b)
    assert steps(evaluated.trainer.log_dir, "eval/gen/tokens") == [0, 1, 2, 3, 4]


class TwoOptimizers(TinyLM):
    """Manual optimization stepping two optimizers per batch: global_step advances by 2."""

    def __init__(self, model, tokenizer):
        super().__init__(model, tokenizer)
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        for optimizer in self.optimizers():
            optimizer.zero_grad()
            self.manual_backward(self.model(input_ids=batch, labels=batch).loss)
            optimizer.step()

    def configure_optimizers(self):
        layers = self.model.model.layers
        return [
            torch.optim.SGD(layers[0].parameters(), lr=0.01),
            torch.optim.SGD(layers[1].parameters(), lr=0.01),
        ]


def test_manual_optimization_with_two_optimizers_evaluates_on_crossing(
    tmp_path, tiny_model, tokenizer
):
    callback = EvalCallback(evaluator_builders=[nll_builder()], eval_every=5)
    trainer = make_trainer(tmp_path, [callback], max_steps=12)
    trainer.fit(TwoOptimizers(tiny_model, tokenizer), token_loader())
    assert trainer.global_step == 12
    assert steps(trainer.log_dir, "eval/nll/loss") == [0, 6, 10, 12]


class LongGeneration(SamplingClientEvaluator):
    """Leaves a long generation in flight and never finishes."""

    name = "long"

    async def __call__(self, sampling_client):
        from bios_callbacks.types import SamplingParams

        params = SamplingParams(max_tokens=500, temperature=1.0, seed=0)
        self.pending = asyncio.ensure_future(
            sampling_client.sample_async(prompt=[1, 2, 3], num_samples=4, sampling_params=params)
        )
        await asyncio.sleep(3600)


def test_timed_out_generation_is_abandoned_and_flags_restored(tmp_path, tokenizer):
    module = FlagRecorder(make_tiny_model(tokenizer), tokenizer)
    callback = EvalCallback(
        evaluator_builders=[LongGeneration, Generates], eval_every=1, evaluator_timeout_s=1.0
    )
    trainer = make_trainer(tmp_path, [callback], max_steps=2)
    trainer.fit(module, token_loader())
    assert module.seen == [(True, True, False)] * 2
    tags = scalars(trainer.log_dir)
    assert [v for _, v in tags["eval/failures"]] == [1.0, 1.0, 1.0]
    # a fresh sampling client serves the next round after the abandoned one is closed
    assert [s for s, _ in tags["eval/gen/tokens"]] == [0, 1, 2]


def test_a_model_created_in_configure_model_is_evaluated(tmp_path, tokenizer, tiny_model):
    callback = EvalCallback(evaluator_builders=[nll_builder()], eval_every=2)
    trainer = make_trainer(tmp_path, [callback], max_steps=3)
    trainer.fit(LazyTinyLM(tokenizer), token_loader())
    [(step, loss), *_] = scalars(trainer.log_dir)["eval/nll/loss"]
    assert steps(trainer.log_dir, "eval/nll/loss") == [0, 2, 3]
    expected = asyncio.run(NLLEvaluator(HELD_OUT)(TrainingClient(tiny_model)))["loss"]
    assert (step, loss) == (0, pytest.approx(expected, rel=1e-5))  # the weights it made


def test_deepspeed_is_refused_at_setup_naming_the_strategies_that_work():
    # DeepSpeed is not installed here (it needs a GPU): hand the callback a stand-in trainer
    # holding an uninitialized DeepSpeedStrategy, which is all the check looks at.
    from types import SimpleNamespace

    from lightning.pytorch.strategies import DeepSpeedStrategy

    strategy = DeepSpeedStrategy.__new__(DeepSpeedStrategy)
    callback = EvalCallback(evaluator_builders=[lambda: NLLEvaluator([[1, 2, 3]])], eval_every=1)
    with pytest.raises(RuntimeError, match=r"DeepSpeedStrategy.*strategy='ddp'.*fully_shard"):
        callback.setup(SimpleNamespace(strategy=strategy), None, "fit")


@pytest.mark.parametrize("problem", ["own clients", "async_infrequent"])
def test_a_sharded_run_that_cannot_split_rounds_is_refused_before_training(
    tiny_model, tokenizer, problem, tmp_path
):
    from types import SimpleNamespace

    from lightning.pytorch.strategies import ModelParallelStrategy

    module = TinyLM(tiny_model, tokenizer)
    if problem == "own clients":
        module.make_sampling_client = lambda: None
    callback = EvalCallback(
        infrequent_evaluator_builders=[lambda: NLLEvaluator([[1, 2, 3]])],
        async_infrequent=problem == "async_infrequent",
    )
    trainer = SimpleNamespace(
        strategy=ModelParallelStrategy(), world_size=2, log_dir=str(tmp_path), is_global_zero=False
    )
    callback.setup(trainer, module, "fit")
    expected = r"remove them" if problem == "own clients" else r"async_infrequent=False"
    with pytest.raises((TypeError, ValueError), match=expected):
        callback.on_fit_start(trainer, module)
