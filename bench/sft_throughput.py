"""SFT throughput: shuffled batches vs length-bucketed ones (what `trainers.sft` uses).

Run: `python -m bench.sft_throughput` (or `make bench`). The same conversations (answers of
1 to 12 sentences) train the embedded model for a few steps each way, alternating; each way
prints its share of padding over a whole epoch and its trained (non-padding) tokens per second,
and the ratio of the two ways, measured in this run.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import torch

from bios_callbacks.models import EMBEDDED_MODEL, load_model
from bios_callbacks.models.tokens import pad_token_id
from bios_callbacks.renderers import default_renderer_name, get_renderer
from trainers import data
from trainers.sft import TRAIN_ON_WHAT, weighted_loss

SENTENCE = "The river bends past the old mill, where the miller counts his sacks of grain."


def conversations(count: int, seed: int = 0) -> list[data.Messages]:
    """`count` chats whose answers are 1 to 12 sentences long."""
    rng = random.Random(seed)
    return [
        [
            {"role": "user", "content": f"Tell me about the mill, part {i}."},
            {"role": "assistant", "content": " ".join([SENTENCE] * rng.randint(1, 12))},
        ]
        for i in range(count)
    ]


def padding_share(stream: data.BatchStream) -> float:
    """Padding positions over all positions, in one epoch of `stream`'s batches."""
    real = padded = 0
    for batch in stream.epoch(0):
        lengths = [len(stream.items[i][0]) for i in batch]
        real += sum(lengths)
        padded += max(lengths) * len(lengths)
    return 1 - real / padded


def train_steps(model, batches, steps: int) -> list[float]:
    """Trained tokens per second of each of `steps` AdamW steps on `batches`."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    rates = []
    for _ in range(steps):
        batch = next(batches)
        start = time.perf_counter()
        total, weight = weighted_loss(model, batch)
        (total / weight).backward()
        optimizer.step()
        optimizer.zero_grad()
        rates.append(sum(batch.tokens.lengths) / (time.perf_counter() - start))
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3, help="steps per way per round")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    model, tokenizer = load_model(EMBEDDED_MODEL)
    model.train()
    renderer = get_renderer(default_renderer_name(EMBEDDED_MODEL), tokenizer)
    examples = data.tokenize_conversations(
        conversations(args.conversations), renderer, 2048, TRAIN_ON_WHAT
    )
    pad = pad_token_id(tokenizer)
    ways = {
        "shuffled": data.BatchStream(
            examples, args.batch_size, lambda b: data.collate(b, pad), seed=0
        ),
        "length-bucketed": data.BatchStream(
            examples,
            args.batch_size,
            lambda b: data.collate(b, pad),
            seed=0,
            length=lambda example: len(example[0]),
        ),
    }
    streams = {name: iter(stream) for name, stream in ways.items()}
    rates: dict[str, list[float]] = {name: [] for name in ways}
    train_steps(model, streams["shuffled"], 1)  # warm-up
    for _ in range(args.rounds):
        for name in ways:
            rates[name] += train_steps(model, streams[name], args.steps)
    lengths = [len(tokens) for tokens, _ in examples]
    print(
        f"SFT of {EMBEDDED_MODEL}, fp32, AdamW, {torch.get_num_threads()} threads: "
        f"{len(examples)} conversations of {min(lengths)}-{max(lengths)} tokens, "
        f"batches of {args.batch_size}, median of {args.rounds * args.steps} steps each"
    )
    median = {name: statistics.median(r) for name, r in rates.items()}
    print(f"| {'batches':<16} | padding | trained tokens/s | vs shuffled |")
    print(f"|{'-' * 18}|---------|------------------|-------------|")
    for name, stream in ways.items():
        print(
            f"| {name:<16} | {padding_share(stream):6.0%} | {median[name]:16.1f} "
            f"| {median[name] / median['shuffled']:10.2f}x |"
        )


if __name__ == "__main__":
    main()
