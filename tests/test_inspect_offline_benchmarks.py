"""Standard benchmarks offline: hub datasets from a filled Hugging Face cache, and clear errors
naming what is missing (the dataset and how to fill the cache, or the package to install)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bios_callbacks.eval.inspect_runner import preserved_terminal
from bios_callbacks.eval.inspect_tasks import (
    HubDatasetUnavailableError,
    TaskDependencyError,
    hub_reachable,
    resolve_task,
)
from bios_callbacks.models import EMBEDDED_MODEL

REPO = Path(__file__).resolve().parent.parent
DATASET = "bios-test/tiny-qa"
REVISION = "0123456789abcdef0123456789abcdef01234567"  # pinned, as inspect_evals pins its data
TASK_FILE = f'''
from inspect_ai import Task, task
from inspect_ai.dataset import FieldSpec, hf_dataset
from inspect_ai.scorer import match
from inspect_ai.solver import generate


@task
def tiny_qa():
    return Task(
        dataset=hf_dataset("{DATASET}", split="test", revision="{REVISION}",
                           sample_fields=FieldSpec(input="question", target="answer")),
        solver=generate(),
        scorer=match(),
    )
'''
needs_inspect_evals = pytest.mark.skipif(
    importlib.util.find_spec("inspect_evals") is None,
    reason="needs inspect-evals (pip install 'bios-callbacks[inspect-evals]' or the dev extra)",
)


@pytest.fixture(autouse=True)
def _restore_terminal():
    with preserved_terminal():
        yield


@pytest.fixture
def offline(monkeypatch):
    """HF_HUB_OFFLINE=1, as on a machine without the hub."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub_reachable.cache_clear()
    yield
    hub_reachable.cache_clear()


def fill_datasets_cache(cache: Path, repo_id: str, split: str, rows: list[dict]) -> None:
    """Writes `rows` into the datasets cache `cache` the way `load_dataset(repo_id,
    split=split)` leaves a hub dataset on a machine with internet:
    `<org>___<name>/default/0.0.0/<hash>/` with the Arrow file and `dataset_info.json`."""
    from datasets.packaged_modules.json.json import Json

    org, name = repo_id.split("/")
    work = cache.parent / "building"
    work.mkdir(parents=True)
    source = work / f"{split}.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    builder = Json(
        cache_dir=str(work / "out"),
        dataset_name=name,
        config_name="default",
        config_id="default",
        hash="0123abcd",
        data_files={split: [str(source)]},
    )
    builder.download_and_prepare()
    cache.mkdir(parents=True, exist_ok=True)
    shutil.move(str(work / "out" / name), cache / f"{org}___{name}")
    shutil.rmtree(work)


def run_cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bios_callbacks.eval.run_inspect_evals", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", **env},
    )


@pytest.fixture
def checkpoint(tiny_model, tokenizer, tmp_path):
    from bios_callbacks.checkpoints import save_checkpoint

    return save_checkpoint(
        tmp_path / "run" / "checkpoints" / "final",
        tiny_model,
        tokenizer,
        base_model=EMBEDDED_MODEL,
        renderer_name="chatml",
        step=1,
    )


def test_hub_dataset_runs_offline_from_a_filled_cache(checkpoint, tmp_path):
    pytest.importorskip("datasets")
    hf_home = tmp_path / "hf"
    rows = [{"question": "Say 1", "answer": "1"}, {"question": "Say 2", "answer": "2"}]
    fill_datasets_cache(hf_home / "datasets", DATASET, "test", rows)
    (tmp_path / "hub_tasks.py").write_text(TASK_FILE)
    env = {
        "HF_HOME": str(hf_home),  # the copied ~/.cache/huggingface
        "HF_HUB_OFFLINE": "1",
        "XDG_CACHE_HOME": str(tmp_path / "xdg"),  # Inspect's own dataset cache stays here
    }
    args = [f"model_path={checkpoint}", f"tasks={tmp_path}/hub_tasks.py@tiny_qa", "max_tokens=2"]
    result = run_cli(args, env)
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((checkpoint / "evals" / "tiny_qa.json").read_text())
    assert record["samples"] == 2
    assert record["metrics"]["tiny_qa/match/scored"] == 2  # both read from the cache and scored

    # The same run with an empty cache stops at once, naming the dataset and the fix.
    shutil.rmtree(hf_home)
    result = run_cli(args, env)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    [line] = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert line.startswith(
        f"error: HubDatasetUnavailableError: Task '{tmp_path}/hub_tasks.py@"
        f"tiny_qa' needs the Hugging Face dataset '{DATASET}'"
    )
    assert f"({hf_home / 'datasets'})" in line
    assert f"load_dataset('{DATASET}', split='test', revision='{REVISION}')" in line
    assert "HF_HUB_OFFLINE=1" in line


def test_missing_hub_dataset_names_dataset_config_and_fill_command(offline):
    fixture = Path(__file__).with_name("inspect_tasks_fixture.py")
    with pytest.raises(HubDatasetUnavailableError) as caught:
        resolve_task(f"{fixture}@needs_hub")
    message = str(caught.value)
    assert "needs the Hugging Face dataset 'openai/gsm8k', which is not in the local" in message
    assert "load_dataset('openai/gsm8k', 'main', split='test')" in message
    assert "HF_DATASETS_CACHE" in message and "HF_HUB_OFFLINE=1" in message


@needs_inspect_evals
def test_mmlu_without_its_data_fails_at_once_naming_it(offline):
    with pytest.raises(
        HubDatasetUnavailableError,
        match=(
            r"Task 'inspect_evals/mmlu_0_shot' needs the Hugging Face dataset 'cais/mmlu'.*"
            r"load_dataset\('cais/mmlu', 'all', split='test', revision='[0-9a-f]{40}'\)"
        ),
    ):
        resolve_task("inspect_evals/mmlu_0_shot")


@needs_inspect_evals
@pytest.mark.skipif(
    importlib.util.find_spec("instruction_following_eval") is not None,
    reason="ifeval's package is installed",
)
def test_ifeval_without_its_package_names_the_install_command():
    with pytest.raises(TaskDependencyError) as caught:
        resolve_task("inspect_evals/ifeval")
    assert str(caught.value) == (
        "Task 'inspect_evals/ifeval' needs the Python package 'instruction_following_eval', "
        "which is not installed. Install the inspect-evals extra, which includes it: "
        "pip install 'bios-callbacks[inspect-evals]' (or only this package: "
        "pip install 'git+https://github.com/josejg/instruction_following_eval')."
    )


def test_a_task_importing_a_missing_module_names_the_package(tmp_path):
    (tmp_path / "needs_pkg.py").write_text(
        "from inspect_ai import Task, task\n\n\n@task\ndef uses_pkg():\n"
        "    import no_such_grading_package  # noqa: F401\n    return Task()\n"
    )
    with pytest.raises(
        TaskDependencyError,
        match=(
            r"needs the Python package 'no_such_grading_package', which is not installed\. "
            r"Install it: pip install 'no_such_grading_package'\."
        ),
    ):
        resolve_task(f"{tmp_path}/needs_pkg.py@uses_pkg")
