"""Background infrequent rounds (`EvalCallback(async_infrequent=True)`) in real Lightning runs.

A round's evaluator waits on a gate (a threading.Event) that a callback opens once training
has gone some steps further, so what a test sees follows from the order of Lightning's hooks,
never from timing. The gates' wait limit is only a guard against a hang.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lit_tiny import TinyLM, make_trainer, scalars, steps, token_loader
from tiny import make_tiny_model

from bios_callbacks.callback import EvalCallback
from bios_callbacks.callback.results import read_records
from bios_callbacks.callback.snapshot import WeightSnapshot
from bios_callbacks.evaluators import NLLEvaluator, SamplingClientEvaluator, TrainingClientEvaluator
from bios_callbacks.training_client import TrainingClient

HELD_OUT = [[1, 200, 300, 400, 500], [1, 600, 700, 800]]
GATE_LIMIT_S = 300  # a hang guard only: every gate is opened by a training hook


class Gated(TrainingClientEvaluator):
    """At a step with a gate, waits until the test opens it; then keeps a copy of the weights
    it was given and reports its step and the log-prob of HELD_OUT under those weights."""

    name = "gated"

    def __init__(self, gates: dict[int, threading.Event], seen: dict[int, dict] | None = None):
        self.gates, self.seen, self.step = gates, seen, -1

    def set_run_context(self, *, log_dir=None, step=None):
        self.step = step

    async def __call__(self, training_client):
        step = self.step
        gate = self.gates.get(step)
        if gate is not None and not await asyncio.to_thread(gate.wait, GATE_LIMIT_S):
            raise RuntimeError(f"the gate of step {step} was never opened")
        if self.seen is not None:
            state = training_client.model.state_dict()
            self.seen[step] = {key: value.detach().clone() for key, value in state.items()}
        logprobs = await training_client.compute_logprobs_async(HELD_OUT)
        return {"step": float(step), "logprob": sum(map(sum, logprobs))}


class Raises(TrainingClientEvaluator):
    name = "raises"

    async def __call__(self, training_client):
        raise ValueError("grader exploded")


class OpensGates(pl.Callback):
    """Opens the gate of the round of step N once training reaches step N + `after`, and
    records at every step which background round is in flight (after EvalCallback's hook)."""

    def __init__(self, callback: EvalCallback, gates: dict[int, threading.Event], after: int):
        self.callback, self.gates, self.after = callback, gates, after
        self.pending_at: dict[int, int | None] = {}

    def on_train_batch_end(self, trainer, *args):
        step = trainer.global_step
        self.pending_at[step] = self.callback.background_pending
        for start, gate in self.gates.items():
            if step >= start + self.after:
                gate.set()


class FinishesAndReads(pl.Callback):
    """At `at_step` (after its gate opened), finishes the round in flight and reads its value."""

    def __init__(self, callback: EvalCallback, at_step: int):
        self.callback, self.at_step = callback, at_step
        self.seen: tuple[float, int | None] | None = None

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == self.at_step:
            self.callback.finish_background_round(trainer)
            value = float(trainer.callback_metrics["eval/gated/step"])
            self.seen = (value, self.callback.background_pending)


class WeightCopies(pl.Callback):
    """A copy of the live weights at every step."""

    def __init__(self):
        self.copies: dict[int, dict[str, torch.Tensor]] = {}

    def _copy(self, trainer, pl_module):
        state = pl_module.model.state_dict()
        self.copies[trainer.global_step] = {k: v.detach().clone() for k, v in state.items()}

    def on_train_start(self, trainer, pl_module):
        self._copy(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, *args):
        self._copy(trainer, pl_module)


def rounds_of(log_dir) -> list[tuple[int, tuple[str, ...], bool]]:
    """(step, lists, background) of every round in the run's eval_results.jsonl."""
    records = read_records(Path(log_dir) / "eval_results.jsonl")
    return [(r.step, tuple(r.lists), r.background) for r in records]


def test_training_goes_on_while_a_slow_round_runs_and_it_is_logged_at_its_step(
    tmp_path, tiny_model, tokenizer, caplog, capsys
):
    gates = {0: threading.Event(), 4: threading.Event()}
    callback = EvalCallback(
        evaluator_builders=[functools.partial(NLLEvaluator, HELD_OUT)],
        eval_every=2,
        infrequent_evaluator_builders=[lambda: Gated(gates), Raises],
        infrequent_eval_every=4,
        async_infrequent=True,
    )
    opener = OpensGates(callback, gates, after=3)
    reader = FinishesAndReads(callback, at_step=3)
    trainer = make_trainer(tmp_path, [callback, opener, reader], max_steps=8)
    trainer.fit(TinyLM(tiny_model, tokenizer), token_loader())

    # steps 1-3 trained while the round of step 0 waited on its gate, 5-7 during step 4's;
    # the last step's round runs on the live weights once the pending one is logged
    assert opener.pending_at == {1: 0, 2: 0, 3: 0, 4: 4, 5: 4, 6: 4, 7: 4, 8: None}
    assert reader.seen == (0.0, None)

    logged = scalars(trainer.log_dir)
    assert logged["eval/gated/step"] == [(0, 0.0), (4, 4.0), (8, 8.0)]
    assert steps(trainer.log_dir, "eval/nll/loss") == [0, 2, 4, 6, 8]
    # a failing evaluator is counted in its own round; the others' values are still logged
    assert logged["eval/background_failures"] == [(0, 1.0), (4, 1.0)]
    assert steps(trainer.log_dir, "eval/background_time_s") == [0, 4]
    assert logged["eval/failures"] == [(0, 0.0), (2, 0.0), (4, 0.0), (6, 0.0), (8, 1.0)]
    assert "evaluator 'raises' failed at step 4 (exception): ValueError('grader exploded')" in (
        caplog.text
    )

    assert sorted(rounds_of(trainer.log_dir)) == [
        (0, ("infrequent",), True),
        (0, ("regular",), False),
        (2, ("regular",), False),
        (4, ("infrequent",), True),
        (4, ("regular",), False),
        (6, ("regular",), False),
        (8, ("regular", "infrequent"), False),
    ]
    assert callback.last_evaluated == {"regular": 8, "infrequent": 8}

    # the console says which rounds run in the background, and their values when done
    out = capsys.readouterr().out
    assert "[eval] step 4: running 2 evaluator(s) (infrequent) in the background\n" in out
    assert "[eval] step 4 gated: step=4 logprob=" in out
    assert "[eval] step 4 raises: FAILED" in out
    assert trainer.callback_metrics["eval/gated/step"] == 8.0


def test_each_background_round_sees_exactly_its_steps_weights(tmp_path, tokenizer):
    gates = {0: threading.Event(), 2: threading.Event(), 4: threading.Event()}
    seen: dict[int, dict] = {}
    callback = EvalCallback(
        infrequent_evaluator_builders=[lambda: Gated(gates, seen)],
        infrequent_eval_every=2,
        async_infrequent=True,
    )
    # a gate opens one step later: the live weights have moved on when the round reads its own
    opener = OpensGates(callback, gates, after=1)
    copies = WeightCopies()
    trainer = make_trainer(tmp_path, [callback, opener, copies], max_steps=6)
    trainer.fit(TinyLM(make_tiny_model(tokenizer), tokenizer), token_loader())

    assert sorted(seen) == [0, 2, 4, 6]
    for step in (0, 2, 4):
        assert opener.pending_at[step + 1] == step  # still running a step later
        for key, value in seen[step].items():
            assert torch.equal(value, copies.copies[step][key]), (step, key)
        assert any(
            not torch.equal(value, copies.copies[step + 1][key])
            for key, value in seen[step].items()
        )

    # the value logged at each step is the one its own weights give
    logged = dict(scalars(trainer.log_dir)["eval/gated/logprob"])
    for step in (0, 2, 4, 6):
        model = make_tiny_model(tokenizer)
        model.load_state_dict(copies.copies[step])
        expected = sum(map(sum, TrainingClient.from_module(model).compute_logprobs(HELD_OUT)))
        assert logged[step] == pytest.approx(expected, rel=1e-6)


class PendingAtSave(pl.Callback):
    """While a checkpoint is being written (its callbacks' states are taken), records which
    background round is in flight, then opens that round's gate."""

    def __init__(self, callback: EvalCallback, gates: dict[int, threading.Event]):
        self.callback, self.gates = callback, gates
        self.pending_at_save: list[int | None] = []

    def state_dict(self):
        pending = self.callback.background_pending
        self.pending_at_save.append(pending)
        if pending in self.gates:
            self.gates[pending].set()
        return {}


class InterruptAt(pl.Callback):
    """Presses Ctrl-C (raises KeyboardInterrupt) at `step`."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == self.step:
            raise KeyboardInterrupt


def test_a_round_pending_at_a_ctrl_c_checkpoint_is_logged_once_across_the_resume(
    tokenizer, tmp_path, monkeypatch
):
    from trainers.checkpointing import TRAINER_STATE
    from trainers.config import SFTConfig
    from trainers.sft import train

    monkeypatch.setenv("BIOS_CHECKPOINT_ROOT", str(tmp_path / "runs"))
    chats = [
        {
            "messages": [
                {"role": "user", "content": f"Code {i}?"},
                {"role": "assistant", "content": f"{7 * i}"},
            ]
        }
        for i in range(8)
    ]
    common = dict(train_data=chats, batch_size=4, learning_rate=3e-3, run_name="pending")

    def eval_callback(gates):
        return EvalCallback(
            infrequent_evaluator_builders=[lambda: Gated(gates)],
            infrequent_eval_every=3,
            async_infrequent=True,
        )

    gates = {3: threading.Event()}
    first = eval_callback(gates)
    saver_probe = PendingAtSave(first, gates)
    with pytest.raises(SystemExit):  # what the SFT trainer does after saving on Ctrl-C
        train(
            SFTConfig(steps=8, **common),
            model=make_tiny_model(tokenizer),
            tokenizer=tokenizer,
            callbacks=[first, saver_probe, InterruptAt(5)],
        )
    run_dir = tmp_path / "runs" / "pending"
    # the round of step 3 was still waiting when the step-5 checkpoint was written; the save
    # waited for it, so the checkpoint's schedule counts it and the log has it at step 3
    assert saver_probe.pending_at_save == [3]
    assert [s for s, lists, _ in rounds_of(run_dir)] == [0, 3]
    state = torch.load(run_dir / "checkpoints" / "step_000005" / TRAINER_STATE, weights_only=False)
    saved = next(v for k, v in state["callbacks"].items() if k.startswith("EvalCallback"))
    assert saved["last_evaluated"]["infrequent"] == 3
    assert state["eval_results"]["step"] == 3  # logged before the checkpoint was written

    train(
        SFTConfig(steps=8, resume_from="bios://pending/step_000005", **common),
        callbacks=[eval_callback({})],
    )
    assert rounds_of(run_dir) == [
        (0, ("infrequent",), True),
        (3, ("infrequent",), True),
        (6, ("infrequent",), True),
        (8, ("infrequent",), False),
    ]
    assert scalars(run_dir)["eval/gated/step"] == [(0, 0.0), (3, 3.0), (6, 6.0), (8, 8.0)]


def test_model_checkpoint_ranks_each_checkpoint_by_its_own_steps_value(
    tmp_path, tiny_model, tokenizer
):
    checkpoints = ModelCheckpoint(
        dirpath=tmp_path / "ckpt", every_n_train_steps=3, save_top_k=-1, monitor="eval/nll/loss"
    )
    callback = EvalCallback(
        infrequent_evaluator_builders=[functools.partial(NLLEvaluator, HELD_OUT)],
        infrequent_eval_every=2,
        async_infrequent=True,
        eval_on_checkpoint=True,
    )
    trainer = make_trainer(
        tmp_path, [callback, checkpoints], max_steps=6, enable_checkpointing=True
    )
    trainer.fit(TinyLM(tiny_model, tokenizer), token_loader())

    # rounds at checkpoint steps run before the save; the others in the background
    assert [(s, background) for s, _, background in rounds_of(trainer.log_dir)] == [
        (0, True),
        (2, True),
        (3, False),
        (4, True),
        (6, False),
    ]
    losses = dict(scalars(trainer.log_dir)["eval/nll/loss"])
    assert sorted(losses) == [0, 2, 3, 4, 6]
    ranked = {Path(k).name: v.item() for k, v in checkpoints.best_k_models.items()}
    assert ranked == {
        "epoch=0-step=3.ckpt": pytest.approx(losses[3]),
        "epoch=0-step=6.ckpt": pytest.approx(losses[6]),
    }
    for path in sorted((tmp_path / "ckpt").iterdir()):
        saved = torch.load(path, weights_only=False)
        assert saved["eval_results"]["step"] == saved["global_step"]


def test_a_round_pending_when_model_checkpoint_reads_its_monitor_is_logged_first(
    tmp_path, tiny_model, tokenizer
):
    """Without eval_on_checkpoint a checkpoint is ranked by the newest round, as in a
    synchronous run: one still running in the background is waited for and logged first."""
    checkpoints = ModelCheckpoint(
        dirpath=tmp_path / "ckpt",
        every_n_train_steps=3,
        save_top_k=-1,
        monitor="eval/gated/logprob",
    )
    gates = {2: threading.Event()}
    callback = EvalCallback(
        infrequent_evaluator_builders=[lambda: Gated(gates)],
        infrequent_eval_every=2,
        async_infrequent=True,
    )
    opener = OpensGates(callback, gates, after=1)  # runs before EvalCallback: opens at step 3
    trainer = make_trainer(
        tmp_path, [opener, callback, checkpoints], max_steps=6, enable_checkpointing=True
    )
    trainer.fit(TinyLM(tiny_model, tokenizer), token_loader())

    assert opener.pending_at[3] == 2  # in flight when step 3 ended, before the save
    values = dict(scalars(trainer.log_dir)["eval/gated/logprob"])
    ranked = {Path(k).name: v.item() for k, v in checkpoints.best_k_models.items()}
    assert ranked == {
        "epoch=0-step=3.ckpt": pytest.approx(values[2]),
        "epoch=0-step=6.ckpt": pytest.approx(values[6]),
    }


class SamplesUnseeded(SamplingClientEvaluator):
    """Samples at temperature 1 without a seed."""

    name = "sampled"

    async def __call__(self, sampling_client):
        from bios_callbacks.types import SamplingParams

        params = SamplingParams(max_tokens=3, temperature=1.0)
        results = await asyncio.gather(
            *(sampling_client.sample_async(prompt=[1, 2, 3], sampling_params=params) for _ in "ab")
        )
        return {"tokens": float(sum(len(r.sequences[0].tokens) for r in results))}


def _with_dropout(model):
    for module in model.modules():
        if hasattr(module, "attention_dropout"):
            module.attention_dropout = 0.5
    return model


def test_background_rounds_leave_training_as_without_them(tmp_path, tokenizer):
    """Unseeded sampling in the background draws no seeds from torch's global generator, so
    the training's dropout masks, and hence its weights, are those of a run without rounds."""

    def run(callbacks, where):
        module = TinyLM(_with_dropout(make_tiny_model(tokenizer)), tokenizer)
        torch.manual_seed(123)
        make_trainer(tmp_path / where, callbacks, max_steps=4).fit(module, token_loader())
        return module

    callback = EvalCallback(
        infrequent_evaluator_builders=[SamplesUnseeded],
        infrequent_eval_every=1,
        async_infrequent=True,
    )
    evaluated = run([callback], "with")
    plain = run([], "without")
    for a, b in zip(evaluated.parameters(), plain.parameters(), strict=True):
        assert torch.equal(a, b)
    assert steps(evaluated.trainer.log_dir, "eval/sampled/tokens") == [0, 1, 2, 3, 4]


def test_a_lora_snapshot_copies_only_the_adapter(tiny_model):
    from peft import LoraConfig, get_peft_model

    lora = get_peft_model(tiny_model, LoraConfig(r=4, target_modules="all-linear"))
    adapter = [p for p in lora.parameters() if p.requires_grad]
    buffers = list(lora.buffers())
    snapshot = WeightSnapshot()
    copy = snapshot.take(lora)

    nbytes = sum(t.numel() * t.element_size() for t in [*adapter, *buffers])
    total = sum(p.numel() * p.element_size() for p in lora.parameters())
    assert snapshot.copied_bytes == nbytes < total / 10
    live = dict(lora.named_parameters())
    for name, param in copy.named_parameters():
        assert (param is live[name]) == (not live[name].requires_grad), name
        assert not param.requires_grad

    with torch.no_grad():
        for param in adapter:
            param.add_(1.0)
    name = next(n for n, p in lora.named_parameters() if p.requires_grad)
    copied = dict(copy.named_parameters())[name]
    assert not torch.equal(copied, live[name])
    assert snapshot.take(lora) is copy and torch.equal(copied, live[name])

    # a base weight that starts training is copied from then on
    base = next(p for p in lora.parameters() if not p.requires_grad)
    base.requires_grad_(True)
    assert snapshot.take(lora) is not copy
    assert snapshot.copied_bytes == nbytes + base.numel() * base.element_size()


def test_a_full_snapshot_copies_every_weight_once(tiny_model):
    tokens = torch.tensor([HELD_OUT[0]])
    tiny_model.train()(input_ids=tokens, labels=tokens).loss.backward()  # gradients: not copied
    snapshot = WeightSnapshot()
    copy = snapshot.take(tiny_model)
    unique = {p.data_ptr(): p for p in tiny_model.parameters()}.values()  # tied weights once
    params = sum(p.numel() * p.element_size() for p in unique)
    buffers = sum(b.numel() * b.element_size() for b in tiny_model.buffers())
    assert snapshot.copied_bytes == params + buffers
    assert not copy.training and tiny_model.training
    assert all(p.grad is None and not p.requires_grad for p in copy.parameters())


class NoModel(pl.LightningModule):
    def __init__(self, lm):
        super().__init__()
        self.lm = lm
        self.make_training_client = lambda: TrainingClient.from_module(self.lm)

    def training_step(self, batch, batch_idx):
        return self.lm(input_ids=batch, labels=batch).loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.lm.parameters(), lr=0.01)


def test_bad_settings_are_explained(tmp_path, tiny_model):
    with pytest.raises(ValueError, match=r"snapshot_device='cpu' only applies.*async_infrequent"):
        EvalCallback(snapshot_device="cpu")
    with pytest.raises(ValueError, match=r"snapshot_device='gpu0': expected a torch device"):
        EvalCallback(async_infrequent=True, snapshot_device="gpu0")
    callback = EvalCallback(
        infrequent_evaluator_builders=[functools.partial(NLLEvaluator, HELD_OUT)],
        async_infrequent=True,
    )
    trainer = make_trainer(tmp_path, [callback], max_steps=1)
    with pytest.raises(TypeError, match=r"NoModel has no such pair.*async_infrequent=False"):
        trainer.fit(NoModel(tiny_model), token_loader())


def test_the_example_reads_key_value_words(capsys):
    from examples import background_evals

    assert background_evals.main(["--help"]) == 0
    assert "infrequent_eval_every=3" in capsys.readouterr().out
    assert background_evals.main(["stepz=3"]) == 2  # before any model loads
    assert capsys.readouterr().err.startswith("error: Unknown SFTConfig key(s) ['stepz']")


@pytest.mark.ddp
def test_under_ddp_every_rank_publishes_each_background_round_once_in_step(tmp_path):
    """2 CPU processes (gloo): whichever rank finishes a round first waits for the other, so
    both log it together at its step; rank 0's numbers are the ones logged, once."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    env.pop("LOCAL_RANK", None)
    done = subprocess.run(
        [sys.executable, __file__, str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,  # a deadlock fails the test instead of hanging it
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["metrics"] == ranks[1]["metrics"]
    log_dir = ranks[0]["log_dir"]
    assert steps(log_dir, "eval/qa/accuracy") == [0, 2, 4, 5]
    assert steps(log_dir, "eval/background_time_s") == [0, 2, 4]
    assert [(s, bg) for s, _, bg in rounds_of(log_dir)] == [
        (0, True),
        (2, True),
        (4, True),
        (5, False),
    ]


def _ddp_run(out_dir: str) -> None:
    """What each rank of the DDP test runs."""
    from lightning.pytorch.loggers import TensorBoardLogger

    from bios_callbacks.evaluators import QAEvaluator
    from bios_callbacks.models import EMBEDDED_MODEL
    from bios_callbacks.tokenizer_utils import get_tokenizer

    tokenizer = get_tokenizer(EMBEDDED_MODEL)
    qa = functools.partial(
        QAEvaluator,
        [{"input": "Capital of France?", "target": "Paris"}, {"input": "2+2?", "target": "4"}],
        lambda response, target: target in response,
        renderer_name="chatml",
        max_tokens=4,
        name="qa",
    )
    callback = EvalCallback(
        infrequent_evaluator_builders=[qa, functools.partial(NLLEvaluator, HELD_OUT)],
        infrequent_eval_every=2,
        async_infrequent=True,
    )
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        max_steps=5,
        logger=TensorBoardLogger(out_dir, name="run"),
        callbacks=[callback],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(TinyLM(make_tiny_model(tokenizer), tokenizer), token_loader())
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("eval/")}
    result = {"metrics": metrics, "log_dir": trainer.log_dir}
    Path(out_dir, f"rank{trainer.global_rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    _ddp_run(sys.argv[1])
