"""Question answering: sample answers per question, grade them, report accuracy or pass@k with
standard errors."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from bios_callbacks.evaluators.base import SamplingClientEvaluator, Transcript
from bios_callbacks.evaluators.stats import mean_with_stderr, pass_at_k
from bios_callbacks.renderers.base import get_text_content

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
    """Asks every question as a user turn, grades each answer, returns accuracy (or pass@k) with
    its standard error and the graded counts.

    All questions are sampled at once (``asyncio.gather``), so the sampling client batches them.
    The renderer is a renderer object, or a ``renderer_name`` resolved with the sampling
    client's tokenizer at call time.

    With one answer per question it returns ``accuracy`` (the mean over graded answers) and
    ``accuracy_stderr`` (its standard error over questions; left out below two graded). With
    ``num_samples=k`` (k > 1, sampled at ``temperature > 0``) it returns ``pass@1`` and
    ``pass@k``, each the per-question unbiased estimate of Chen et al. (2021),
    ``1 - C(n - c, k) / C(n, k)`` for ``c`` right of ``n`` graded answers, averaged over the
    questions, with ``pass@1_stderr`` and ``pass@k_stderr`` over the questions. ``pass@k``
    counts the questions whose k answers were all graded.

    An answer whose ``grader_fn`` call raises is left unscored (one warning names the items and
    errors) and the others are still graded: the metrics are over the graded answers, next to
    ``scored`` and ``unscored`` counts of answers. When no answer could be graded the call
    raises.

    Args:
        dataset: dicts with ``input`` and ``target`` (``output`` is accepted too).
        grader_fn: ``grader_fn(response_text, target) -> bool``; the response text is the
            reply's visible text (``renderers.get_text_content``: a thinking renderer's
            reasoning is left out).
        renderer: a renderer from ``bios_callbacks.renderers.get_renderer``.
        renderer_name: used instead of ``renderer``, e.g. ``"chatml"``.
        max_tokens, temperature, seed: sampling settings (greedy by default).
        num_samples: answers sampled per question (k of pass@k; needs ``temperature > 0``).
        name: the metric namespace, ``eval/<name>/accuracy``.
        num_transcripts: how many graded (question, answer) transcripts the loggers show;
            ``None`` shows every answer, which lets ``python -m bios_callbacks.eval.compare``
            pair the items of two runs (with a ``CSVLogger``, in its ``transcripts.jsonl``).

    Example:
        >>> evaluator = QAEvaluator(
        ...     [{"input": "What is the capital of France?", "target": "Paris"}],
        ...     grader_fn=lambda response, target: target.lower() in response.lower(),
        ...     renderer_name="chatml",
        ... )
        >>> await evaluator(sampling_client)  # doctest: +SKIP
        {'accuracy': 1.0, 'scored': 1.0, 'unscored': 0.0}
        >>> pass_at_4 = QAEvaluator(
        ...     [{"input": "2+2?", "target": "4"}, {"input": "3+3?", "target": "6"}],
        ...     grader_fn=lambda response, target: target in response,
        ...     renderer_name="chatml", num_samples=4, temperature=0.8,
        ... )
        >>> await pass_at_4(sampling_client)  # doctest: +SKIP
        {'pass@1': 0.5, 'pass@1_stderr': 0.25, 'pass@4': 1.0, 'pass@4_stderr': 0.0,
         'scored': 8.0, 'unscored': 0.0}
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
        num_samples: int = 1,
        name: str = "qa",
        num_transcripts: int | None = 3,
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
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(
                f"QAEvaluator num_samples={num_samples!r}: expected an integer >= 1 (the k of "
                "pass@k)."
            )
        if num_samples > 1 and temperature <= 0:
            raise ValueError(
                f"QAEvaluator num_samples={num_samples} with temperature={temperature}: greedy "
                "decoding gives the same answer every time, so pass@k would equal pass@1; set "
                "temperature > 0 (e.g. temperature=0.8)."
            )
        from bios_callbacks.types import SamplingParams

        self.items = [_question_and_target(d, i) for i, d in enumerate(dataset)]
        self.grader_fn = grader_fn
        self.renderer = renderer
        self.renderer_name = renderer_name
        self.sampling_params = SamplingParams(
            max_tokens=max_tokens, temperature=temperature, seed=seed
        )
        self.num_samples = num_samples
        self.name = name
        self.num_transcripts = num_transcripts
        self._transcripts: list[Transcript] = []

    def eval_prompts(self) -> Sequence[str]:
        """The questions."""
        return [question for question, _ in self.items]

    def transcripts(self) -> Sequence[Transcript]:
        """The first ``num_transcripts`` answers of the latest call (question by question, each
        question's ``num_samples`` answers in turn), each with its grade (1.0 / 0.0) or, where
        ``grader_fn`` raised, no score and the error as the explanation."""
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

        async def answers_to(question: str) -> list[str]:
            prompt = renderer.build_generation_prompt([{"role": "user", "content": question}])
            result = await sampling_client.sample_async(
                prompt=prompt, num_samples=self.num_samples, sampling_params=params
            )
            replies = [renderer.parse_response(s.tokens)[0] for s in result.sequences]
            return [get_text_content(message) for message in replies]  # thinking left out

        answers = await asyncio.gather(*(answers_to(q) for q, _ in self.items))
        grades: list[list[bool]] = []  # per question, its graded answers
        failures: list[str] = []
        transcripts: list[Transcript] = []
        first_error: Exception | None = None
        for index, (responses, (question, target)) in enumerate(
            zip(answers, self.items, strict=True)
        ):
            grades.append([])
            for response in responses:
                try:
                    grade = bool(self.grader_fn(response, target))
                except Exception as error:
                    first_error = first_error or error
                    failures.append(
                        f"item {index} ({question!r} -> {response!r}): "
                        f"{type(error).__name__}: {error}"
                    )
                    explanation = f"grader_fn raised {type(error).__name__}: {error}"
                    transcripts.append(Transcript(question, response, None, explanation))
                else:
                    grades[-1].append(grade)
                    transcripts.append(Transcript(question, response, float(grade)))
        self._transcripts = transcripts[: self.num_transcripts]
        scored = sum(len(g) for g in grades)
        noun = "items" if self.num_samples == 1 else "answers"
        if not scored:
            raise RuntimeError(
                f"QAEvaluator {self.name!r}: grader_fn raised for all {len(failures)} {noun}, "
                f"e.g. {failures[0]}. Fix grader_fn so it returns a bool for (response, target)."
            ) from first_error
        if failures:
            more = f"; and {len(failures) - 3} more" if len(failures) > 3 else ""
            logger.warning(
                "QAEvaluator %r: grader_fn raised for %d of %d %s, left unscored; the metrics "
                "count only the %d scored. %s%s",
                self.name,
                len(failures),
                len(failures) + scored,
                noun,
                scored,
                "; ".join(failures[:3]),
                more,
            )
        counts = {"scored": float(scored), "unscored": float(len(failures))}
        k = self.num_samples
        if k == 1:
            return {**mean_with_stderr("accuracy", [g[0] for g in grades if g]), **counts}
        metrics = mean_with_stderr("pass@1", [sum(g) / len(g) for g in grades if g])
        complete = [g for g in grades if len(g) == k]
        if complete:
            metrics |= mean_with_stderr(f"pass@{k}", [pass_at_k(k, sum(g), k) for g in complete])
        return {**metrics, **counts}
