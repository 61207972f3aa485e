"""Inline evaluations in your own Lightning training run.

Fine-tunes the embedded SmolLM2-135M-Instruct for a few steps on a toy chat set while
EvalCallback runs a cheap held-out loss every few steps and a sampled QA eval more rarely.
Results go to TensorBoard, to `eval_results.jsonl` in the log dir, and into each checkpoint.

    python -m examples.inline_evals [steps=20 log_dir=...]
    tensorboard --logdir runs/inline_evals

Logs, `eval_results.jsonl` and Lightning checkpoints go to `<log_dir>/version_<N>/`; `log_dir`
defaults to `$BIOS_CHECKPOINT_ROOT/inline_evals` (root `./runs`).
"""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.data import DataLoader

from bios_callbacks import EvalCallback
from bios_callbacks.checkpoints import checkpoint_root
from bios_callbacks.evaluators import NLLEvaluator, QAEvaluator
from bios_callbacks.models import EMBEDDED_MODEL, load_model
from bios_callbacks.models.tokens import pad_token_id
from bios_callbacks.renderers import get_renderer
from trainers.cli import parse_args


def chat(question: str, answer: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


TRAIN = [
    chat(f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}.") for a in range(6) for b in range(4)
]
HELD_OUT = [
    chat("What is 7 plus 5?", "7 plus 5 is 12."),
    chat("What is 9 plus 2?", "9 plus 2 is 11."),
]
QA = [
    {"input": "What is the capital of France?", "output": "Paris"},
    {"input": "What is the capital of Germany?", "output": "Berlin"},
    {"input": "What is 8 plus 3?", "output": "11"},
]


class ChatSFT(pl.LightningModule):
    """Holds the LM as `model` and its tokenizer as `tokenizer`: all EvalCallback needs."""

    def __init__(self, model, tokenizer, lr: float = 1e-5):
        super().__init__()
        self.model, self.tokenizer, self.lr = model.train(), tokenizer, lr

    def training_step(self, batch, batch_idx):
        tokens, weights = batch
        logits = self.model(input_ids=tokens[:, :-1]).logits
        losses = torch.nn.functional.cross_entropy(
            logits.transpose(1, 2), tokens[:, 1:], reduction="none"
        )
        loss = (losses * weights[:, 1:]).sum() / weights[:, 1:].sum()
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.model.parameters(), lr=self.lr)


def collate(examples, pad_id: int):
    longest = max(len(e.tokens) for e in examples)
    tokens = torch.full((len(examples), longest), pad_id)
    weights = torch.zeros((len(examples), longest))
    for row, example in enumerate(examples):
        tokens[row, : len(example.tokens)] = torch.tensor(example.tokens)
        weights[row, : len(example.weights)] = torch.as_tensor(example.weights)
    return tokens, weights


@dataclass
class Args:
    """The command line: optimizer steps, and where logs go (default under the checkpoint root)."""

    steps: int = 20
    log_dir: str | None = None


def main(argv: list[str]) -> None:
    args = parse_args(Args, argv, doc=__doc__)
    log_dir = args.log_dir or str(checkpoint_root() / "inline_evals")

    model, tokenizer = load_model(EMBEDDED_MODEL)
    renderer = get_renderer(name="chatml", tokenizer=tokenizer)
    train = [renderer.build_supervised_example(c) for c in TRAIN]

    def grader_fn(response: str, target: str) -> bool:
        return target.lower() in response.lower()

    config = {
        # Regular evaluations: cheap, every few optimizer steps.
        "evaluator_builders": [
            functools.partial(NLLEvaluator.from_conversations, HELD_OUT, renderer, name="test")
        ],
        "eval_every": 5,
        # Infrequent (expensive) evaluations: sampling.
        "infrequent_evaluator_builders": [
            functools.partial(QAEvaluator, QA, grader_fn, renderer=renderer, max_tokens=24)
        ],
        "infrequent_eval_every": 10,
    }
    callback = EvalCallback(
        **config,
        eval_on_checkpoint=True,  # every checkpoint carries eval results
        training_texts=[m["content"] for c in TRAIN for m in c],  # held-out guard
    )
    trainer = pl.Trainer(
        accelerator="auto",
        devices=1,
        max_steps=args.steps,
        logger=TensorBoardLogger(log_dir, name=""),
        callbacks=[callback, ModelCheckpoint(monitor="eval/test/loss", every_n_train_steps=10)],
        log_every_n_steps=1,
    )
    loader = DataLoader(
        train,
        batch_size=4,
        shuffle=True,
        collate_fn=functools.partial(collate, pad_id=pad_token_id(tokenizer)),
    )
    trainer.fit(ChatSFT(model, tokenizer), loader)
    print(f"latest eval results (step {callback.latest.step}): {callback.latest.metrics}")
    print(f"all rounds: {trainer.log_dir}/eval_results.jsonl")


if __name__ == "__main__":
    main(sys.argv[1:])
