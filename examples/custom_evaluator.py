"""The guide's "Custom SamplingClientEvaluator" listing, with `bios` -> `bios_callbacks`.

Import it (`from examples.custom_evaluator import CustomEvaluator`) or run
`python -m examples.using_custom_evaluators` to see it score the embedded model.
"""

from __future__ import annotations

from bios_callbacks import renderers, types
from bios_callbacks.evaluators import SamplingClientEvaluator
from bios_callbacks.tokenizer_utils import get_tokenizer


class CustomEvaluator(SamplingClientEvaluator):
    """Samples one reply per `{"input", "output"}` item and reports the graded accuracy."""

    def __init__(self, dataset, grader_fn, model_name, renderer_name):
        self.dataset = dataset
        self.grader_fn = grader_fn
        tokenizer = get_tokenizer(model_name)
        self.renderer = renderers.get_renderer(name=renderer_name, tokenizer=tokenizer)

    async def __call__(self, sampling_client) -> dict[str, float]:
        num_correct = 0
        sampling_params = types.SamplingParams(
            max_tokens=100,
            temperature=0.7,
            stop=self.renderer.get_stop_sequences(),
        )

        for datum in self.dataset:
            model_input = self.renderer.build_generation_prompt(
                [{"role": "user", "content": datum["input"]}]
            )
            result = await sampling_client.sample_async(
                prompt=model_input, num_samples=1, sampling_params=sampling_params
            )
            tokens = result.sequences[0].tokens
            response = self.renderer.parse_response(tokens)[0]

            if self.grader_fn(response["content"], datum["output"]):
                num_correct += 1

        return {"accuracy": num_correct / len(self.dataset)}
