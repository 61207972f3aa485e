"""The schedule rule alone, with no Trainer: which steps a list runs at."""

from __future__ import annotations

import pytest

from bios_callbacks.callback.schedule import EvaluatorList, check_interval


def run_steps(every: int, steps: list[int]) -> list[int]:
    """The steps at which a list evaluates when `global_step` takes these values in order."""
    evaluators = EvaluatorList("regular", builders=[object], every=every)
    ran = []
    for step in steps:
        if evaluators.due_now(step):
            evaluators.last_evaluated = step
            ran.append(step)
    return ran


def test_multiples_from_zero():
    assert run_steps(3, list(range(10))) == [0, 3, 6, 9]


def test_a_step_that_jumps_past_a_multiple_runs_once_there():
    assert run_steps(5, [0, 2, 4, 6, 8, 10, 12, 14, 16]) == [0, 6, 10, 16]


def test_the_same_step_twice_runs_once():  # gradient accumulation repeats global_step
    assert run_steps(2, [0, 0, 0, 1, 1, 2, 2, 2]) == [0, 2]


def test_an_unfinished_round_stays_due():
    evaluators = EvaluatorList("regular", builders=[object], every=4, last_evaluated=0)
    assert evaluators.due_now(4) and evaluators.due_now(5)  # interrupted at 4, resumed at 5
    evaluators.last_evaluated = 4
    assert not evaluators.due_now(5)


def test_disabled_lists_never_run():
    assert not EvaluatorList("regular", builders=[], every=3).due_now(0)
    assert not EvaluatorList("regular", builders=[object], every=0).enabled


@pytest.mark.parametrize("value", [-1, 2.5, True, "10"])
def test_bad_intervals_name_the_value(value):
    with pytest.raises(ValueError, match=rf"eval_every={value!r}: expected a whole number"):
        check_interval("eval_every", value)
