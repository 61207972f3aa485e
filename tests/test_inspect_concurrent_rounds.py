"""A regular Inspect round overlapping a background one (`async_infrequent=True`) in a real
Lightning run: Inspect allows one evaluation at a time per process, so the second waits for
the first instead of failing with Inspect's "Multiple concurrent calls to eval_async".

The background round's task waits, inside Inspect's evaluation, until the other round is seen
waiting for it (its log line), so the two overlap by construction, never by timing.
"""

from __future__ import annotations

import asyncio
import logging
import threading

from inspect_ai import Task
from inspect_ai.dataset import MemoryDataset, Sample
from inspect_ai.scorer import match
from inspect_ai.solver import Generate, TaskState, generate, solver
from lit_tiny import TinyLM, make_trainer, scalars, token_loader

from bios_callbacks.callback import EvalCallback
from bios_callbacks.callback.results import read_records
from bios_callbacks.eval.inspect_evaluators import InspectEvaluatorBuilder
from bios_callbacks.eval.inspect_runner import preserved_terminal

GATE_LIMIT_S = 300  # a hang guard only: the gate opens once the other round waits


@solver
def wait_for(gate: threading.Event, entered: threading.Event):
    """Says it is inside Inspect's evaluation, then waits for `gate` before generating."""

    async def solve(state: TaskState, generate_: Generate) -> TaskState:
        entered.set()
        if not await asyncio.to_thread(gate.wait, GATE_LIMIT_S):
            raise RuntimeError("the other round never waited for this one")
        return state

    return solve


def task(name: str, *solvers) -> Task:
    samples = [Sample(input=f"Say {i}", target=str(i), id=i) for i in range(2)]
    return Task(
        name=name, dataset=MemoryDataset(samples), solver=[*solvers, generate()], scorer=match()
    )


class OpensGateWhenWaiting(logging.Handler):
    """Opens `gate` when run_tasks logs that a call waits for the evaluation in progress."""

    def __init__(self, gate: threading.Event):
        super().__init__(level=logging.INFO)
        self.gate, self.waits = gate, 0

    def emit(self, record: logging.LogRecord) -> None:
        if "Waiting for another Inspect evaluation" in record.getMessage():
            self.waits += 1
            self.gate.set()


def test_a_regular_inspect_round_waits_for_a_background_one(tmp_path, tiny_model, tokenizer):
    gate, entered = threading.Event(), threading.Event()
    runner_log = logging.getLogger("bios_callbacks.eval.inspect_runner")
    handler = OpensGateWhenWaiting(gate)
    runner_log.addHandler(handler)
    level = runner_log.level
    runner_log.setLevel(logging.INFO)

    def builder(name, *solvers):
        return InspectEvaluatorBuilder(
            tasks=[task(name, *solvers)], renderer_name="chatml", max_tokens=2
        )

    callback = EvalCallback(
        evaluator_builders=[builder("regular")],
        eval_every=2,
        infrequent_evaluator_builders=[builder("held", wait_for(gate, entered))],
        infrequent_eval_every=2,
        async_infrequent=True,
    )
    trainer = make_trainer(tmp_path, [callback], max_steps=2)
    try:
        with preserved_terminal():
            trainer.fit(TinyLM(tiny_model, tokenizer), token_loader())
    finally:
        runner_log.removeHandler(handler)
        runner_log.setLevel(level)

    # at step 0 the background round (held in Inspect until the regular one waited) and the
    # regular round overlapped; one waited for the other and both were scored
    assert entered.is_set() and handler.waits >= 1
    records = read_records(tmp_path / "run" / "version_0" / "eval_results.jsonl")
    assert [(r.step, r.lists, r.background) for r in records] == [
        (0, ["regular"], False),
        (0, ["infrequent"], True),
        (2, ["regular", "infrequent"], False),
    ]
    assert all(r.failures == [] for r in records), [r.failures for r in records]
    logged = scalars(tmp_path / "run" / "version_0")
    for name in ("regular", "held"):
        assert [step for step, _ in logged[f"eval/{name}/match/scored"]] == [0, 2]
        assert [value for _, value in logged[f"eval/{name}/match/scored"]] == [2.0, 2.0]
    assert [value for _, value in logged["eval/failures"]] == [0.0, 0.0]
