"""Light entry points stay light: the documented modules and `--help` never import torch,
transformers or inspect_ai (so `import bios_callbacks...` and `--help` answer at once)."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("torch", "transformers", "inspect_ai", "lightning")


def heavy_modules_after(code: str) -> list[str]:
    probe = f"{code}\nimport sys\nprint(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    return eval(out.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "module",
    [
        "bios_callbacks",
        "bios_callbacks.types",
        "bios_callbacks.evaluators",
        "bios_callbacks.renderers",
        "bios_callbacks.checkpoints",
        "bios_callbacks.tokenizer_utils",
        "bios_callbacks.sampling.defaults",
        "bios_callbacks.sampling.scheduler",
        "bios_callbacks.callback.results",
        "bios_callbacks.key_value",
    ],
)
def test_documented_modules_import_without_torch(module):
    assert heavy_modules_after(f"import {module}") == []


@pytest.mark.parametrize(
    "command", ["bios_callbacks.eval.run_inspect_evals", "trainers.sft", "trainers.rl"]
)
def test_help_imports_nothing_heavy(command):
    code = (
        "import runpy, sys, contextlib, io\n"
        f"sys.argv = [{command!r}, '--help']\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        f"    runpy.run_module({command!r}, run_name='__main__')"
    )
    assert heavy_modules_after(code) == []


def test_tinker_cookbook_evaluator_paths_are_ours():
    import bios_callbacks.eval as package
    from bios_callbacks import evaluators
    from bios_callbacks.eval import evaluators as ported

    assert ported.SamplingClientEvaluator is evaluators.SamplingClientEvaluator
    assert ported.TrainingClientEvaluatorBuilder is evaluators.TrainingClientEvaluatorBuilder
    for name in package.__all__:  # `from tinker_cookbook.eval import Evaluator, ...`
        assert getattr(package, name) is getattr(evaluators, name)
    assert heavy_modules_after("import bios_callbacks.eval.evaluators") == []
    assert heavy_modules_after("import bios_callbacks.eval") == []
