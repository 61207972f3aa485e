"""Supervised fine-tuning on chat conversations, with inline evaluations.

Loss is next-token cross-entropy on every assistant message of a conversation
(`TRAIN_ON_WHAT`: the renderer's `build_supervised_example` weights for
`TrainOnWhat.ALL_ASSISTANT_MESSAGES`). Train loss is printed every step as `train/loss`. The
test loss is an `NLLEvaluator` named `test` over the same tokens and weights of `test_data`,
run with the regular evaluators every `eval_every` steps (as in tinker-cookbook) and logged as
`eval/test/loss`; everything goes to the run's logger in `log_dir`.

Command line:
    python -m trainers.sft train_data=train.jsonl test_data=test.jsonl steps=100 \
        learning_rate=1e-5 eval_every=20 evaluator_builders=my_evals:qa_builder

Python:
    >>> from trainers.sft import SFTConfig, train
    >>> result = train(SFTConfig(train_data="train.jsonl", steps=100,  # doctest: +SKIP
    ...     evaluator_builders=[eval_builder_1], eval_every=20))
    >>> result.checkpoint  # doctest: +SKIP
    'bios://sft-20250101-120000-3f9a1c/step_000100'
"""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Sequence
from typing import Any

from trainers.cli import exit_on_bad_words, run_cli
from trainers.config import SFTConfig

if __name__ == "__main__":  # --help and bad words are answered before torch and Lightning load
    exit_on_bad_words(SFTConfig, sys.argv[1:], __doc__)

import lightning as L
import torch

from bios_callbacks.evaluators import NLLEvaluator
from bios_callbacks.models.token_logprobs import token_logprobs
from bios_callbacks.models.tokens import pad_token_id
from bios_callbacks.renderers import TrainOnWhat
from trainers import data
from trainers.policy import (
    PolicyModule,
    TrainResult,
    fit,
    load_policy,
    out_of_memory_explained,
    resumed_step,
)

__all__ = ["TRAIN_ON_WHAT", "SFTConfig", "SFTModule", "train"]

TRAIN_ON_WHAT = TrainOnWhat.ALL_ASSISTANT_MESSAGES
"""What SFT learns: every assistant message (earlier turns too, not only the last)."""


def weighted_loss(
    model: torch.nn.Module, batch: data.SupervisedBatch
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (sum of weighted token losses, sum of weights) for one padded batch."""
    logprobs = token_logprobs(model, batch.tokens)
    return -(logprobs * batch.weights).sum(), batch.weights.sum()


class SFTModule(PolicyModule):
    """The SFT LightningModule: `model` + `tokenizer` and the masked loss."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, cfg: SFTConfig):
        super().__init__(model, tokenizer, cfg)
        self.step_started = time.perf_counter()

    def training_step(self, batch: data.SupervisedBatch, batch_idx: int) -> torch.Tensor:
        step = self.global_step  # the weights after `step` optimizer updates
        with out_of_memory_explained(self.cfg):
            total, weight = weighted_loss(self.model, batch)
        loss = total / weight
        now = time.perf_counter()
        seconds, self.step_started = now - self.step_started, now
        value = loss.item()
        self.log_metrics({"train/loss": value, "time/step_s": seconds}, step=step)
        print(f"step {step}: train loss {value:.4f} ({seconds:.2f}s)", flush=True)
        return loss


TEST_EVALUATOR = "test"
"""The name of SFT's test-loss evaluator: its metrics are `eval/test/loss` and `.../loss_stderr`."""


def train(
    cfg: SFTConfig,
    *,
    model: torch.nn.Module | None = None,
    tokenizer: Any = None,
    callbacks: Sequence[L.Callback] = (),
) -> TrainResult:
    """Runs supervised fine-tuning as `cfg` says; returns the final checkpoint and metrics.

    `model` and `tokenizer` (both or neither) train a model you already hold instead of
    loading `cfg.model_name` (which is still recorded as the checkpoints' base model).
    `callbacks` are extra Lightning callbacks, run after the evaluation and checkpoint ones.
    Ctrl-C saves a checkpoint of the current step and raises SystemExit(1); SIGTERM (SLURM,
    Kubernetes, `timeout`) finishes the current step, saves and raises SystemExit(143); an
    error inside the loop saves the last finished step and propagates. Logs are flushed in
    each case, and `resume_from=` the checkpoint continues the run.
    """
    # data: load and check first, so bad input fails before the model loads
    train_convs = data.load_conversations(cfg.train_data, what="train_data")
    test_convs = data.load_conversations(cfg.test_data, what="test_data") if cfg.test_data else []
    data.warn_on_overlap(train_convs, test_convs)

    # model, renderer, tokenized examples
    L.seed_everything(cfg.seed, verbose=False)
    model, tokenizer, renderer_name, base_model = load_policy(cfg, model=model, tokenizer=tokenizer)
    from bios_callbacks.renderers import get_renderer

    renderer = get_renderer(name=renderer_name, tokenizer=tokenizer)
    pad_id = pad_token_id(tokenizer)
    train_examples = data.tokenize_conversations(
        train_convs, renderer, cfg.max_length, TRAIN_ON_WHAT
    )
    test_examples = data.tokenize_conversations(test_convs, renderer, cfg.max_length, TRAIN_ON_WHAT)
    test_loss = (
        [functools.partial(NLLEvaluator, test_examples, name=TEST_EVALUATOR)]
        if test_examples
        else []
    )
    batches = data.BatchStream(
        train_examples,
        cfg.batch_size,
        lambda batch: data.collate(batch, pad_id),
        seed=cfg.seed,
        start=resumed_step(cfg),
        length=lambda example: len(example[0]),  # batches of similar lengths: less padding
    )
    print(
        f"SFT {base_model} ({renderer_name}): {len(train_examples)} train / "
        f"{len(test_examples)} test conversations, {cfg.steps} steps of {cfg.batch_size}, "
        f"logs in {cfg.run_dir}",
        flush=True,
    )

    # train: Lightning runs the loop; callbacks evaluate and checkpoint
    module = SFTModule(model, tokenizer, cfg)
    return fit(
        cfg,
        module,
        batches,
        base_model=base_model,
        renderer_name=renderer_name,
        callbacks=callbacks,
        evaluator_builders=test_loss,
    )


if __name__ == "__main__":
    sys.exit(run_cli(SFTConfig, train, sys.argv[1:], doc=__doc__))
