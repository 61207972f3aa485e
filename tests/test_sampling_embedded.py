"""Quality checks on the real embedded model, through the renderer, as a user would sample."""

from __future__ import annotations

import asyncio

import pytest

from bios_callbacks import renderers, types
from bios_callbacks.sampling.client import SamplingClient

pytestmark = pytest.mark.embedded

# The 4-bit 135M model misses some (Italy, Spain); these it knows, as `generate` shows too.
CAPITALS = {
    "France": "Paris",
    "Germany": "Berlin",
    "Japan": "Tokyo",
    "the United Kingdom": "London",
}


def test_capitals_answered_through_the_chat_renderer(embedded):
    model, tokenizer = embedded
    renderer = renderers.get_renderer(name="chatml", tokenizer=tokenizer)
    params = types.SamplingParams(
        max_tokens=24, temperature=0.0, stop=renderer.get_stop_sequences()
    )

    async def ask_all():
        with SamplingClient.from_module(model, tokenizer) as client:
            calls = [
                client.sample_async(
                    prompt=renderer.build_generation_prompt(
                        [{"role": "user", "content": f"What is the capital of {country}?"}]
                    ),
                    num_samples=1,
                    sampling_params=params,
                )
                for country in CAPITALS
            ]
            return await asyncio.gather(*calls)

    responses = asyncio.run(ask_all())
    for (country, capital), response in zip(CAPITALS.items(), responses, strict=True):
        sequence = response.sequences[0]
        message, termination = renderer.parse_response(sequence.tokens)
        assert capital in message["content"], (country, message)
        assert sequence.stop_reason == "stop" and termination in ("stop", "eos")


def test_service_client_in_bfloat16_still_answers():
    import bios_callbacks as bios
    from bios_callbacks.models import EMBEDDED_MODEL

    client = bios.ServiceClient(dtype="bfloat16").create_sampling_client(base_model=EMBEDDED_MODEL)
    with client:
        assert str(next(client.model.parameters()).dtype) == "torch.bfloat16"
        renderer = renderers.get_renderer(name="chatml", tokenizer=client.tokenizer)
        prompt = renderer.build_generation_prompt(
            [{"role": "user", "content": "What is the capital of France?"}]
        )
        params = types.SamplingParams(
            max_tokens=16, temperature=0.0, stop=renderer.get_stop_sequences()
        )
        tokens = client.sample(prompt, 1, params).sequences[0].tokens
    assert "Paris" in renderer.parse_response(tokens)[0]["content"]


def test_service_client_rejects_an_unknown_dtype():
    import bios_callbacks as bios

    with pytest.raises(ValueError, match="dtype='fp8'"):
        bios.ServiceClient(dtype="fp8")
