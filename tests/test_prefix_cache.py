"""Prefix caching: prompts that share a template prefill the shared part once."""

from __future__ import annotations

import asyncio

import pytest
import torch
from tiny import make_tiny_model

from bios_callbacks import types
from bios_callbacks.sampling.client import SamplingClient
from bios_callbacks.sampling.prefix_cache import PrefixCache, SharedPrefix

GREEDY = types.SamplingParams(max_tokens=8, temperature=0.0)
TEMPLATE = (
    "You are a careful assistant. Answer the question below in one short sentence, "
    "and say nothing else.\nQuestion: "
)


def _prompts(tokenizer, questions) -> list[list[int]]:
    return [tokenizer.encode(TEMPLATE + q) for q in questions]


QUESTIONS = [
    "What is the capital of France?",
    "How many legs has a spider?",
    "What colour is grass?",
    "Who wrote Hamlet?",
    "Is ice cold?",
]


def _sample_all(client, prompts, params=GREEDY):
    async def go():
        return await asyncio.gather(*(client.sample_async(p, 1, params) for p in prompts))

    return [r.sequences[0] for r in asyncio.run(go())]


class TokenCounter:
    """Counts the prompt and generated tokens that go through the model's embedding."""

    def __init__(self, model) -> None:
        self.count = 0
        self._handle = model.get_input_embeddings().register_forward_hook(self._hook)

    def _hook(self, module, args, output) -> None:
        self.count += args[0].numel()

    def remove(self) -> None:
        self._handle.remove()


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_results_match_prefilling_every_prompt_whole(tiny_model, tokenizer, temperature):
    prompts = _prompts(tokenizer, QUESTIONS)
    params = types.SamplingParams(max_tokens=8, temperature=temperature, seed=3)
    results = {}
    for caching in (True, False):
        with SamplingClient.from_module(tiny_model, tokenizer, prefix_caching=caching) as client:
            first = _sample_all(client, prompts[:2], params)  # seen together: prefix cached
            later = [client.sample(p, 1, params).sequences[0] for p in prompts[2:]]  # reuse it
        results[caching] = first + later
    for cached, whole in zip(results[True], results[False], strict=True):
        assert cached.tokens == whole.tokens
        torch.testing.assert_close(
            torch.tensor(cached.logprobs), torch.tensor(whole.logprobs), atol=1e-4, rtol=1e-4
        )


def test_the_shared_prefix_is_prefilled_once(tiny_model, tokenizer):
    prompts = _prompts(tokenizer, QUESTIONS)
    shared = len(tokenizer.encode(TEMPLATE)) - 1  # the last template token may merge
    counts = {}
    for caching in (True, False):
        counter = TokenCounter(tiny_model)
        with SamplingClient.from_module(tiny_model, tokenizer, prefix_caching=caching) as client:
            for prompt in prompts:  # one at a time, as when requests trickle in
                client.sample(prompt, 1, GREEDY)
        counts[caching] = counter.count
        counter.remove()
    # Prompts 2..5 skip the shared part; the prefix itself runs once, for prompt 2.
    assert counts[False] - counts[True] >= (len(prompts) - 2) * shared


def test_a_live_model_never_reuses_a_prefix_across_weight_updates(tiny_model, tokenizer):
    prompts = _prompts(tokenizer, QUESTIONS[:3])
    with SamplingClient.from_module(tiny_model, tokenizer) as client:
        _sample_all(client, prompts)
        client.wait_idle()
        with torch.no_grad():  # a training step happens between evaluation rounds
            for layer in tiny_model.model.layers:
                layer.self_attn.k_proj.weight.mul_(3.0)
        after = [s.tokens for s in _sample_all(client, prompts)]
    with SamplingClient.from_module(tiny_model, tokenizer, prefix_caching=False) as fresh:
        assert after == [s.tokens for s in _sample_all(fresh, prompts)]


def test_sliding_window_models_prefill_whole_prompts(tokenizer):
    model = make_tiny_model(tokenizer, family="mistral", sliding_window=8)
    prompts = _prompts(tokenizer, QUESTIONS[:3])
    with SamplingClient.from_module(model, tokenizer) as client:  # prefix caching requested
        _sample_all(client, prompts[:2])
        results = _sample_all(client, prompts)
    # A cached prefix would leave padding inside the window and change the answers.
    for prompt, seq in zip(prompts, results, strict=True):
        reference = model.generate(torch.tensor([prompt]), max_new_tokens=8, do_sample=False)
        assert seq.tokens == reference[0, len(prompt) :].tolist()


def _fake_prefix(tokens: list[int]) -> SharedPrefix:
    kv = torch.arange(len(tokens), dtype=torch.float32).reshape(1, 1, -1, 1)
    return SharedPrefix(tuple(tokens), (kv,), (kv,))


def test_prefix_choice_follows_the_template():
    computed: list[int] = []

    def compute(tokens):
        computed.append(len(tokens))
        return _fake_prefix(tokens)

    cache = PrefixCache(compute, min_tokens=4)
    template, other = list(range(10)), list(range(100, 110))
    assert cache.find([[*template, 50]]) is None  # nothing seen twice yet
    assert cache.find([[*template, 51]]).tokens == tuple(template)  # shared with the previous
    assert cache.find([[*template, 52, 53]]).tokens == tuple(template)
    assert computed == [10]  # reused, not recomputed
    assert cache.find([[7, 7, 7, 7, 7]]) is None  # unrelated prompt: no prefix
    partial = cache.find([[*template[:6], 60, 61]])  # shares part of the entry: a slice of it
    assert partial.tokens == tuple(template[:6]) and partial.keys[0].shape[2] == 6
    assert computed == [10]
    cache.find([[*other, 1]])
    assert cache.find([[*other, 2]]).tokens == tuple(other)  # a new template replaces the old
    assert computed == [10, 10]
    cache.clear()
    assert cache.find([[*other, 3]]) is None
