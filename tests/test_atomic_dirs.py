"""atomic_directory on real files: publishing, losing a race, and what killed writers leave."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from bios_callbacks.models.atomic_dirs import STAGING_MARK, atomic_directory, is_staging_dir


def finished_pid() -> int:
    """The id of a process that has already exited."""
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(done.stdout)


def staging_name(target: str, pid: int, suffix: str = "") -> str:
    return f".{target}{STAGING_MARK}{socket.gethostname()}-{pid}-0123abcd{suffix}"


def test_replacing_swaps_in_the_new_directory_and_keeps_nothing_else(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")

    with atomic_directory(target, replace=True) as staging:
        assert is_staging_dir(staging) and staging.parent == tmp_path
        (staging / "new.txt").write_text("new")
        assert (target / "old.txt").read_text() == "old"  # untouched until the block ends

    assert [p.name for p in target.iterdir()] == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_without_replace_an_existing_directory_wins(tmp_path):
    target = tmp_path / "cache"
    target.mkdir()
    (target / "first.txt").write_text("first")

    with atomic_directory(target, replace=False) as staging:
        (staging / "second.txt").write_text("second")

    assert [p.name for p in target.iterdir()] == ["first.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["cache"]


def test_an_error_in_the_block_leaves_the_target_and_no_staging(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")

    with (
        pytest.raises(RuntimeError, match="writer failed"),
        atomic_directory(target, replace=True) as staging,
    ):
        (staging / "half.txt").write_text("half")
        raise RuntimeError("writer failed")

    assert [p.name for p in target.iterdir()] == ["old.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_staging_of_an_ended_process_is_removed_and_of_a_live_one_kept(tmp_path):
    dead = tmp_path / staging_name("a", finished_pid())
    dead.mkdir()
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as live_process:
        try:
            live = tmp_path / staging_name("b", live_process.pid)
            live.mkdir()

            with atomic_directory(tmp_path / "c", replace=True):
                pass

            assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["c", live.name])
        finally:
            live_process.kill()


def test_a_directory_retired_by_a_cut_short_swap_gets_its_name_back(tmp_path):
    # the state two renames leave when the process dies between them: old moved aside, new absent
    retired = tmp_path / staging_name("ckpt", finished_pid(), suffix="-old")
    retired.mkdir()
    (retired / "weights.bin").write_text("old weights")

    with atomic_directory(tmp_path / "other", replace=True):
        pass

    assert (tmp_path / "ckpt" / "weights.bin").read_text() == "old weights"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "other"]
