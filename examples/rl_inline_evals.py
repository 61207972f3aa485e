"""The guide's "RL Inline Evaluations" config, as a short runnable RL run on the embedded model.

    python -m examples.rl_inline_evals [steps=4 ...]

Two sampling evaluators run every `eval_every` RL iterations: exact-answer accuracy on held-out
additions (greedy) and the reward of sampled replies on the same questions.
"""

from __future__ import annotations

import asyncio
import statistics
import sys

from bios_callbacks.evaluators import SamplingClientEvaluator
from bios_callbacks.models import EMBEDDED_MODEL
from examples.rl_arithmetic import TEST, TRAIN, accuracy_eval, reward
from trainers.cli import run_cli
from trainers.config import RLConfig

sampling_eval_1 = accuracy_eval


class SampledReward(SamplingClientEvaluator):
    """Mean reward of 4 sampled replies per held-out question (a SamplingClientEvaluator)."""

    def __init__(self):
        from bios_callbacks.renderers import get_renderer
        from bios_callbacks.tokenizer_utils import get_tokenizer

        self.renderer = get_renderer(name="chatml", tokenizer=get_tokenizer(EMBEDDED_MODEL))

    async def __call__(self, sampling_client) -> dict[str, float]:
        from bios_callbacks.renderers import get_text_content
        from bios_callbacks.types import SamplingParams

        params = SamplingParams(
            max_tokens=12, temperature=1.0, seed=0, stop=self.renderer.get_stop_sequences()
        )
        prompts = [self.renderer.build_generation_prompt(q["messages"]) for q in self.data]
        responses = await asyncio.gather(
            *(
                sampling_client.sample_async(prompt=p, num_samples=4, sampling_params=params)
                for p in prompts
            )
        )
        rewards = [
            reward(get_text_content(self.renderer.parse_response(seq.tokens)[0]), q)
            for q, response in zip(self.data, responses, strict=True)
            for seq in response.sequences
        ]
        return {"reward_mean": statistics.fmean(rewards)}

    @property
    def data(self) -> list[dict]:
        return [{**q, "messages": [{"role": "user", "content": q["prompt"]}]} for q in TEST]


sampling_eval_2 = SampledReward


def guide_config() -> dict:
    """The guide's config keys plus this example's data and sizes."""
    # Add to RL training config
    config = {
        "evaluator_builders": [sampling_eval_1, sampling_eval_2],
        "eval_every": 2,  # the guide uses 50; this run is 4 iterations long
    }
    return config | {
        "train_data": TRAIN,
        "reward_fn": reward,
        "steps": 4,
        "batch_size": 4,
        "group_size": 8,
        "max_tokens": 12,
        "learning_rate": 5e-5,
    }


def main(argv: list[str]) -> int:
    from trainers import rl

    return run_cli(RLConfig, rl.train, argv, doc=__doc__, defaults=guide_config())


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
