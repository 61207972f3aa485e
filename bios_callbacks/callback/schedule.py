"""When each evaluator list runs: the schedule as a value, with a pure `due` rule.

Step N means the weights after N optimizer steps (``trainer.global_step``). A list runs at
N=0, whenever the step reaches or passes a multiple of its interval, and after the last step;
never twice at the same N.

Example:
    >>> regular = EvaluatorList("regular", builders=[print], every=5)
    >>> [step for step in range(12) if regular.due(step, previous=step - 1)]
    [0, 5, 10]
    >>> regular.due(7, previous=4)  # a step past a multiple, as with two optimizers
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

LISTS = ("regular", "infrequent")


@dataclass
class EvaluatorList:
    """One list of evaluator builders ("regular" or "infrequent"), its interval, its named
    slots (filled at setup) and the step of its last finished round (-1: none yet)."""

    name: str
    builders: Sequence[Any]
    every: int
    slots: list[Any] = field(default_factory=list)
    last_evaluated: int = -1

    @property
    def enabled(self) -> bool:
        """True when it has builders and a positive interval."""
        return self.every > 0 and bool(self.builders)

    def due(self, step: int, previous: int) -> bool:
        """Whether a round is due at `step` when the last one ran at `previous`: a multiple of
        the interval was reached or passed in between."""
        return step != previous and step // self.every > previous // self.every

    def due_now(self, step: int) -> bool:
        """`due` counted from this list's last finished round, so a round interrupted by
        Ctrl-C is still due after resuming from the checkpoint saved on the interrupt."""
        return self.enabled and self.due(step, self.last_evaluated)


def check_interval(arg: str, value: Any) -> int:
    """`value` if it is a whole number of steps >= 0, else a ValueError naming `arg`."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(
            f"{arg}={value!r}: expected a whole number of optimizer steps >= 0 "
            "(0 disables that list)."
        )
    return value
