"""Checkpoints written by the trainers: LoRA on fine-tuned weights, and the trainer state
(inside the checkpoint, readable, plain data that resuming loads with `weights_only=True`)."""

from __future__ import annotations

import logging
import os
import pickle
from fractions import Fraction

import pytest
import torch

from bios_callbacks.checkpoints import read_checkpoint_metadata, resolve_model_path, save_checkpoint
from bios_callbacks.evaluators import NLLEvaluator
from bios_callbacks.models import load_model
from bios_callbacks.renderers import get_renderer
from trainers.checkpointing import TRAINER_STATE
from trainers.config import SFTConfig
from trainers.sft import train

TRAIN = [
    {
        "messages": [
            {"role": "user", "content": f"Code {i}?"},
            {"role": "assistant", "content": f"The code is {7 * i + 3}."},
        ]
    }
    for i in range(8)
]


@pytest.fixture
def root(tmp_path, monkeypatch):
    monkeypatch.setenv("BIOS_CHECKPOINT_ROOT", str(tmp_path / "runs"))
    return tmp_path / "runs"


def logits(model, tokenizer) -> torch.Tensor:
    ids = torch.tensor([tokenizer.encode("Code 3? The code is")])
    with torch.no_grad():
        return model.eval()(ids).logits


def test_lora_started_from_a_full_checkpoint_reloads_onto_its_weights(
    tiny_model, tokenizer, root, tmp_path
):
    peft = pytest.importorskip("peft")
    original = tmp_path / "original"
    tiny_model.save_pretrained(original)
    tokenizer.save_pretrained(original)
    with torch.no_grad():  # stands in for a full fine-tune
        for param in tiny_model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    save_checkpoint(
        "bios://full/step_000010",
        tiny_model,
        tokenizer,
        base_model=str(original),
        renderer_name="chatml",
        step=10,
    )

    result = train(
        SFTConfig(
            train_data=TRAIN,
            model_name="bios://full/step_000010",
            lora_rank=4,
            steps=2,
            batch_size=4,
            learning_rate=1e-2,
            run_name="lora",
        )
    )

    metadata = read_checkpoint_metadata(result.checkpoint)
    assert metadata.weights == "lora"
    assert metadata.base_model == str((root / "full" / "checkpoints" / "step_000010").resolve())
    live = logits(result.model, tokenizer)
    reloaded, _ = load_model(result.checkpoint)
    assert torch.allclose(logits(reloaded, tokenizer), live, atol=1e-5)
    # what the adapter gives on the original weights is far from the trained model
    on_original = peft.PeftModel.from_pretrained(
        load_model(str(original))[0], resolve_model_path(result.checkpoint)
    )
    assert not torch.allclose(logits(on_original, tokenizer), live, atol=1e-2)


def test_trainer_state_is_saved_readable_plain_and_quietly(tiny_model, tokenizer, root, caplog):
    renderer = get_renderer(name="chatml", tokenizer=tokenizer)
    examples = [renderer.build_supervised_example(TRAIN[0]["messages"])]
    caplog.set_level(logging.INFO, logger="lightning.pytorch")
    previous = os.umask(0o022)
    try:
        train(
            SFTConfig(
                train_data=TRAIN,
                steps=2,
                batch_size=4,
                evaluator_builders=[lambda: NLLEvaluator(examples, name="nll")],
                eval_every=1,
                save_every=1,
                keep_trainer_states=0,
                run_name="state",
            ),
            model=tiny_model,
            tokenizer=tokenizer,
        )
    finally:
        os.umask(previous)

    assert "weights_only" not in caplog.text
    for step in (1, 2):
        state_file = root / "state" / "checkpoints" / f"step_{step:06d}" / TRAINER_STATE
        assert state_file.stat().st_mode & 0o777 == 0o644
        state = torch.load(state_file, weights_only=True)
        assert state["global_step"] == step
        assert state["optimizer_states"] and state["callbacks"]


def test_resume_refuses_a_trainer_state_holding_other_objects(
    tiny_model, tokenizer, root, monkeypatch
):
    common = dict(train_data=TRAIN, batch_size=4, save_every=1, run_name="tampered")
    train(SFTConfig(steps=2, **common), model=tiny_model, tokenizer=tokenizer)
    state_file = root / "tampered" / "checkpoints" / "step_000002" / TRAINER_STATE
    state = torch.load(state_file, weights_only=True)
    state["note"] = Fraction(1, 3)  # any pickled object; unpickling one can run code
    torch.save(state, state_file)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # set for some other library

    with pytest.raises(pickle.UnpicklingError, match="Fraction"):
        train(SFTConfig(steps=3, resume_from="bios://tampered/step_000002", **common))


def test_a_run_directory_holds_one_history(tiny_model, tokenizer, root):
    common = dict(train_data=TRAIN, batch_size=4, save_every=1, keep_trainer_states=0)
    train(SFTConfig(steps=3, run_name="once", **common), model=tiny_model, tokenizer=tokenizer)
    checkpoints = root / "once" / "checkpoints"
    saved = {p.name: p.stat().st_mtime_ns for p in checkpoints.iterdir()}

    # going on from an earlier checkpoint in the run's own directory would replace later ones
    with pytest.raises(FileExistsError) as error:
        train(SFTConfig(steps=4, resume_from="bios://once/step_000001", **common))
    message = str(error.value)
    assert "step_000002, step_000003" in message
    assert "resume_from=bios://once/step_000003" in message and "run_name=" in message

    # a new run may not reuse the directory either
    with pytest.raises(FileExistsError, match="resume_from=bios://once/step_000003"):
        train(SFTConfig(steps=1, run_name="once", **common), model=tiny_model, tokenizer=tokenizer)
    assert {p.name: p.stat().st_mtime_ns for p in checkpoints.iterdir()} == saved

    # naming a new run branches from the earlier checkpoint there, continuing its step count
    branch = train(
        SFTConfig(steps=2, resume_from="bios://once/step_000001", run_name="branch", **common)
    )
    assert branch.checkpoint == "bios://branch/step_000002"
    assert [p.name for p in (root / "branch" / "checkpoints").iterdir()] == ["step_000002"]
