"""Directories that appear complete or not at all (checkpoints, the converted-model cache).

`atomic_directory(target)` yields a staging directory next to `target`; when the block ends
without an error, the staging directory takes `target`'s place by renames, so readers see the
old directory or the new one, never a mix or nothing. On Linux an existing `target` is swapped
out in one step (renameat2 RENAME_EXCHANGE); elsewhere by two renames in quick succession.

Staging directories are hidden siblings named `.<target>.staging-<host>-<pid>-<random>`;
`is_staging_dir` tells them apart, and those left by a killed process on this host are deleted
by the next `atomic_directory` in the same parent.

Example:
    >>> from pathlib import Path
    >>> with atomic_directory(Path("out/model"), replace=True) as staging:  # doctest: +SKIP
    ...     (staging / "weights.bin").write_bytes(data)
"""

from __future__ import annotations

import ctypes
import errno
import os
import secrets
import shutil
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

STAGING_MARK = ".staging-"
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_RETIRED = "-old"


def is_staging_dir(path: Path) -> bool:
    """True for a staging directory of `atomic_directory` (never a finished directory)."""
    return path.name.startswith(".") and STAGING_MARK in path.name


@contextmanager
def atomic_directory(target: Path, *, replace: bool) -> Iterator[Path]:
    """Yield an empty staging directory; on success, publish it as `target`.

    With `replace=True` an existing `target` is swapped out and deleted once the new one is in
    place; with `replace=False` an existing `target` wins and the staging directory is dropped
    (another process made the same directory first). Files in the staging directory are made
    readable by whoever can read the directory (the umask decides, as for any new directory),
    whatever mode the writer gave them. On an error the staging directory is removed.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_staging(target.parent)
    staging = target.with_name(
        f".{target.name}{STAGING_MARK}{_host()}-{os.getpid()}-{secrets.token_hex(4)}"
    )
    staging.mkdir()  # mode 0o777 minus the umask, unlike tempfile.mkdtemp's 0o700
    try:
        yield staging
        _share_like_directory(staging)
        if replace and target.exists():
            _swap(staging, target)
        else:
            try:
                staging.rename(target)
            except OSError:
                if replace or not target.is_dir():  # not merely another process being first
                    raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _host() -> str:
    return socket.gethostname().replace("/", "_")


def _remove_abandoned_staging(parent: Path) -> None:
    """Delete staging directories under `parent` whose process (on this host) has ended.

    An old directory retired by a swap that was cut short goes back to its name if nothing
    took its place.
    """
    prefix = f"{_host()}-"
    for path in parent.iterdir():
        name, _, owner = path.name.partition(STAGING_MARK)
        if not is_staging_dir(path) or not owner.startswith(prefix):
            continue
        pid = owner[len(prefix) :].partition("-")[0]
        if not pid.isdigit() or _process_alive(int(pid)):
            continue
        original = parent / name[1:]
        if owner.endswith(_RETIRED) and not original.exists():
            path.rename(original)
        else:
            shutil.rmtree(path, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    if os.name == "nt":  # os.kill would end the process there; keep its directories
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists but belongs to someone else
        return True
    return True


def _share_like_directory(root: Path) -> None:
    """Give every file under `root` the read/write bits of `root` (e.g. 0o755 -> 0o644)."""
    dir_mode = root.stat().st_mode & 0o777
    for folder, subfolders, files in os.walk(root):
        for name in subfolders:
            os.chmod(os.path.join(folder, name), dir_mode)
        for name in files:
            os.chmod(os.path.join(folder, name), dir_mode & 0o666)


def _swap(new: Path, target: Path) -> None:
    """Put `new` at `target` and delete what was there; `new`'s path is left empty."""
    if _exchange(new, target):
        shutil.rmtree(new)  # now the old directory
        return
    retired = new.with_name(f"{new.name}{_RETIRED}")  # a staging name: restored if killed
    target.rename(retired)
    new.rename(target)
    shutil.rmtree(retired, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one atomic step; False where the system cannot."""
    if not sys.platform.startswith("linux"):
        return False
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:  # C library older than glibc 2.28
        return False
    number, text = ctypes.c_int, ctypes.c_char_p
    renameat2.argtypes = [number, text, number, text, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):  # kernel or filesystem lacks it
        return False
    raise OSError(code, os.strerror(code), str(a), None, str(b))
