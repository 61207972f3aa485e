"""Inspect throughput: the same task through our `bios/` provider and Inspect's `hf/` provider.

Both run the embedded SmolLM2-135M-Instruct (hf/ loads the converted local cache, no download)
on the same task and settings: 64 samples, greedy, max_tokens=128, 32 in flight
(max_connections). Like most evals, the task mixes questions answered in a few words with ones
answered at length, so answer lengths vary. Prints samples/s of each and the ratio.
`python -m bench.inspect_throughput [num_samples]`
"""

from __future__ import annotations

import sys
import time

from inspect_ai import Task, eval
from inspect_ai.dataset import MemoryDataset, Sample
from inspect_ai.model import GenerateConfig, Model, get_model
from inspect_ai.solver import generate

from bios_callbacks.eval.inspect_runner import preserved_terminal
from bios_callbacks.eval.inspect_utils import InspectAPIFromBiosSampling
from bios_callbacks.model_loading import EMBEDDED_MODEL, ensure_embedded_cache
from bios_callbacks.service_client import ServiceClient

TOPICS = ["rivers", "bread", "owls", "trains", "glass", "tea", "maps", "bees"]
QUESTIONS = [
    "In one word, what colour is the sky on a clear day? ({topic})",
    "Explain in detail how {topic} came to matter to people.",
    "Answer yes or no: is water wet? ({topic})",
    "Write a short paragraph about {topic}.",
]
MAX_TOKENS = 128
IN_FLIGHT = 32


def make_task(n: int) -> Task:
    samples = [
        Sample(input=QUESTIONS[i % len(QUESTIONS)].format(topic=TOPICS[i % len(TOPICS)]))
        for i in range(n)
    ]
    return Task(dataset=MemoryDataset(samples), solver=generate())


def samples_per_second(model: Model, n: int) -> float:
    start = time.perf_counter()
    with preserved_terminal():
        [log] = eval(make_task(n), model=model, display="none", log_dir="/tmp/bench_inspect_logs")
    assert log.status == "success", log.error
    return n / (time.perf_counter() - start)


def main(n: int = 64) -> None:
    config = GenerateConfig(temperature=0.0, max_tokens=MAX_TOKENS, max_connections=IN_FLIGHT)
    client = ServiceClient(max_batch_size=IN_FLIGHT).create_sampling_client(
        base_model=EMBEDDED_MODEL)
    ours = Model(InspectAPIFromBiosSampling(renderer_name="chatml", model_name=EMBEDDED_MODEL,
                                            sampling_client=client), config)
    samples_per_second(ours, 4)  # warm-up
    bios_rate = samples_per_second(ours, n)
    client.close()
    hf = get_model("hf/smollm2", config=config, model_path=str(ensure_embedded_cache()),
                   device="cpu", do_sample=False, memoize=False)
    samples_per_second(hf, 4)
    hf_rate = samples_per_second(hf, n)
    print(f"bios/ provider: {bios_rate:.2f} samples/s")
    print(f"hf/ provider:   {hf_rate:.2f} samples/s")
    print(f"ratio: {bios_rate / hf_rate:.2f}x  (target >= 2x; {n} samples, "
          f"max_tokens={MAX_TOKENS}, {IN_FLIGHT} in flight)")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 64)
