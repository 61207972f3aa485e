"""The guide's code listings, taken from its text and ported with exactly the rule the README
documents, run against this package (and the shipped example versions of them too).

docs/evaluations-guide.txt is our copy of the guide; where the product's shared spec is checked
out beside the repository, the copy must equal it.
"""

from __future__ import annotations

import ast
import re
import shlex
from pathlib import Path

import pytest
import torch

from bios_callbacks.models import EMBEDDED_MODEL
from examples import using_custom_evaluators

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "evaluations-guide.txt"
SHARED_GUIDE = ROOT.parent / "shared" / "spec" / "evaluations-guide.txt"

# The porting rule, as the README states it: the imports, the cookbook's package name, and a
# model + renderer this package has.
PORTING_RULE = [
    (r"^import bios$", "import bios_callbacks as bios"),
    (r"^from bios import ", "from bios_callbacks import "),
    (r"\bbios_cookbook\b", "bios_callbacks"),
    (r"ultrasafe/usf-mini", EMBEDDED_MODEL),
    (r"\"ultrasafe\"", '"chatml"'),
    (r"renderer_name=ultrasafe\b", "renderer_name=chatml"),
]


def port(code: str) -> str:
    """Applies the README's porting rule to a listing of the guide."""
    for pattern, replacement in PORTING_RULE:
        code = re.sub(pattern, replacement, code, flags=re.MULTILINE)
    return code


def listing(title: str) -> str:
    """The listing under `title` in the guide, without its line numbers."""
    lines = GUIDE.read_text(encoding="utf-8").splitlines()
    start = lines.index(title) + 1
    code = []
    for number, line in enumerate(lines[start:], start=1):
        if not line.startswith(str(number)):
            break
        code.append(line[len(str(number)) :])
    assert code, f"no listing under {title!r}"
    return "\n".join(code) + "\n"


def test_our_copy_of_the_guide_is_the_spec():
    if not SHARED_GUIDE.exists():
        pytest.skip("the shared spec is not checked out beside this repository")
    assert GUIDE.read_text(encoding="utf-8") == SHARED_GUIDE.read_text(encoding="utf-8")


@pytest.mark.parametrize(
    "title",
    ["Custom Evaluator Implementation", "Run Custom Evaluation", "LLM-as-Judge Evaluation"],
)
def test_every_import_of_a_ported_listing_resolves(title):
    """What broke users: `from bios import types` survived the old rule as `No module named
    'bios'`. Every module a ported listing imports must exist, and so must each name."""
    import importlib

    tree = ast.parse(port(listing(title)))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                importlib.import_module(alias.name)
        elif isinstance(node, ast.ImportFrom):
            module = importlib.import_module(node.module)
            for alias in node.names:
                assert hasattr(module, alias.name) or importlib.util.find_spec(
                    f"{node.module}.{alias.name}"
                ), f"{node.module}.{alias.name}"


@pytest.mark.parametrize(
    ("title", "trainer"),
    [("SFT Inline Evaluations", "trainers.sft"), ("RL Inline Evaluations", "trainers.rl")],
)
def test_inline_eval_config_listings_are_trainer_configs(title, trainer):
    import importlib

    namespace = {
        name: (lambda: None)
        for name in (
            "eval_builder_1",
            "eval_builder_2",
            "expensive_eval",
            "sampling_eval_1",
            "sampling_eval_2",
        )
    }
    exec(port(listing(title)), namespace)
    config = dict(
        namespace["config"],
        train_data=[
            {
                "messages": [
                    {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": "hello"},
                ]
            }
        ],
    )
    if trainer == "trainers.rl":
        config = dict(config, train_data=[{"prompt": "hi"}], reward_fn=lambda text, datum: 0.0)
    module = importlib.import_module(trainer)
    config_class = module.RLConfig if trainer == "trainers.rl" else module.SFTConfig
    parsed = config_class.from_dict(config)
    assert parsed.eval_every == namespace["config"]["eval_every"]
    assert len(parsed.evaluator_builders) == len(namespace["config"]["evaluator_builders"])


def test_offline_listing_names_our_cli_and_its_keys():
    from bios_callbacks.eval.run_inspect_evals import parse_args

    words = shlex.split(port(listing("Run Inspect Evaluations")).replace("\\\n", " "))
    command = words[words.index("python") :]
    assert command[:3] == ["python", "-m", "bios_callbacks.eval.run_inspect_evals"]
    arguments = [w.replace("$MODEL_PATH", "bios://run/step_000001") for w in command[3:]]
    args = parse_args(arguments)
    assert args.model_name == EMBEDDED_MODEL and args.renderer_name == "chatml"
    assert args.tasks == ["inspect_evals/ifeval", "inspect_evals/mmlu_0_shot"]


@pytest.mark.embedded
def test_custom_evaluator_listings_run_as_ported(capsys):
    code = port(listing("Custom Evaluator Implementation")) + port(listing("Run Custom Evaluation"))
    torch.manual_seed(0)  # the listing samples without a seed: this makes it repeatable
    exec(compile(code, "guide listings", "exec"), {"__name__": "guide"})
    line = next(
        line
        for line in capsys.readouterr().out.splitlines()
        if line.startswith("Evaluation Results: ")
    )
    result = ast.literal_eval(line.removeprefix("Evaluation Results: "))
    assert set(result) == {"accuracy"}
    # Sampled at temperature 0.7 as in the guide; the 4-bit 135M model knows Paris and Berlin.
    assert result["accuracy"] >= 1 / 3


@pytest.mark.embedded
def test_llm_as_judge_listing_runs_as_ported(tmp_path):
    from inspect_ai import eval as inspect_eval
    from inspect_ai.model import GenerateConfig, Model

    namespace: dict = {"__name__": "guide"}
    exec(compile(port(listing("LLM-as-Judge Evaluation")), "guide listing", "exec"), namespace)
    api = namespace["api"]
    [log] = inspect_eval(
        namespace["example_lm_as_judge"](),
        model=Model(api, GenerateConfig(max_tokens=24, temperature=0.0)),
        model_roles={"grader": Model(api, GenerateConfig(max_tokens=16, temperature=0.0))},
        log_dir=str(tmp_path),
        display="none",
    )
    namespace["sampling_client"].close()
    assert log.status == "success" and len(log.samples) == 2


@pytest.mark.embedded
def test_using_custom_evaluators_example_prints_an_accuracy(capsys):
    torch.manual_seed(0)
    assert using_custom_evaluators.main([]) == 0
    line = next(
        line
        for line in capsys.readouterr().out.splitlines()
        if line.startswith("Evaluation Results: ")
    )
    result = ast.literal_eval(line.removeprefix("Evaluation Results: "))
    assert set(result) == {"accuracy"} and result["accuracy"] >= 1 / 3
