"""One evaluation round: build evaluators, run them concurrently, collect metrics and failures.

Nothing here knows Lightning; `EvalCallback` decides when a round runs and where results go.

Example:
    >>> slots = name_slots([lambda: NLLEvaluator([[1, 2, 3]])])            # doctest: +SKIP
    >>> outcome = run_sync(run_round(slots, LiveClients(module), timeout_s=None))  # doctest: +SKIP
    >>> outcome.metrics                                                      # doctest: +SKIP
    {'eval/nll/loss': 10.8}
"""

from __future__ import annotations

import asyncio
import math
import numbers
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from bios_callbacks.callback.live_clients import LiveClients
from bios_callbacks.evaluators.base import (
    EvaluatorBuilder,
    Transcript,
    as_transcript,
    client_kind,
)

NAMESPACE = "eval"


@dataclass
class EvaluatorSlot:
    """One builder, the evaluator it built (once), and the stable name its metrics go under:
    `eval/<name>/<key>`, or, for an evaluator with `metric_groups`, `eval/<group>/<rest>` for a
    key `<group>/<rest>` (`groups` maps each to its unique name; `name` is those joined by
    `+`, the evaluator's name on the console and in failures)."""

    builder: EvaluatorBuilder
    name: str = ""
    evaluator: Any = None
    groups: dict[str, str] = field(default_factory=dict)

    def build(self) -> None:
        """Calls the builder if it has not succeeded yet (raises what the builder raises, and
        TypeError for an evaluator it cannot call or whose `metric_groups` are not names)."""
        if self.evaluator is None:
            evaluator = self.builder()
            try:
                client_kind(evaluator)
                metric_groups(evaluator)
            except TypeError as error:
                raise TypeError(f"evaluator builder {self.name!r} returned {error}") from None
            self.evaluator = evaluator

    def target(self, key: str) -> str:
        """Where a key the evaluator returned goes, below `eval/`: `<name>/<key>`, or
        `<group name>/<rest>` for a key `<group>/<rest>` of an evaluator with `metric_groups`
        (ValueError for a key under none of them)."""
        if not metric_groups(self.evaluator):
            return f"{self.name}/{key}"
        group, _, rest = key.partition("/")
        if not rest:
            raise ValueError(
                f"key {key!r} is not '<group>/<metric>': name every key after one of its "
                f"metric_groups {list(metric_groups(self.evaluator))}"
            )
        return f"{self.group_name(group)}/{rest}"

    def group_name(self, group: str) -> str:
        """The unique name, below `eval/`, of one of the evaluator's `metric_groups` (under
        its own name where the evaluator could not be built when the slots were named)."""
        declared = metric_groups(self.evaluator)
        if group not in declared:
            raise ValueError(
                f"{group!r} is none of its metric_groups {list(declared)}: name every key "
                f"after one of them, e.g. '{declared[0]}/accuracy'"
            )
        return self.groups.get(group) or f"{self.name}/{group}"

    def hook(self, name: str, default: Any = (), **kwargs: Any) -> Any:
        """Calls the evaluator's optional hook `name` (`transcripts`, `eval_prompts`,
        `set_run_context`); `default` when a duck-typed evaluator does not have it."""
        method = getattr(self.evaluator, name, None)
        return method(**kwargs) if callable(method) else default


def metric_groups(evaluator: Any) -> tuple[str, ...]:
    """The evaluator's optional `metric_groups`: the top-level names its keys go under
    (`eval/<group>/...`) instead of its own name; () when it has none.

    Example:
        >>> class TwoTasks:
        ...     metric_groups = ["capitals", "echo"]
        >>> metric_groups(TwoTasks())
        ('capitals', 'echo')
    """
    groups = getattr(evaluator, "metric_groups", None) or ()
    if isinstance(groups, str) or not all(
        isinstance(g, str) and g and "/" not in g for g in groups
    ):
        raise TypeError(
            f"{type(evaluator).__name__} with metric_groups={groups!r}: expected a list of "
            "names without '/', e.g. ['capitals', 'echo']"
        )
    return tuple(dict.fromkeys(groups))


def _builder_name(builder: Any) -> str:
    target = getattr(builder, "func", builder)
    return getattr(target, "__name__", type(target).__name__)


def name_slots(
    builders: Sequence[EvaluatorBuilder], taken: Sequence[str] = ()
) -> list[EvaluatorSlot]:
    """Makes a slot per builder; builds each once to learn its name (``evaluator.name``, else
    the class name) or its `metric_groups`. A name used already (a group's too, or one of
    `taken`) gets ``_2``, ``_3``... in list order, so keys never clash. A builder that raises
    here is retried when its round comes (and reported then).

    Example:
        >>> class Tasks:
        ...     def __init__(self, *groups):
        ...         self.metric_groups = groups
        ...     async def __call__(self, sampling_client):
        ...         return {}
        >>> slots = name_slots([lambda: Tasks("echo"), lambda: Tasks("echo", "qa")])
        >>> [(slot.name, slot.groups) for slot in slots]
        [('echo', {'echo': 'echo'}), ('echo_2+qa', {'echo': 'echo_2', 'qa': 'qa'})]
    """
    slots: list[EvaluatorSlot] = []
    used = set(taken)

    def unique(name: str) -> str:
        candidate, count = name, 1
        while candidate in used:
            count += 1
            candidate = f"{name}_{count}"
        used.add(candidate)
        return candidate

    for builder in builders:
        slot = EvaluatorSlot(builder=builder, name=_builder_name(builder))
        try:
            slot.build()
        except Exception:
            slot.name = unique(slot.name)
        else:
            evaluator = slot.evaluator
            slot.groups = {group: unique(group) for group in metric_groups(evaluator)}
            name = getattr(evaluator, "name", None) or type(evaluator).__name__
            slot.name = "+".join(slot.groups.values()) or unique(str(name))
        slots.append(slot)
    return slots


@dataclass
class RoundOutcome:
    """Metrics under ``eval/<evaluator or group>/<key>``, each evaluator's values as the
    console shows them (by its name: keys below ``eval/<name>/``, or below ``eval/`` for
    one with `metric_groups`), failures, exceptions, transcripts (by evaluator or group)."""

    metrics: dict[str, float] = field(default_factory=dict)
    values: dict[str, dict[str, float]] = field(default_factory=dict)
    failures: list[dict[str, str]] = field(default_factory=list)
    errors: list[BaseException | None] = field(default_factory=list)  # one per failure
    transcripts: dict[str, list[Transcript]] = field(default_factory=dict)

    def fail(self, evaluator: str, kind: str, message: str, error: BaseException | None) -> None:
        self.failures.append({"evaluator": evaluator, "kind": kind, "message": message})
        self.errors.append(error)

    def tracebacks(self) -> list[str]:
        """The formatted tracebacks of the failures that raised."""
        return ["".join(traceback.format_exception(e)) for e in self.errors if e is not None]


def _as_float(value: Any) -> float | None:
    if isinstance(value, numbers.Real):  # bool included
        return float(value)
    item = getattr(value, "item", None)
    if callable(item) and getattr(value, "ndim", 0) == 0:
        try:
            return float(item())
        except (TypeError, ValueError):
            return None
    return None


def _record_values(outcome: RoundOutcome, slot: EvaluatorSlot, result: Any) -> None:
    if not isinstance(result, Mapping):
        outcome.fail(
            slot.name,
            "invalid_value",
            f"returned {type(result).__name__}, expected dict[str, float]: return e.g. "
            "{'accuracy': 0.5} from __call__",
            None,
        )
        return
    shown_below = f"{slot.name}/" if not metric_groups(slot.evaluator) else ""
    values = outcome.values.setdefault(slot.name, {})
    for key, value in result.items():
        number = _as_float(value)
        if number is None or not math.isfinite(number):
            outcome.fail(
                slot.name, "invalid_value", f"{key}={value!r} is not a finite number", None
            )
            continue
        try:
            target = slot.target(str(key))
        except ValueError as error:
            outcome.fail(slot.name, "invalid_value", str(error), None)
            continue
        full_key = f"{NAMESPACE}/{target}"
        if full_key in outcome.metrics:
            outcome.fail(slot.name, "duplicate_key", f"{full_key} already set this round", None)
        else:
            outcome.metrics[full_key] = number
            values[target.removeprefix(shown_below)] = number
    _record_transcripts(outcome, slot)


def _record_transcripts(outcome: RoundOutcome, slot: EvaluatorSlot) -> None:
    """The evaluator's `transcripts()`: a list under its name, or, from one with
    `metric_groups`, a mapping of group to list, each under its group's name."""
    try:
        found = slot.hook("transcripts")
        if isinstance(found, Mapping):
            by_name = {slot.group_name(str(group)): items for group, items in found.items()}
        else:
            by_name = {slot.name: found}
        for name, items in by_name.items():
            transcripts = [as_transcript(item) for item in items]
            if transcripts:
                outcome.transcripts[name] = transcripts
    except Exception as error:  # an optional hook failing is a failure like any other
        outcome.fail(slot.name, "hook", f"transcripts() raised {error!r}", error)


async def run_round(
    slots: Sequence[EvaluatorSlot],
    clients: LiveClients,
    *,
    timeout_s: float | None,
    context: dict[str, Any] | None = None,
    on_done: Callable[[str, float, dict[str, float] | None], None] = lambda *args: None,
    on_progress: Callable[[float], None] = lambda seconds: None,
    progress_every_s: float = 15.0,
) -> RoundOutcome:
    """Runs every slot's evaluator concurrently; a failing one never stops the others.

    Each evaluator's ``set_run_context(**context)`` is called first (the Inspect evaluator
    writes its logs under the run's directory, tagged with the step).
    ``on_done(name, seconds, values)`` is called as each evaluator finishes, with the values
    it reported (keys without the ``eval/<name>/`` prefix, or without ``eval/`` for one with
    `metric_groups`), or None when it failed;
    ``on_progress(seconds)`` every ``progress_every_s`` while the round runs.
    """
    outcome = RoundOutcome()

    async def run_one(slot: EvaluatorSlot) -> None:
        start = time.perf_counter()
        values: dict[str, float] | None = None
        try:
            slot.build()
        except Exception as error:
            outcome.fail(slot.name, "build", f"builder raised {error!r}", error)
            on_done(slot.name, time.perf_counter() - start, values)
            return
        try:
            if context:
                slot.hook("set_run_context", **context)
            if client_kind(slot.evaluator) == "sampling":
                client = clients.sampling()
            else:
                client = clients.training()
            result = await asyncio.wait_for(slot.evaluator(client), timeout_s)
        except asyncio.TimeoutError as error:
            outcome.fail(
                slot.name,
                "timeout",
                f"took longer than {timeout_s}s: raise "
                "evaluator_timeout_s or make the evaluator smaller",
                error,
            )
        except Exception as error:
            outcome.fail(slot.name, "exception", repr(error), error)
        else:
            _record_values(outcome, slot, result)
            values = outcome.values.get(slot.name, {})
        on_done(slot.name, time.perf_counter() - start, values)

    start = time.perf_counter()
    work = asyncio.gather(*(run_one(slot) for slot in slots))
    while not (await asyncio.wait({work}, timeout=progress_every_s))[0]:
        on_progress(time.perf_counter() - start)
    await work
    return outcome
