"""A tiny LightningModule over `tiny_model` for EvalCallback tests."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tiny import make_tiny_model
from torch.utils.data import DataLoader


class TinyLM(pl.LightningModule):
    """Next-token loss on fixed random sequences; `model` + `tokenizer` is all EvalCallback
    needs."""

    def __init__(self, model, tokenizer, lr: float = 0.05):
        super().__init__()
        self.model = model.train()
        self.tokenizer = tokenizer
        self.lr = lr

    def training_step(self, batch, batch_idx):
        return self.model(input_ids=batch, labels=batch).loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.model.parameters(), lr=self.lr)


class LazyTinyLM(TinyLM):
    """A TinyLM that creates its model (the tiny one, seed 0) in `configure_model`, as Lightning
    suggests for large models: callbacks are set up before it exists."""

    def __init__(self, tokenizer, lr: float = 0.05):
        pl.LightningModule.__init__(self)
        self.model, self.tokenizer, self.lr = None, tokenizer, lr

    def configure_model(self):
        if self.model is None:
            self.model = make_tiny_model(self.tokenizer).train()


def token_loader(num: int = 16, length: int = 12, batch_size: int = 2, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    data = [torch.randint(100, 5000, (length,), generator=generator) for _ in range(num)]
    return DataLoader(data, batch_size=batch_size)


def make_trainer(tmp_path, callbacks, **kwargs) -> pl.Trainer:
    options = dict(
        accelerator="cpu",
        devices=1,
        logger=TensorBoardLogger(str(tmp_path), name="run"),
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=False,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
    )
    options.update(kwargs)
    return pl.Trainer(callbacks=callbacks, **options)


def scalars(log_dir) -> dict[str, list[tuple[int, float]]]:
    """Every scalar tag in a TensorBoard log dir -> [(step, value), ...]."""
    events = EventAccumulator(str(log_dir))
    events.Reload()
    return {
        tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]
    }


def steps(log_dir, tag: str) -> list[int]:
    return [step for step, _ in scalars(log_dir)[tag]]
