"""Quality checks on the real embedded model, through the renderer, as a user would sample."""

from __future__ import annotations

import asyncio

import pytest

from bios_callbacks import renderers, types
from bios_callbacks.sampling_client import SamplingClient

pytestmark = pytest.mark.embedded

# The 4-bit 135M model misses some (Italy, Spain); these it knows, as `generate` shows too.
CAPITALS = {
    "France": "Paris", "Germany": "Berlin", "Japan": "Tokyo", "the United Kingdom": "London",
}


def test_capitals_answered_through_the_chat_renderer(embedded):
    model, tokenizer = embedded
    renderer = renderers.get_renderer(name="chatml", tokenizer=tokenizer)
    params = types.SamplingParams(max_tokens=24, temperature=0.0,
                                  stop=renderer.get_stop_sequences())

    async def ask_all():
        with SamplingClient.from_module(model, tokenizer) as client:
            calls = [
                client.sample_async(
                    prompt=renderer.build_generation_prompt(
                        [{"role": "user", "content": f"What is the capital of {country}?"}]),
                    num_samples=1, sampling_params=params)
                for country in CAPITALS
            ]
            return await asyncio.gather(*calls)

    responses = asyncio.run(ask_all())
    for (country, capital), response in zip(CAPITALS.items(), responses, strict=True):
        sequence = response.sequences[0]
        message, termination = renderer.parse_response(sequence.tokens)
        assert capital in message["content"], (country, message)
        assert sequence.stop_reason == "stop" and termination in ("stop", "eos")
