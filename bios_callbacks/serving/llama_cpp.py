"""llama.cpp's C++ server: find it, start it on a GGUF model (or build it once from source).

The C++ server batches concurrent requests over parallel slots (continuous batching), speaks
the OpenAI completions API with token-id prompts, and reports token ids with logprobs, which is
what `ServerSamplingClient` needs. `LlamaServer` runs the first of:

1. `$BIOS_LLAMA_SERVER`, a `llama-server` binary you name;
2. the cached native build, `$BIOS_CALLBACKS_CACHE/llama.cpp/<version>/bin/llama-server`
   (`make serve-build`: `build_llama_server()` downloads the `llama-cpp-python` sdist, whose
   bundled llama.cpp sources it builds with cmake, about 25 minutes on two cores, once);
3. `llama-server` on PATH;
4. the server embedded in the `xllamacpp` wheel (`pip install xllamacpp`, part of the `serve`
   and `dev` extras, so `make install` brings it), started through
   `python -m bios_callbacks.serving.xllamacpp_server` with the same flags.

Example:
    >>> from bios_callbacks.serving.llama_cpp import LlamaServer, find_llama_server
    >>> with LlamaServer() as server:            # doctest: +SKIP
    ...     print(server.base_url)               # the embedded model, 16 parallel slots
    http://127.0.0.1:41237/v1
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

from bios_callbacks.models import EMBEDDED_MODEL, cache_root, embedded_gguf_file
from bios_callbacks.serving.xllamacpp_server import SUPPORTED_FLAGS as XLLAMACPP_FLAGS

LLAMA_CPP_PYTHON_VERSION = "0.3.36"
"""The `llama-cpp-python` sdist whose bundled llama.cpp sources are built (tested version)."""
SERVER_ENV = "BIOS_LLAMA_SERVER"
"""Environment variable naming a `llama-server` binary to use instead of the cached build."""
XLLAMACPP_LAUNCHER = "bios_callbacks.serving.xllamacpp_server"
"""The module that runs xllamacpp's embedded server with `llama-server`'s flags."""
DEFAULT_PARALLEL = 16
"""Parallel slots: requests decoded together (continuous batching)."""
DEFAULT_CTX_PER_SLOT = 2048
"""Context (prompt + reply tokens) each slot holds."""

_CMAKE_FLAGS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=OFF",  # one self-contained binary
    "-DGGML_NATIVE=ON",  # tuned for this CPU (the cache is per machine)
    "-DLLAMA_BUILD_SERVER=ON",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_APP=OFF",
    "-DLLAMA_BUILD_UI=OFF",  # the web UI needs npm or a download; the API does not need it
    "-DLLAMA_USE_PREBUILT_UI=OFF",
    "-DLLAMA_OPENSSL=OFF",
)


def install_dir(version: str = LLAMA_CPP_PYTHON_VERSION) -> Path:
    """Where the build of `version` lives: `$BIOS_CALLBACKS_CACHE/llama.cpp/<version>`."""
    return cache_root() / "llama.cpp" / version


def find_llama_server(version: str = LLAMA_CPP_PYTHON_VERSION) -> Path | None:
    """The native `llama-server` binary: `$BIOS_LLAMA_SERVER`, else the cached build, else PATH
    (None when there is none; `llama_server_command()` then falls back to xllamacpp).

    Example:
        >>> path = find_llama_server()  # None until `make serve-build` has run
    """
    configured = os.environ.get(SERVER_ENV)
    if configured:
        path = Path(configured).expanduser()
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise FileNotFoundError(
                f"{SERVER_ENV}={configured!r} is not an executable file. Point it at a "
                "llama-server binary, or unset it to use the cached build or xllamacpp."
            )
        return path
    cached = install_dir(version) / "bin" / "llama-server"
    if cached.is_file():
        return cached
    on_path = shutil.which("llama-server")
    return Path(on_path) if on_path else None


def xllamacpp_available() -> bool:
    """Whether the `xllamacpp` wheel (llama.cpp's server, embedded) is installed."""
    return importlib.util.find_spec("xllamacpp") is not None


def llama_server_command(version: str = LLAMA_CPP_PYTHON_VERSION) -> list[str] | None:
    """The command that starts llama.cpp's server, before its flags: the native binary
    (`find_llama_server()`), else xllamacpp's embedded server through its launcher module,
    else None (nothing installed or built).

    Example:
        >>> command = llama_server_command()  # e.g. [python, '-m', XLLAMACPP_LAUNCHER]
    """
    native = find_llama_server(version)
    if native is not None:
        return [str(native)]
    if xllamacpp_available():
        return [sys.executable, "-m", XLLAMACPP_LAUNCHER]
    return None


def no_server_message() -> str:
    """What to do when `llama_server_command()` finds nothing."""
    return (
        "No llama-server: `pip install xllamacpp` (or `make install`, whose dev extra has it; "
        "the `serve` extra too) to use the server embedded in that wheel, or build the native "
        f"binary once with `make serve-build` (about 25 minutes on two cores, cached under "
        f"{install_dir()}), or set {SERVER_ENV}=/path/to/llama-server."
    )


def build_llama_server(
    *, version: str = LLAMA_CPP_PYTHON_VERSION, jobs: int | None = None, log: IO[str] | None = None
) -> Path:
    """Builds `llama-server` once and returns its path; a finished build is reused at once.

    Downloads the `llama-cpp-python==<version>` sdist with pip (PyPI), extracts its
    `vendor/llama.cpp` tree to `<install_dir>/src` and builds the `llama-server` target with
    cmake into `<install_dir>/bin`. Needs cmake and a C++17 compiler; takes about 25 minutes on
    two cores. Concurrent calls wait for each other (file lock). `build.json` records the time.

    Example:
        >>> path = build_llama_server(jobs=2)  # doctest: +SKIP
    """
    log = log or sys.stderr
    root = install_dir(version)
    binary = root / "bin" / "llama-server"
    root.parent.mkdir(parents=True, exist_ok=True)
    with _locked(root.parent / f"{version}.lock"):
        if binary.is_file():
            return binary
        for tool in ("cmake", "c++"):
            if shutil.which(tool) is None:
                raise FileNotFoundError(
                    f"Building llama-server needs `{tool}` on PATH; install it (e.g. "
                    "`apt-get install cmake g++`) or set "
                    f"{SERVER_ENV}=/path/to/llama-server to use a binary you have."
                )
        started = time.monotonic()
        source = _fetch_sources(version, root, log)
        fetched = time.monotonic()
        build = root / "build"
        jobs = jobs or os.cpu_count() or 2
        _run(["cmake", "-S", str(source), "-B", str(build), *_CMAKE_FLAGS], log)
        _run(["cmake", "--build", str(build), "--target", "llama-server", f"-j{jobs}"], log)
        binary.parent.mkdir(parents=True, exist_ok=True)
        staged = binary.with_suffix(".tmp")
        shutil.copy2(build / "bin" / "llama-server", staged)
        staged.replace(binary)
        finished = time.monotonic()
        record = {
            "llama_cpp_python": version,
            "fetch_s": round(fetched - started, 1),
            "build_s": round(finished - fetched, 1),
            "jobs": jobs,
            "cmake_flags": list(_CMAKE_FLAGS),
        }
        (root / "build.json").write_text(json.dumps(record, indent=2) + "\n")
        shutil.rmtree(build, ignore_errors=True)  # object files; the binary is static
        print(f"llama-server built in {record['build_s']:.0f} s: {binary}", file=log)
        return binary


def fetch_llama_cpp_source(
    version: str = LLAMA_CPP_PYTHON_VERSION, log: IO[str] | None = None
) -> Path:
    """The llama.cpp source tree (with `convert_hf_to_gguf.py`), downloaded once (~80 MB).

    Example:
        >>> converter = fetch_llama_cpp_source() / "convert_hf_to_gguf.py"  # doctest: +SKIP
    """
    root = install_dir(version)
    if (root / "src" / "CMakeLists.txt").is_file():  # renamed into place whole
        return root / "src"
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root.parent / f"{version}.lock"):
        return _fetch_sources(version, root, log or sys.stderr)


def _fetch_sources(version: str, root: Path, log: IO[str]) -> Path:
    """Extracts llama.cpp from the llama-cpp-python sdist into `root/src` (once)."""
    source = root / "src"
    if (source / "CMakeLists.txt").is_file():
        return source
    with tempfile.TemporaryDirectory(prefix="llama-cpp-sdist-") as tmp:
        _run(
            [
                *(sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"),
                *(f"llama-cpp-python=={version}", "--dest", tmp),
            ],
            log,
        )
        (sdist,) = Path(tmp).glob("llama_cpp_python-*.tar.gz")
        prefix = f"{sdist.name.removesuffix('.tar.gz')}/vendor/llama.cpp/"
        staging = root / "src.tmp"
        shutil.rmtree(staging, ignore_errors=True)
        with tarfile.open(sdist) as archive:
            members = []
            for member in archive.getmembers():
                if member.name.startswith(prefix):
                    member.name = member.name[len(prefix) :]
                    members.append(member)
            safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            archive.extractall(staging, members=members, **safe)
        staging.replace(source)
    return source


def _run(command: Sequence[str], log: IO[str]) -> None:
    print("+", " ".join(command), file=log, flush=True)
    completed = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=False)
    if completed.returncode != 0:
        raise RuntimeError(
            f"`{' '.join(command)}` failed with exit code {completed.returncode} (output above)."
        )


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


class LlamaServer:
    """A running `llama-server` process on a GGUF model, stopped on `close()` / context exit
    (and, on Linux, when the thread that started it ends).

    Args:
        model: a GGUF file (default: the embedded SmolLM2-135M-Instruct, Q4_1).
        alias: the model name clients send and `/v1/models` lists (default: the embedded
            model's id, so `create_sampling_client(base_model=EMBEDDED_MODEL)` matches it).
        host, port: where to listen; port 0 picks a free one.
        parallel: slots decoding concurrently; a request with `n` samples takes `n` slots.
        ctx_per_slot: prompt + reply tokens each slot holds.
        threads: CPU threads (default: half the logical CPUs, at least 1: llama.cpp's own
            default counts physical cores, and its threads wait for each other at every step,
            which stalls when other processes keep the cores busy).
        binary: the llama-server to run (default: `llama_server_command()`: a native binary,
            else xllamacpp's embedded server).
        log_file: where the server's output goes (default: discarded).
        extra_args: more llama-server flags (a native binary only: xllamacpp's launcher
            takes just the flags above).

    Example:
        >>> with LlamaServer(parallel=4) as server:                  # doctest: +SKIP
        ...     client = bios.ServiceClient(base_url=server.base_url).create_sampling_client(
        ...         base_model=EMBEDDED_MODEL)
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | None = None,
        *,
        alias: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        parallel: int = DEFAULT_PARALLEL,
        ctx_per_slot: int = DEFAULT_CTX_PER_SLOT,
        threads: int | None = None,
        binary: str | os.PathLike[str] | None = None,
        log_file: str | os.PathLike[str] | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        if parallel < 1 or ctx_per_slot < 16:
            raise ValueError(
                f"parallel={parallel}, ctx_per_slot={ctx_per_slot}: expected parallel >= 1 and "
                "ctx_per_slot >= 16, e.g. parallel=16, ctx_per_slot=2048."
            )
        launcher = [str(binary)] if binary else llama_server_command()
        if launcher is None:
            raise FileNotFoundError(no_server_message())
        self.uses_xllamacpp = launcher[1:] == ["-m", XLLAMACPP_LAUNCHER]
        flags = [a.split("=")[0] for a in extra_args if a.lstrip("-")[:1].isalpha() and a[0] == "-"]
        unsupported = [flag for flag in flags if flag not in XLLAMACPP_FLAGS]
        if self.uses_xllamacpp and unsupported:
            raise ValueError(
                f"extra_args={list(extra_args)!r}: xllamacpp's server (used because no native "
                f"llama-server was found) takes only {', '.join(XLLAMACPP_FLAGS)}; "
                f"{', '.join(unsupported)} need the native binary (`make serve-build` or "
                f"{SERVER_ENV})."
            )
        self.model = Path(model) if model is not None else embedded_gguf_file()
        if not self.model.is_file():
            raise FileNotFoundError(
                f"model={str(self.model)!r} is not a file: pass a GGUF file (convert a checkpoint "
                "with `python -m bios_callbacks.serving convert <checkpoint>`)."
            )
        self.alias = alias or (EMBEDDED_MODEL if model is None else self.model.stem)
        self.host, self.port = host, port or free_port(host)
        self.parallel = parallel
        self.command = [
            *launcher,
            *("--model", str(self.model), "--alias", self.alias),
            *("--host", host, "--port", str(self.port)),
            *("--parallel", str(parallel), "--ctx-size", str(parallel * ctx_per_slot)),
            *("--threads", str(threads or max(1, (os.cpu_count() or 2) // 2))),
            *extra_args,
        ]
        self._log_file = log_file
        self._process: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        """The OpenAI-compatible endpoint, e.g. `http://127.0.0.1:8000/v1`."""
        return f"http://{self.host}:{self.port}/v1"

    def start(self, timeout_s: float = 120.0) -> LlamaServer:
        """Starts the process and waits until `/health` answers 200 (the model is loaded)."""
        log = open(self._log_file, "ab") if self._log_file else subprocess.DEVNULL  # noqa: SIM115
        try:
            self._process = subprocess.Popen(
                self.command, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent
            )
        finally:
            if log is not subprocess.DEVNULL:
                log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"llama-server exited with code {self._process.returncode} while starting "
                    f"({' '.join(self.command)}); {self._log_hint()}"
                )
            if _healthy(f"http://{self.host}:{self.port}/health"):
                return self
            time.sleep(0.2)
        self.close()
        raise TimeoutError(
            f"llama-server did not answer /health within {timeout_s:.0f} s; {self._log_hint()}"
        )

    def _log_hint(self) -> str:
        if self._log_file:
            return f"its output is in {self._log_file}."
        return "pass log_file= to see its output."

    def wait(self) -> int:
        """Blocks until the process exits; returns its exit code."""
        assert self._process is not None, "start() the server first"
        return self._process.wait()

    def close(self) -> None:
        """Stops the process (SIGTERM, then SIGKILL after 10 s)."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def __enter__(self) -> LlamaServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _die_with_parent() -> None:
    """In the child: on Linux, get SIGTERM when the thread that started it ends, so a killed
    test run or script leaves no server behind. Elsewhere `close()` is the only stop."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False
