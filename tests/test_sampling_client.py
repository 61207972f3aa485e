"""The sampling client over a live module: batching, stop/length, logprobs, seeds, bad input."""

from __future__ import annotations

import asyncio

import pytest
import torch

from bios_callbacks import types
from bios_callbacks.sampling.client import SamplingClient

GREEDY = types.SamplingParams(max_tokens=12, temperature=0.0)


@pytest.fixture
def client(tiny_model, tokenizer):
    with SamplingClient.from_module(tiny_model, tokenizer) as client:
        yield client


def _prompts(tokenizer, count: int) -> list[list[int]]:
    return [tokenizer.encode("word " * (1 + 3 * (i % 4)) + str(i)) for i in range(count)]


async def _gather(client, prompts, params_list):
    calls = [
        client.sample_async(prompt=p, num_samples=1, sampling_params=s)
        for p, s in zip(prompts, params_list, strict=True)
    ]
    return await asyncio.gather(*calls)


def test_concurrent_greedy_matches_sequential_and_generate(client, tiny_model, tokenizer):
    prompts = _prompts(tokenizer, 10)
    params = [
        types.SamplingParams(max_tokens=4 + 2 * (i % 5), temperature=0.0)
        for i in range(len(prompts))
    ]
    sequential = [
        client.sample(p, 1, s).sequences[0].tokens for p, s in zip(prompts, params, strict=True)
    ]
    concurrent = [r.sequences[0].tokens for r in asyncio.run(_gather(client, prompts, params))]
    assert concurrent == sequential
    for prompt, s, tokens in list(zip(prompts, params, sequential, strict=True))[:3]:
        reference = tiny_model.generate(
            torch.tensor([prompt]), max_new_tokens=s.max_tokens, do_sample=False
        )
        assert tokens == reference[0, len(prompt) :].tolist()


def test_requests_arriving_mid_decode_join_the_batch(client, tiny_model, tokenizer):
    prompts = _prompts(tokenizer, 6)
    long = types.SamplingParams(max_tokens=200, temperature=0.0)
    expected = [client.sample(prompts[0], 1, long).sequences[0].tokens]
    expected += [client.sample(p, 1, GREEDY).sequences[0].tokens for p in prompts[1:]]
    shapes: list[tuple[int, int]] = []
    tiny_model.get_input_embeddings().register_forward_hook(
        lambda module, args, out: shapes.append(tuple(args[0].shape))
    )

    async def staggered():
        first = asyncio.ensure_future(client.sample_async(prompts[0], 1, long))
        while not any(width == 1 for _, width in shapes):  # the first is decoding alone
            await asyncio.sleep(0.001)
        rest = await asyncio.gather(*(client.sample_async(p, 1, GREEDY) for p in prompts[1:]))
        return [await first, *rest]

    assert [r.sequences[0].tokens for r in asyncio.run(staggered())] == expected
    decode_rows = [rows for rows, width in shapes if width == 1]
    assert decode_rows[0] == 1 and max(decode_rows) > 1  # the late ones joined its batch


@pytest.mark.parametrize("bound", [{"max_batch_size": 2}, {"max_cache_tokens": 60}])
def test_batch_and_memory_bounds_are_respected(tiny_model, tokenizer, bound):
    seen: list[int] = []
    hook = tiny_model.register_forward_hook(
        lambda m, args, kw, out: seen.append(kw["input_ids"].shape[0]), with_kwargs=True
    )
    prompts = _prompts(tokenizer, 5)  # each reserves at most 12 prompt + 12 new tokens
    with SamplingClient.from_module(tiny_model, tokenizer) as reference:
        expected = [reference.sample(p, 1, GREEDY).sequences[0].tokens for p in prompts]
    with SamplingClient.from_module(tiny_model, tokenizer, **bound) as client:
        results = asyncio.run(_gather(client, prompts, [GREEDY] * 5))
    hook.remove()
    assert max(seen) == 2
    assert [r.sequences[0].tokens for r in results] == expected


def test_by_default_64_requests_decode_as_one_batch(tiny_model, tokenizer):
    rows: list[int] = []
    hook = tiny_model.register_forward_hook(
        lambda m, args, kw, out: rows.append(kw["input_ids"].shape[0]), with_kwargs=True
    )
    params = types.SamplingParams(max_tokens=4, temperature=0.0)
    with SamplingClient.from_module(tiny_model, tokenizer) as client:
        asyncio.run(_gather(client, _prompts(tokenizer, 65), [params] * 65))
    hook.remove()
    assert max(rows) == 64  # the 65th waits for a free row


@pytest.mark.parametrize("bound", ["max_batch_size", "max_cache_tokens"])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_many_samples_decode_in_waves_within_the_bounds(tiny_model, tokenizer, bound, temperature):
    prompt = _prompts(tokenizer, 1)[0]
    params = types.SamplingParams(max_tokens=12, temperature=temperature, seed=5)
    with SamplingClient.from_module(tiny_model, tokenizer) as reference:
        expected = reference.sample(prompt, 16, params).sequences
    rows_per_sample = len(prompt) + params.max_tokens  # cache positions one sample reserves
    limit = {"max_batch_size": 4, "max_cache_tokens": 4 * rows_per_sample}[bound]
    rows: list[int] = []
    hook = tiny_model.register_forward_hook(
        lambda m, args, kw, out: rows.append(kw["input_ids"].shape[0]), with_kwargs=True
    )
    with SamplingClient.from_module(tiny_model, tokenizer, **{bound: limit}) as client:
        response = asyncio.run(asyncio.wait_for(client.sample_async(prompt, 16, params), 60))
    hook.remove()
    assert max(rows) == 4
    assert [s.tokens for s in response.sequences] == [s.tokens for s in expected]
    torch.testing.assert_close(
        torch.tensor([s.logprobs for s in response.sequences]),
        torch.tensor([s.logprobs for s in expected]),
    )


def test_a_sample_that_can_never_fit_the_cache_is_refused(tiny_model, tokenizer):
    prompt = _prompts(tokenizer, 1)[0]
    with SamplingClient.from_module(tiny_model, tokenizer, max_cache_tokens=50) as client:
        message = rf"{len(prompt) + 100} cache positions.*max_cache_tokens=50"
        with pytest.raises(ValueError, match=message):
            client.sample(prompt, 1, types.SamplingParams(max_tokens=100))
        assert len(client.sample(prompt, 1, GREEDY).sequences[0].tokens) == 12


def test_length_and_stop_token(client, tokenizer):
    prompt = _prompts(tokenizer, 1)[0]
    full = client.sample(prompt, 1, GREEDY).sequences[0]
    assert full.stop_reason == "length" and len(full.tokens) == GREEDY.max_tokens

    stop_id = full.tokens[3]
    first = full.tokens.index(stop_id)
    params = types.SamplingParams(max_tokens=12, temperature=0.0, stop=[stop_id])
    stopped = client.sample(prompt, 1, params).sequences[0]
    assert stopped.stop_reason == "stop"
    assert stopped.tokens == full.tokens[: first + 1]


def test_stop_string_is_kept_and_ends_generation(client, tokenizer):
    prompt = _prompts(tokenizer, 1)[0]
    full = client.sample(prompt, 1, GREEDY).sequences[0].tokens
    stop = tokenizer.decode(full[4:6])
    cut = next(i for i in range(1, len(full) + 1) if stop in tokenizer.decode(full[:i]))
    params = types.SamplingParams(max_tokens=12, temperature=0.0, stop=stop)
    stopped = client.sample(prompt, 1, params).sequences[0]
    assert stopped.stop_reason == "stop"
    assert stopped.tokens == full[:cut]
    assert tokenizer.decode(stopped.tokens).endswith(stop) or stop in tokenizer.decode(
        stopped.tokens
    )


def test_eos_stops_generation(tiny_model, tokenizer):
    eos = tokenizer.eos_token_id
    with torch.no_grad():
        tiny_model.lm_head.weight[eos] += 100.0  # make EOS the only likely token
    with SamplingClient.from_module(tiny_model, tokenizer) as client:
        seq = client.sample(_prompts(tokenizer, 1)[0], 1, GREEDY).sequences[0]
    assert seq.tokens == [eos] and seq.stop_reason == "stop"


@pytest.mark.parametrize("temperature", [0.0, 1.0, 0.5])
def test_logprobs_match_a_forward_pass(client, tiny_model, tokenizer, temperature):
    prompt = _prompts(tokenizer, 1)[0]
    params = types.SamplingParams(max_tokens=8, temperature=temperature, seed=1)
    seq = client.sample(prompt, 1, params).sequences[0]
    with torch.no_grad():
        logits = tiny_model(torch.tensor([prompt + seq.tokens])).logits[0].float()
    steps = logits[len(prompt) - 1 : -1] / (temperature or 1.0)
    expected = torch.log_softmax(steps, -1).gather(1, torch.tensor(seq.tokens)[:, None])[:, 0]
    torch.testing.assert_close(torch.tensor(seq.logprobs), expected, atol=1e-4, rtol=1e-4)


def test_top_k_and_top_p_restrict_choices(client, tiny_model, tokenizer):
    prompt = _prompts(tokenizer, 1)[0]
    params = types.SamplingParams(max_tokens=6, temperature=1.0, top_k=3, seed=7)
    seq = client.sample(prompt, 1, params).sequences[0]
    with torch.no_grad():
        logits = tiny_model(torch.tensor([prompt + seq.tokens])).logits[0, len(prompt) - 1 : -1]
    top3 = logits.topk(3, dim=-1).indices
    assert all(t in row for t, row in zip(seq.tokens, top3.tolist(), strict=True))
    # Renormalized over three tokens, each chosen token has probability >= 1/3 of... at least
    # more than its unrestricted probability.
    raw = torch.log_softmax(logits, -1).gather(1, torch.tensor(seq.tokens)[:, None])[:, 0]
    assert all(lp > r for lp, r in zip(seq.logprobs, raw.tolist(), strict=True))

    nucleus = types.SamplingParams(max_tokens=6, temperature=1.0, top_p=1e-6, seed=7)
    greedy = client.sample(prompt, 1, GREEDY).sequences[0].tokens[:6]
    assert client.sample(prompt, 1, nucleus).sequences[0].tokens == greedy


def test_seed_reproduces_and_samples_differ(client, tokenizer):
    prompt = _prompts(tokenizer, 1)[0]
    seeded = types.SamplingParams(max_tokens=8, temperature=1.0, seed=123)
    first = [s.tokens for s in client.sample(prompt, 3, seeded).sequences]
    again = [s.tokens for s in client.sample(prompt, 3, seeded).sequences]
    assert first == again
    assert len({tuple(t) for t in first}) == 3
    other = types.SamplingParams(max_tokens=8, temperature=1.0, seed=124)
    assert [s.tokens for s in client.sample(prompt, 3, other).sequences] != first


def test_unseeded_sampling_follows_torch_manual_seed(client, tokenizer):
    prompt = _prompts(tokenizer, 1)[0]
    unseeded = types.SamplingParams(max_tokens=8, temperature=1.0)
    torch.manual_seed(11)
    first = [s.tokens for s in client.sample(prompt, 3, unseeded).sequences]
    later = [s.tokens for s in client.sample(prompt, 3, unseeded).sequences]
    torch.manual_seed(11)
    assert [s.tokens for s in client.sample(prompt, 3, unseeded).sequences] == first
    assert later != first  # the global generator moved on


def test_num_samples_greedy_are_identical(client, tokenizer):
    response = client.sample(_prompts(tokenizer, 1)[0], 4, GREEDY)
    assert len(response.sequences) == 4
    assert len({tuple(s.tokens) for s in response.sequences}) == 1


def test_shares_live_weights_and_restores_training_flags(tiny_model, tokenizer):
    tiny_model.train()
    tiny_model.model.layers[0].eval()  # a deliberately frozen submodule stays in eval
    flags = {name: m.training for name, m in tiny_model.named_modules()}
    prompt = _prompts(tokenizer, 1)[0]
    with SamplingClient.from_module(tiny_model, tokenizer) as client:
        before = client.sample(prompt, 1, GREEDY).sequences[0].tokens
        target = (before[0] + 1) % len(tokenizer)
        with torch.no_grad():
            tiny_model.lm_head.weight[target] += 100.0  # an "optimizer step"
        after = client.sample(prompt, 1, GREEDY).sequences[0].tokens
    assert after[0] == target != before[0]
    assert {name: m.training for name, m in tiny_model.named_modules()} == flags
    assert all(p.grad is None for p in tiny_model.parameters())


@pytest.mark.parametrize(
    ("prompt", "num_samples", "message"),
    [
        ([], 1, "empty"),
        ([1, 2], 0, "num_samples"),
        ([10**9], 1, "vocabulary"),
        ([1] * 600, 1, "context"),
    ],
)
def test_bad_requests_name_the_problem(client, prompt, num_samples, message):
    with pytest.raises(ValueError, match=message):
        client.sample(prompt, num_samples, GREEDY)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_tokens": 0}, "max_tokens=0"),
        ({"temperature": -1.0}, "temperature=-1.0"),
        ({"temperature": float("nan")}, "temperature=nan"),
        ({"temperature": float("inf")}, "temperature=inf"),
        ({"top_p": 0.0}, "top_p=0.0"),
        ({"top_p": float("nan")}, "top_p=nan"),
        ({"top_k": -5}, "top_k=-5"),
        ({"stop": ["ok", None]}, r"stop\[1\]=None"),
        ({"stop": ""}, r"stop\[0\]=''"),
        ({"stop": [1.5]}, r"stop\[0\]=1.5"),
    ],
)
def test_bad_sampling_params_name_the_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        types.SamplingParams(**kwargs)


def test_one_bad_request_fails_alone(client, tokenizer):
    good = _prompts(tokenizer, 3)

    async def mixed():
        calls = [client.sample_async(p, 1, GREEDY) for p in good]
        calls.insert(1, client.sample_async([10**9], 1, GREEDY))
        return await asyncio.gather(*calls, return_exceptions=True)

    results = asyncio.run(mixed())
    assert isinstance(results[1], ValueError)
    assert all(
        len(r.sequences[0].tokens) == GREEDY.max_tokens for i, r in enumerate(results) if i != 1
    )


def test_closed_client_says_so(tiny_model, tokenizer):
    client = SamplingClient.from_module(tiny_model, tokenizer)
    client.sample([1, 2, 3], 1, GREEDY)
    client.close()
    with pytest.raises(RuntimeError, match="closed"):
        client.sample([1, 2, 3], 1, GREEDY)
