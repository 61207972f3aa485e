"""Where a decode step's time goes, against the machine's matmul peak measured in the same run,
how steps of few rows (a batch's tail) run on MKL's products vs packed weights, and how
tokens/s grows with the rows in a step.

Used by `bench/sampling.py`; run alone (`python -m bench.decode_step`) for just these.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Hashable

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from bios_callbacks import types
from bios_callbacks.sampling.request import Request
from bios_callbacks.sampling.runner import ModelRunner

MATMULS = ("aten::mm", "aten::addmm", "mkldnn::_linear_pointwise")
COPIES = ("aten::cat", "aten::copy_", "aten::index", "aten::index_select")


def matmul_peak(size: int = 1024, trials: int = 5) -> float:
    """FLOP/s of the best of `trials` float32 `size`^3 matmuls (each timed over 10 products)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(trials):
        start = time.perf_counter()
        for _ in range(10):
            a @ b
        best = min(best, (time.perf_counter() - start) / 10)
    return 2 * size**3 / best


def flops_per_token(model: torch.nn.Module) -> int:
    """Matmul FLOPs of one token through every linear layer (attention scores left out)."""
    return 2 * sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


def step_breakdown(
    model: torch.nn.Module,
    tokenizer,
    prompts: list[list[int]],
    *,
    packed: bool,
    lean: bool,
    steps: int = 8,
) -> dict[str, float]:
    """Milliseconds per decode step of all `prompts` as one batch (greedy), by kind of work,
    with packed weights or not, and with the engine's own decode loop or transformers' forward.

    Keys: `step`, `matmul`, `attention`, `choose tokens, stop checks` (the runner's token
    choice), `cache and mask copies`, `other` (norms, RoPE, activations, Python), and
    `live columns` (the share of attention columns that are not padding, in [0, 1]).
    """
    runner = _runner(model, tokenizer, packed=packed, lean=lean)
    with runner.serving():
        batch = runner.prefill(_greedy_parts(prompts, steps + 8))
        runner.decode(batch)  # warm-up (and packing)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(steps):
                with record_function("bench.step"):
                    runner.decode(batch)
        live = float(batch.mask.float().mean())
    self_ms = {e.key: e.self_cpu_time_total / 1e3 / steps for e in prof.key_averages()}
    total_ms = {e.key: e.cpu_time_total / 1e3 / steps for e in prof.key_averages()}
    parts_ms = {
        "matmul": sum(self_ms.get(k, 0.0) for k in MATMULS),
        "attention": total_ms.get("aten::scaled_dot_product_attention", 0.0),
        "choose tokens, stop checks": total_ms.get("bios.choose_tokens", 0.0),
        "cache and mask copies": sum(self_ms.get(k, 0.0) for k in COPIES),
    }
    step = total_ms["bench.step"]
    return {"step": step, **parts_ms, "other": step - sum(parts_ms.values()), "live columns": live}


def _runner(model: torch.nn.Module, tokenizer, *, packed: bool, lean: bool) -> ModelRunner:
    """A runner with packed weights or not, and the own decode loop or transformers' forward."""
    runner = ModelRunner(model, tokenizer, compute_dtype=None, prefix_caching=False)
    runner.pack_weights, runner.lean_decode = packed, lean
    return runner


def _greedy_parts(prompts: list[list[int]], tokens: int) -> list:
    """One greedy sample of up to `tokens` new tokens for each prompt, as the runner takes them."""
    params = types.SamplingParams(max_tokens=tokens, temperature=0.0)
    return [(Request(p, 1, params, max_new_tokens=tokens), range(1)) for p in prompts]


CONFIGURATIONS = {
    "plain, transformers": {"packed": False, "lean": False},
    "packed, transformers": {"packed": True, "lean": False},
    "packed, own loop": {"packed": True, "lean": True},
}
"""Columns of the breakdown: weights (plain or packed) and forward (transformers' or the
engine's own decode loop, `sampling/decode_forward.py`); the last is the engine's default."""


def print_breakdown(model, tokenizer, prompts: list[list[int]], peak: float) -> None:
    """Prints the breakdown of a step in each of `CONFIGURATIONS`, side by side."""
    flops = flops_per_token(model) * len(prompts)
    runs = {
        name: step_breakdown(model, tokenizer, prompts, **options)
        for name, options in CONFIGURATIONS.items()
    }
    print(f"\none decode step of {len(prompts)} rows, ms (share of the step):")
    print(f"| {'part':<28} | " + " | ".join(f"{name:<20}" for name in runs) + " |")
    print(f"|{'-' * 30}|" + "|".join("-" * 22 for _ in runs) + "|")
    for key in runs["packed, own loop"]:
        if key == "live columns":
            continue
        cells = [f"{r[key]:6.1f} ({r[key] / r['step']:4.0%})" for r in runs.values()]
        print(f"| {key:<28} | " + " | ".join(f"{cell:<20}" for cell in cells) + " |")
    fractions = [f"{flops / (r['step'] / 1e3) / peak:<20.0%}" for r in runs.values()]
    live = runs["packed, own loop"]["live columns"]
    print(
        f"| {'% of matmul peak':<28} | " + " | ".join(fractions) + " |\n"
        f"attention columns that are live (not padding): {live:.0%}"
    )


def few_row_steps(
    model: torch.nn.Module, tokenizer, prompts: list[list[int]], *, steps: int = 6
) -> tuple[float, float]:
    """Median milliseconds per decode step of `prompts` as one batch on the own decode loop,
    `(plain, packed)`: MKL's products against oneDNN's packed weights, in alternating steps."""
    step_ms = alternating_steps(
        model, tokenizer, {packed: (prompts, packed) for packed in (False, True)}, steps=steps
    )
    return step_ms[False], step_ms[True]


def alternating_steps(
    model: torch.nn.Module,
    tokenizer,
    batches: dict[Hashable, tuple[list[list[int]], bool]],
    *,
    steps: int = 6,
) -> dict[Hashable, float]:
    """Median milliseconds per decode step of each of `batches`, by key; each value is
    `(prompts, packed)`: one greedy batch on the own decode loop, on packed weights or MKL's.
    The batches step in turn."""
    times: dict[Hashable, list[float]] = {key: [] for key in batches}
    with contextlib.ExitStack() as stack:
        running = {}
        for key, (prompts, packed) in batches.items():
            runner = _runner(model, tokenizer, packed=packed, lean=True)
            stack.enter_context(runner.serving())
            running[key] = (runner, runner.prefill(_greedy_parts(prompts, steps + 8)))
        for _ in range(steps + 1):  # the first of each is a warm-up (and packing)
            for key, (runner, batch) in running.items():
                start = time.perf_counter()
                runner.decode(batch)
                times[key].append(time.perf_counter() - start)
    return {key: statistics.median(each[1:]) * 1e3 for key, each in times.items()}


def print_few_rows(model, tokenizer, prompts: list[list[int]], counts=(2, 4, 8, 16)) -> None:
    """Prints `few_row_steps` for batches of the first `counts` prompts: the end of a batch,
    where the last long answers decode with few batch mates."""
    print("\ndecode steps of few rows, own loop, ms: MKL's products vs packed weights")
    print("| rows | MKL    | packed | packed speedup |")
    print("|------|--------|--------|----------------|")
    for count in counts:
        plain, packed = few_row_steps(model, tokenizer, prompts[:count])
        print(f"| {count:4d} | {plain:6.1f} | {packed:6.1f} | {plain / packed:13.2f}x |")


def print_rows_per_step(
    model, tokenizer, prompts: list[list[int]], counts: tuple[int, ...] = (16, 32, 64, 128)
) -> None:
    """Prints the tokens/s of decode steps of the first `counts` prompts as one batch (own
    loop, packed weights) against 32 rows: why `max_batch_size` defaults to 64. `counts`
    holds 32, and `prompts` at least `max(counts)` prompts."""
    batches = {count: (prompts[:count], True) for count in counts}
    step_ms = alternating_steps(model, tokenizer, batches)
    base = 32 / step_ms[32] * 1e3
    print("\ndecode steps of more rows, own loop, packed: tokens/s vs 32 rows")
    print("| rows | ms/step | tokens/s | vs 32 rows |")
    print("|------|---------|----------|------------|")
    for count, ms in step_ms.items():
        rate = count / ms * 1e3
        print(f"| {count:4d} | {ms:7.1f} | {rate:8.1f} | {rate / base:9.2f}x |")


def main() -> None:
    from bench.sampling import prompts
    from bios_callbacks.models import EMBEDDED_MODEL, load_model

    model, tokenizer = load_model(EMBEDDED_MODEL)
    peak = matmul_peak()
    print(f"matmul peak {peak / 1e9:.0f} GFLOP/s (fp32, {torch.get_num_threads()} threads)")
    print_breakdown(model, tokenizer, prompts(tokenizer, 32), peak)
    print_few_rows(model, tokenizer, prompts(tokenizer, 32))
    print_rows_per_step(model, tokenizer, prompts(tokenizer, 128))


if __name__ == "__main__":
    main()
