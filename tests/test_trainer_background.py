"""The trainers' `async_infrequent` and `snapshot_device` keys on a short real SFT run, and a
background round pending when a checkpoint is saved reaching that checkpoint's metadata.

The round's evaluator waits on a gate that opens while the checkpoint is being written, so the
round is pending at the save by the order of Lightning's hooks, never by timing.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import lightning.pytorch as pl
import torch
from lit_tiny import scalars
from tiny import make_tiny_model

from bios_callbacks.callback import EvalCallback
from bios_callbacks.callback.results import read_records
from bios_callbacks.checkpoints import read_checkpoint_metadata
from bios_callbacks.evaluators import TrainingClientEvaluator
from trainers.config import SFTConfig
from trainers.sft import train

GATE_LIMIT_S = 300  # a hang guard only: the gate is opened by the checkpoint save
CHATS = [
    {
        "messages": [
            {"role": "user", "content": f"Code {i}?"},
            {"role": "assistant", "content": f"{7 * i}"},
        ]
    }
    for i in range(8)
]


class Gated(TrainingClientEvaluator):
    """Reports the step it evaluates; at a step with a gate, first waits until it opens.
    Records the model each round scored (`models[step]`)."""

    name = "gated"

    def __init__(self, gates: dict[int, threading.Event], models: dict[int, torch.nn.Module]):
        self.gates, self.models, self.step = gates, models, -1

    def set_run_context(self, *, log_dir=None, step=None):
        self.step = step

    async def __call__(self, training_client):
        step = self.step
        gate = self.gates.get(step)
        if gate is not None and not await asyncio.to_thread(gate.wait, GATE_LIMIT_S):
            raise RuntimeError(f"the gate of step {step} was never opened")
        self.models[step] = training_client.model
        return {"step": float(step)}


class OpensGateWhileSaving(pl.Callback):
    """While a checkpoint is written (Lightning takes the callbacks' states), records which
    background round is in flight, then opens that round's gate. Keeps the trainer's
    EvalCallback and model for the test."""

    def __init__(self, gates: dict[int, threading.Event]):
        self.gates = gates
        self.pending_at_save: list[int | None] = []
        self.callback: EvalCallback | None = None
        self.live: torch.nn.Module | None = None

    def setup(self, trainer, pl_module, stage):
        self.callback = next(c for c in trainer.callbacks if isinstance(c, EvalCallback))
        self.live = pl_module.model

    def state_dict(self):
        pending = self.callback.background_pending
        self.pending_at_save.append(pending)
        if pending in self.gates:
            self.gates[pending].set()
        return {}


def test_background_rounds_from_the_config_and_a_pending_round_in_checkpoint_metadata(
    tokenizer, tmp_path, monkeypatch
):
    monkeypatch.setenv("BIOS_CHECKPOINT_ROOT", str(tmp_path / "runs"))
    gates = {2: threading.Event()}
    models: dict[int, torch.nn.Module] = {}
    probe = OpensGateWhileSaving(gates)
    cfg = SFTConfig(
        train_data=CHATS,
        batch_size=4,
        learning_rate=3e-3,
        steps=6,
        save_every=3,
        infrequent_evaluator_builders=[lambda: Gated(gates, models)],
        infrequent_eval_every=2,
        async_infrequent=True,
        snapshot_device="cpu",
        run_name="background",
    )
    train(cfg, model=make_tiny_model(tokenizer), tokenizer=tokenizer, callbacks=[probe])
    run_dir = Path(cfg.log_dir)

    # the rounds of steps 0, 2 and 4 ran in the background on a copy on the snapshot device;
    # the last step's round ran on the live weights; each is logged once, at its own step
    records = read_records(run_dir / "eval_results.jsonl")
    assert [(r.step, r.background) for r in records] == [
        (0, True),
        (2, True),
        (4, True),
        (6, False),
    ]
    assert scalars(run_dir)["eval/gated/step"] == [(0, 0.0), (2, 2.0), (4, 4.0), (6, 6.0)]
    assert all(models[step] is not probe.live for step in (0, 2, 4)) and models[6] is probe.live
    assert {p.device.type for step in (0, 2, 4) for p in models[step].parameters()} == {"cpu"}
    assert probe.callback.snapshot_device == torch.device("cpu")

    # the round of step 2 was still pending when the step-3 checkpoint was written; its
    # metadata holds that round's results, as its trainer state does
    assert probe.pending_at_save[0] == 2
    saved = read_checkpoint_metadata(run_dir / "checkpoints" / "step_000003")
    assert saved.eval_results["eval/gated/step"] == 2.0
    final = read_checkpoint_metadata(run_dir / "checkpoints" / "step_000006")
    assert final.eval_results["eval/gated/step"] == 6.0
