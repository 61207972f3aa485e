"""Question answering: sample an answer per question, grade it, report accuracy."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from bios_callbacks.evaluators.base import SamplingClientEvaluator, Transcript

logger = logging.getLogger(__name__)

GraderFn = Callable[[str, str], bool]


def _question_and_target(datum: Any, index: int) -> tuple[str, str]:
    if isinstance(datum, Mapping) and "input" in datum:
        target = datum.get("target", datum.get("output"))
        if target is not None:
            return str(datum["input"]), str(target)
    raise ValueError(
        f"QAEvaluator dataset item {index} is {datum!r}: expected a dict with 'input' and "
        "'target' (or 'output'), e.g. {'input': 'Capital of France?', 'target': 'Paris'}."
    )


class QAEvaluator(SamplingClientEvaluator):
    """Asks every question as a user turn, grades each answer, returns accuracy and counts.

    All questions are sampled at once (``asyncio.gather``), so the sampling client batches them.
    The renderer is a renderer object, or a ``renderer_name`` resolved with the sampling
    client's tokenizer at call time.

    An answer whose ``grader_fn`` call raises is left unscored (one warning names the items and
    errors) and the others are still graded: ``accuracy`` is over the scored
    answers, next to ``scored`` and ``unscored`` counts. When no answer could be graded the
    call raises.

    Args:
        dataset: dicts with ``input`` and ``target`` (``output`` is accepted too).
        grader_fn: ``grader_fn(response_text, target) -> bool``.
        renderer: a renderer from ``bios_callbacks.renderers.get_renderer``.
        renderer_name: used instead of ``renderer``, e.g. ``"chatml"``.
        max_tokens, temperature, seed: sampling settings (greedy by default).
        name: the metric namespace, ``eval/<name>/accuracy``.
        num_transcripts: how many graded (question, answer) transcripts the loggers show.

    Example:
        >>> evaluator = QAEvaluator(
        ...     [{"input": "What is the capital of France?", "target": "Paris"}],
        ...     grader_fn=lambda response, target: target.lower() in response.lower(),
        ...     renderer_name="chatml",
        ... )
        >>> await evaluator(sampling_client)  # doctest: +SKIP
        {'accuracy': 1.0, 'scored': 1.0, 'unscored': 0.0}
    """

    def __init__(
        self,
        dataset: Sequence[Mapping[str, Any]],
        grader_fn: GraderFn,
        *,
        renderer: Any = None,
        renderer_name: str | None = None,
        max_tokens: int = 64,
        temperature: float = 0.0,
        seed: int | None = 0,
        name: str = "qa",
        num_transcripts: int = 3,
    ):
        if len(dataset) == 0:
            raise ValueError("QAEvaluator got an empty dataset: pass at least one question.")
        if (renderer is None) == (renderer_name is None):
            raise ValueError(
                "QAEvaluator: pass exactly one of renderer= (a renderer object) or "
                "renderer_name= (e.g. 'chatml')."
            )
        if not callable(grader_fn):
            raise TypeError(
                f"QAEvaluator grader_fn={grader_fn!r} is not callable; pass a function "
                "(response: str, target: str) -> bool."
            )
        from bios_callbacks.types import SamplingParams

        self.items = [_question_and_target(d, i) for i, d in enumerate(dataset)]
        self.grader_fn = grader_fn
        self.renderer = renderer
        self.renderer_name = renderer_name
        self.sampling_params = SamplingParams(
            max_tokens=max_tokens, temperature=temperature, seed=seed
        )
        self.name = name
        self.num_transcripts = num_transcripts
        self._transcripts: list[Transcript] = []

    def eval_prompts(self) -> Sequence[str]:
        """The questions."""
        return [question for question, _ in self.items]

    def transcripts(self) -> Sequence[Transcript]:
        """The first few questions and answers of the latest call, each with its grade (1.0 /
        0.0) or, where ``grader_fn`` raised, no score and the error as the explanation."""
        return self._transcripts

    def _renderer_for(self, sampling_client: Any) -> Any:
        if self.renderer is None:
            from bios_callbacks.renderers import get_renderer

            self.renderer = get_renderer(
                name=self.renderer_name, tokenizer=sampling_client.tokenizer
            )
        return self.renderer

    async def __call__(self, sampling_client: Any) -> dict[str, float]:
        from dataclasses import replace

        renderer = self._renderer_for(sampling_client)
        params = replace(self.sampling_params, stop=renderer.get_stop_sequences())

        async def answer(question: str) -> str:
            prompt = renderer.build_generation_prompt([{"role": "user", "content": question}])
            result = await sampling_client.sample_async(
                prompt=prompt, num_samples=1, sampling_params=params
            )
            message, _ = renderer.parse_response(result.sequences[0].tokens)
            return str(message.get("content", ""))

        answers = await asyncio.gather(*(answer(q) for q, _ in self.items))
        grades: list[bool] = []
        failures: list[str] = []
        transcripts: list[Transcript] = []
        first_error: Exception | None = None
        for index, (response, (question, target)) in enumerate(
            zip(answers, self.items, strict=True)
        ):
            try:
                grade = bool(self.grader_fn(response, target))
            except Exception as error:
                first_error = first_error or error
                failures.append(
                    f"item {index} ({question!r} -> {response!r}): {type(error).__name__}: {error}"
                )
                explanation = f"grader_fn raised {type(error).__name__}: {error}"
                transcripts.append(Transcript(question, response, None, explanation))
            else:
                grades.append(grade)
                transcripts.append(Transcript(question, response, float(grade)))
        self._transcripts = transcripts[: self.num_transcripts]
        if not grades:
            raise RuntimeError(
                f"QAEvaluator {self.name!r}: grader_fn raised for all {len(self.items)} items, "
                f"e.g. {failures[0]}. Fix grader_fn so it returns a bool for (response, target)."
            ) from first_error
        if failures:
            more = f"; and {len(failures) - 3} more" if len(failures) > 3 else ""
            logger.warning(
                "QAEvaluator %r: grader_fn raised for %d of %d items, left unscored; accuracy "
                "counts only the %d scored. %s%s",
                self.name,
                len(failures),
                len(self.items),
                len(grades),
                "; ".join(failures[:3]),
                more,
            )
        return {
            "accuracy": sum(grades) / len(grades),
            "scored": float(len(grades)),
            "unscored": float(len(failures)),
        }
