"""Standard errors, intervals and pass@k: the formulas against known values, and the built-in
evaluators reporting them on a real (tiny) model."""

from __future__ import annotations

import asyncio
import itertools
import math

import pytest
import torch

from bios_callbacks.evaluators import NLLEvaluator, QAEvaluator
from bios_callbacks.evaluators.stats import (
    Z95,
    is_binary_mean,
    mean_stderr,
    mean_with_stderr,
    newcombe_interval,
    normal_interval,
    paired_difference,
    pass_at_k,
    ratio_stderr,
    unpaired_stderr,
    wilson_interval,
)
from bios_callbacks.sampling.client import SamplingClient
from bios_callbacks.training_client import TrainingClient

# Newcombe (1998), "Two-sided confidence intervals for the single proportion", Table I,
# method 3 (Wilson score interval without continuity correction).
WILSON = [
    ((81, 263), (0.2553, 0.3662)),
    ((15, 148), (0.0624, 0.1605)),
    ((0, 20), (0.0, 0.1611)),
    ((1, 29), (0.0061, 0.1718)),
]
# Newcombe (1998), "Interval estimation for the difference between independent proportions",
# Table II, method 10 (from Wilson intervals): (a_successes, a_n, b_successes, b_n) -> b - a.
NEWCOMBE = [
    ((48, 80, 56, 70), (0.0524, 0.3339)),
    ((3, 10, 9, 10), (0.1705, 0.8090)),
    ((0, 29, 5, 56), (-0.0381, 0.1926)),
    ((0, 20, 0, 10), (-0.1611, 0.2775)),
]


@pytest.mark.parametrize(("counts", "expected"), WILSON)
def test_wilson_interval_matches_published_values(counts, expected):
    assert [round(x, 4) for x in wilson_interval(*counts)] == list(expected)


@pytest.mark.parametrize(("counts", "expected"), NEWCOMBE)
def test_newcombe_difference_interval_matches_published_values(counts, expected):
    assert [round(x, 4) for x in newcombe_interval(*counts)] == list(expected)


def test_binomial_standard_error_and_normal_interval():
    # 30 right of 100: the sample stdev (ddof=1) gives sqrt(p(1-p)/(n-1)), Inspect's convention
    grades = [1.0] * 30 + [0.0] * 70
    stderr = mean_stderr(grades)
    assert stderr == pytest.approx(math.sqrt(0.3 * 0.7 / 99))
    assert is_binary_mean(0.3, stderr, 100)
    assert not is_binary_mean(0.3, stderr * 1.1, 100)
    # the Wald interval 0.3 ± 1.96 * 0.04606
    assert math.isclose(Z95, 1.959964, abs_tol=1e-6)
    assert normal_interval(0.3, stderr) == pytest.approx((0.2097, 0.3903), abs=1e-4)
    assert mean_stderr([1.0]) is None and mean_with_stderr("accuracy", [1.0]) == {"accuracy": 1.0}


def test_mean_stderr_is_inspects_stderr():
    from inspect_ai.scorer import SampleScore, Score, stderr

    values = [1.0, 0.0, 0.5, 1.0, 1.0, 0.0, 0.25]
    inspect_stderr = stderr()(
        [SampleScore(score=Score(value=v), sample_id=i) for i, v in enumerate(values)]
    )
    assert mean_stderr(values) == pytest.approx(inspect_stderr)


def test_ratio_stderr_is_the_delta_method():
    # loss = sum(s) / sum(w); residuals s_i - R w_i; se = sqrt(n/(n-1) * sum r^2) / sum(w)
    sums, weights = [1.0, 9.0, 4.0], [1.0, 3.0, 2.0]
    ratio = 14 / 6
    residuals = [1 - ratio, 9 - 3 * ratio, 4 - 2 * ratio]
    expected = math.sqrt(1.5 * sum(r * r for r in residuals)) / 6
    assert ratio_stderr(sums, weights) == pytest.approx(expected)
    # equal weights: the plain standard error of the per-example means
    assert ratio_stderr([2.0, 4.0, 9.0], [2.0, 2.0, 2.0]) == pytest.approx(
        mean_stderr([1.0, 2.0, 4.5])
    )
    # an example with no weight is no draw
    assert ratio_stderr([2.0, 0.0, 4.0], [1.0, 0.0, 1.0]) == pytest.approx(mean_stderr([2, 4]))


def test_paired_and_unpaired_differences():
    before, after = [1, 0, 1, 1, 0, 0], [1, 1, 1, 0, 1, 0]
    diff, stderr = paired_difference(before, after)
    assert diff == pytest.approx(1 / 6)
    assert stderr == pytest.approx(mean_stderr([0, 1, 0, -1, 1, 0]))
    assert unpaired_stderr(0.03, 0.04) == pytest.approx(0.05)
    with pytest.raises(ValueError, match="got 2 and 3 values"):
        paired_difference([1, 0], [1, 0, 1])


def by_enumeration(grades: list[bool], k: int) -> float:
    """pass@k by brute force: the share of k-answer subsets with a right answer."""
    subsets = list(itertools.combinations(grades, k))
    return sum(any(s) for s in subsets) / len(subsets)


@pytest.mark.parametrize(
    "grades",
    [
        [True, False, False, False, False],
        [False, True, False, True, False, False, False],
        [False] * 6,
        [True] * 4,
        [True, False, True, False, False, True, False, False, False, False],
    ],
)
def test_pass_at_k_is_the_chance_that_k_drawn_answers_include_a_right_one(grades):
    n, c = len(grades), sum(grades)
    for k in range(1, n + 1):
        assert pass_at_k(n, c, k) == pytest.approx(by_enumeration(grades, k))
        assert pass_at_k(n, c, k) == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k))
    assert pass_at_k(n, c, 1) == pytest.approx(c / n)


def test_pass_at_k_rejects_impossible_counts():
    with pytest.raises(ValueError, match=r"pass_at_k\(n=3, c=1, k=4\)"):
        pass_at_k(3, 1, 4)


def scripted_grader(script: list[list[bool]]):
    """A grader answering from `script` in the order the answers are graded (question by
    question, each question's samples in turn)."""
    grades = iter(itertools.chain.from_iterable(script))
    return lambda response, target: next(grades)


def test_qa_pass_at_k_matches_the_formula_on_scripted_grades(tiny_model, tokenizer):
    script = [[True, False, False, False], [False] * 4, [True, True, False, True]]
    dataset = [{"input": f"Question {i}?", "target": "x"} for i in range(3)]
    evaluator = QAEvaluator(
        dataset,
        scripted_grader(script),
        renderer_name="chatml",
        max_tokens=3,
        num_samples=4,
        temperature=1.0,
        num_transcripts=None,
    )
    with SamplingClient.from_module(tiny_model, tokenizer) as client:
        result = asyncio.run(evaluator(client))
    per_item_1 = [sum(g) / 4 for g in script]  # 1/4, 0, 3/4
    per_item_4 = [pass_at_k(4, sum(g), 4) for g in script]  # 1, 0, 1
    assert result == pytest.approx(
        {
            "pass@1": 1 / 3,
            "pass@1_stderr": math.sqrt(sum((p - 1 / 3) ** 2 for p in per_item_1) / 2 / 3),
            "pass@4": 2 / 3,
            "pass@4_stderr": math.sqrt(sum((p - 2 / 3) ** 2 for p in per_item_4) / 2 / 3),
            "scored": 12.0,
            "unscored": 0.0,
        }
    )
    transcripts = evaluator.transcripts()
    assert [t.prompt for t in transcripts] == [q["input"] for q in dataset for _ in range(4)]
    assert [t.score for t in transcripts] == [float(g) for row in script for g in row]
    assert len({t.response for t in transcripts[:4]}) > 1  # 4 sampled answers, not one 4 times


def test_qa_pass_at_k_counts_questions_whose_answers_were_all_graded(tiny_model, tokenizer):
    calls = itertools.count()

    def grader(response, target):
        if next(calls) == 1:  # the second answer to the first question
            raise KeyError("no rubric")
        return target == "right"

    dataset = [{"input": "Q0?", "target": "right"}, {"input": "Q1?", "target": "wrong"}]
    evaluator = QAEvaluator(
        dataset, grader, renderer_name="chatml", max_tokens=2, num_samples=2, temperature=1.0
    )
    with SamplingClient.from_module(tiny_model, tokenizer) as client:
        result = asyncio.run(evaluator(client))
    # pass@1 over both questions (1/1 and 0/2); pass@2 only over Q1, the fully graded one
    assert result["pass@1"] == 0.5 and result["pass@2"] == 0.0
    assert "pass@2_stderr" not in result  # one question: no standard error
    assert (result["scored"], result["unscored"]) == (3.0, 1.0)


def test_qa_accuracy_reports_its_standard_error(tiny_model, tokenizer):
    script = [[True], [False], [True], [True], [False]]
    dataset = [{"input": f"Question {i}?", "target": "x"} for i in range(5)]
    evaluator = QAEvaluator(dataset, scripted_grader(script), renderer_name="chatml", max_tokens=2)
    with SamplingClient.from_module(tiny_model, tokenizer) as client:
        result = asyncio.run(evaluator(client))
    assert result == pytest.approx(
        {
            "accuracy": 0.6,
            "accuracy_stderr": math.sqrt(0.6 * 0.4 / 4),
            "scored": 5.0,
            "unscored": 0.0,
        }
    )


def test_qa_num_samples_is_checked():
    dataset = [{"input": "Q?", "target": "x"}]
    with pytest.raises(
        ValueError,
        match=r"num_samples=4 with temperature=0.0: greedy .*\(e\.g\. temperature=0\.8\)",
    ):
        QAEvaluator(dataset, lambda r, t: True, renderer_name="chatml", num_samples=4)
    with pytest.raises(ValueError, match=r"num_samples=0: expected an integer >= 1"):
        QAEvaluator(dataset, lambda r, t: True, renderer_name="chatml", num_samples=0)


def test_nll_stderr_is_over_examples(tiny_model):
    # examples of different lengths: the loss is a ratio, its stderr the delta method's
    generator = torch.Generator().manual_seed(0)
    examples = [torch.randint(100, 5000, (n,), generator=generator).tolist() for n in (4, 9, 6)]
    client = TrainingClient.from_module(tiny_model)
    result = asyncio.run(NLLEvaluator(examples)(client))
    sums, counts = [], []
    with torch.no_grad():
        for tokens in examples:
            ids = torch.tensor([tokens])
            mean = tiny_model(input_ids=ids, labels=ids).loss.item()  # over len - 1 tokens
            sums.append(mean * (len(tokens) - 1))
            counts.append(len(tokens) - 1)
    loss = sum(sums) / sum(counts)
    residuals = [s - loss * w for s, w in zip(sums, counts, strict=True)]
    expected = math.sqrt(3 / 2 * sum(r * r for r in residuals)) / sum(counts)
    assert result["loss"] == pytest.approx(loss, rel=1e-5)
    assert result["loss_stderr"] == pytest.approx(expected, rel=1e-4)
    assert "loss_stderr" not in asyncio.run(NLLEvaluator(examples[:1])(client))
