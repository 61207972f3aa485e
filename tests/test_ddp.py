"""EvalCallback under strategy="ddp" with 2 CPU processes on gloo.

The test runs this file as a script (Lightning's ddp launcher re-runs the script for rank 1),
bounded by a timeout so a deadlock fails the test instead of hanging it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.ddp

MAX_STEPS = 3
EVAL_EVERY = 2


def test_every_rank_evaluates_in_step_and_loggers_write_once(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    env.pop("LOCAL_RANK", None)
    done = subprocess.run(
        [sys.executable, __file__, str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]

    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["metrics"] == ranks[1]["metrics"]
    assert {"eval/nll/loss", "eval/qa/accuracy"} <= set(ranks[0]["metrics"])

    from lit_tiny import scalars

    log_dir = ranks[0]["log_dir"]
    tags = scalars(log_dir)
    assert [s for s, _ in tags["eval/nll/loss"]] == [0, 2, 3]
    assert [s for s, _ in tags["eval/qa/accuracy"]] == [0, 2, 3]
    lines = Path(log_dir, "eval_results.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [0, 2, 3]


def _run(out_dir: str) -> None:
    import functools

    import lightning.pytorch as pl
    from lightning.pytorch.loggers import TensorBoardLogger
    from lit_tiny import TinyLM, token_loader
    from tiny import make_tiny_model

    from bios_callbacks.callback import EvalCallback
    from bios_callbacks.evaluators import NLLEvaluator, QAEvaluator
    from bios_callbacks.models import EMBEDDED_MODEL
    from bios_callbacks.tokenizer_utils import get_tokenizer

    tokenizer = get_tokenizer(EMBEDDED_MODEL)
    qa = functools.partial(
        QAEvaluator,
        [{"input": "Capital of France?", "target": "Paris"}, {"input": "2+2?", "target": "4"}],
        lambda response, target: target in response,
        renderer_name="chatml",
        max_tokens=4,
    )
    callback = EvalCallback(
        evaluator_builders=[functools.partial(NLLEvaluator, [[1, 200, 300, 400]]), qa],
        eval_every=EVAL_EVERY,
    )
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        max_steps=MAX_STEPS,
        logger=TensorBoardLogger(out_dir, name="run"),
        callbacks=[callback],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(TinyLM(make_tiny_model(tokenizer), tokenizer), token_loader())
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("eval/")}
    result = {"metrics": metrics, "log_dir": trainer.log_dir}
    Path(out_dir, f"rank{trainer.global_rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    _run(sys.argv[1])
