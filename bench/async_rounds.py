"""Wall time of a training run with a slow infrequent evaluator: synchronous rounds vs
`EvalCallback(async_infrequent=True)`, printed as a ratio (synchronous / background).

Background rounds pay off when a round takes about as long as the training between two
rounds, so the bench first times the training alone and sizes each slow evaluator to take that
long on its own (the interval's training time):

- latency-bound: it waits without computing (a remote judge, an API);
- compute-bound: it samples `--samples` answers from the weights, each as many tokens long
  as take that long, so the background round competes with training for the same cores.

Runs alternate (sync, async, async, sync, ...) and the median of `--repeats` is reported, with
the ideal ratio: rounds fully hidden behind training except the last, which runs synchronously
in both modes. Training is a small random Llama on the CPU; rounds run at step 0, every
`--every` steps and after the last.

    python -m bench.async_rounds --steps 120 --every 30 --repeats 3
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import statistics
import time
import warnings

import torch
from transformers import LlamaForCausalLM

from bench.tiny_fit import TinyLM, fit, random_llama
from bios_callbacks.callback import EvalCallback
from bios_callbacks.evaluators import SamplingClientEvaluator
from bios_callbacks.models import EMBEDDED_MODEL
from bios_callbacks.tokenizer_utils import get_tokenizer
from bios_callbacks.types import SamplingParams


class Sleeps(SamplingClientEvaluator):
    """Latency-bound: waits, as for a remote grader, without using the CPU."""

    name = "sleeps"

    def __init__(self, seconds: float):
        self.seconds = seconds

    async def __call__(self, sampling_client):
        await asyncio.sleep(self.seconds)
        return {"waited_s": self.seconds}


class Samples(SamplingClientEvaluator):
    """Compute-bound: greedy answers of a fixed length from the weights being evaluated."""

    name = "samples"

    def __init__(self, samples: int, tokens: int):
        self.samples, self.tokens = samples, tokens

    async def __call__(self, sampling_client):
        params = SamplingParams(max_tokens=self.tokens, temperature=0.0)
        prompts = [[1, 100 + i, 200 + i, 300 + i] for i in range(self.samples)]
        results = await asyncio.gather(
            *(sampling_client.sample_async(prompt=p, sampling_params=params) for p in prompts)
        )
        return {"tokens": float(sum(len(r.sequences[0].tokens) for r in results))}


MAX_TOKENS = 500  # prompt + answer within the model's 512 positions


def model() -> LlamaForCausalLM:
    return random_llama(hidden_size=128, max_positions=512)


def run(tokenizer, builder, args, background: bool) -> float:
    """Seconds `trainer.fit` takes (rounds included; no callback when `builder` is None)."""
    callbacks = []
    if builder is not None:
        callbacks.append(
            EvalCallback(
                infrequent_evaluator_builders=[builder],
                infrequent_eval_every=args.every,
                async_infrequent=background,
                progress=False,
            )
        )
    module = TinyLM(model(), tokenizer, optimizer=torch.optim.AdamW, lr=1e-3)
    return fit(module, args.steps, callbacks)


def compare(tokenizer, label: str, builder, args, train_s: float, round_s: float) -> None:
    times: dict[bool, list[float]] = {False: [], True: []}
    for repeat in range(args.repeats):
        for background in (False, True) if repeat % 2 == 0 else (True, False):
            times[background].append(run(tokenizer, builder, args, background))
    sync, background = statistics.median(times[False]), statistics.median(times[True])
    rounds = args.steps // args.every + 1 + (args.steps % args.every > 0)
    ideal = (train_s + rounds * round_s) / (train_s + round_s)
    print(
        f"{label}: synchronous {sync:.1f} s, async_infrequent {background:.1f} s "
        f"(median of {args.repeats}); ratio {sync / background:.2f}x (ideal {ideal:.2f}x)"
    )


def sampling_seconds(tokenizer, samples: int, tokens: int) -> float:
    """Seconds one compute-bound round of `samples` answers takes on an idle model."""
    from bios_callbacks.callback.run_sync import run_sync
    from bios_callbacks.sampling.client import SamplingClient

    with SamplingClient.from_module(model(), tokenizer) as client:
        run_sync(Samples(samples, tokens)(client))  # warm-up
        start = time.perf_counter()
        run_sync(Samples(samples, tokens)(client))
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--every", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--samples", type=int, default=8)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    tokenizer = get_tokenizer(EMBEDDED_MODEL)
    quick = argparse.Namespace(**{**vars(args), "steps": 2, "every": 1})
    run(tokenizer, functools.partial(Sleeps, 0.0), quick, background=True)  # warm-up
    train_s = statistics.median(run(tokenizer, None, args, False) for _ in range(3))
    interval_s = train_s * args.every / args.steps
    print(
        f"{args.steps} steps, infrequent rounds at 0, every {args.every} and the last; "
        f"training alone {train_s:.1f} s, {interval_s:.2f} s between rounds"
    )
    compare(
        tokenizer,
        f"latency-bound evaluator ({interval_s:.2f} s a round)",
        functools.partial(Sleeps, interval_s),
        args,
        train_s,
        interval_s,
    )
    per_32 = sampling_seconds(tokenizer, args.samples, 32)
    tokens = max(1, min(MAX_TOKENS, round(32 * interval_s / per_32)))
    round_s = sampling_seconds(tokenizer, args.samples, tokens)
    compare(
        tokenizer,
        f"compute-bound evaluator ({args.samples} x {tokens} tokens, {round_s:.2f} s alone)",
        functools.partial(Samples, args.samples, tokens),
        args,
        train_s,
        round_s,
    )


if __name__ == "__main__":
    main()
