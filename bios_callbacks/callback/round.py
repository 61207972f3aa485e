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
    """One builder, the evaluator it built (once), and the stable name its metrics go under."""

    builder: EvaluatorBuilder
    name: str = ""
    evaluator: Any = None

    def build(self) -> None:
        """Calls the builder if it has not succeeded yet (raises what the builder raises)."""
        if self.evaluator is None:
            evaluator = self.builder()
            try:
                client_kind(evaluator)
            except TypeError as error:
                raise TypeError(f"evaluator builder {self.name!r} returned {error}") from None
            self.evaluator = evaluator

    def hook(self, name: str, default: Any = (), **kwargs: Any) -> Any:
        """Calls the evaluator's optional hook `name` (`transcripts`, `eval_prompts`,
        `set_run_context`); `default` when a duck-typed evaluator does not have it."""
        method = getattr(self.evaluator, name, None)
        return method(**kwargs) if callable(method) else default


def _builder_name(builder: Any) -> str:
    target = getattr(builder, "func", builder)
    return getattr(target, "__name__", type(target).__name__)


def name_slots(builders: Sequence[EvaluatorBuilder]) -> list[EvaluatorSlot]:
    """Makes a slot per builder; builds each once to learn its name (``evaluator.name``, else
    the class name). Repeated names get ``_2``, ``_3``... in list order, so keys never clash.
    A builder that raises here is retried when its round comes (and reported then)."""
    slots: list[EvaluatorSlot] = []
    seen: dict[str, int] = {}
    for builder in builders:
        slot = EvaluatorSlot(builder=builder, name=_builder_name(builder))
        try:
            slot.build()
        except Exception:
            pass
        else:
            evaluator = slot.evaluator
            slot.name = str(getattr(evaluator, "name", None) or type(evaluator).__name__)
        seen[slot.name] = seen.get(slot.name, 0) + 1
        if seen[slot.name] > 1:
            slot.name = f"{slot.name}_{seen[slot.name]}"
        slots.append(slot)
    return slots


@dataclass
class RoundOutcome:
    """Metrics under ``eval/<evaluator>/<key>``, failures, exceptions, transcripts."""

    metrics: dict[str, float] = field(default_factory=dict)
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
    for key, value in result.items():
        number = _as_float(value)
        full_key = f"{NAMESPACE}/{slot.name}/{key}"
        if number is None or not math.isfinite(number):
            outcome.fail(
                slot.name, "invalid_value", f"{key}={value!r} is not a finite number", None
            )
        elif full_key in outcome.metrics:
            outcome.fail(slot.name, "duplicate_key", f"{full_key} already set this round", None)
        else:
            outcome.metrics[full_key] = number
    try:
        transcripts = [as_transcript(item) for item in slot.hook("transcripts")]
    except Exception as error:  # an optional hook failing is a failure like any other
        outcome.fail(slot.name, "hook", f"transcripts() raised {error!r}", error)
        return
    if transcripts:
        outcome.transcripts[slot.name] = transcripts


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
    it reported (keys without the ``eval/<name>/`` prefix), or None when it failed;
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
            prefix = f"{NAMESPACE}/{slot.name}/"
            values = {
                key.removeprefix(prefix): value
                for key, value in outcome.metrics.items()
                if key.startswith(prefix)
            }
        on_done(slot.name, time.perf_counter() - start, values)

    start = time.perf_counter()
    work = asyncio.gather(*(run_one(slot) for slot in slots))
    while not (await asyncio.wait({work}, timeout=progress_every_s))[0]:
        on_progress(time.perf_counter() - start)
    await work
    return outcome
