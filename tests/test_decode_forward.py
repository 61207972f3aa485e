"""The engine's own decode-step forward: transformers' logits, step by step, for each family it
serves; transformers' forward wherever it does not apply."""

from __future__ import annotations

import asyncio
import contextlib
import copy

import pytest
import torch
from tiny import make_tiny_model
from torch.profiler import profile

from bios_callbacks import types
from bios_callbacks.sampling.client import SamplingClient
from bios_callbacks.sampling.decode_forward import DecodeForward
from bios_callbacks.sampling.packed_linear import packed_linears, shared_packs
from bios_callbacks.sampling.request import Request
from bios_callbacks.sampling.runner import ModelRunner


def _tiny(family: str, tokenizer, **overrides) -> torch.nn.Module:
    """Three query heads per key/value head, so the grouped attention has groups to get wrong."""
    return make_tiny_model(
        tokenizer, family=family, **{"num_attention_heads": 6, "hidden_size": 96, **overrides}
    )


def _prompts(tokenizer, count: int) -> list[list[int]]:
    return [tokenizer.encode("one two " * (1 + i % 4) + str(i)) for i in range(count)]


LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,
}
FAMILIES = [
    ("llama", {}),
    ("llama", {"attention_bias": True, "mlp_bias": True, "head_dim": 16}),
    ("llama", {"rope_scaling": {"rope_type": "linear", "factor": 2.0}}),
    ("llama", {"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}),  # scaled cos/sin
    ("llama", {"rope_scaling": LLAMA3_ROPE}),
    ("llama", {"attn_implementation": "eager"}),
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


def test_the_runner_with_it_matches_the_runner_without(tokenizer):
    """Through the runner's own steps: a shared prefix from the prefix cache (masks with zeros
    between the prefix and the rest), rows leaving at different lengths, sampled rows."""
    model = _tiny("llama", tokenizer)
    shared = tokenizer.encode("Answer briefly. " * 6)
    prompts = [shared + tokenizer.encode(" x" * (1 + i % 5)) for i in range(10)]
    results = {}
    for lean in (False, True):
        runner = ModelRunner(model, tokenizer, compute_dtype=None, prefix_caching=True)
        runner.lean_decode = lean
        parts = []
        for i, prompt in enumerate(prompts):
            temperature = 0.0 if i % 2 else 0.8
            params = types.SamplingParams(max_tokens=12, temperature=temperature, seed=i)
            parts.append((Request(prompt, 1, params, max_new_tokens=3 + i), range(1)))
        with runner.serving():
            runner.prefill(parts[:2])  # the next prefill finds the shared prefix cached
            batch = runner.prefill(parts)
            seqs = list(batch.seqs)
            while len(batch):
                runner.decode(batch)
        results[lean] = seqs
    for theirs, ours in zip(results[False], results[True], strict=True):
        assert ours.tokens == theirs.tokens and len(ours.tokens) == ours.request.max_new_tokens
        torch.testing.assert_close(ours.logprobs, theirs.logprobs, rtol=1e-4, atol=1e-4)


def test_weights_changed_between_steps_are_repacked(tokenizer):
    model = _tiny("llama", tokenizer)
    lean = DecodeForward.for_model(model)
    runner = ModelRunner(model, tokenizer, compute_dtype=None, prefix_caching=False)
    runner.lean_decode = runner.pack_weights = False
    params = types.SamplingParams(max_tokens=20, temperature=0.0)
    parts = [(Request(p, 1, params, max_new_tokens=20), range(1)) for p in _prompts(tokenizer, 9)]
    with runner.serving(), lean.packing():
        batch = runner.prefill(parts)
        mask = torch.nn.functional.pad(batch.mask, (0, 1), value=1)
        tokens, positions = batch.next_input, batch.positions
        lean(tokens, mask, positions, copy.deepcopy(batch.cache))  # packs every weight
        model.model.layers[0].mlp.up_proj.weight.mul_(1.5)  # an optimizer step, in place
        model.lm_head.weight.mul_(2.0)
        logits = lean(tokens, mask, positions, copy.deepcopy(batch.cache))
        expected = runner._forward(
            tokens[:, None], mask, positions[:, None], batch.cache, prefill=False
        )
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("keep", [False, True], ids=["freed", "kept"])
def test_packs_are_kept_between_busy_periods_on_request(keep, tiny_model, tokenizer):
    runner = ModelRunner(tiny_model, tokenizer, compute_dtype=None, prefix_caching=False)
    runner.keep_packs = keep
    params = types.SamplingParams(max_tokens=3, temperature=0.0)
    packs = []
    for _ in range(2):  # two busy periods
        parts = [
            (Request(p, 1, params, max_new_tokens=3), range(1)) for p in _prompts(tokenizer, 8)
        ]
        with runner.serving():
            batch = runner.prefill(parts)
            runner.decode(batch)
            packs.append((runner._decode_now._packs, dict(runner._decode_now._packs._packs)))
    (first, made), (second, found) = packs
    assert made and (first is second) == keep  # the same packs, or new ones each time
    assert all(found[key][1] is made[key][1] for key in made) == keep  # not packed again
    runner.release()
    assert not runner._kept_packs._packs  # nothing kept after release
    with shared_packs(tiny_model) as now:
        assert now is not first  # nor held for the model after its busy periods


def _packed_rows(runner: ModelRunner, requests: list[Request]) -> list[int]:
    """Decodes `requests` in one busy period; the input rows of each product run on packs."""
    parts = [(request, range(1)) for request in requests]
    with runner.serving(), profile(record_shapes=True) as prof:
        batch = runner.prefill(parts)
        while len(batch):
            runner.decode(batch)
    return [
        event.input_shapes[0][0]
        for event in prof.events()
        if event.name == "mkldnn::_linear_pointwise"
    ]


def test_few_rows_run_packed_and_a_lone_request_does_not_pack(tiny_model, tokenizer):
    runner = ModelRunner(tiny_model, tokenizer, compute_dtype=None, prefix_caching=False)
    prompts = _prompts(tokenizer, 2)

    def request(prompt: list[int], tokens: int) -> Request:
        params = types.SamplingParams(max_tokens=tokens, temperature=0.0)
        return Request(prompt, 1, params, max_new_tokens=tokens)

    # two rows, then the longer answer alone: both on the packs made for the two
    rows = _packed_rows(runner, [request(prompts[0], 3), request(prompts[1], 6)])
    assert set(rows) == {2, 1}
    assert not _packed_rows(runner, [request(prompts[0], 6)])  # one request: not worth packing


def test_another_engines_packed_layers_do_not_refuse_it(tiny_model):
    with packed_linears(tiny_model):  # as while another client over the model decodes
        assert DecodeForward.for_model(tiny_model) is not None


def test_gradient_checkpointings_input_hook_does_not_refuse_it(tiny_model):
    tiny_model.gradient_checkpointing_enable()  # hooks the input embeddings, which it calls
    lean = DecodeForward.for_model(tiny_model)
    assert lean is not None and lean.usable_now()


def test_blocks_over_one_model_share_its_packs_until_the_last_ends(tiny_model):
    with shared_packs(tiny_model) as first, shared_packs(tiny_model) as second:
        assert first is second
    with shared_packs(tiny_model) as third:
        assert third is not first


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


@pytest.mark.parametrize("kind", ["forward hook", "pre-hook", "global hook"])
def test_a_users_hook_still_sees_every_decode_step(kind, tiny_model, tokenizer):
    widths = []  # tokens per row of each call: 1 in a decode step

    layer = tiny_model.model.layers[1]

    def record(module, args, *out) -> None:
        if module is layer:
            widths.append(args[0].shape[1])

    hook = {
        "forward hook": lambda: layer.register_forward_hook(record),
        "pre-hook": lambda: layer.register_forward_pre_hook(record),
        "global hook": lambda: torch.nn.modules.module.register_module_forward_hook(record),
    }[kind]()
    prompts = _prompts(tokenizer, 4)
    params = types.SamplingParams(max_tokens=6, temperature=0.0)
    try:
        with SamplingClient.from_module(tiny_model, tokenizer) as client:
            responses = asyncio.run(_sample_all(client, prompts, params))
    finally:
        hook.remove()
    decode_steps = max(len(r.sequences[0].tokens) for r in responses) - 1
    assert decode_steps > 0 and widths.count(1) >= decode_steps


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


def test_wrapped_or_patched_models_keep_transformers_forward(tiny_model):
    peft = pytest.importorskip("peft")
    config = peft.LoraConfig(r=4, target_modules=["lm_head"], init_lora_weights=False)
    assert DecodeForward.for_model(peft.get_peft_model(tiny_model, config)) is None
    assert DecodeForward.for_model(tiny_model) is None  # its lm_head is LoRA's layer now


def test_a_patched_forward_keeps_transformers_forward(tiny_model):
    layer = tiny_model.model.layers[0]
    layer.mlp.forward = lambda x: torch.zeros_like(x)  # activation patching
    assert DecodeForward.for_model(tiny_model) is None


def test_half_precision_weights_keep_transformers_forward(tiny_model):
    lean = DecodeForward.for_model(tiny_model.to(torch.bfloat16))
    assert lean is not None and not lean.usable()


async def _sample_all(client, prompts, params):
    return await asyncio.gather(*(client.sample_async(p, 1, params) for p in prompts))
