"""Inspect throughput: the same task through our `bios/` provider and Inspect's `hf/` provider.

Both run the embedded SmolLM2-135M-Instruct (hf/ loads the converted local cache, no download)
on the same task and settings: 64 samples, greedy, 32 in flight (max_connections) and
max_tokens=512 (the `bios/` provider's default; Inspect's own is 2048). Like most evals, the
task mixes questions answered in a few words with ones answered at length, so answer lengths
vary. The two providers run alternately (3 rounds by default; these machines are noisy) and the
medians give samples/s of each and the ratio. A smaller max_tokens caps the long answers (the
README's second row uses 128).

It also prints the static-batch bound: the row-steps that batches of 32 padded to their longest
answer compute, divided by the tokens actually generated. At equal forward speed per row, no
scheduler can beat static batching by more than that on this task.
`python -m bench.inspect_throughput [num_samples] [rounds] [max_tokens]`
"""

from __future__ import annotations

import os
import statistics
import sys
import time

# hf/ loads the local embedded cache, yet would ask the unreachable hub about "smollm2" and
# retry for about a minute; huggingface_hub reads this when first imported (HF_HUB_OFFLINE=0
# in the environment overrides it).
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from inspect_ai import Task, eval
from inspect_ai.dataset import MemoryDataset, Sample
from inspect_ai.model import GenerateConfig, Model, get_model
from inspect_ai.solver import generate

from bios_callbacks.eval.inspect_runner import preserved_terminal
from bios_callbacks.eval.inspect_utils import DEFAULT_MAX_TOKENS, InspectAPIFromBiosSampling
from bios_callbacks.models import EMBEDDED_MODEL, ensure_embedded_cache
from bios_callbacks.sampling.service import ServiceClient

TOPICS = ["rivers", "bread", "owls", "trains", "glass", "tea", "maps", "bees"]
QUESTIONS = [
    "In one word, what colour is the sky on a clear day? ({topic})",
    "Explain in detail how {topic} came to matter to people.",
    "Answer yes or no: is water wet? ({topic})",
    "Write a short paragraph about {topic}.",
]
IN_FLIGHT = 32


def make_task(n: int) -> Task:
    samples = [
        Sample(input=QUESTIONS[i % len(QUESTIONS)].format(topic=TOPICS[i % len(TOPICS)]))
        for i in range(n)
    ]
    return Task(dataset=MemoryDataset(samples), solver=generate())


def run_task(model: Model, n: int) -> tuple[float, list[int]]:
    """Samples/s of one eval of the task, and each sample's answer length in tokens."""
    start = time.perf_counter()
    with preserved_terminal():
        [log] = eval(make_task(n), model=model, display="none", log_dir="/tmp/bench_inspect_logs")
    rate = n / (time.perf_counter() - start)
    assert log.status == "success", log.error
    samples = sorted(log.samples, key=lambda sample: sample.id)
    return rate, [sample.output.usage.output_tokens for sample in samples]


def static_batch_bound(lengths: list[int], batch: int) -> float:
    """Padded row-steps of consecutive batches over the tokens generated."""
    groups = [lengths[i : i + batch] for i in range(0, len(lengths), batch)]
    return sum(len(g) * max(g) for g in groups) / sum(lengths)


def main(n: int = 64, rounds: int = 3, max_tokens: int = DEFAULT_MAX_TOKENS) -> None:
    config = GenerateConfig(temperature=0.0, max_tokens=max_tokens, max_connections=IN_FLIGHT)
    client = ServiceClient(max_batch_size=IN_FLIGHT).create_sampling_client(
        base_model=EMBEDDED_MODEL
    )
    providers = {
        "bios/": Model(
            InspectAPIFromBiosSampling(
                renderer_name="chatml", model_name=EMBEDDED_MODEL, sampling_client=client
            ),
            config,
        ),
        "hf/": get_model(
            "hf/smollm2",
            config=config,
            model_path=str(ensure_embedded_cache()),
            device="cpu",
            do_sample=False,
            memoize=False,
        ),
    }
    rates: dict[str, list[float]] = {name: [] for name in providers}
    for model in providers.values():
        run_task(model, 4)  # warm-up
    lengths: dict[str, list[int]] = {}
    for _ in range(rounds):
        for name, model in providers.items():
            rate, lengths[name] = run_task(model, n)
            rates[name].append(rate)
    client.close()
    median = {name: statistics.median(values) for name, values in rates.items()}
    for name, values in rates.items():
        runs = ", ".join(f"{v:.2f}" for v in values)
        print(f"{name:<6} provider: {median[name]:.2f} samples/s (median of {runs})")
    ratio = median["bios/"] / median["hf/"]
    print(f"ratio: {ratio:.2f}x  ({n} samples, max_tokens={max_tokens}, {IN_FLIGHT} in flight)")
    answers = lengths["bios/"]  # hf/ reports its padded batch length for every sample
    bound = static_batch_bound(answers, IN_FLIGHT)
    print(
        f"static-batch bound: {bound:.2f}x  (answers of {min(answers)}-{max(answers)} tokens, "
        f"mean {statistics.mean(answers):.0f}); the ratio is {ratio / bound:.0%} of it"
    )


if __name__ == "__main__":
    main(*(int(arg) for arg in sys.argv[1:4]))
