"""The engine's own decode-step forward: transformers' logits, step by step, for each family it
serves; transformers' forward wherever it does not apply."""

from __future__ import annotations

import asyncio
import contextlib
import copy

import pytest
import torch
import transformers

from bios_callbacks import types
from bios_callbacks.sampling.client import SamplingClient
from bios_callbacks.sampling.decode_forward import DecodeForward
from bios_callbacks.sampling.request import Request
from bios_callbacks.sampling.runner import ModelRunner

SIZES = dict(
    hidden_size=96,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=6,
    num_key_value_heads=2,
    max_position_embeddings=256,
)


def _tiny(family: str, tokenizer, **overrides) -> torch.nn.Module:
    config_class, model_class = {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
        "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
        "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM),
    }[family]
    settings = {**SIZES, "vocab_size": len(tokenizer), **overrides}
    if family == "mistral":
        settings.setdefault("sliding_window", None)
    torch.manual_seed(0)
    return model_class(config_class(**settings)).eval()


def _prompts(tokenizer, count: int) -> list[list[int]]:
    return [tokenizer.encode("one two " * (1 + i % 4) + str(i)) for i in range(count)]


FAMILIES = [
    ("llama", {}),
    ("llama", {"attention_bias": True, "mlp_bias": True, "head_dim": 16}),
    ("llama", {"rope_scaling": {"rope_type": "linear", "factor": 2.0}}),
    ("llama", {"hidden_act": "gelu_pytorch_tanh"}),
    ("mistral", {}),
    ("qwen2", {}),  # q/k/v biases
    ("qwen3", {"tie_word_embeddings": True}),  # q/k norms
]


@pytest.mark.parametrize("packed", [False, True], ids=["plain", "packed"])
@pytest.mark.parametrize(("family", "overrides"), FAMILIES)
def test_each_step_gives_transformers_logits(family, overrides, packed, tokenizer):
    model = _tiny(family, tokenizer, **overrides)
    lean = DecodeForward.for_model(model)
    assert lean is not None and lean.usable()
    runner = ModelRunner(model, tokenizer, compute_dtype=None, prefix_caching=False)
    runner.lean_decode = runner.pack_weights = False  # the reference: transformers, plain
    params = types.SamplingParams(max_tokens=20, temperature=0.0)
    parts = [(Request(p, 1, params, max_new_tokens=20), range(1)) for p in _prompts(tokenizer, 9)]
    with runner.serving(), lean.packing() if packed else contextlib.nullcontext():
        batch = runner.prefill(parts)  # left-padded rows: the mask has zeros
        theirs, ours = batch.cache, copy.deepcopy(batch.cache)
        mask, positions, tokens = batch.mask, batch.positions, batch.next_input
        for _ in range(6):
            mask = torch.nn.functional.pad(mask, (0, 1), value=1)
            expected = runner._forward(
                tokens[:, None], mask, positions[:, None], theirs, prefill=False
            )
            logits = lean(tokens, mask, positions, ours)
            torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
            tokens, positions = expected.argmax(-1), positions + 1


def test_the_engine_decodes_with_it_and_matches_generate(tokenizer):
    model = _tiny("qwen3", tokenizer)
    calls = []
    attention = type(model.model.layers[0].self_attn)
    original = attention.forward

    def counted(self, hidden_states, *args, **kwargs):
        calls.append(hidden_states.shape[1])  # tokens per row this call
        return original(self, hidden_states, *args, **kwargs)

    prompts = _prompts(tokenizer, 10)
    params = types.SamplingParams(max_tokens=8, temperature=0.0)
    with pytest.MonkeyPatch.context() as patch, SamplingClient.from_module(model, tokenizer) as c:
        patch.setattr(attention, "forward", counted)
        responses = asyncio.run(_sample_all(c, prompts, params))
    assert calls and all(width > 1 for width in calls)  # transformers' forward only prefilled
    for prompt, response in zip(prompts[:3], responses, strict=False):
        reference = model.generate(torch.tensor([prompt]), max_new_tokens=8, do_sample=False)
        assert response.sequences[0].tokens == reference[0, len(prompt) :].tolist()


def test_a_users_forward_hook_still_sees_every_step(tiny_model, tokenizer):
    seen = []
    tiny_model.model.layers[1].register_forward_hook(lambda module, args, out: seen.append(1))
    prompts = _prompts(tokenizer, 4)
    params = types.SamplingParams(max_tokens=5, temperature=0.0)
    with SamplingClient.from_module(tiny_model, tokenizer) as client:
        responses = asyncio.run(_sample_all(client, prompts, params))
    steps = max(len(r.sequences[0].tokens) for r in responses)
    assert len(seen) >= steps  # one call per prefill and per decode step


@pytest.mark.parametrize(
    ("family", "overrides"),
    [
        ("mistral", {"sliding_window": 16}),
        ("qwen2", {"use_sliding_window": True, "sliding_window": 16, "max_window_layers": 0}),
        ("llama", {"attn_implementation": "flex_attention"}),
    ],
)
def test_models_it_does_not_reproduce_keep_transformers_forward(family, overrides, tokenizer):
    assert DecodeForward.for_model(_tiny(family, tokenizer, **overrides)) is None


def test_half_precision_weights_keep_transformers_forward(tiny_model):
    lean = DecodeForward.for_model(tiny_model.to(torch.bfloat16))
    assert lean is not None and not lean.usable()


async def _sample_all(client, prompts, params):
    return await asyncio.gather(*(client.sample_async(p, 1, params) for p in prompts))
