"""InspectEvaluatorBuilder inside real Lightning runs, with TQDM and Rich progress bars."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import rich
from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar
from lit_tiny import TinyLM, make_trainer, scalars, token_loader

from bios_callbacks.callback import EvalCallback
from bios_callbacks.eval.inspect_evaluator import InspectEvaluatorBuilder

FIXTURE = str(Path(__file__).with_name("inspect_tasks_fixture.py"))


@pytest.mark.parametrize("bar", [TQDMProgressBar(), RichProgressBar()], ids=["tqdm", "rich"])
def test_inline_inspect_rounds_keep_progress_bars_working(bar, tiny_model, tokenizer, tmp_path,
                                                          capsys):
    builder = InspectEvaluatorBuilder(tasks=[f"{FIXTURE}@echo"], renderer_name="chatml",
                                      limit=3, max_tokens=3, log_dir=tmp_path)
    callback = EvalCallback(evaluator_builders=[builder], eval_every=2, progress=False)
    trainer = make_trainer(tmp_path, [callback, bar], enable_progress_bar=True, max_steps=4)
    trainer.fit(TinyLM(tiny_model, tokenizer), token_loader(num=8))

    assert rich.get_console().quiet is False
    out = capsys.readouterr()
    assert "Epoch 0" in out.out + out.err  # the bar kept drawing after the rounds
    assert "total time" not in out.out + out.err  # Inspect's own summary stayed quiet each round
    tags = {tag for tag in scalars(trainer.log_dir) if tag.endswith("echo/match/accuracy")}
    assert len(tags) == 1, scalars(trainer.log_dir).keys()
    steps = [step for step, _ in scalars(trainer.log_dir)[tags.pop()]]
    assert steps == [0, 2, 4]
    # The callback hands the run's log directory and the step to the evaluator.
    logs = sorted((Path(trainer.log_dir) / "inspect_logs").glob("*.eval"))
    from inspect_ai.log import read_eval_log

    tags = sorted(read_eval_log(str(p), header_only=True).eval.tags[0] for p in logs)
    assert tags == ["step-0", "step-2", "step-4"]
    rows = [json.loads(line) for line in (Path(trainer.log_dir) / "eval_results.jsonl").open()]
    assert len(rows) == 3
