"""Sampling throughput: sequential vs concurrent `sample_async` vs one padded `generate` call.

Run: `python -m bench.sampling` (or `make bench`). Every number is measured in this run, on the
same prompts and the embedded model, and printed as tokens/s and as ratios, since these machines
are too noisy for absolute numbers to travel.

Two workloads:
- equal: every request asks for the same number of tokens (prompts that answer at length);
- varied: requests ask for 8..128 tokens; the padded batch must run to the longest.

The equal workload also runs transformers' own continuous batching (`generate_batch`), which
this library does not use because it is slower than the padded call on these CPUs.

The headline runs (32 concurrent requests) run alternately as the engine runs by default (on
CPU: packed weights, `sampling/packed_linear.py`, kept between runs as `ServiceClient` keeps
them for the models it loads, and its own decode loop, `sampling/decode_forward.py`), with
transformers' forward on packed weights (packed anew in each run), with plain weights and
transformers' forward, and as one padded `generate` call.
Every configuration also shows the share of the fp32 matmul peak it reaches (the best 1024^3
matmul measured so far in this run; FLOPs counted over the linear layers). A per-step
breakdown of a 32-row decode step follows, then steps of 2-16 rows with and without packed
weights, and the tokens/s of steps of 16-128 rows (`bench/decode_step.py`).

Then 64 concurrent requests on clients decoding 32 vs 64 at once (`max_batch_size`), a
few-shot eval workload (every prompt opens with the same instructions and examples, short
answers) with prefix caching on and off, and the dtype comparison.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable
from functools import partial
from typing import TypeVar

import torch

from bench.decode_step import (
    flops_per_token,
    matmul_peak,
    print_breakdown,
    print_few_rows,
    print_rows_per_step,
)
from bios_callbacks import types
from bios_callbacks.models import EMBEDDED_MODEL, load_model
from bios_callbacks.models.tokens import pad_token_id
from bios_callbacks.sampling.client import SamplingClient
from bios_callbacks.sampling.engine import DecodeEngine

TOPICS = [
    "the ocean",
    "a lighthouse keeper",
    "volcanoes",
    "the history of bread",
    "a lost robot",
    "winter in a city",
    "honeybees",
    "the first bicycle",
    "a chess tournament",
    "rainforests",
    "a library at night",
    "the moon landing",
    "a mountain village",
    "clockmakers",
    "deserts",
    "an old sailing ship",
    "thunderstorms",
    "a jazz musician",
    "glaciers",
    "a bakery",
    "the printing press",
    "a garden in spring",
    "owls",
    "a train journey",
    "coral reefs",
    "a detective",
    "the northern lights",
    "kites",
    "a marathon runner",
    "ancient Rome",
    "a space station",
    "autumn leaves",
]
VARIED_LENGTHS = [8, 16, 32, 64, 128]
FEW_SHOT = (
    "Answer with the capital city only.\nQ: France\nA: Paris\nQ: Japan\nA: Tokyo\n"
    "Q: Kenya\nA: Nairobi\nQ: Peru\nA: Lima\nQ: Canada\nA: Ottawa\nQ: "
)
K = TypeVar("K")
COUNTRIES = ["Italy", "Spain", "Egypt", "Chile", "India", "Norway", "Ghana", "Cuba"]


def prompts(tokenizer, count: int) -> list[list[int]]:
    """Chat prompts asking for long answers, tokenized with the model's chat template."""
    return [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": f"Write a long, detailed story about {topic}."}],
            add_generation_prompt=True,
            tokenize=True,
            return_dict=False,
        )
        for topic in (TOPICS * (count // len(TOPICS) + 1))[:count]
    ]


def varied_limits(count: int) -> list[int]:
    """`max_tokens` of `count` requests of the varied workload, cycling through VARIED_LENGTHS."""
    return [VARIED_LENGTHS[i % len(VARIED_LENGTHS)] for i in range(count)]


def run_sequential(client, batch, limits) -> tuple[int, float]:
    async def go():
        total = 0
        for prompt, limit in zip(batch, limits, strict=True):
            params = types.SamplingParams(max_tokens=limit, temperature=0.0)
            response = await client.sample_async(prompt, 1, params)
            total += len(response.sequences[0].tokens)
        return total

    start = time.perf_counter()
    tokens = asyncio.run(go())
    return tokens, time.perf_counter() - start


def run_concurrent(client, batch, limits) -> tuple[int, float]:
    async def go():
        calls = [
            client.sample_async(p, 1, types.SamplingParams(max_tokens=n, temperature=0.0))
            for p, n in zip(batch, limits, strict=True)
        ]
        return sum(len(r.sequences[0].tokens) for r in await asyncio.gather(*calls))

    start = time.perf_counter()
    tokens = asyncio.run(go())
    return tokens, time.perf_counter() - start


def run_static(model, tokenizer, batch, limits) -> tuple[int, float]:
    """One left-padded `generate` call; each row counts only the tokens it asked for."""
    width = max(map(len, batch))
    pad = pad_token_id(tokenizer)
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in batch])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch])
    start = time.perf_counter()
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max(limits),
            do_sample=False,
            pad_token_id=pad,
        )
    elapsed = time.perf_counter() - start
    eos = {tokenizer.eos_token_id, *_as_list(model.generation_config.eos_token_id)}
    tokens = 0
    for row, limit in zip(out[:, width:].tolist(), limits, strict=True):
        useful = row[:limit]
        ends = [i for i, t in enumerate(useful) if t in eos]
        tokens += ends[0] + 1 if ends else len(useful)
    return tokens, elapsed


def run_generate_batch(model, tokenizer, batch, limit) -> tuple[int, float]:
    """transformers' own continuous batching (`generate_batch`), for comparison."""
    from transformers import GenerationConfig

    config = GenerationConfig(
        max_new_tokens=limit,
        do_sample=False,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.no_grad():
        model.generate_batch(inputs=batch[:2], generation_config=config)  # warm-up
        start = time.perf_counter()
        outputs = model.generate_batch(inputs=batch, generation_config=config)
    elapsed = time.perf_counter() - start
    return sum(len(o.generated_tokens) for o in outputs.values()), elapsed


def _median_run(runs: list[tuple[int, float]]) -> tuple[int, float]:
    """The run with the median tokens/s."""
    return sorted(runs, key=lambda run: run[0] / run[1])[len(runs) // 2]


def median_rates(
    clients: dict[K, SamplingClient],
    run: Callable[[SamplingClient], tuple[int, float]],
    repeats: int,
) -> dict[K, float]:
    """Tokens/s of each of `clients` (by key) in the median of `repeats` runs of `run(client)`,
    the clients taking turns."""
    runs: dict[K, list[tuple[int, float]]] = {key: [] for key in clients}
    for _ in range(repeats):
        for key, client in clients.items():
            runs[key].append(run(client))
    medians = {key: _median_run(each) for key, each in runs.items()}
    return {key: tokens / seconds for key, (tokens, seconds) in medians.items()}


def _as_list(value) -> list[int]:
    if value is None:
        return []
    return [value] if isinstance(value, int) else list(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=32, help="prompts in the largest batch")
    parser.add_argument("--sequential", type=int, default=8, help="prompts run one at a time")
    parser.add_argument("--max-tokens", type=int, default=64, help="tokens per equal request")
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="alternating runs of the largest concurrent batch and the padded call",
    )
    args = parser.parse_args()

    model, tokenizer = load_model(EMBEDDED_MODEL)
    peak = matmul_peak()
    token_flops = flops_per_token(model)
    clients = {}
    for name, packed, lean in (
        ("default", True, True),
        ("transformers", True, False),
        ("plain", False, False),
    ):
        engine = DecodeEngine(
            model, tokenizer, max_batch_size=args.prompts, keep_packed_weights=name == "default"
        )
        engine.runner.pack_weights, engine.runner.lean_decode = packed, lean
        clients[name] = SamplingClient(engine)
    client = clients["default"]
    batch = prompts(tokenizer, args.prompts)
    for warm in clients.values():
        run_concurrent(warm, batch[:2], [4, 4])  # warm-up

    print(
        f"model {EMBEDDED_MODEL}, fp32, {torch.get_num_threads()} threads, greedy; "
        f"matmul peak {peak / 1e9:.0f} GFLOP/s, {token_flops / 1e6:.0f} MFLOP per token"
    )
    for workload in ("equal", "varied"):
        if workload == "equal":
            limits = [args.max_tokens] * len(batch)
        else:
            limits = varied_limits(len(batch))
        rows = [
            (
                f"sequential x{args.sequential}",
                run_sequential(client, batch[: args.sequential], limits[: args.sequential]),
            )
        ]
        for n in sorted({n for n in (8, 16) if n < args.prompts}):
            rows.append((f"concurrent x{n}", run_concurrent(client, batch[:n], limits[:n])))
        if workload == "equal":
            rows.append(
                (
                    f"generate_batch x{len(batch)}",
                    run_generate_batch(model, tokenizer, batch, args.max_tokens),
                )
            )
        # The headline runs alternate, `repeats` times each; each keeps its median run.
        runs: dict[str, list[tuple[int, float]]] = {name: [] for name in clients}
        padded = []
        for _ in range(args.repeats):
            for name, each in clients.items():
                runs[name].append(run_concurrent(each, batch, limits))
            padded.append(run_static(model, tokenizer, batch, limits))
        rows.append((f"concurrent x{len(batch)}", _median_run(runs["default"])))
        rows.append((f"  transformers' forward x{len(batch)}", _median_run(runs["transformers"])))
        rows.append((f"  plain weights x{len(batch)}", _median_run(runs["plain"])))
        rows.append((f"padded generate x{len(batch)}", _median_run(padded)))
        rate = {name: tokens / seconds for name, (tokens, seconds) in rows}
        base, static = rate[rows[0][0]], rate[rows[-1][0]]
        peak = max(peak, matmul_peak())  # a ceiling: shared cores only ever lower a measurement
        print(f"\n{workload} lengths ({'x'.join(map(str, sorted(set(limits))))} new tokens)")
        print(f"matmul peak so far {peak / 1e9:.0f} GFLOP/s")
        print(
            f"| {'run':<28} | tokens | seconds | tokens/s | % of peak | vs sequential | vs padded |"
        )
        print(f"|{'-' * 30}|--------|---------|----------|-----------|---------------|-----------|")
        for name, (tokens, seconds) in rows:
            print(
                f"| {name:<28} | {tokens:6d} | {seconds:7.1f} | {rate[name]:8.1f} "
                f"| {rate[name] * token_flops / peak:9.0%} "
                f"| {rate[name] / base:12.2f}x | {rate[name] / static:8.2f}x |"
            )
    for each in clients.values():
        each.close()
    print_breakdown(model, tokenizer, batch, max(peak, matmul_peak()))
    print_few_rows(model, tokenizer, batch)
    print_rows_per_step(model, tokenizer, prompts(tokenizer, 128))
    compare_batch_sizes(model, tokenizer, args.repeats)
    compare_prefix_caching(model, tokenizer, args.prompts, args.repeats)
    compare_bfloat16(tokenizer, batch, [args.max_tokens] * len(batch), model)
    print(f"\nmatmul peak at the end of the run {matmul_peak() / 1e9:.0f} GFLOP/s")


def compare_batch_sizes(model, tokenizer, repeats: int, count: int = 64) -> None:
    """`count` concurrent requests (the 32 topics over again), equal and varied lengths, on
    clients with `max_batch_size` 32 (the default until 2026-12-03) and 64 (the default now),
    alternating runs, median of each."""
    batch = prompts(tokenizer, count)
    clients = {
        size: SamplingClient.from_module(
            model, tokenizer, max_batch_size=size, keep_packed_weights=True
        )
        for size in (32, 64)
    }
    try:
        for client in clients.values():
            run_concurrent(client, batch[:2], [4, 4])  # warm-up (and packing)
        print(f"\n{count} concurrent requests, max_batch_size 32 vs 64:")
        for workload, limits in (
            ("equal (64 tokens)", [64] * count),
            ("varied (8-128 tokens)", varied_limits(count)),
        ):
            run = partial(run_concurrent, batch=batch, limits=limits)
            rate = median_rates(clients, run, repeats)
            print(
                f"  {workload:<22} {rate[32]:7.1f} vs {rate[64]:7.1f} tokens/s  "
                f"{rate[64] / rate[32]:.2f}x"
            )
    finally:
        for client in clients.values():
            client.close()


def compare_prefix_caching(model, tokenizer, count: int, repeats: int) -> None:
    """Few-shot prompts, 8 new tokens each, requests arriving 8 at a time: prefix caching on vs
    off, alternating runs, median of each."""
    batch = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": FEW_SHOT + country + "\nA:"}],
            add_generation_prompt=True,
            tokenize=True,
            return_dict=False,
        )
        for country in (COUNTRIES * (count // len(COUNTRIES) + 1))[:count]
    ]
    limits = [8] * len(batch)
    waves = [slice(start, start + 8) for start in range(0, len(batch), 8)]
    clients = {
        caching: SamplingClient.from_module(
            model, tokenizer, max_batch_size=len(batch), prefix_caching=caching
        )
        for caching in (True, False)
    }

    def in_waves(client: SamplingClient) -> tuple[int, float]:
        results = [run_concurrent(client, batch[wave], limits[wave]) for wave in waves]
        return sum(r[0] for r in results), sum(r[1] for r in results)

    try:
        rate = median_rates(clients, in_waves, repeats)
    finally:
        for client in clients.values():
            client.close()
    shared = next(i for i, (a, b) in enumerate(zip(*batch[:2], strict=False)) if a != b)
    print(
        f"\nfew-shot prompts ({len(batch[0])} tokens, {shared} shared), 8 new tokens, "
        f"{len(batch)} requests in waves of 8:"
    )
    print(f"  prefix caching off {rate[False]:7.1f} tokens/s")
    print(f"  prefix caching on  {rate[True]:7.1f} tokens/s  {rate[True] / rate[False]:.2f}x")


def compare_bfloat16(tokenizer, batch, limits, model_fp32) -> None:
    """The same concurrent run with float32 weights, with float32 weights under bfloat16
    autocast (what `EvalCallback(sampling_options={"compute_dtype": torch.bfloat16})` does on
    the live model), and with bfloat16 weights (`ServiceClient(dtype="bfloat16")`)."""
    model_bf16, _ = load_model(EMBEDDED_MODEL, dtype=torch.bfloat16)
    variants = {
        "float32": (model_fp32, None),
        "bfloat16 autocast": (model_fp32, torch.bfloat16),
        "bfloat16 weights": (model_bf16, None),
    }
    rates = {}
    for name, (model, compute_dtype) in variants.items():
        with SamplingClient.from_module(
            model, tokenizer, max_batch_size=len(batch), compute_dtype=compute_dtype
        ) as client:
            run_concurrent(client, batch, limits)  # warm-up, incl. autocast's weight casts
            tokens, seconds = run_concurrent(client, batch, limits)
        rates[name] = tokens / seconds
    print(f"\ndtypes, concurrent x{len(batch)}:")
    for name, rate in rates.items():
        print(f"  {name:<18} {rate:7.1f} tokens/s  {rate / rates['float32']:.2f}x")


if __name__ == "__main__":
    main()
