"""Checkpoint save/load round trips, bios:// resolution and bad checkpoints."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from bios_callbacks.checkpoints import (
    checkpoint_dir,
    read_checkpoint_metadata,
    resolve_model_path,
    save_checkpoint,
)
from bios_callbacks.models import EMBEDDED_MODEL, load_model
from bios_callbacks.tokenizer_utils import get_tokenizer


def logits(model, tokenizer, text="The quick brown fox"):
    ids = torch.tensor([tokenizer.encode(text)])
    with torch.no_grad():
        return model(ids).logits


def save_tiny(path, model, tokenizer, **overrides):
    kwargs = dict(base_model=EMBEDDED_MODEL, renderer_name="chatml", step=7)
    kwargs.update(overrides)
    return save_checkpoint(path, model, tokenizer, **kwargs)


def test_saved_checkpoint_reloads_with_identical_logits_and_metadata(
    tiny_model, tokenizer, tmp_path
):
    path = save_tiny(tmp_path / "ckpt", tiny_model, tokenizer, eval_results={"acc": 0.5})

    model, loaded_tokenizer = load_model(str(path))

    assert torch.equal(logits(model, tokenizer), logits(tiny_model, tokenizer))
    assert not model.training
    assert loaded_tokenizer.encode("<|im_start|>user") == tokenizer.encode("<|im_start|>user")
    assert get_tokenizer(str(path)).chat_template == tokenizer.chat_template
    metadata = read_checkpoint_metadata(path)
    assert (metadata.base_model, metadata.renderer_name, metadata.step) == (
        EMBEDDED_MODEL,
        "chatml",
        7,
    )
    assert metadata.eval_results == {"acc": 0.5}
    assert metadata.weights == "full"
    assert metadata.created and metadata.library_version


def test_bios_uri_resolves_under_checkpoint_root(tiny_model, tokenizer, tmp_path, monkeypatch):
    monkeypatch.setenv("BIOS_CHECKPOINT_ROOT", str(tmp_path / "root"))

    path = save_tiny("bios://my-run/step-7", tiny_model, tokenizer)

    assert path == tmp_path / "root" / "my-run" / "checkpoints" / "step-7"
    assert resolve_model_path("bios://my-run/step-7") == path
    model, _ = load_model("bios://my-run/step-7")
    assert torch.equal(logits(model, tokenizer), logits(tiny_model, tokenizer))


def test_checkpoint_root_defaults_to_runs(tmp_path, monkeypatch):
    monkeypatch.delenv("BIOS_CHECKPOINT_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    assert checkpoint_dir("bios://exp/final").resolve() == tmp_path / "runs/exp/checkpoints/final"


def test_resaving_a_checkpoint_replaces_it_cleanly(tiny_model, tokenizer, tmp_path):
    save_tiny(tmp_path / "ckpt", tiny_model, tokenizer, step=1)
    save_tiny(tmp_path / "ckpt", tiny_model, tokenizer, step=2)

    assert read_checkpoint_metadata(tmp_path / "ckpt").step == 2
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_lora_checkpoint_saves_the_adapter_and_reapplies_it_on_the_base(
    tiny_model, tokenizer, tmp_path
):
    peft = pytest.importorskip("peft")
    base_dir = tmp_path / "base"
    tiny_model.save_pretrained(base_dir)
    tokenizer.save_pretrained(base_dir)
    base_logits = logits(tiny_model, tokenizer)
    config = peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    lora_model = peft.get_peft_model(tiny_model, config)
    lora_logits = logits(lora_model, tokenizer)

    path = save_tiny(tmp_path / "lora", lora_model, tokenizer, base_model=str(base_dir))

    assert (path / "adapter_config.json").is_file()
    assert not (path / "model.safetensors").exists()
    assert read_checkpoint_metadata(path).weights == "lora"
    loaded, _ = load_model(str(path))
    assert isinstance(loaded, peft.PeftModel)
    assert torch.equal(logits(loaded, tokenizer), lora_logits)
    assert not torch.equal(lora_logits, base_logits)


def test_missing_checkpoint_names_the_path_and_the_root(tmp_path, monkeypatch):
    monkeypatch.setenv("BIOS_CHECKPOINT_ROOT", str(tmp_path))
    expected = tmp_path / "no-run" / "checkpoints" / "step-1"
    with pytest.raises(FileNotFoundError) as error:
        load_model("bios://no-run/step-1")
    message = str(error.value)
    assert str(expected) in message
    assert "BIOS_CHECKPOINT_ROOT" in message


def test_directory_without_metadata_is_not_a_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"bios_checkpoint\.json"):
        resolve_model_path(tmp_path)


@pytest.mark.parametrize(
    "uri",
    [
        "bios://only-run",
        "bios://a/b/c",
        "bios://run/../x",
        "bios://run/.",
        "bios://run/..",
        "bios://./x",
        "bios://../x",
    ],
)
def test_malformed_uri_is_rejected_with_the_expected_form(uri):
    with pytest.raises(ValueError, match=r"bios://<run>/<name>") as error:
        checkpoint_dir(uri)
    assert repr(uri) in str(error.value)


@pytest.mark.parametrize(
    ("content", "complaint"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "JSON object"),
        (json.dumps({"base_model": "m", "step": 1}), "missing renderer_name"),
        (json.dumps({"base_model": "m", "renderer_name": "chatml", "step": -3}), "step=-3"),
        (
            json.dumps({"base_model": "m", "renderer_name": "chatml", "step": 1, "weights": "x"}),
            "weights='x'",
        ),
    ],
)
def test_malformed_metadata_names_the_file_and_the_problem(tmp_path, content, complaint):
    (tmp_path / "bios_checkpoint.json").write_text(content)
    with pytest.raises(ValueError, match=complaint) as error:
        read_checkpoint_metadata(tmp_path)
    assert str(tmp_path / "bios_checkpoint.json") in str(error.value)


def test_negative_step_is_rejected(tiny_model, tokenizer, tmp_path):
    with pytest.raises(ValueError, match="step=-1"):
        save_tiny(tmp_path / "ckpt", tiny_model, tokenizer, step=-1)
    assert not (tmp_path / "ckpt").exists()


@pytest.mark.parametrize("name", [".", ".."])
def test_saving_to_dot_names_of_a_run_is_refused_and_its_checkpoints_survive(
    tiny_model, tokenizer, tmp_path, monkeypatch, name
):
    monkeypatch.setenv("BIOS_CHECKPOINT_ROOT", str(tmp_path))
    kept = save_tiny("bios://run/step-1", tiny_model, tokenizer)

    with pytest.raises(ValueError, match=rf"'bios://run/{name}'.*bios://<run>/<name>"):
        save_tiny(f"bios://run/{name}", tiny_model, tokenizer)

    assert [p.name for p in kept.parent.iterdir()] == ["step-1"]
    model, _ = load_model("bios://run/step-1")
    assert torch.equal(logits(model, tokenizer), logits(tiny_model, tokenizer))


def test_uri_whose_name_links_outside_the_run_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("BIOS_CHECKPOINT_ROOT", str(tmp_path / "root"))
    checkpoints = tmp_path / "root" / "run" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    (checkpoints / "escape").symlink_to(tmp_path / "elsewhere")

    with pytest.raises(ValueError, match=r"'bios://run/escape'.*outside the run"):
        checkpoint_dir("bios://run/escape")


@pytest.mark.parametrize("relative", [".", "ckpt/..", ".."])
def test_saving_to_a_path_without_a_name_of_its_own_is_refused(
    tiny_model, tokenizer, tmp_path, monkeypatch, relative
):
    work = tmp_path / "work"
    (work / "ckpt").mkdir(parents=True)
    (work / "notes.txt").write_text("mine")
    monkeypatch.chdir(work)

    with pytest.raises(ValueError, match=rf"{relative!r} does not name a directory"):
        save_tiny(relative, tiny_model, tokenizer)

    assert (work / "notes.txt").read_text() == "mine"


def test_saving_onto_a_folder_that_is_not_a_checkpoint_keeps_its_files(
    tiny_model, tokenizer, tmp_path
):
    folder = tmp_path / "my-folder"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")

    with pytest.raises(FileExistsError, match=r"my-folder.*not a checkpoint.*notes\.txt"):
        save_tiny(folder, tiny_model, tokenizer)

    assert [p.name for p in folder.iterdir()] == ["notes.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["my-folder"]  # no staging left behind


def test_saving_onto_a_file_or_link_is_refused(tiny_model, tokenizer, tmp_path):
    (tmp_path / "file").write_text("mine")
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")

    with pytest.raises(FileExistsError, match="is a file"):
        save_tiny(tmp_path / "file", tiny_model, tokenizer)
    with pytest.raises(FileExistsError, match="symbolic link"):
        save_tiny(tmp_path / "link", tiny_model, tokenizer)

    assert (tmp_path / "file").read_text() == "mine"
    assert (tmp_path / "link").is_symlink()


def test_an_empty_directory_becomes_the_checkpoint(tiny_model, tokenizer, tmp_path):
    (tmp_path / "ckpt").mkdir()
    path = save_tiny(tmp_path / "ckpt", tiny_model, tokenizer)
    assert read_checkpoint_metadata(path).step == 7


def test_the_old_checkpoint_stays_whole_until_the_new_one_is_complete(
    tiny_model, tokenizer, tmp_path
):
    path = save_tiny(tmp_path / "ckpt", tiny_model, tokenizer, step=1)
    old_logits = logits(tiny_model, tokenizer)
    seen_while_writing = []

    def fail_midway(staging: Path) -> None:
        seen_while_writing.append(read_checkpoint_metadata(path).step)
        raise OSError("disk full")

    with torch.no_grad():
        tiny_model.lm_head.weight.mul_(2)
    with pytest.raises(OSError, match="disk full"):
        save_tiny(path, tiny_model, tokenizer, step=2, extra_files=fail_midway)

    assert seen_while_writing == [1]
    assert read_checkpoint_metadata(path).step == 1
    reloaded, _ = load_model(str(path))
    assert torch.equal(logits(reloaded, tokenizer), old_logits)
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


KILLED_SAVE = """
import os, signal, sys
sys.path.insert(0, "tests")
from tiny import make_tiny_model
from bios_callbacks.checkpoints import save_checkpoint
from bios_callbacks.models import EMBEDDED_MODEL
from bios_callbacks.tokenizer_utils import get_tokenizer

tokenizer = get_tokenizer(EMBEDDED_MODEL)
save_checkpoint(sys.argv[1], make_tiny_model(tokenizer, seed=1), tokenizer,
    base_model=EMBEDDED_MODEL, renderer_name="chatml", step=99,
    extra_files=lambda staging: os.kill(os.getpid(), signal.SIGKILL))
"""


def test_a_save_killed_midway_leaves_the_old_checkpoint_and_its_staging_is_cleaned_up(
    tiny_model, tokenizer, tmp_path, monkeypatch
):
    monkeypatch.setenv("BIOS_CHECKPOINT_ROOT", str(tmp_path))
    path = save_tiny("bios://run/step-1", tiny_model, tokenizer, step=1)

    killed = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(KILLED_SAVE), "bios://run/step-1"],
        cwd=Path(__file__).parent.parent,
    )

    assert killed.returncode == -signal.SIGKILL
    leftovers = [p for p in path.parent.iterdir() if p != path]
    assert len(leftovers) == 1 and leftovers[0].name.startswith(".step-1.staging-")
    assert read_checkpoint_metadata("bios://run/step-1").step == 1
    model, _ = load_model("bios://run/step-1")
    assert torch.equal(logits(model, tokenizer), logits(tiny_model, tokenizer))

    save_tiny("bios://run/step-2", tiny_model, tokenizer, step=2)
    assert sorted(p.name for p in path.parent.iterdir()) == ["step-1", "step-2"]


@pytest.mark.parametrize(
    ("umask", "file_mode", "dir_mode"),
    [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750)],
    ids=["umask-022", "umask-027"],
)
def test_checkpoint_files_are_readable_like_the_directory(
    tiny_model, tokenizer, tmp_path, umask, file_mode, dir_mode
):
    peft = pytest.importorskip("peft")
    previous = os.umask(umask)
    try:
        full = save_tiny(tmp_path / "full", tiny_model, tokenizer)
        config = peft.LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights=False)
        lora = save_tiny(
            tmp_path / "lora",
            peft.get_peft_model(tiny_model, config),
            tokenizer,
            base_model=str(full),
        )
    finally:
        os.umask(previous)

    assert (full / "model.safetensors").is_file()
    assert (lora / "adapter_model.safetensors").is_file()
    for checkpoint in (full, lora):
        assert checkpoint.stat().st_mode & 0o777 == dir_mode
        modes = {p.name: p.stat().st_mode & 0o777 for p in checkpoint.iterdir()}
        assert modes == dict.fromkeys(modes, file_mode)
