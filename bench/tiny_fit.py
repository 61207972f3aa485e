"""A small random Llama, trained for a few steps on random tokens: what the callback benches
time (the model is not what they measure, the callback around it is)."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader
from transformers import LlamaConfig, LlamaForCausalLM


def random_llama(hidden_size: int = 64, max_positions: int = 256) -> LlamaForCausalLM:
    """A 2-layer random Llama (seed 0) over token ids below 8192."""
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=8192,  # the training tokens are < 5000
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_positions,
    )
    return LlamaForCausalLM(config)


class TinyLM(pl.LightningModule):
    """Next-token loss; `model` + `tokenizer` is all `EvalCallback` needs."""

    def __init__(self, model, tokenizer, optimizer: type = torch.optim.SGD, lr: float = 0.01):
        super().__init__()
        self.model, self.tokenizer = model.train(), tokenizer
        self.optimizer, self.lr = optimizer, lr

    def training_step(self, batch, batch_idx):
        return self.model(input_ids=batch, labels=batch).loss

    def configure_optimizers(self):
        return self.optimizer(self.model.parameters(), lr=self.lr)


def fit(module: TinyLM, steps: int, callbacks: Sequence[pl.Callback]) -> float:
    """Seconds `trainer.fit` takes for `steps` batches of 4 random 32-token rows."""
    data = [torch.randint(100, 5000, (32,)) for _ in range(steps * 4)]
    with tempfile.TemporaryDirectory() as run_dir:  # the callback's eval_results.jsonl
        trainer = pl.Trainer(
            accelerator="cpu",
            devices=1,
            max_steps=steps,
            logger=False,
            callbacks=list(callbacks),
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=run_dir,
        )
        start = time.perf_counter()
        trainer.fit(module, DataLoader(data, batch_size=4))
        return time.perf_counter() - start
