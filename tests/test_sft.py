"""The SFT trainer end to end on the tiny model: loss, TensorBoard, checkpoints, resume, LoRA."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import lightning as L
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tiny import make_tiny_model

from bios_callbacks import ServiceClient
from bios_callbacks.checkpoints import read_checkpoint_metadata
from bios_callbacks.evaluators import NLLEvaluator
from bios_callbacks.renderers import get_renderer
from bios_callbacks.sampling.client import SamplingClient
from bios_callbacks.types import SamplingParams
from trainers.checkpointing import TRAINER_STATE
from trainers.config import SFTConfig
from trainers.data import collate, tokenize_conversations
from trainers.sft import TRAIN_ON_WHAT, train, weighted_loss

CODES = [(f"Code {i}?", f"The code is {7 * i + 3}.") for i in range(8)]


def chat(question: str, answer: str) -> dict:
    return {
        "messages": [
            {"role": "user", "content": question},
            {"role": "assistant", "content": answer},
        ]
    }


TRAIN = [chat(q, a) for q, a in CODES]
TEST = [chat("Code 99?", "The code is 696.")]


def scalars(log_dir) -> dict[str, dict[int, float]]:
    """Every scalar in the run's TensorBoard event files, as {tag: {step: value}}."""
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


def nll_builder(tokenizer):
    renderer = get_renderer(name="chatml", tokenizer=tokenizer)
    examples = [renderer.build_supervised_example(c["messages"]) for c in TEST]
    return lambda: NLLEvaluator(examples, name="heldout")


@pytest.fixture
def root(tmp_path, monkeypatch):
    monkeypatch.setenv("BIOS_CHECKPOINT_ROOT", str(tmp_path / "runs"))
    return tmp_path / "runs"


def assert_checkpoint_samples_like_live(result, tokenizer, messages, max_tokens: int) -> None:
    """The final checkpoint, reloaded, samples the same greedy tokens as the trained module."""
    prompt = get_renderer(name="chatml", tokenizer=tokenizer).build_generation_prompt(messages)
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0)
    with SamplingClient.from_module(result.model, tokenizer) as live:
        expected = live.sample(prompt, 1, params).sequences[0].tokens
    with ServiceClient().create_sampling_client(model_path=result.checkpoint) as reloaded:
        assert reloaded.sample(prompt, 1, params).sequences[0].tokens == expected


def test_sft_learns_logs_and_checkpoints(tiny_model, tokenizer, root, capsys):
    cfg = SFTConfig(
        train_data=TRAIN,
        test_data=TEST,
        steps=12,
        batch_size=4,
        learning_rate=3e-3,
        evaluator_builders=[nll_builder(tokenizer)],
        eval_every=4,
        save_every=8,
        run_name="sft-e2e",
    )
    result = train(cfg, model=tiny_model, tokenizer=tokenizer)

    logged = scalars(result.log_dir)
    assert sorted(logged["train/loss"]) == list(range(12))
    assert logged["train/loss"][11] < logged["train/loss"][0] - 2.0
    # the test loss is an evaluator on the eval_every schedule, logged beside the others
    assert sorted(logged["eval/test/loss"]) == [0, 4, 8, 12]
    assert logged["eval/test/loss"][12] < logged["eval/test/loss"][0]
    assert sorted(logged["eval/heldout/loss"]) == [0, 4, 8, 12]
    # and it is the training loss on the test conversations, under the final weights
    renderer = get_renderer(name="chatml", tokenizer=tokenizer)
    test_batch = collate(
        tokenize_conversations([TEST[0]["messages"]], renderer, 512, TRAIN_ON_WHAT), 0
    )
    with torch.no_grad():
        total, weight = weighted_loss(result.model.eval(), test_batch)
    assert logged["eval/test/loss"][12] == pytest.approx(float(total / weight), rel=1e-4)

    out = capsys.readouterr().out
    assert "step 12 test: loss=" in out
    assert "step 8: saved checkpoint bios://sft-e2e/step_000008" in out
    assert result.checkpoint == "bios://sft-e2e/step_000012"
    meta = read_checkpoint_metadata(result.checkpoint)
    assert meta.step == 12 and meta.renderer_name == "chatml"
    assert meta.eval_results["eval/test/loss"] == pytest.approx(
        logged["eval/test/loss"][12], rel=1e-5
    )
    assert meta.eval_results["eval/heldout/loss"] == pytest.approx(
        logged["eval/heldout/loss"][12], rel=1e-5
    )

    # the saved checkpoint samples exactly what the trained in-memory model samples
    assert_checkpoint_samples_like_live(result, tokenizer, TRAIN[0]["messages"][:1], 8)

    # only the newest checkpoint keeps the optimizer state; older ones keep their weights
    checkpoints = result.log_dir / "checkpoints"
    assert not (checkpoints / "step_000008" / TRAINER_STATE).exists()
    assert (checkpoints / "step_000012" / TRAINER_STATE).exists()
    assert read_checkpoint_metadata(checkpoints / "step_000008").step == 8
    with pytest.raises(FileNotFoundError, match="keep_trainer_states"):
        train(
            SFTConfig(**{**cfg.__dict__, "resume_from": "bios://sft-e2e/step_000008"}),
            model=result.model,
            tokenizer=tokenizer,
        )


class InterruptAt(L.Callback):
    """Presses Ctrl-C (raises KeyboardInterrupt) once the given step is reached."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            raise KeyboardInterrupt


def test_ctrl_c_saves_and_resume_continues_steps_and_eval_schedule(tiny_model, tokenizer, root):
    common = dict(
        train_data=TRAIN,
        test_data=TEST,
        batch_size=4,
        learning_rate=3e-3,
        evaluator_builders=[nll_builder(tokenizer)],
        eval_every=3,
        run_name="sft-resume",
    )
    with pytest.raises(SystemExit):
        train(
            SFTConfig(steps=8, **common),
            model=tiny_model,
            tokenizer=tokenizer,
            callbacks=[InterruptAt(4)],
        )
    saved = root / "sft-resume" / "checkpoints" / "step_000004"
    assert read_checkpoint_metadata(saved).step == 4
    assert sorted(scalars(root / "sft-resume")["train/loss"]) == [0, 1, 2, 3]  # logs flushed

    result = train(SFTConfig(steps=8, resume_from="bios://sft-resume/step_000004", **common))
    assert result.checkpoint == "bios://sft-resume/step_000008"
    logged = scalars(result.log_dir)
    assert sorted(logged["train/loss"]) == list(range(8))
    rounds = [
        json.loads(line)["step"]
        for line in (root / "sft-resume" / "eval_results.jsonl").read_text().splitlines()
    ]
    assert rounds == [0, 3, 6, 8]


def test_resume_continues_in_the_runs_own_directory_as_if_never_stopped(tokenizer, root):
    common = dict(
        train_data=TRAIN,
        test_data=TEST,
        batch_size=4,  # 2 batches an epoch: step 3 is mid-epoch
        learning_rate=3e-3,
        evaluator_builders=[nll_builder(tokenizer)],
        eval_every=2,
        save_every=2,
    )
    first = train(
        SFTConfig(steps=3, run_name="split", **common),
        model=make_tiny_model(tokenizer, seed=0),
        tokenizer=tokenizer,
    )
    assert first.checkpoint == "bios://split/step_000003"

    # no run_name or log_dir: the run goes on in its own directory
    resumed = train(SFTConfig(steps=7, resume_from=first.checkpoint, **common))
    assert resumed.log_dir == root / "split"
    assert sorted(p.name for p in root.iterdir()) == ["split"]
    checkpoints = root / "split" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == [
        f"step_{n:06d}" for n in (2, 3, 4, 6, 7)
    ]
    # keep_trainer_states=1 counts the checkpoints written before the resume too
    assert [p.name for p in checkpoints.glob(f"*/{TRAINER_STATE}")] == [TRAINER_STATE]
    assert (checkpoints / "step_000007" / TRAINER_STATE).exists()

    logged = scalars(root / "split")
    assert sorted(logged["train/loss"]) == list(range(7))
    assert sorted(logged["eval/test/loss"]) == [0, 2, 3, 4, 6, 7]  # 3: the first part's end
    assert sorted(logged["eval/heldout/loss"]) == [0, 2, 3, 4, 6, 7]
    rounds = [
        json.loads(line)["step"]
        for line in (root / "split" / "eval_results.jsonl").read_text().splitlines()
    ]
    assert rounds == [0, 2, 3, 4, 6, 7]

    # the same batches, optimizer state and schedule as a run that was never stopped
    whole = train(
        SFTConfig(steps=7, run_name="whole", **common),
        model=make_tiny_model(tokenizer, seed=0),
        tokenizer=tokenizer,
    )
    uninterrupted = scalars(whole.log_dir)
    for step in range(7):
        assert logged["train/loss"][step] == pytest.approx(
            uninterrupted["train/loss"][step], rel=1e-4
        ), step


def test_lora_run_saves_an_adapter_that_reloads(tiny_model, tokenizer, root, tmp_path):
    base_dir = tmp_path / "tiny-base"
    tiny_model.save_pretrained(base_dir)
    tokenizer.save_pretrained(base_dir)
    cfg = SFTConfig(
        model_name=str(base_dir),
        renderer_name="chatml",
        train_data=TRAIN,
        steps=3,
        batch_size=4,
        learning_rate=1e-2,
        lora_rank=4,
        run_name="sft-lora",
    )
    result = train(cfg)
    trainable = [n for n, p in result.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert read_checkpoint_metadata(result.checkpoint).weights == "lora"

    assert_checkpoint_samples_like_live(result, tokenizer, TRAIN[1]["messages"][:1], 6)

    # training longer from the final checkpoint keeps training the same adapter
    longer = train(SFTConfig(**{**cfg.__dict__, "steps": 5, "resume_from": result.checkpoint}))
    assert longer.checkpoint == "bios://sft-lora/step_000005"
    trainable = [n for n, p in longer.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)

    # a new run can start from the checkpoint: its adapter trains on, in its own chat format
    fresh = {
        **cfg.__dict__,
        "model_name": result.checkpoint,
        "renderer_name": None,
        "lora_rank": 0,
        "steps": 1,
        "run_name": "sft-from-lora",
        "log_dir": None,
    }
    started = train(SFTConfig(**fresh))
    trainable = [n for n, p in started.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    meta = read_checkpoint_metadata(started.checkpoint)
    assert (meta.renderer_name, meta.base_model) == ("chatml", str(base_dir))


@pytest.fixture
def cli_args(tiny_model, tokenizer, tmp_path) -> list[str]:
    """The command line's model and data keys: the tiny model saved to a directory, and TRAIN."""
    base_dir = tmp_path / "tiny-base"
    tiny_model.save_pretrained(base_dir)
    tokenizer.save_pretrained(base_dir)
    train_file = tmp_path / "train.jsonl"
    train_file.write_text("".join(json.dumps(c) + "\n" for c in TRAIN))
    return [f"model_name={base_dir}", "renderer_name=chatml", f"train_data={train_file}"]


def test_command_line_run_on_jsonl(cli_args, tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "trainers.sft",
            *cli_args,
            "steps=2",
            "batch_size=4",
            "run_name=cli-run",
            "learning_rate=1e-3",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env={**os.environ, "BIOS_CHECKPOINT_ROOT": str(tmp_path / "runs")},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "step 1: train loss" in result.stdout
    assert "saved checkpoint bios://cli-run/step_000002" in result.stdout
    assert read_checkpoint_metadata(tmp_path / "runs/cli-run/checkpoints/step_000002").step == 2


def test_sigterm_saves_a_final_checkpoint_flushes_logs_and_exits_143(cli_args, tmp_path):
    root = tmp_path / "runs"
    with (tmp_path / "stderr.txt").open("w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "trainers.sft", *cli_args, "steps=100000", "run_name=term"],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            cwd=tmp_path,
            env={**os.environ, "BIOS_CHECKPOINT_ROOT": str(root)},
        )
        try:
            for line in process.stdout:
                if line.startswith("step 0: train loss"):
                    process.send_signal(signal.SIGTERM)  # what SLURM, Kubernetes, timeout send
                    break
            out = process.stdout.read()
            status = process.wait(timeout=300)
        finally:
            process.kill()
    assert status == 143, (tmp_path / "stderr.txt").read_text()[-2000:]
    [saved] = (root / "term" / "checkpoints").iterdir()  # save_every=0: only this final one
    step = read_checkpoint_metadata(saved).step
    assert step >= 1 and saved.name == f"step_{step:06d}"
    assert f"Stopped at step {step} by SIGTERM; saving a final checkpoint." in out
    assert (saved / TRAINER_STATE).exists()  # resume_from= can continue from it
    assert sorted(scalars(root / "term")["train/loss"]) == list(range(step))
