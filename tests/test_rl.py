"""The RL trainer on the tiny model: the gradient's direction, metrics, evals and checkpoints."""

from __future__ import annotations

import copy
import math
import threading
from typing import ClassVar

import lightning as L
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from bios_callbacks.checkpoints import read_checkpoint_metadata
from bios_callbacks.evaluators import SamplingClientEvaluator
from bios_callbacks.types import SamplingParams
from trainers.config import RLConfig
from trainers.rl import Rollout, policy_gradient_loss, train

PROMPTS = [{"prompt": f"Say a word {i}", "answer": str(i)} for i in range(4)]


def shortness(text: str, datum: dict) -> float:
    """Reward: shorter replies are better."""
    return -len(text) / 50


class MeanLength(SamplingClientEvaluator):
    """Sampled reply length (in tokens) to one prompt; remembers the clients it was given."""

    clients: ClassVar[list] = []

    async def __call__(self, sampling_client) -> dict[str, float]:
        response = await sampling_client.sample_async(
            prompt=[1, 2, 3], num_samples=1, sampling_params=SamplingParams(max_tokens=4)
        )
        MeanLength.clients.append(sampling_client)
        return {"tokens": float(len(response.sequences[0].tokens))}


def test_policy_gradient_raises_the_rewarded_completion(tiny_model):
    prompt, good, bad = [5, 6, 7], [100, 200, 300], [400, 500, 600]

    @torch.no_grad()
    def token_logps(model, response):
        logits = model(torch.tensor([prompt + response])).logits.log_softmax(-1)[0]
        return [logits[len(prompt) - 1 + i, t].item() for i, t in enumerate(response)]

    def logp(model, response):
        return sum(token_logps(model, response))

    # sampler logprobs as the sampling client reports them (same weights as the trainer)
    rollouts = [
        Rollout(prompt, good, token_logps(tiny_model, good), advantage=1.0),
        Rollout(prompt, bad, token_logps(tiny_model, bad), advantage=-1.0),
    ]
    before = copy.deepcopy(tiny_model)
    tiny_model.train()
    loss, kl = policy_gradient_loss(tiny_model, rollouts, temperature=1.0, pad_id=0)
    assert kl == pytest.approx(0.0, abs=1e-5)  # same weights: the importance ratio is 1
    loss.backward()
    with torch.no_grad():
        for p in tiny_model.parameters():
            p -= 0.05 * p.grad
    tiny_model.eval()
    assert logp(tiny_model, good) > logp(before, good)
    assert logp(tiny_model, bad) < logp(before, bad)


def test_rl_run_logs_metrics_evaluates_and_checkpoints(
    tiny_model, tokenizer, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("BIOS_CHECKPOINT_ROOT", str(tmp_path))
    cfg = RLConfig(
        train_data=PROMPTS,
        reward_fn=shortness,
        steps=4,
        batch_size=2,
        group_size=4,
        max_tokens=4,
        learning_rate=1e-2,
        evaluator_builders=[MeanLength],
        eval_every=2,
        save_every=2,
        run_name="rl-e2e",
    )
    rollouts = RolloutClient()
    MeanLength.clients.clear()
    result = train(cfg, model=tiny_model, tokenizer=tokenizer, callbacks=[rollouts])

    acc = EventAccumulator(str(result.log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    steps = {tag: sorted(e.step for e in acc.Scalars(tag)) for tag in acc.Tags()["scalars"]}
    for tag in (
        "train/reward_mean",
        "train/response_tokens_mean",
        "train/kl_sampler_trainer",
        "time/iteration_s",
    ):
        assert steps[tag] == [0, 1, 2, 3], tag
    assert steps["eval/MeanLength/tokens"] == [0, 2, 4]
    # rollouts and evaluators share one client, so one decode engine
    assert len(MeanLength.clients) == 3 and len({id(c) for c in MeanLength.clients}) == 1
    assert MeanLength.clients[0] is rollouts.client
    rewards = [e.value for e in acc.Scalars("train/reward_mean")]
    assert all(r <= 0 for r in rewards) and any(r < 0 for r in rewards)

    out = capsys.readouterr().out
    assert "step 2: saved checkpoint bios://rl-e2e/step_000002" in out
    meta = read_checkpoint_metadata(result.checkpoint)
    assert meta.step == 4
    assert "train/reward_mean" in meta.eval_results
    assert "eval/MeanLength/tokens" in meta.eval_results


class RolloutClient(L.Callback):
    """Remembers the client the RL module samples its rollouts with."""

    client = None

    def on_train_start(self, trainer, pl_module):
        self.client = pl_module.client


class WeightsAtStep(L.Callback):
    """Copies the weights at the start of the given step."""

    def __init__(self, step: int):
        self.step, self.weights = step, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            self.weights = {n: p.detach().clone() for n, p in pl_module.model.named_parameters()}


def test_iterations_without_a_reward_spread_leave_the_weights_alone(
    tiny_model, tokenizer, tmp_path, monkeypatch
):
    monkeypatch.setenv("BIOS_CHECKPOINT_ROOT", str(tmp_path))
    calls = []

    def spread_only_at_first(response, datum):  # iteration 0 learns, later ones have no signal
        calls.append(response)
        return float(len(calls) % 2) if len(calls) <= 4 else 1.0

    cfg = RLConfig(
        train_data=PROMPTS,
        reward_fn=spread_only_at_first,
        steps=3,
        batch_size=2,
        group_size=2,
        max_tokens=2,
        learning_rate=1e-2,
        run_name="rl-flat",
    )
    after_first = WeightsAtStep(1)
    result = train(cfg, model=tiny_model, tokenizer=tokenizer, callbacks=[after_first])
    assert read_checkpoint_metadata(result.checkpoint).step == 3  # the steps still count
    for name, param in tiny_model.named_parameters():
        assert torch.equal(param, after_first.weights[name]), name


def test_a_failing_reward_fn_saves_the_last_step_and_stops_the_sampler(
    tiny_model, tokenizer, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("BIOS_CHECKPOINT_ROOT", str(tmp_path))
    calls = []

    def buggy(response, datum):  # 2 prompts x 2 samples a call each iteration; fails in the third
        calls.append(response)
        if len(calls) > 8:
            raise KeyError("answr")
        return float(len(calls) % 2)

    cfg = RLConfig(
        train_data=PROMPTS,
        reward_fn=buggy,
        steps=10,
        batch_size=2,
        group_size=2,
        max_tokens=2,
        learning_rate=1e-2,
        run_name="rl-bug",
    )
    before = {t for t in threading.enumerate() if t.name == "bios-decode"}
    with pytest.raises(KeyError, match="answr"):
        train(cfg, model=tiny_model, tokenizer=tokenizer)

    assert "Stopped at step 2 by KeyError" in capsys.readouterr().out
    assert read_checkpoint_metadata("bios://rl-bug/step_000002").step == 2
    acc = EventAccumulator(str(tmp_path / "rl-bug"), size_guidance={"scalars": 0})
    acc.Reload()
    assert [e.step for e in acc.Scalars("train/reward_mean")] == [0, 1]  # logs flushed
    decoding = {t for t in threading.enumerate() if t.name == "bios-decode"} - before
    assert decoding == set()  # the run's decode thread was stopped


@pytest.mark.parametrize("bad", [math.nan, None], ids=["nan", "none"])
def test_a_reward_that_is_not_a_number_names_reward_fn_and_the_datum(
    tiny_model, tokenizer, tmp_path, monkeypatch, bad
):
    monkeypatch.setenv("BIOS_CHECKPOINT_ROOT", str(tmp_path))
    cfg = RLConfig(
        train_data=PROMPTS[:1],
        reward_fn=lambda text, datum: bad,
        steps=2,
        batch_size=1,
        group_size=2,
        max_tokens=2,
        run_name="rl-nan",
    )
    with pytest.raises(ValueError, match=rf"reward_fn returned {bad} for datum .*'answer': '0'"):
        train(cfg, model=tiny_model, tokenizer=tokenizer)
