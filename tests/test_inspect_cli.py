"""The offline CLI, Inspect's own CLI route, task naming and bad input."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bios_callbacks.eval.inspect_runner import preserved_terminal
from bios_callbacks.eval.inspect_tasks import TaskNotFoundError, resolve_task
from bios_callbacks.eval.run_inspect_evals import UsageError, main, parse_args
from bios_callbacks.models import EMBEDDED_MODEL

FIXTURE = str(Path(__file__).with_name("inspect_tasks_fixture.py"))
SCORING = str(Path(__file__).with_name("inspect_scoring_tasks.py"))
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _restore_terminal():
    with preserved_terminal():
        yield


@pytest.fixture
def checkpoint(tiny_model, tokenizer, tmp_path):
    from bios_callbacks.checkpoints import save_checkpoint

    return save_checkpoint(
        tmp_path / "run" / "checkpoints" / "final",
        tiny_model,
        tokenizer,
        base_model=EMBEDDED_MODEL,
        renderer_name="chatml",
        step=7,
    )


def test_bad_key_names_the_valid_keys():
    with pytest.raises(UsageError, match=r"(?i)valid keys: .*tasks.*model_path"):
        parse_args(["model_pth=x", "tasks=a.py@t"])
    with pytest.raises(UsageError, match="limit=ten: expected an integer"):
        parse_args(["model_name=m", "tasks=a.py@t", "limit=ten"])
    with pytest.raises(UsageError, match=r"base_url='localhost:8000': expected an http\(s\) URL"):
        parse_args(["model_name=m", "tasks=a.py@t", "base_url=localhost:8000"])
    with pytest.raises(UsageError, match="Missing tasks="):
        parse_args(["model_name=m", "tasks=,"])
    with pytest.raises(UsageError, match=r"dtype='fp8': expected one of \['float32', 'bfloat16'\]"):
        parse_args(["model_name=m", "tasks=a.py@t", "dtype=fp8"])
    assert main(["tasks=a.py@t", "model_nme=m"]) == 2
    with pytest.raises(UsageError, match=r"renderer_name='chatm': expected one of \[.*'chatml'"):
        parse_args(["model_name=m", "tasks=a.py@t", "renderer_name=chatm"])
    with pytest.raises(UsageError, match="max_connections=0: expected an integer >= 1"):
        parse_args(["model_name=m", "tasks=a.py@t", "max_connections=0"])
    assert main(["tasks=no_such_task", f"model_name={EMBEDDED_MODEL}"]) == 2


def test_words_are_read_by_the_fields_types():
    args = parse_args(["tasks=a.py@t, b:t", "model_name=m", "--limit=5", "temperature=0.5"])
    assert args.tasks == ["a.py@t", "b:t"]
    assert (args.limit, args.temperature, args.model_path) == (5, 0.5, None)


def test_unknown_task_in_an_existing_file_exits_2_listing_its_tasks():
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "bios_callbacks.eval.run_inspect_evals",
            "tasks=examples/offline_inspect_eval.py@nonexistent",
            f"model_name={EMBEDDED_MODEL}",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "offline_inspect_eval.py has no task 'nonexistent'; its tasks: capitals" in (
        result.stderr
    )
    assert "Traceback" not in result.stderr


def test_unknown_task_says_how_tasks_are_named():
    with pytest.raises(TaskNotFoundError, match=r"'no_such_task'.*file\.py@task_name"):
        resolve_task("no_such_task")
    if importlib.util.find_spec("inspect_evals") is None:  # else: test_inspect_offline_benchmarks
        with pytest.raises(TaskNotFoundError, match=r"bios-callbacks\[inspect-evals\]"):
            resolve_task("inspect_evals/ifeval")
    with pytest.raises(TaskNotFoundError, match="has no 'nope'"):
        resolve_task("inspect_tasks_fixture:nope")
    with pytest.raises(TaskNotFoundError, match=r"has no task 'nope'; its tasks: echo, "):
        resolve_task(f"{FIXTURE}@nope")


def test_cli_on_a_checkpoint(checkpoint, capsys):
    status = main(
        [
            f"model_path={checkpoint}",
            f"tasks={FIXTURE}@echo,{FIXTURE}@partly_broken",
            "max_tokens=4",
        ]
    )
    out = capsys.readouterr().out
    assert status == 0
    assert "echo/match/accuracy" in out
    assert re.search(r"partly_broken/failed_samples +1\n", out)
    assert re.search(r"echo/match/scored +4 of 4\n", out)
    # the failed sample is not in the accuracy: 3 of 4 scored
    assert re.search(r"partly_broken/fails_on_sample_one/scored +3 of 4 \(1 unscored", out)
    echo = json.loads((checkpoint / "evals" / "echo.json").read_text())
    assert echo["step"] == 7 and echo["renderer_name"] == "chatml"
    assert echo["samples"] == 4 and "echo/match/accuracy" in echo["metrics"]
    broken = json.loads((checkpoint / "evals" / "partly_broken.json").read_text())
    assert list(broken["errors"]) == ["1"]
    assert broken["metrics"]["partly_broken/fails_on_sample_one/accuracy"] == 1.0
    assert list((checkpoint / "evals" / "logs").glob("*.eval"))


def test_cli_shows_scored_out_of_total_and_warns(checkpoint, capsys, caplog):
    status = main([f"model_path={checkpoint}", f"tasks={SCORING}@half_unscored"])
    out = capsys.readouterr().out
    assert status == 0
    assert re.search(r"half_unscored/verdict_on_even_ids/accuracy +1\.0000\n", out)
    assert re.search(
        r"half_unscored/verdict_on_even_ids/scored +2 of 4 \(2 unscored: the metrics count "
        r"only the scored\)\n",
        out,
    )
    result = json.loads((checkpoint / "evals" / "half_unscored.json").read_text())
    assert result["metrics"]["half_unscored/verdict_on_even_ids/scored"] == 2
    assert result["metrics"]["half_unscored/verdict_on_even_ids/unscored"] == 2
    assert result["unscored"] == {
        "verdict_on_even_ids": {
            "1": "no_verdict: the judge said nothing",
            "3": "no_verdict: the judge said nothing",
        }
    }
    [warning] = [r.getMessage() for r in caplog.records if "scored 2 of 4" in r.getMessage()]
    assert warning.startswith("Inspect task half_unscored: verdict_on_even_ids scored 2 of 4")


def test_cli_on_a_base_model_writes_under_the_checkpoint_root(
    tiny_model, tokenizer, tmp_path, monkeypatch, capsys
):
    from bios_callbacks.eval.run_inspect_evals import base_model_results_dir

    model_dir = tmp_path / "tiny-base"
    tiny_model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    monkeypatch.setenv("BIOS_CHECKPOINT_ROOT", str(tmp_path / "runs"))
    monkeypatch.chdir(tmp_path)
    status = main(
        [
            f"model_name={model_dir}",
            "renderer_name=chatml",
            f"tasks={FIXTURE}@echo",
            "limit=2",
            "max_tokens=2",
        ]
    )
    assert status == 0
    results = base_model_results_dir(str(model_dir))
    assert results.parent == tmp_path / "runs" / "base_model_evals"
    assert json.loads((results / "echo.json").read_text())["samples"] == 2
    assert list((results / "logs").glob("*.eval"))
    assert f"Results: {results}" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs", "tiny-base"]  # nothing in cwd


def test_cli_with_bios_uri(checkpoint, monkeypatch, capsys):
    monkeypatch.setenv("BIOS_CHECKPOINT_ROOT", str(checkpoint.parent.parent.parent))
    status = main(
        ["model_path=bios://run/final", f"tasks={FIXTURE}@echo", "limit=2", "max_tokens=3"]
    )
    assert status == 0
    assert json.loads((checkpoint / "evals" / "echo.json").read_text())["samples"] == 2


def test_inspect_eval_cli_route(checkpoint, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "INSPECT_DISPLAY": "none"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "inspect_ai",
            "eval",
            f"{FIXTURE}@echo",
            "--model",
            f"bios/{checkpoint}",
            "-M",
            "renderer_name=chatml",
            "--max-tokens",
            "3",
            "--log-dir",
            str(tmp_path / "logs"),
            "--log-format",
            "json",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    [log_file] = (tmp_path / "logs").glob("*.json")
    log = json.loads(log_file.read_text())
    assert log["status"] == "success"
    assert log["eval"]["model"] == f"bios/{checkpoint}"
    assert len(log["samples"]) == 4


@pytest.mark.embedded
def test_cli_on_the_base_model_in_bfloat16(embedded, tmp_path, capsys):
    status = main(
        [
            f"model_name={EMBEDDED_MODEL}",
            "renderer_name=chatml",
            f"tasks={REPO}/examples/offline_inspect_eval.py@capitals",
            "max_tokens=48",
            f"log_dir={tmp_path}",
            "dtype=bfloat16",
        ]
    )
    assert status == 0
    result = json.loads((tmp_path / "evals" / "capitals.json").read_text())
    assert result["metrics"]["capitals/includes/accuracy"] >= 0.5
