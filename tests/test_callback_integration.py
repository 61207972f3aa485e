"""EvalCallback with sampling evaluators, the module protocol, progress, and the held-out guard."""

from __future__ import annotations

import asyncio
import functools

import lightning.pytorch as pl
import pytest
import torch
from lit_tiny import TinyLM, make_trainer, steps, token_loader
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from bios_callbacks.callback import EvalCallback
from bios_callbacks.callback.run_sync import run_sync
from bios_callbacks.evaluators import NLLEvaluator, QAEvaluator
from bios_callbacks.training_client import TrainingClient

QUESTIONS = [{"input": "What is the capital of France?", "target": "Paris"}]


def qa_builder():
    return QAEvaluator(QUESTIONS, lambda r, t: t in r, renderer_name="chatml", max_tokens=4)


def test_sampling_evaluator_logs_accuracy_and_transcripts(tmp_path, tiny_model, tokenizer):
    callback = EvalCallback(evaluator_builders=[qa_builder], eval_every=2)
    trainer = make_trainer(tmp_path, [callback], max_steps=2)
    trainer.fit(TinyLM(tiny_model, tokenizer), token_loader())
    assert steps(trainer.log_dir, "eval/qa/accuracy") == [0, 2]
    events = EventAccumulator(trainer.log_dir)
    events.Reload()
    [tag] = [t for t in events.Tags()["tensors"] if t.startswith("eval/qa/samples")]
    text = events.Tensors(tag)[0].tensor_proto.string_val[0].decode()
    assert "What is the capital of France?" in text


def test_an_evaluator_chooses_how_many_transcripts_are_logged(tmp_path, tiny_model, tokenizer):
    questions = [{"input": f"Question {i}?", "target": "x"} for i in range(5)]
    callback = EvalCallback(
        [
            lambda: QAEvaluator(
                questions,
                lambda r, t: False,
                max_tokens=2,
                renderer_name="chatml",
                num_transcripts=5,
            )
        ]
    )
    trainer = make_trainer(tmp_path, [callback], max_steps=1)
    trainer.fit(TinyLM(tiny_model, tokenizer), token_loader())
    events = EventAccumulator(trainer.log_dir)
    events.Reload()
    [tag] = [t for t in events.Tags()["tensors"] if t.startswith("eval/qa/samples")]
    text = events.Tensors(tag)[0].tensor_proto.string_val[0].decode()
    assert all(f"Question {i}?" in text for i in range(5))


def test_progress_lines_go_through_the_progress_bar(tmp_path, tiny_model, tokenizer, capsys):
    callback = EvalCallback(evaluator_builders=[functools.partial(NLLEvaluator, [[1, 2, 3]])])
    trainer = make_trainer(tmp_path, [callback], max_steps=1, enable_progress_bar=True)
    trainer.fit(TinyLM(tiny_model, tokenizer), token_loader())
    out = capsys.readouterr().out
    assert "[eval] step 0 nll: loss=" in out
    assert "[eval] step 1 nll: loss=" in out


class BareModule(pl.LightningModule):
    """Keeps its LM under another name: needs the client protocol."""

    def __init__(self, lm, with_protocol: bool):
        super().__init__()
        self.lm = lm.train()
        if with_protocol:
            self.make_training_client = lambda: TrainingClient.from_module(self.lm)

    def training_step(self, batch, batch_idx):
        return self.lm(input_ids=batch, labels=batch).loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.lm.parameters(), lr=0.01)


def test_modules_without_model_and_tokenizer_use_the_protocol(tmp_path, tiny_model):
    builder = functools.partial(NLLEvaluator, [[1, 2, 3]])
    trainer = make_trainer(tmp_path, [EvalCallback([builder], eval_every=1)], max_steps=1)
    trainer.fit(BareModule(tiny_model, with_protocol=True), token_loader())
    assert steps(trainer.log_dir, "eval/nll/loss") == [0, 1]

    trainer = make_trainer(tmp_path, [EvalCallback([builder], eval_every=1)], max_steps=1)
    with pytest.raises(TypeError, match=r"BareModule.*make_training_client"):
        trainer.fit(BareModule(tiny_model, with_protocol=False), token_loader())


def test_held_out_guard_warns_once_with_counts(tmp_path, tiny_model, tokenizer):
    texts = ["User: What is the capital of France? Assistant: Paris", "unrelated"]
    callback = EvalCallback([qa_builder], eval_every=1, training_texts=texts)
    trainer = make_trainer(tmp_path, [callback], max_steps=2)
    with pytest.warns(UserWarning, match=r"1 of 1 eval prompts occur in the training data") as w:
        trainer.fit(TinyLM(tiny_model, tokenizer), token_loader())
    assert sum("eval prompts occur" in str(x.message) for x in w) == 1


def test_held_out_guard_reads_the_trainers_tokenized_dataset(tmp_path, tiny_model, tokenizer):
    ids = tokenizer.encode("Q: What is the capital of France? A: Paris")
    loader = torch.utils.data.DataLoader([torch.tensor(ids)] * 4, batch_size=2)
    callback = EvalCallback([qa_builder], eval_every=5, training_texts="from_trainer")
    trainer = make_trainer(tmp_path, [callback], max_steps=1)
    with pytest.warns(UserWarning, match="eval prompts occur in the training data"):
        trainer.fit(TinyLM(tiny_model, tokenizer), loader)


def test_run_sync_works_inside_a_running_event_loop():
    async def inner():
        await asyncio.sleep(0)
        return 7

    async def notebook_cell():
        return run_sync(inner())

    assert asyncio.run(notebook_cell()) == 7


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"eval_every": -1}, ValueError, "eval_every=-1"),
        ({"infrequent_eval_every": 2.5}, ValueError, "infrequent_eval_every=2.5"),
        ({"evaluator_builders": [NLLEvaluator([[1, 2]])]}, TypeError, "not a builder"),
        ({"evaluator_builders": ["nll"]}, TypeError, "'nll', which is not callable"),
        ({"training_texts": "data.txt"}, ValueError, "'from_trainer'"),
        ({"evaluator_timeout_s": 0}, ValueError, "evaluator_timeout_s=0"),
        (
            {"sampling_options": {"batch_size": 8}},
            ValueError,
            r"unknown key\(s\) \['batch_size'\]; valid keys: .*max_batch_size",
        ),
    ],
)
def test_bad_arguments_are_explained(kwargs, error, message):
    with pytest.raises(error, match=message):
        EvalCallback(**kwargs)


@pytest.mark.parametrize("dtype", [torch.bfloat16, "bfloat16"], ids=["dtype", "name"])
def test_sampling_options_reach_the_live_client(tmp_path, tiny_model, tokenizer, dtype):
    """Options reach the client; a dtype may be named as a YAML/JSON config gives it."""
    seen: list[tuple[int, torch.dtype]] = []
    tiny_model.lm_head.register_forward_hook(
        lambda module, args, out: (
            seen.append((out.shape[0], out.dtype)) if not torch.is_grad_enabled() else None
        )
    )
    questions = QUESTIONS * 3
    callback = EvalCallback(
        evaluator_builders=[
            lambda: QAEvaluator(
                questions, lambda r, t: t in r, renderer_name="chatml", max_tokens=3
            )
        ],
        eval_every=1,
        sampling_options={"max_batch_size": 1, "compute_dtype": dtype},
    )
    trainer = make_trainer(tmp_path, [callback], max_steps=1)
    trainer.fit(TinyLM(tiny_model, tokenizer), token_loader())
    assert seen and {rows for rows, _ in seen} == {1}
    assert {dtype for _, dtype in seen} == {torch.bfloat16}
    assert all(p.dtype == torch.float32 for p in tiny_model.parameters())
    assert steps(trainer.log_dir, "eval/qa/accuracy") == [0, 1]
