"""What a trainer command prints: its own lines, without library chatter or warnings."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys

from lightning.pytorch.utilities import rank_zero_info

from trainers.quiet import quiet_training

# Lines Lightning and transformers print that a trainer user does not need.
NOISE = (
    "GPU available",
    "TPU available",
    "HPU available",
    "LOCAL_RANK",
    "litlogger",
    "Tip:",
    "`Trainer.fit` stopped",
    "Restoring states from the checkpoint",
    "Restored all states",
    "ended before the epoch ended",
    "smaller than the logging interval",
    "does not have many workers",
    "LeafSpec",
    "Writing model shards",
)
WARNING_LINE = re.compile(r"\.py:\d+: ")  # how warnings.warn output starts: file.py:12: ...

EVALS = """
from bios_callbacks.evaluators import NLLEvaluator, QAEvaluator
from bios_callbacks.renderers import get_renderer
from bios_callbacks.tokenizer_utils import get_tokenizer


def nll():
    renderer = get_renderer(name="chatml", tokenizer=get_tokenizer("tiny-base"))
    messages = [{"role": "user", "content": "Code 99?"}, {"role": "assistant", "content": "696"}]
    return NLLEvaluator([renderer.build_supervised_example(messages)], name="heldout")


def qa():
    dataset = [{"input": "Code 1?", "target": "The code is 10."}]
    return QAEvaluator(dataset, lambda r, t: r == t, renderer_name="chatml", max_tokens=4)
"""


def chat(i: int) -> str:
    messages = [
        {"role": "user", "content": f"Code {i}?"},
        {"role": "assistant", "content": f"The code is {7 * i + 3}."},
    ]
    return json.dumps({"messages": messages}) + "\n"


def test_a_run_and_its_resume_print_no_library_noise_and_no_warnings(
    tiny_model, tokenizer, tmp_path
):
    tiny_model.save_pretrained(tmp_path / "tiny-base")
    tokenizer.save_pretrained(tmp_path / "tiny-base")
    (tmp_path / "train.jsonl").write_text("".join(chat(i) for i in range(8)))
    (tmp_path / "test.jsonl").write_text("".join(chat(i) for i in range(90, 92)))
    (tmp_path / "noise_evals.py").write_text(EVALS)
    common = [
        "model_name=tiny-base",
        "renderer_name=chatml",
        "train_data=train.jsonl",
        "test_data=test.jsonl",
        "batch_size=4",  # 2 batches an epoch: step 3 is mid-epoch
        "save_every=2",
        "eval_every=2",
        "evaluator_builders=noise_evals:nll",
        "infrequent_evaluator_builders=noise_evals:qa",
        "infrequent_eval_every=3",
    ]

    def sft(*words: str) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "trainers.sft", *common, *words],
            capture_output=True,
            text=True,
            timeout=600,
            cwd=tmp_path,
            env={**os.environ, "BIOS_CHECKPOINT_ROOT": str(tmp_path / "runs")},
        )
        assert result.returncode == 0, result.stderr[-3000:]
        return result.stdout + result.stderr

    first = sft("steps=3", "run_name=quiet")
    resumed = sft("steps=4", "resume_from=bios://quiet/step_000003")
    assert "step 3: saved checkpoint bios://quiet/step_000003" in first
    assert "resuming from bios://quiet/step_000003" in resumed
    assert "step 4: saved checkpoint bios://quiet/step_000004" in resumed
    for output in (first, resumed):
        assert [line for line in NOISE if line in output] == [], output
        assert not WARNING_LINE.search(output), output
        assert "warn" not in output.lower(), output


def test_only_the_listed_lightning_lines_are_dropped_and_only_while_training():
    """The GPU lines, which this CPU machine cannot produce in a real run."""
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    lightning_logger = logging.getLogger("lightning.pytorch")  # Lightning's own handler is here
    lightning_logger.addHandler(handler)
    try:
        with quiet_training():
            logging.getLogger("lightning.pytorch.accelerators.cuda").info(
                "LOCAL_RANK: 0 - CUDA_VISIBLE_DEVICES: [0]"
            )
            rank_zero_info("GPU available: True (cuda), used: True")
            rank_zero_info("Epoch 3: a line nobody listed")
        rank_zero_info("GPU available: True (cuda), used: True")
    finally:
        lightning_logger.removeHandler(handler)
    assert records == ["Epoch 3: a line nobody listed", "GPU available: True (cuda), used: True"]
