"""The checkpoint watcher on a real SFT run: what it writes, that a second pass evaluates
nothing, that it follows a run still training (in another process) to its final checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tiny import make_tiny_model

from bios_callbacks.callback.run_sync import run_sync
from bios_callbacks.checkpoints import load_checkpoint
from bios_callbacks.eval.inspect_evaluators import InspectEvaluatorBuilder
from bios_callbacks.eval.inspect_runner import preserved_terminal
from bios_callbacks.eval.watch import main
from bios_callbacks.evaluators import (
    NLLEvaluator,
    SamplingClientEvaluator,
    TrainingClientEvaluator,
)
from bios_callbacks.sampling.client import SamplingClient
from bios_callbacks.serving.llama_cpp import LlamaServer, llama_server_command, no_server_message
from bios_callbacks.training_client import TrainingClient
from bios_callbacks.types import ModelInput, SamplingParams
from trainers.config import SFTConfig
from trainers.sft import train

REPO = Path(__file__).resolve().parent.parent
FIXTURE = Path(__file__).with_name("inspect_tasks_fixture.py")
ECHO = f"{FIXTURE}@echo"
HELD_OUT = [[1, 200, 300, 400, 500], [1, 600, 700, 800]]
CHATS = [
    {
        "messages": [
            {"role": "user", "content": f"Code {i}?"},
            {"role": "assistant", "content": f"The code is {7 * i + 3}."},
        ]
    }
    for i in range(8)
]
SFT = dict(train_data=CHATS, batch_size=4, learning_rate=3e-3, save_every=2, run_name="watched")
WATCH = [
    "run=bios://watched",
    f"tasks={ECHO}",
    "evaluator_builders=test_watch:heldout",
    "limit=2",
    "max_tokens=4",
]


def heldout() -> NLLEvaluator:
    """The builder the watcher imports as test_watch:heldout."""
    return NLLEvaluator(HELD_OUT, name="heldout")


@pytest.fixture(autouse=True)
def _restore_terminal():
    with preserved_terminal():
        yield


@pytest.fixture
def root(tmp_path, monkeypatch):
    monkeypatch.setenv("BIOS_CHECKPOINT_ROOT", str(tmp_path / "runs"))
    return tmp_path / "runs"


def watched_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """The watcher's TensorBoard scalars, every event file of `<run>/watch` together."""
    events = EventAccumulator(str(run_dir / "watch"), size_guidance={"scalars": 0})
    events.Reload()
    return {
        tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]
    }


def test_the_watcher_evaluates_each_checkpoint_once_and_follows_a_live_run(tokenizer, root, capsys):
    train(SFTConfig(steps=4, **SFT), model=make_tiny_model(tokenizer), tokenizer=tokenizer)
    run_dir = root / "watched"
    checkpoints = run_dir / "checkpoints"
    # a checkpoint still being written: a hidden staging directory, complete-looking inside
    staging = checkpoints / ".step_000006.staging-host-1-abcd"
    staging.mkdir()
    (staging / "bios_checkpoint.json").write_text(
        (checkpoints / "step_000004" / "bios_checkpoint.json").read_text()
    )

    assert main([*WATCH, "once=true"]) == 0
    out = capsys.readouterr().out
    assert out.count("evaluating") == 2
    assert out.index("step 2: evaluating") < out.index("step 4: evaluating")
    assert not (staging / "evals").exists()

    logged = watched_scalars(run_dir)
    for step in (2, 4):
        evals = checkpoints / f"step_{step:06d}" / "evals"
        echo = json.loads((evals / "echo.json").read_text())
        assert echo["status"] == "success" and echo["step"] == step
        for key, value in echo["metrics"].items():
            assert (step, pytest.approx(value)) in logged[f"eval/{key}"]
        nll = json.loads((evals / "heldout.json").read_text())
        assert nll["step"] == step and nll["failures"] == []
        # the value is the checkpoint's own: the evaluator on the reloaded weights gives it
        model, _ = load_checkpoint(checkpoints / f"step_{step:06d}")
        again = run_sync(heldout()(TrainingClient.from_module(model)))
        assert nll["metrics"]["heldout/loss"] == pytest.approx(again["loss"], rel=1e-6)
        for key, value in nll["metrics"].items():  # keyed as the task files are
            assert (step, pytest.approx(value)) in logged[f"eval/{key}"]
        assert (step, pytest.approx(again["loss"], rel=1e-6)) in logged["eval/heldout/loss"]
    assert [step for step, _ in logged["eval/heldout/loss"]] == [2, 4]
    assert [step for step, _ in logged["eval/echo/match/accuracy"]] == [2, 4]

    # a second pass finds nothing new
    written = {p: p.stat().st_mtime_ns for p in checkpoints.glob("*/evals/*.json")}
    assert main([*WATCH, "once=true"]) == 0
    assert "evaluating" not in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in checkpoints.glob("*/evals/*.json")} == written
    assert watched_scalars(run_dir) == logged

    # following: a watcher in another process, started before the run goes on, evaluates
    # the new checkpoints and stops at the final one (until_step = the run's steps)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), str(REPO)])}
    follower = subprocess.Popen(
        [sys.executable, "-m", "bios_callbacks.eval.watch", *WATCH, "until_step=8", "poll_s=1"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        train(SFTConfig(steps=8, resume_from="bios://watched/step_000004", **SFT))
        output, _ = follower.communicate(timeout=600)  # a hang guard, not a timing check
    finally:
        follower.kill()
    assert follower.returncode == 0, output[-3000:]
    assert "step 6: evaluating" in output and "step 8: evaluating" in output
    assert "step 2: evaluating" not in output and "step 4: evaluating" not in output
    logged = watched_scalars(run_dir)
    assert [step for step, _ in logged["eval/heldout/loss"]] == [2, 4, 6, 8], output[-6000:]
    assert [step for step, _ in logged["eval/echo/match/accuracy"]] == [2, 4, 6, 8], output[-6000:]
    assert not (staging / "evals").exists()


class Broken(TrainingClientEvaluator):
    name = "broken"

    async def __call__(self, training_client):
        raise ValueError("grader exploded")


def broken() -> Broken:
    """A builder whose evaluator raises (test_watch:broken)."""
    return Broken()


def save_step_3(root: Path, model, tokenizer) -> Path:
    """A run `one` with one checkpoint, of step 3; returns the checkpoint's evals/ folder."""
    from bios_callbacks.checkpoints import save_checkpoint

    checkpoint = root / "one" / "checkpoints" / "step_000003"
    save_checkpoint(
        checkpoint,
        model,
        tokenizer,
        base_model="HuggingFaceTB/SmolLM2-135M-Instruct",
        renderer_name="chatml",
        step=3,
    )
    return checkpoint / "evals"


def test_a_failing_evaluator_is_recorded_once_and_the_watcher_exits_1(
    tiny_model, tokenizer, root, capsys
):
    save_step_3(root, tiny_model, tokenizer)
    argv = ["run=bios://one", "evaluator_builders=test_watch:broken,test_watch:heldout"]
    assert main([*argv, "once=true"]) == 1
    captured = capsys.readouterr()
    assert "evaluator 'broken' failed (exception): ValueError('grader exploded')" in captured.err
    evals = root / "one" / "checkpoints" / "step_000003" / "evals"
    assert json.loads((evals / "broken.json").read_text())["failures"][0]["kind"] == "exception"
    logged = watched_scalars(root / "one")
    assert [step for step, _ in logged["eval/heldout/loss"]] == [3]
    assert not any(tag.startswith("eval/broken/") for tag in logged)

    # recorded, not retried; following with nothing new stops after idle_timeout_s
    assert main([*argv, "poll_s=0.1", "idle_timeout_s=0.3"]) == 0
    out = capsys.readouterr().out
    assert "evaluating" not in out and "no new checkpoint for 0.3s; stopping" in out


# builders of the watched task, imported by the watcher as test_watch:echo_builder/two_tasks
echo_builder = InspectEvaluatorBuilder(tasks=[ECHO], renderer_name="chatml", limit=2, max_tokens=4)
two_tasks = InspectEvaluatorBuilder(
    tasks=[ECHO, f"{FIXTURE}@partly_broken"], renderer_name="chatml", limit=2, max_tokens=4
)


def test_builders_of_a_watched_task_get_their_own_files_and_metrics(
    tiny_model, tokenizer, root, capsys
):
    evals = save_step_3(root, tiny_model, tokenizer)
    builders = "evaluator_builders=test_watch:echo_builder,test_watch:two_tasks"
    argv = ["run=bios://one", f"tasks={ECHO}", builders, "limit=2", "max_tokens=4"]
    assert main([*argv, "once=true"]) == 0
    assert f"({ECHO}, echo_2, echo_3+partly_broken)" in capsys.readouterr().out

    files = {path.stem: json.loads(path.read_text()) for path in evals.glob("*.json")}
    assert sorted(files) == ["echo", "echo_2", "echo_3+partly_broken"]
    assert files["echo"]["status"] == "success"  # the task's, as run_inspect_evals writes it
    assert files["echo_2"]["metrics"]["echo_2/match/scored"] == 2
    assert files["echo_3+partly_broken"]["metrics"]["echo_3/match/scored"] == 2
    logged = watched_scalars(root / "one")
    for name in ("echo", "echo_2", "echo_3"):
        assert [step for step, _ in logged[f"eval/{name}/match/accuracy"]] == [3], name
    assert [step for step, _ in logged["eval/partly_broken/fails_on_sample_one/accuracy"]] == [3]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run=bios://x", f"tasks={ECHO},{ECHO}"], "are the same task name, so both would write"),
        (["tasks=a.py@t"], "Missing run=..."),
        (["run=bios://x"], "Nothing to evaluate"),
        (["run=bios://x/step_000002", "tasks=a.py@t"], "not a checkpoint"),
        (["run=bios://x", "tasks=a.py@t", "limit=0"], "limit=0: expected an integer >= 1"),
        (["run=bios://x", "tasks=a.py@t", "poll_s=0"], "poll_s=0.0: expected seconds > 0"),
        (["run=bios://x", "tasks=a.py@t", "once=maybe"], "once=maybe: expected true or false"),
        (["run=bios://x", "taks=a.py@t"], "Unknown WatchArgs key(s) ['taks']"),
        (["run=bios://nowhere", "tasks=a.py@t", "once=true"], "there is no run directory"),
        (["run=bios://x", "evaluator_builders=no_module_here:b"], "Cannot import"),
        (["run=bios://x", "tasks=a.py@t", "base_url=localhost:8000"], "expected an http(s) URL"),
    ],
)
def test_bad_arguments_are_one_error_line_and_exit_2(root, capsys, argv, message):
    (root / "x").mkdir(parents=True)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err.splitlines()[0]


# -- sampling on a server: the real llama-server, serving a checkpoint's weights ---------------

PROMPT = "Hello there, how are you?"
SERVED_REPLIES: dict[int, list[int]] = {}  # step -> the greedy tokens the evaluator got


class Replies(SamplingClientEvaluator):
    """Samples PROMPT greedily and keeps the tokens (test_watch:replies)."""

    name = "replies"

    def set_run_context(self, *, log_dir=None, step=None):
        self.step = step

    async def __call__(self, sampling_client):
        prompt = ModelInput.from_ints(sampling_client.tokenizer.encode(PROMPT))
        params = SamplingParams(max_tokens=8, temperature=0.0)
        result = await sampling_client.sample_async(prompt, 1, params)
        SERVED_REPLIES[self.step] = result.sequences[0].tokens
        return {"tokens": float(len(result.sequences[0].tokens))}


def replies() -> Replies:
    return Replies()


def greedy_reply(model, tokenizer) -> list[int]:
    params = SamplingParams(max_tokens=8, temperature=0.0)
    with SamplingClient.from_module(model, tokenizer) as client:
        return client.sample(tokenizer.encode(PROMPT), 1, params).sequences[0].tokens


@pytest.mark.serving
@pytest.mark.skipif(llama_server_command() is None, reason=no_server_message())
def test_with_base_url_the_watcher_samples_each_checkpoint_on_the_server(tokenizer, root, capsys):
    pytest.importorskip("sentencepiece", reason="the GGUF converter needs the serve extra")
    from bios_callbacks.checkpoints import save_checkpoint
    from bios_callbacks.serving.gguf_convert import checkpoint_to_gguf

    # The server runs weights A under the name of a checkpoint holding weights B: what the
    # watcher reports is A's, so its sampling went to the server, not to weights loaded here.
    served, local = make_tiny_model(tokenizer, seed=0), make_tiny_model(tokenizer, seed=1)
    assert greedy_reply(served, tokenizer) != greedy_reply(local, tokenizer)
    saved = dict(base_model="HuggingFaceTB/SmolLM2-135M-Instruct", renderer_name="chatml", step=2)
    weights_a = save_checkpoint(root.parent / "a", served, tokenizer, **saved)
    checkpoint = save_checkpoint(root / "served" / "checkpoints" / "step_000002", local, tokenizer,
                                 **saved)  # fmt: skip
    gguf = checkpoint_to_gguf(weights_a, outtype="f32")  # exact weights
    argv = ["run=bios://served", f"tasks={ECHO}", "evaluator_builders=test_watch:replies",
            "limit=2", "max_tokens=4", "once=true"]  # fmt: skip
    try:
        alias = str(checkpoint.resolve())  # the name `serving serve --model <checkpoint>` gives
        with LlamaServer(gguf, alias=alias, parallel=2, ctx_per_slot=256, threads=1) as server:
            assert main([*argv, f"base_url={server.base_url}"]) == 0
    finally:
        gguf.unlink()
    assert SERVED_REPLIES[2] == greedy_reply(served, tokenizer)
    evals = checkpoint / "evals"
    assert json.loads((evals / "echo.json").read_text())["status"] == "success"
    assert json.loads((evals / "replies.json").read_text())["failures"] == []
    logged = watched_scalars(root / "served")
    assert [step for step, _ in logged["eval/replies/tokens"]] == [2]
    assert [step for step, _ in logged["eval/echo/match/accuracy"]] == [2]
    assert "step 2: evaluating" in capsys.readouterr().out
