"""RL with group-relative advantages and an importance-weighted policy gradient.

Each iteration: take `batch_size` prompts, sample `group_size` completions of each from the
current weights through a `SamplingClient` (the same client evaluators use), score them with
`reward_fn(response_text, datum)`, subtract each group's mean reward (the advantage), and take
one AdamW step on  -mean_t[ exp(logp_t - logq_t) * advantage ],  where q is the sampler's
log-probability of token t and p the trainer's (equal in value, but p carries the gradient).
`steps` and `eval_every` count iterations; reward, response length and more go to TensorBoard.

Command line:
    python -m trainers.rl train_data=prompts.jsonl reward_fn=examples.rl_arithmetic:reward \
        steps=20 group_size=8 eval_every=5 evaluator_builders=examples.rl_arithmetic:accuracy_eval

Python:
    >>> from trainers.rl import RLConfig, train
    >>> result = train(RLConfig(train_data=prompts, reward_fn=reward,  # doctest: +SKIP
    ...     evaluator_builders=[sampling_eval_1], eval_every=50))
"""

from __future__ import annotations

import asyncio
import math
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from trainers.cli import exit_on_bad_words, run_cli
from trainers.config import RLConfig

if __name__ == "__main__":  # --help and bad words are answered before torch and Lightning load
    exit_on_bad_words(RLConfig, sys.argv[1:], __doc__)

import lightning as L
import torch

from bios_callbacks.models.token_logprobs import ShiftedBatch, token_logprobs
from bios_callbacks.models.tokens import pad_token_id
from bios_callbacks.renderers import get_text_content
from trainers import data
from trainers.policy import (
    PolicyModule,
    TrainResult,
    fit,
    load_policy,
    out_of_memory_explained,
    resumed_step,
)

__all__ = ["RLConfig", "RLModule", "train"]


@dataclass
class Rollout:
    """One sampled completion: prompt and response tokens, sampler logprobs, its advantage."""

    prompt: list[int]
    response: list[int]
    logprobs: list[float]
    advantage: float


def policy_gradient_loss(
    model: torch.nn.Module, rollouts: list[Rollout], temperature: float, pad_id: int
) -> tuple[torch.Tensor, float]:
    """Importance-weighted policy-gradient loss over response tokens; also returns the mean
    approximate KL(sampler || trainer), which stays near 0 while both see the same weights."""
    batch = ShiftedBatch.of([r.prompt + r.response for r in rollouts], pad_id)
    starts = [len(r.prompt) - 1 for r in rollouts]  # the target position of each response's start
    sampler_logp = batch.spread([r.logprobs for r in rollouts], starts)
    loss_mask = batch.spread([[1.0] * len(r.response) for r in rollouts], starts)
    device = next(model.parameters()).device
    batch, sampler_logp, loss_mask = batch.to(device), sampler_logp.to(device), loss_mask.to(device)
    advantages = torch.tensor([r.advantage for r in rollouts], device=device)[:, None]

    logp = token_logprobs(model, batch, temperature=temperature)
    ratio = torch.exp(logp - sampler_logp)
    n_tokens = loss_mask.sum()
    loss = -(ratio * advantages * loss_mask).sum() / n_tokens
    kl = ((sampler_logp - logp.detach()) * loss_mask).sum() / n_tokens
    return loss, kl.item()


class RLModule(PolicyModule):
    """The RL LightningModule: each training step is one RL iteration on a batch of prompts."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, cfg: RLConfig, renderer: Any):
        super().__init__(model, tokenizer, cfg)
        self.renderer = renderer
        self.client: Any = None
        self._no_signal = False

    def on_fit_start(self) -> None:
        from bios_callbacks.sampling.client import SamplingClient

        super().on_fit_start()
        self.client = SamplingClient.from_module(self.model, self.tokenizer)

    def make_sampling_client(self) -> Any:
        """The rollout client, shared with the sampling evaluators: one decode engine serves
        both (EvalCallback never closes a client the module made)."""
        return self.client

    def release(self) -> None:
        """Stops the sampling client's decode thread and drops its reference to the model."""
        if self.client is not None:
            self.client.close()
            self.client = None

    def reward(self, text: str, datum: dict[str, Any]) -> float:
        """`reward_fn(text, datum)` as a float; anything but a finite number is an error
        naming the datum (a NaN would silently turn the whole group's advantages into NaN)."""
        value = self.cfg.reward_fn(text, datum)
        try:
            reward = float(value)
        except (TypeError, ValueError):
            reward = math.nan
        if not math.isfinite(reward):
            raise ValueError(
                f"reward_fn returned {value!r} for datum {datum!r} and response {text[:200]!r}: "
                "expected a finite number. Fix reward_fn to return a float for every response."
            )
        return reward

    async def sample_groups(self, prompts: list[Any]) -> list[Any]:
        """Samples `group_size` completions of every prompt, all prompts at once (one batch)."""
        from bios_callbacks.types import SamplingParams

        params = SamplingParams(
            max_tokens=self.cfg.max_tokens,
            temperature=self.cfg.temperature,
            stop=self.renderer.get_stop_sequences(),
        )
        return await asyncio.gather(
            *(
                self.client.sample_async(
                    prompt=prompt, num_samples=self.cfg.group_size, sampling_params=params
                )
                for prompt in prompts
            )
        )

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Without a learning signal the weights must not move: zero grads would still let
        AdamW's momentum and weight decay change them. Gradients of None are skipped, while
        the step still counts (one iteration, one step)."""
        if self._no_signal:
            optimizer.zero_grad(set_to_none=True)

    def training_step(self, batch: list[dict[str, Any]], batch_idx: int) -> torch.Tensor:
        from bios_callbacks.callback.run_sync import run_sync

        step = self.global_step  # rollouts come from the weights after `step` iterations
        started = time.perf_counter()
        prompts = [self.renderer.build_generation_prompt(datum["messages"]) for datum in batch]
        responses = run_sync(self.sample_groups(prompts))
        self.client.wait_idle()  # the client has handed the model back in training mode
        sampled = time.perf_counter()

        rollouts, rewards, lengths, truncated, flat_groups = [], [], [], 0, 0
        for datum, prompt, response in zip(batch, prompts, responses, strict=True):
            group = []
            for seq in response.sequences:
                message, _ = self.renderer.parse_response(seq.tokens)
                group.append(self.reward(get_text_content(message), datum))
                lengths.append(len(seq.tokens))
                truncated += seq.stop_reason == "length"
            mean = statistics.fmean(group)
            flat_groups += all(r == mean for r in group)
            rewards.extend(group)
            rollouts += [
                Rollout(prompt.to_ints(), list(seq.tokens), list(seq.logprobs), reward - mean)
                for seq, reward in zip(response.sequences, group, strict=True)
                if reward != mean
            ]

        kl = 0.0
        with out_of_memory_explained(self.cfg):
            if rollouts:
                loss, kl = policy_gradient_loss(
                    self.model, rollouts, self.cfg.temperature, pad_token_id(self.tokenizer)
                )
            else:  # no group had a reward spread: nothing to learn from (see below)
                loss = sum(p.sum() * 0.0 for p in self.model.parameters() if p.requires_grad)
        self._no_signal = not rollouts
        finished = time.perf_counter()

        metrics = {
            "train/reward_mean": statistics.fmean(rewards),
            "train/reward_std": statistics.pstdev(rewards),
            "train/response_tokens_mean": statistics.fmean(lengths),
            "train/truncated_frac": truncated / len(lengths),
            "train/groups_without_signal_frac": flat_groups / len(batch),
            "train/kl_sampler_trainer": kl,
            "train/loss": float(loss.detach()),
            "time/sample_s": sampled - started,
            "time/train_s": finished - sampled,
            "time/iteration_s": finished - started,
        }
        self.log_metrics(metrics, step=step)
        print(
            f"iter {step}: reward {metrics['train/reward_mean']:.3f}, "
            f"length {metrics['train/response_tokens_mean']:.1f}, "
            f"sample {sampled - started:.1f}s, train {finished - sampled:.1f}s",
            flush=True,
        )
        return loss


def train(
    cfg: RLConfig,
    *,
    model: torch.nn.Module | None = None,
    tokenizer: Any = None,
    callbacks: Sequence[L.Callback] = (),
) -> TrainResult:
    """Runs RL as `cfg` says; returns the final checkpoint and metrics.

    `model` and `tokenizer` (both or neither) train a model you already hold instead of
    loading `cfg.model_name`. `callbacks` are extra Lightning callbacks, run after the
    evaluation and checkpoint ones.
    Ctrl-C saves a checkpoint of the current step and raises SystemExit(1); SIGTERM (SLURM,
    Kubernetes, `timeout`) finishes the current step, saves and raises SystemExit(143); an
    error inside the loop saves the last finished step and propagates. Logs are flushed in
    each case, and `resume_from=` the checkpoint continues the run.
    """
    prompts = data.load_prompts(cfg.train_data, what="train_data")

    L.seed_everything(cfg.seed, verbose=False)
    model, tokenizer, renderer_name, base_model = load_policy(cfg, model=model, tokenizer=tokenizer)
    from bios_callbacks.renderers import get_renderer

    renderer = get_renderer(name=renderer_name, tokenizer=tokenizer)
    batches = data.BatchStream(
        prompts, cfg.batch_size, list, seed=cfg.seed, start=resumed_step(cfg)
    )
    print(
        f"RL {base_model} ({renderer_name}): {len(prompts)} prompts, {cfg.steps} iterations of "
        f"{cfg.batch_size} prompts x {cfg.group_size} samples, logs in {cfg.run_dir}",
        flush=True,
    )

    module = RLModule(model, tokenizer, cfg, renderer)
    return fit(
        cfg,
        module,
        batches,
        base_model=base_model,
        renderer_name=renderer_name,
        callbacks=callbacks,
    )


if __name__ == "__main__":
    sys.exit(run_cli(RLConfig, train, sys.argv[1:], doc=__doc__))
