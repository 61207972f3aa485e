"""The examples' command lines (one `key=value` style) and where the examples write."""

from __future__ import annotations

import re

import pytest

from examples import (
    demo,
    inline_evals,
    rl_arithmetic,
    rl_inline_evals,
    sft_inline_evals,
    using_custom_evaluators,
)

TRAINER_EXAMPLES = [demo, sft_inline_evals, rl_arithmetic, rl_inline_evals]


@pytest.mark.parametrize("example", TRAINER_EXAMPLES, ids=lambda m: m.__name__)
def test_trainer_examples_read_key_value_words_and_reject_bad_ones(example, capsys):
    assert example.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "Keys (key=value):" in out and "\n  steps=" in out

    assert example.main(["stepz=3"]) == 2  # before any model loads
    err = capsys.readouterr().err
    assert err.startswith("error: Unknown ") and "['stepz']" in err and "steps" in err
    assert len(err.strip().splitlines()) == 1

    assert example.main(["steps=three"]) == 2
    assert capsys.readouterr().err == "error: steps=three: expected an integer.\n"


@pytest.mark.parametrize(
    ("example", "words", "message"),
    [
        (inline_evals, ["--max-steps", "3"], "error: Argument '--max-steps' is not key=value."),
        (inline_evals, ["steps=x"], "error: steps=x: expected an integer."),
        (using_custom_evaluators, ["model=bios://a/b"], "error: Unknown Args key(s) ['model']"),
    ],
)
def test_other_examples_read_the_same_words(example, words, message, capsys):
    with pytest.raises(SystemExit) as stop:
        example.main(words)
    assert stop.value.code == 2
    assert capsys.readouterr().err.startswith(message)


def test_demo_runs_get_unique_default_names():
    names = {demo.demo_settings()["run_name"] for _ in range(3)}
    assert len(names) == 3
    assert all(re.fullmatch(r"demo-\d{8}-\d{6}-[0-9a-f]{6}", name) for name in names)


@pytest.mark.embedded
def test_inline_evals_example_writes_under_the_checkpoint_root(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BIOS_CHECKPOINT_ROOT", str(tmp_path / "root"))
    inline_evals.main(["steps=1"])
    assert [p.name for p in tmp_path.iterdir()] == ["root"]
    run = tmp_path / "root" / "inline_evals" / "version_0"
    assert (run / "eval_results.jsonl").exists()
    assert any(run.glob("events.out.tfevents.*"))
    assert f"all rounds: {run}/eval_results.jsonl" in capsys.readouterr().out


def test_demo_summary_shows_scores_with_95_percent_intervals_not_counts(tmp_path):
    from bios_callbacks.callback.results import ResultsFile, RoundRecord

    results = ResultsFile(tmp_path)
    for step, accuracy, stderr in ((0, 0.0, 0.0), (16, 0.75, (0.75 * 0.25 / 15) ** 0.5)):
        metrics = {
            "eval/capitals/includes/accuracy": 0.5,
            "eval/capitals/includes/stderr": 0.1,  # Inspect's own name
            "eval/strict_format/accuracy": accuracy,
            "eval/strict_format/accuracy_stderr": stderr,
            "eval/strict_format/scored": 16.0,
        }
        results.append(RoundRecord(step=step, metrics=metrics, lists=["regular"]))
    lines = [" ".join(line.split()) for line in demo.summarize(tmp_path)]
    assert lines == [
        "eval/capitals/includes/accuracy step 0: 0.500 ± 0.196 step 16: 0.500 ± 0.196",
        # 0 of 16 right: Wilson's interval, not ± 0
        "eval/strict_format/accuracy step 0: 0.000 [0.000, 0.194] step 16: 0.750 ± 0.219",
    ]
