"""Turning task names into Inspect `Task` objects, failing fast when a dataset needs the hub.

A task is named one of three ways:

- an Inspect registry name, e.g. `inspect_evals/ifeval` (needs the `inspect-evals` extra:
  `pip install 'bios-callbacks[inspect-evals]'`);
- `path/to/file.py@task_name` (or `file.py` holding a single task);
- `package.module:task_name`.

Hugging Face datasets (`hf_dataset`, as the standard benchmarks use) are read from the local
Hugging Face datasets cache when the hub is unreachable or `HF_HUB_OFFLINE=1` is set; a dataset
missing there stops the run at once (no retries) with a `HubDatasetUnavailableError` naming the
dataset and how to fill the cache. A benchmark's missing Python package is a
`TaskDependencyError` naming the package and the install command.

Example:
    >>> from bios_callbacks.eval.inspect_tasks import resolve_task
    >>> task = resolve_task("examples/offline_inspect_eval.py@capitals")  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import os
import re
import socket
import sys
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from inspect_ai import Task

from bios_callbacks.eval import inspect_private
from bios_callbacks.key_value import UsageError

TASK_NAMING = (
    "Name a task as an Inspect registry name (e.g. inspect_evals/ifeval, after "
    "`pip install 'bios-callbacks[inspect-evals]'`), as path/to/file.py@task_name, "
    "or as package.module:task_name."
)
_OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")


class TaskNotFoundError(UsageError):
    """A task name that names no task (a usage error: the commands exit 2 on it)."""


class HubDatasetUnavailableError(RuntimeError):
    """A task needs a Hugging Face dataset that is neither cached nor reachable."""


class TaskDependencyError(RuntimeError):
    """A task needs a Python package that is not installed."""


# Packages of the standard benchmarks that the inspect-evals extra installs.
_EXTRA_PACKAGES = {
    "instruction_following_eval": "git+https://github.com/josejg/instruction_following_eval",
    "langdetect": "langdetect",
}
# inspect_evals' require_optional_dependency message.
_OPTIONAL_DEPENDENCY = re.compile(r"To use (\S+), please install .*?`pip install ([^`]+)`")


def resolve_task(spec: str | Task | Callable[[], Task]) -> Task:
    """The `Task` for a task name, a `Task`, or a zero-argument task function.

    Raises `TaskNotFoundError` naming the bad name and how tasks are named,
    `HubDatasetUnavailableError` at once when the task's dataset is neither in the local
    Hugging Face cache nor reachable, and `TaskDependencyError` when the task needs a package
    that is not installed.

    Example:
        >>> resolve_task("no_such_task")
        Traceback (most recent call last):
        ...
        bios_callbacks.eval.inspect_tasks.TaskNotFoundError: Unknown task 'no_such_task'. ...
    """
    if isinstance(spec, Task):
        return spec
    label = spec if isinstance(spec, str) else getattr(spec, "__name__", repr(spec))
    with hub_guard(label), dependency_guard(label):
        if callable(spec):
            return _as_task(spec(), label)
        if "@" in spec or spec.endswith(".py"):
            return _task_from_file(spec)
        if ":" in spec:
            return _task_from_module(spec)
        return _task_from_registry(spec)


def task_short_name(name: str) -> str:
    """A task name without its package prefix (`inspect_evals/ifeval` -> `ifeval`)."""
    return name.rsplit("/", 1)[-1]


def _as_task(obj: Any, label: str) -> Task:
    if isinstance(obj, Task):
        return obj
    raise TaskNotFoundError(f"{label!r} gave a {type(obj).__name__}, not an inspect_ai Task.")


def _task_from_file(spec: str) -> Task:
    file, _, name = spec.partition("@")
    if not Path(file).is_file():
        raise TaskNotFoundError(f"Unknown task {spec!r}: no file {file!r}. {TASK_NAMING}")
    try:
        tasks = inspect_private.load_task_file(spec)
    except inspect_private.prerequisite_error() as error:
        defined = inspect_private.task_names_in_file(Path(file))
        if name in defined:
            raise
        raise TaskNotFoundError(
            f"Unknown task {spec!r}: {file} has no task {name!r}; its tasks: "
            f"{', '.join(defined) or 'none'}. Use {file}@task_name."
        ) from error
    if len(tasks) != 1:
        found = "none" if not tasks else ", ".join(t.name for t in tasks)
        raise TaskNotFoundError(
            f"{spec!r} names {len(tasks)} tasks (found: {found}); pick one with {file}@task_name."
        )
    return tasks[0]


def _task_from_module(spec: str) -> Task:
    module_name, _, attribute = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        raise TaskNotFoundError(f"Unknown task {spec!r}: {error}. {TASK_NAMING}") from error
    factory = getattr(module, attribute, None)
    if factory is None:
        raise TaskNotFoundError(
            f"Unknown task {spec!r}: module {module_name!r} has no {attribute!r}. {TASK_NAMING}"
        )
    return _as_task(factory() if callable(factory) else factory, spec)


def _task_from_registry(name: str) -> Task:
    task = inspect_private.registry_task(name)
    if task is None:
        package = name.split("/", 1)[0] if "/" in name else None
        hint = ""
        if package and importlib.util.find_spec(package) is None:
            hint = f" Package {package!r} is not installed"
            if package == "inspect_evals":
                hint += ": pip install 'bios-callbacks[inspect-evals]'"
            hint += "."
        raise TaskNotFoundError(f"Unknown task {name!r}.{hint} {TASK_NAMING}")
    return task


@functools.cache
def hub_reachable() -> bool:
    """Whether the Hugging Face hub answers (False at once when HF_HUB_OFFLINE is set)."""
    from bios_callbacks.models import hub_offline

    if hub_offline(_OFFLINE_VARS):
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname
    try:
        with socket.create_connection((host or "huggingface.co", 443), timeout=3):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def dependency_guard(task_label: str) -> Iterator[None]:
    """Turns a task's missing-package error into a `TaskDependencyError` with the install line.

    Catches inspect_evals' optional-dependency message (an `AssertionError`) and a
    `ModuleNotFoundError` raised while the task is made.
    """
    try:
        yield
    except ModuleNotFoundError as error:
        if not error.name:
            raise
        raise TaskDependencyError(_dependency_message(task_label, error.name)) from error
    except AssertionError as error:
        found = _OPTIONAL_DEPENDENCY.search(str(error))
        if found is None:
            raise
        module, pip_target = found.groups()
        raise TaskDependencyError(_dependency_message(task_label, module, pip_target)) from error


def _dependency_message(task_label: str, module: str, pip_target: str | None = None) -> str:
    package = module.split(".")[0]
    message = f"Task {task_label!r} needs the Python package {package!r}, which is not installed."
    if package in _EXTRA_PACKAGES:
        return (
            f"{message} Install the inspect-evals extra, which includes it: "
            f"pip install 'bios-callbacks[inspect-evals]' (or only this package: "
            f"pip install '{_EXTRA_PACKAGES[package]}')."
        )
    target = pip_target or package
    if target.startswith("https://github.com/"):  # inspect_evals names repositories bare
        target = "git+" + target
    return f"{message} Install it: pip install '{target}'."


@contextlib.contextmanager
def hub_guard(task_label: str) -> Iterator[None]:
    """Loads Hugging Face datasets from the local cache only, and at once, when the hub is
    unreachable; a dataset missing there is a `HubDatasetUnavailableError` naming it.

    Without the hub, Inspect's and inspect_evals' loaders would retry for minutes, and the
    Hugging Face libraries would wait on the network unless `HF_HUB_OFFLINE=1` was set.
    """
    if hub_reachable():
        yield
        return
    try:
        with inspect_private.hf_loads_once(), _hub_offline_mode():
            yield
    except Exception as error:
        request = _hf_dataset_request(error)
        if request is None or not _is_cache_miss(error):
            raise
        raise HubDatasetUnavailableError(
            _offline_message(task_label, request) + f"\nCause: {error}"
        ) from error


@contextlib.contextmanager
def _hub_offline_mode() -> Iterator[None]:
    """The Hugging Face libraries in offline mode, as if HF_HUB_OFFLINE=1 had been set.

    They read that variable once, when imported; this sets what they read it into.
    """
    from huggingface_hub import constants

    hub_before = constants.HF_HUB_OFFLINE
    datasets_config = sys.modules.get("datasets.config")
    datasets_before = getattr(datasets_config, "HF_HUB_OFFLINE", hub_before)
    constants.HF_HUB_OFFLINE = True
    if datasets_config is not None:
        datasets_config.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = hub_before
        datasets_config = sys.modules.get("datasets.config")  # maybe imported meanwhile
        if datasets_config is not None:
            datasets_config.HF_HUB_OFFLINE = datasets_before


def _hf_dataset_request(error: BaseException) -> dict[str, Any] | None:
    """What Inspect's `hf_dataset` was loading when `error` was raised (path, name, split,
    revision), or None when it was raised elsewhere."""
    for frame, _ in traceback.walk_tb(error.__traceback__):
        code = frame.f_code
        if code.co_name == "hf_dataset" and code.co_filename.endswith(
            inspect_private.HF_SOURCE_FILE
        ):
            return {key: frame.f_locals.get(key) for key in ("path", "name", "split", "revision")}
    return None


def _is_cache_miss(error: BaseException) -> bool:
    """Whether `error` (or what caused it) says the dataset is not in the local cache."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, ConnectionError | FileNotFoundError) or type(seen).__name__ in {
            "OfflineModeIsEnabled",
            "LocalEntryNotFoundError",
        }:
            return True
        if isinstance(seen, ValueError) and "Couldn't find cache" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _offline_message(task_label: str, request: dict[str, Any]) -> str:
    dataset = request["path"]
    arguments = [repr(dataset)] + ([repr(request["name"])] if request["name"] else [])
    arguments += [f"{key}={request[key]!r}" for key in ("split", "revision") if request[key]]
    load = f"load_dataset({', '.join(arguments)})"
    return (
        f"Task {task_label!r} needs the Hugging Face dataset {dataset!r}, which is not in the "
        f"local Hugging Face datasets cache ({_datasets_cache()}), and the hub is unreachable "
        "(or HF_HUB_OFFLINE=1 is set). To run it offline: on a machine with internet and the "
        f'same `datasets` version, run  python -c "from datasets import load_dataset; {load}"  '
        "then copy that machine's ~/.cache/huggingface/datasets into the cache above (or point "
        "HF_DATASETS_CACHE, or HF_HOME, at the copy) and run with HF_HUB_OFFLINE=1."
    )


def _datasets_cache() -> str:
    """Where `datasets` reads its cache (it is imported by the time a load has failed)."""
    datasets_config = sys.modules.get("datasets.config")
    if datasets_config is not None:
        return str(datasets_config.HF_DATASETS_CACHE)
    home = os.environ.get("HF_HOME", os.path.join("~", ".cache", "huggingface"))
    return os.environ.get("HF_DATASETS_CACHE", os.path.join(home, "datasets"))
