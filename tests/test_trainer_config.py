"""Trainer configs, the key=value command line and training-data checks (no model needed)."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys

import pytest
import torch

from trainers import data
from trainers.config import RLConfig, SFTConfig

CHAT = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}


def eval_builder():
    """A stand-in evaluator builder (configs only check that builders are callable)."""
    return object()


def test_guide_keys_are_accepted_and_unknown_keys_list_valid_ones():
    cfg = SFTConfig.from_dict(
        {
            "train_data": [CHAT],
            "evaluator_builders": [eval_builder],
            "eval_every": 100,
            "infrequent_evaluator_builders": [eval_builder],
            "infrequent_eval_every": 500,
            "run_name": "t",
        }
    )
    assert (cfg.eval_every, cfg.infrequent_eval_every) == (100, 500)
    assert cfg.log_dir.endswith("t")
    with pytest.raises(ValueError, match=r"Unknown SFTConfig key\(s\) \['eval_evry'\].*eval_every"):
        SFTConfig.from_dict({"train_data": [CHAT], "eval_evry": 5})


def test_cli_words_become_typed_values_and_builders_import(monkeypatch):
    monkeypatch.setenv("BIOS_CHECKPOINT_ROOT", "/tmp/bios-root")
    cfg = SFTConfig.from_cli(
        [
            "train_data=train.jsonl",
            "steps=7",
            "learning_rate=3e-4",
            "renderer_name=none",
            "evaluator_builders=test_trainer_config:eval_builder",
            "run_name=cli",
        ]
    )
    assert cfg.steps == 7 and cfg.learning_rate == 3e-4 and cfg.renderer_name is None
    assert [b.__name__ for b in cfg.evaluator_builders] == ["eval_builder"]
    assert cfg.log_dir == "/tmp/bios-root/cli"
    with pytest.raises(ValueError, match="not key=value"):
        SFTConfig.from_cli(["steps"])


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("eval_every", -5, "eval_every=-5: expected an integer >= 0"),
        ("save_every", -1, "save_every=-1"),
        ("infrequent_eval_every", 2.5, "infrequent_eval_every=2.5"),
        ("steps", 0, "steps=0: expected an integer >= 1"),
        ("learning_rate", -1e-3, "learning_rate=-0.001"),
        ("evaluator_builders", [3], "not callable"),
        ("evaluator_builders", ["no_such_module:x"], "Cannot import 'no_such_module:x'"),
        ("snapshot_device", "cpu", "snapshot_device='cpu' only applies to background rounds"),
        ("logger", "comet", r"logger='comet': expected one of \['tensorboard', 'wandb'"),
    ],
)
def test_bad_values_name_the_key_and_value(key, value, message):
    with pytest.raises((ValueError, TypeError), match=message):
        SFTConfig(train_data=[CHAT], run_name="t", **{key: value})


def test_background_rounds_and_the_logger_are_config_keys():
    words = ["async_infrequent=true", "snapshot_device=cpu", "logger=csv"]
    cfg = SFTConfig.from_dict({"train_data": [CHAT], "run_name": "t"} | SFTConfig.parse_cli(words))
    assert (cfg.async_infrequent, cfg.snapshot_device, cfg.logger) == (True, "cpu", "csv")
    assert SFTConfig(train_data=[CHAT], run_name="t").logger == "tensorboard"
    with pytest.raises(ValueError, match="snapshot_device='gpu0': expected a torch device"):
        SFTConfig(train_data=[CHAT], run_name="t", async_infrequent=True, snapshot_device="gpu0")


def test_test_every_is_deprecated_and_becomes_eval_every():
    assert (
        SFTConfig(train_data=[CHAT], run_name="t").eval_every == 10
    )  # the test loss's old default
    with pytest.warns(FutureWarning, match=r"test_every is deprecated.*Use eval_every=4 instead"):
        assert SFTConfig(train_data=[CHAT], run_name="t", test_every=4).eval_every == 4
    with pytest.warns(FutureWarning):  # 0 tested at the start and the end only: so does `steps`
        assert SFTConfig(train_data=[CHAT], run_name="t", steps=6, test_every=0).eval_every == 6
    with pytest.raises(ValueError, match=r"test_every=4 and eval_every=5: .*Set only eval_every"):
        SFTConfig(train_data=[CHAT], run_name="t", test_every=4, eval_every=5)


def test_rl_config_needs_a_reward_and_a_real_group():
    with pytest.raises(ValueError, match="reward_fn=None"):
        RLConfig(train_data=[{"prompt": "1+1="}], run_name="t")
    with pytest.raises(ValueError, match="group_size=1"):
        RLConfig(train_data=[{"prompt": "x"}], reward_fn=len, group_size=1, run_name="t")
    with pytest.raises(ValueError, match="train_data is missing"):
        SFTConfig(run_name="t")


def test_jsonl_errors_point_at_the_line(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps(CHAT) + "\n\n" + '{"messages": [}\n')
    with pytest.raises(ValueError, match=r"train.jsonl:3 is not valid JSON"):
        data.load_conversations(path, what="train_data")
    path.write_text(json.dumps({"messages": [{"role": "bot", "content": "x"}]}) + "\n")
    with pytest.raises(ValueError, match=r"train.jsonl:1: message 0 has role 'bot'; valid roles"):
        data.load_conversations(path, what="train_data")
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "x"}]}) + "\n")
    with pytest.raises(ValueError, match="no assistant message"):
        data.load_conversations(path, what="train_data")


def test_missing_and_empty_data(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no such file .*nope\.jsonl"):
        data.load_conversations(tmp_path / "nope.jsonl", what="train_data")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(ValueError, match="train_data is empty"):
        data.load_conversations(empty, what="train_data")
    with pytest.raises(ValueError, match="test_data is empty"):
        data.load_conversations([], what="test_data")


def test_overlapping_test_split_warns():
    other = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}
    train = data.load_conversations([CHAT, other], what="train_data")
    test = data.load_conversations([CHAT], what="test_data")
    with pytest.warns(UserWarning, match="1 of 1 test conversations also occur in train_data"):
        assert data.warn_on_overlap(train, test) == 1


def test_prompts_accept_a_bare_prompt_and_keep_extra_keys():
    (prompt,) = data.load_prompts([{"prompt": "2+2=", "answer": "4"}], what="train_data")
    assert prompt["messages"] == [{"role": "user", "content": "2+2="}]
    assert prompt["answer"] == "4"
    with pytest.raises(ValueError, match=r"train_data\[0\]: needs 'messages' or a string 'prompt'"):
        data.load_prompts([{"question": "x"}], what="train_data")


def test_cli_values_follow_the_field_types():
    values = SFTConfig.parse_cli(
        ["run_name=007", "learning_rate=1e-3", "steps=20", "renderer_name=none", "seed=7"]
    )
    assert values == {
        "run_name": "007",
        "learning_rate": 1e-3,
        "steps": 20,
        "renderer_name": None,
        "seed": 7,
    }
    assert RLConfig.parse_cli(["train_data=007", "temperature=2"]) == {
        "train_data": "007",
        "temperature": 2.0,
    }
    with pytest.raises(ValueError, match=r"^learning_rate=abc: expected a number"):
        SFTConfig.parse_cli(["learning_rate=abc"])
    with pytest.raises(ValueError, match=r"^learning_rate=nan: expected a number"):
        SFTConfig.parse_cli(["learning_rate=nan"])
    with pytest.raises(ValueError, match=r"^steps=2.5: expected an integer"):
        SFTConfig.parse_cli(["steps=2.5"])


@dataclasses.dataclass
class PackedSFTConfig(SFTConfig):
    """A config with a yes/no setting, as a user's own trainer might add."""

    pack: bool = False


def test_cli_reads_yes_no_settings_as_booleans():
    assert PackedSFTConfig.parse_cli(["pack=true"]) == {"pack": True}
    assert PackedSFTConfig.parse_cli(["pack=False"]) == {"pack": False}
    with pytest.raises(ValueError, match="pack=maybe: expected true or false"):
        PackedSFTConfig.parse_cli(["pack=maybe"])


def test_default_run_names_are_unique_and_start_with_the_start_time():
    names = [SFTConfig(train_data=[CHAT]).run_name for _ in range(20)]
    assert len(set(names)) == 20  # all made within the same second or two
    assert all(re.fullmatch(r"sft-\d{8}-\d{6}-[0-9a-f]{6}", name) for name in names), names
    assert RLConfig(train_data=[{"prompt": "x"}], reward_fn=len).run_name.startswith("rl-")


def test_unknown_renderer_is_rejected_with_the_valid_names():
    with pytest.raises(ValueError, match=r"renderer_name='chatm': expected one of \[.*'chatml'"):
        SFTConfig(train_data=[CHAT], renderer_name="chatm", run_name="t")


@pytest.mark.parametrize(
    ("trainer", "words", "message"),
    [
        ("sft", ["learning_rate=abc"], "error: learning_rate=abc: expected a number"),
        ("sft", ["batchsize=4"], "error: Unknown SFTConfig key(s) ['batchsize']. Valid keys:"),
        ("rl", ["reward_fn=len", "group_siz=4"], "error: Unknown RLConfig key(s) ['group_siz']"),
        ("sft", ["train_data=missing.jsonl"], "error: train_data: no such file 'missing.jsonl'"),
        ("sft", ["renderer_name=chatm"], "error: renderer_name='chatm': expected one of"),
        ("sft", ["model_name=./no/such/model"], "error: Model path './no/such/model' is not a"),
    ],
    ids=[
        "bad-number",
        "unknown-key",
        "rl-unknown-key",
        "missing-data",
        "unknown-renderer",
        "unknown-model-path",
    ],
)
def test_command_line_user_errors_are_one_line_and_status_2(tmp_path, trainer, words, message):
    (tmp_path / "train.jsonl").write_text(json.dumps(CHAT) + "\n")
    result = subprocess.run(
        [sys.executable, "-m", f"trainers.{trainer}", "train_data=train.jsonl", *words],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env={**os.environ, "BIOS_CHECKPOINT_ROOT": str(tmp_path / "runs")},
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.startswith(message), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "runs").exists()


def test_default_run_dir_is_where_bios_uris_look(tmp_path, monkeypatch):
    from bios_callbacks.checkpoints import checkpoint_dir
    from trainers.checkpointing import checkpoint_uri

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("BIOS_CHECKPOINT_ROOT", "~/ckroot")
    cfg = SFTConfig(run_name="r", train_data=[{"messages": [{"role": "user", "content": "hi"}]}])
    assert cfg.run_dir == tmp_path / "ckroot" / "r"
    saved = cfg.run_dir / "checkpoints" / "step_000001"
    assert checkpoint_uri(saved) == "bios://r/step_000001"
    assert checkpoint_dir("bios://r/step_000001") == saved


@pytest.mark.parametrize(
    ("make_config", "settings", "advice"),
    [
        (
            lambda: SFTConfig(train_data=[CHAT], batch_size=64, max_length=4096, run_name="t"),
            "batch_size=64, max_length=4096",
            "Lower batch_size or max_length",
        ),
        (
            lambda: RLConfig(
                train_data=[{"prompt": "x"}],
                reward_fn=len,
                batch_size=16,
                group_size=32,
                max_tokens=512,
                run_name="t",
            ),
            "batch_size=16, group_size=32, max_tokens=512",
            "Lower batch_size, group_size or max_tokens",
        ),
    ],
    ids=["sft", "rl"],
)
def test_a_batch_too_large_for_memory_names_the_settings_to_lower(make_config, settings, advice):
    from trainers.policy import explain_out_of_memory

    try:
        torch.empty(2**47, dtype=torch.uint8)  # a real allocation failure: 128 TiB
    except RuntimeError as exc:
        error = explain_out_of_memory(exc, make_config())
    else:
        pytest.skip("this machine can allocate 128 TiB")
    assert isinstance(error, MemoryError)
    assert settings in str(error)
    assert advice in str(error)
