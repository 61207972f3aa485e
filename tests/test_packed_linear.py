"""Packed oneDNN weights for decoding: same results as the plain layers, never stale, restored."""

from __future__ import annotations

import asyncio

import pytest
import torch

from bios_callbacks.sampling.client import SamplingClient
from bios_callbacks.sampling.packed_linear import packed_linears
from bios_callbacks.types import SamplingParams

pytestmark = pytest.mark.skipif(
    not torch.backends.mkldnn.is_available(), reason="this torch has no oneDNN"
)


def _patched(model: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for m in model.modules() if "forward" in m.__dict__]


async def _gather(client, prompts, params):
    return await asyncio.gather(*(client.sample_async(p, 1, params) for p in prompts))


def _ids(rows: int, width: int) -> torch.Tensor:
    return torch.randint(10, 1000, (rows, width), generator=torch.Generator().manual_seed(1))


def test_packed_forward_matches_the_plain_one_and_restores_the_layers(tiny_model):
    ids = _ids(9, 1)  # a decode step's shape: one token for each of 9 sequences
    with torch.no_grad():
        plain = tiny_model(ids).logits
        with packed_linears(tiny_model):
            assert len(_patched(tiny_model)) == 2 * 7 + 1  # q k v o gate up down, lm_head
            packed = tiny_model(ids).logits
    assert _patched(tiny_model) == []
    torch.testing.assert_close(packed, plain, rtol=1e-4, atol=1e-4)
    assert torch.equal(packed.argmax(-1), plain.argmax(-1))


def test_weights_changed_in_the_block_are_repacked(tiny_model):
    ids = _ids(8, 1)
    with torch.no_grad(), packed_linears(tiny_model):
        before = tiny_model(ids).logits
        tiny_model.lm_head.weight.mul_(2.0)  # an optimizer step, in place
        after = tiny_model(ids).logits
        hidden = tiny_model.model(ids).last_hidden_state
        expected = torch.nn.functional.linear(hidden, tiny_model.lm_head.weight)
    torch.testing.assert_close(after, expected, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(after, before)


def test_gradients_still_flow_inside_the_block(tiny_model):
    with packed_linears(tiny_model):
        loss = tiny_model(_ids(3, 4)).logits.logsumexp(-1).mean()
        loss.backward()
    assert tiny_model.model.layers[0].mlp.up_proj.weight.grad is not None


def test_overlapping_blocks_restore_the_layers_at_the_last_exit(tiny_model):
    with packed_linears(tiny_model):
        with packed_linears(tiny_model):
            pass
        assert _patched(tiny_model)
    assert _patched(tiny_model) == []


def test_a_peft_model_decodes_as_its_own_generate_does(tiny_model, tokenizer):
    peft = pytest.importorskip("peft")
    config = peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    lora = peft.get_peft_model(tiny_model, config)
    words = ("The sea", "Bread is", "Owls can", "Rain", "A clock", "Kites fly", "Deserts", "Ice")
    prompts = [tokenizer.encode(text) for text in words]  # 8 rows: decode steps use the packs
    params = SamplingParams(max_tokens=6, temperature=0.0)
    with SamplingClient.from_module(lora, tokenizer) as client:
        responses = asyncio.run(_gather(client, prompts, params))
    assert _patched(lora) == []
    for prompt, response in zip(prompts, responses, strict=True):
        with torch.no_grad():
            out = lora.generate(
                input_ids=torch.tensor([prompt]),
                max_new_tokens=6,
                do_sample=False,
                min_new_tokens=6,
            )
        assert response.sequences[0].tokens == out[0, len(prompt) :].tolist()
