"""Loading the embedded model, local directories and hub ids, and the errors for bad names."""

from __future__ import annotations

import os

import pytest
import torch

from bios_callbacks.models import (
    CACHE_ENV,
    EMBEDDED_MODEL,
    embedded_cache_dir,
    ensure_embedded_cache,
    load_model,
)
from bios_callbacks.tokenizer_utils import get_tokenizer


@pytest.mark.embedded
def test_embedded_model_is_cached_and_the_second_load_reuses_the_cache(embedded):
    model, _ = embedded
    cache = embedded_cache_dir()
    weights = cache / "model.safetensors"
    assert weights.is_file()
    before = (cache.stat().st_mtime_ns, weights.stat().st_mtime_ns)

    again, _ = load_model(EMBEDDED_MODEL)

    assert (cache.stat().st_mtime_ns, weights.stat().st_mtime_ns) == before
    assert not [p for p in cache.parent.iterdir() if p.name.startswith(".")]  # no staging left
    assert again.dtype == torch.float32
    assert not again.training
    for name, param in model.state_dict().items():
        assert torch.equal(param, again.state_dict()[name]), name


@pytest.mark.embedded
def test_converted_cache_is_readable_by_others_and_leaves_no_staging(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    previous = os.umask(0o022)
    try:
        cache = ensure_embedded_cache()
    finally:
        os.umask(previous)

    assert cache.is_relative_to(tmp_path) and (cache / "model.safetensors").is_file()
    assert cache.stat().st_mode & 0o777 == 0o755
    modes = {p.name: p.stat().st_mode & 0o777 for p in cache.iterdir()}
    assert modes == dict.fromkeys(modes, 0o644)
    assert [p.name for p in cache.parent.iterdir()] == [cache.name]


@pytest.mark.embedded
def test_embedded_tokenizer_survives_the_cache_round_trip(embedded):
    model, tokenizer = embedded
    assert tokenizer.chat_template and "<|im_start|>" in tokenizer.chat_template
    assert tokenizer.eos_token == "<|im_end|>"
    start, end = tokenizer.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    assert tokenizer.encode("<|im_start|>user\nhi<|im_end|>") == [start, 4093, 198, 6004, end]
    assert model.generation_config.eos_token_id == end
    assert model.generation_config.pad_token_id is not None
    assert get_tokenizer(EMBEDDED_MODEL) is get_tokenizer(EMBEDDED_MODEL)


@pytest.mark.embedded
def test_embedded_model_answers_a_simple_question(embedded):
    model, tokenizer = embedded
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        tokenize=False,
    )
    ids = torch.tensor([tokenizer.encode(prompt)])
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=12, do_sample=False)
    reply = tokenizer.decode(out[0, ids.shape[1] :])
    assert "Paris" in reply


def test_local_hf_directory_loads_like_the_original(tiny_model, tokenizer, tmp_path):
    tiny_model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    ids = torch.tensor([tokenizer.encode("hello there")])

    model, loaded_tokenizer = load_model(str(tmp_path), dtype=torch.bfloat16)

    assert model.dtype == torch.bfloat16
    assert loaded_tokenizer.encode("hello there") == ids[0].tolist()
    with torch.no_grad():
        expected = tiny_model(ids).logits
        actual = model.float()(ids).logits
    assert torch.allclose(actual, expected, atol=0.05)
    assert get_tokenizer(str(tmp_path)).eos_token == tokenizer.eos_token


def test_unknown_hub_id_offline_lists_the_local_options(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError) as error:
        load_model("no-such-org/no-such-model")
    message = str(error.value)
    assert "'no-such-org/no-such-model'" in message
    assert "offline" in message
    assert EMBEDDED_MODEL in message
    assert "bios://" in message
    assert "directory" in message


def test_missing_local_directory_is_named(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=r"nowhere.*not a directory"):
        load_model(str(missing))
