"""Checkpoint save/load round trips, bios:// resolution and bad checkpoints."""

from __future__ import annotations

import json

import pytest
import torch

from bios_callbacks.checkpoints import (
    checkpoint_dir,
    read_checkpoint_metadata,
    resolve_model_path,
    save_checkpoint,
)
from bios_callbacks.model_loading import EMBEDDED_MODEL, load_model
from bios_callbacks.tokenizer_utils import get_tokenizer


def logits(model, tokenizer, text="The quick brown fox"):
    ids = torch.tensor([tokenizer.encode(text)])
    with torch.no_grad():
        return model(ids).logits


def save_tiny(path, model, tokenizer, **overrides):
    kwargs = dict(base_model=EMBEDDED_MODEL, renderer_name="chatml", step=7)
    kwargs.update(overrides)
    return save_checkpoint(path, model, tokenizer, **kwargs)


def test_saved_checkpoint_reloads_with_identical_logits_and_metadata(
    tiny_model, tokenizer, tmp_path
):
    path = save_tiny(tmp_path / "ckpt", tiny_model, tokenizer, eval_results={"acc": 0.5})

    model, loaded_tokenizer = load_model(str(path))

    assert torch.equal(logits(model, tokenizer), logits(tiny_model, tokenizer))
    assert not model.training
    assert loaded_tokenizer.encode("<|im_start|>user") == tokenizer.encode("<|im_start|>user")
    assert get_tokenizer(str(path)).chat_template == tokenizer.chat_template
    metadata = read_checkpoint_metadata(path)
    assert (metadata.base_model, metadata.renderer_name, metadata.step) == (
        EMBEDDED_MODEL,
        "chatml",
        7,
    )
    assert metadata.eval_results == {"acc": 0.5}
    assert metadata.weights == "full"
    assert metadata.created and metadata.library_version


def test_bios_uri_resolves_under_checkpoint_root(tiny_model, tokenizer, tmp_path, monkeypatch):
    monkeypatch.setenv("BIOS_CHECKPOINT_ROOT", str(tmp_path / "root"))

    path = save_tiny("bios://my-run/step-7", tiny_model, tokenizer)

    assert path == tmp_path / "root" / "my-run" / "checkpoints" / "step-7"
    assert resolve_model_path("bios://my-run/step-7") == path
    model, _ = load_model("bios://my-run/step-7")
    assert torch.equal(logits(model, tokenizer), logits(tiny_model, tokenizer))


def test_checkpoint_root_defaults_to_runs(tmp_path, monkeypatch):
    monkeypatch.delenv("BIOS_CHECKPOINT_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    assert checkpoint_dir("bios://exp/final").resolve() == tmp_path / "runs/exp/checkpoints/final"


def test_resaving_a_checkpoint_replaces_it_cleanly(tiny_model, tokenizer, tmp_path):
    save_tiny(tmp_path / "ckpt", tiny_model, tokenizer, step=1)
    save_tiny(tmp_path / "ckpt", tiny_model, tokenizer, step=2)

    assert read_checkpoint_metadata(tmp_path / "ckpt").step == 2
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_lora_checkpoint_saves_the_adapter_and_reapplies_it_on_the_base(
    tiny_model, tokenizer, tmp_path
):
    peft = pytest.importorskip("peft")
    base_dir = tmp_path / "base"
    tiny_model.save_pretrained(base_dir)
    tokenizer.save_pretrained(base_dir)
    base_logits = logits(tiny_model, tokenizer)
    config = peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    lora_model = peft.get_peft_model(tiny_model, config)
    lora_logits = logits(lora_model, tokenizer)

    path = save_tiny(tmp_path / "lora", lora_model, tokenizer, base_model=str(base_dir))

    assert (path / "adapter_config.json").is_file()
    assert not (path / "model.safetensors").exists()
    assert read_checkpoint_metadata(path).weights == "lora"
    loaded, _ = load_model(str(path))
    assert isinstance(loaded, peft.PeftModel)
    assert torch.equal(logits(loaded, tokenizer), lora_logits)
    assert not torch.equal(lora_logits, base_logits)


def test_missing_checkpoint_names_the_path_and_the_root(tmp_path, monkeypatch):
    monkeypatch.setenv("BIOS_CHECKPOINT_ROOT", str(tmp_path))
    expected = tmp_path / "no-run" / "checkpoints" / "step-1"
    with pytest.raises(FileNotFoundError) as error:
        load_model("bios://no-run/step-1")
    message = str(error.value)
    assert str(expected) in message
    assert "BIOS_CHECKPOINT_ROOT" in message


def test_directory_without_metadata_is_not_a_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"bios_checkpoint\.json"):
        resolve_model_path(tmp_path)


@pytest.mark.parametrize("uri", ["bios://only-run", "bios://a/b/c", "bios://run/../x"])
def test_malformed_uri_is_rejected_with_the_expected_form(uri):
    with pytest.raises(ValueError, match=r"bios://<run>/<name>"):
        checkpoint_dir(uri)


@pytest.mark.parametrize(
    ("content", "complaint"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "JSON object"),
        (json.dumps({"base_model": "m", "step": 1}), "missing renderer_name"),
        (json.dumps({"base_model": "m", "renderer_name": "chatml", "step": -3}), "step=-3"),
        (
            json.dumps({"base_model": "m", "renderer_name": "chatml", "step": 1, "weights": "x"}),
            "weights='x'",
        ),
    ],
)
def test_malformed_metadata_names_the_file_and_the_problem(tmp_path, content, complaint):
    (tmp_path / "bios_checkpoint.json").write_text(content)
    with pytest.raises(ValueError, match=complaint) as error:
        read_checkpoint_metadata(tmp_path)
    assert str(tmp_path / "bios_checkpoint.json") in str(error.value)


def test_negative_step_is_rejected(tiny_model, tokenizer, tmp_path):
    with pytest.raises(ValueError, match="step=-1"):
        save_tiny(tmp_path / "ckpt", tiny_model, tokenizer, step=-1)
    assert not (tmp_path / "ckpt").exists()
