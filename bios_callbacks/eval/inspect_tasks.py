"""Turning task names into Inspect `Task` objects, failing fast when a dataset needs the hub.

A task is named one of three ways:

- an Inspect registry name, e.g. `inspect_evals/ifeval` (needs the `inspect-evals` extra:
  `pip install 'bios-callbacks[inspect-evals]'`);
- `path/to/file.py@task_name` (or `file.py` holding a single task);
- `package.module:task_name`.

Example:
    >>> from bios_callbacks.eval.inspect_tasks import resolve_task
    >>> task = resolve_task("examples/offline_inspect_eval.py@capitals")  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import inspect
import os
import socket
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from inspect_ai import Task

TASK_NAMING = (
    "Name a task as an Inspect registry name (e.g. inspect_evals/ifeval, after "
    "`pip install 'bios-callbacks[inspect-evals]'`), as path/to/file.py@task_name, "
    "or as package.module:task_name."
)
_OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")


class TaskNotFoundError(ValueError):
    """A task name that names no task."""


class HubDatasetUnavailableError(RuntimeError):
    """A task needs a Hugging Face dataset that is neither cached nor reachable."""


def resolve_task(spec: str | Task | Callable[[], Task]) -> Task:
    """The `Task` for a task name, a `Task`, or a zero-argument task function.

    Raises `TaskNotFoundError` naming the bad name and how tasks are named, and
    `HubDatasetUnavailableError` at once when the task's dataset needs an unreachable hub.

    Example:
        >>> resolve_task("no_such_task")
        Traceback (most recent call last):
        ...
        bios_callbacks.eval.inspect_tasks.TaskNotFoundError: Unknown task 'no_such_task'. ...
    """
    if isinstance(spec, Task):
        return spec
    label = spec if isinstance(spec, str) else getattr(spec, "__name__", repr(spec))
    with hub_guard(label):
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
    from inspect_ai._eval.loader import load_task_spec
    from inspect_ai._util.decorator import parse_decorators
    from inspect_ai._util.error import PrerequisiteError

    file, _, name = spec.partition("@")
    if not Path(file).is_file():
        raise TaskNotFoundError(f"Unknown task {spec!r}: no file {file!r}. {TASK_NAMING}")
    try:
        tasks = load_task_spec(spec)
    except PrerequisiteError as error:
        defined = [found[0] for found in parse_decorators(Path(file), "task")]
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
    from inspect_ai._eval.registry import task_create
    from inspect_ai._util.registry import registry_lookup

    if registry_lookup("task", name) is None:
        package = name.split("/", 1)[0] if "/" in name else None
        hint = ""
        if package and importlib.util.find_spec(package) is None:
            hint = f" Package {package!r} is not installed"
            if package == "inspect_evals":
                hint += ": pip install 'bios-callbacks[inspect-evals]'"
            hint += "."
        raise TaskNotFoundError(f"Unknown task {name!r}.{hint} {TASK_NAMING}")
    return task_create(name)


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
def hub_guard(task_label: str) -> Iterator[None]:
    """Makes a hub dataset load fail at once, naming the dataset, when the hub is unreachable.

    Inspect's `hf_dataset` reads its on-disk cache first; only a cache miss reaches the hub,
    where Inspect would otherwise retry for minutes.
    """
    from inspect_ai.dataset._sources import hf as inspect_hf

    original = inspect_hf._call_with_hf_retry

    def refuse(load: Callable[[], Any]) -> Any:
        dataset = inspect.getclosurevars(load).nonlocals.get("path", "?")
        raise HubDatasetUnavailableError(_offline_message(task_label, dataset))

    reachable = hub_reachable()
    if not reachable:
        inspect_hf._call_with_hf_retry = refuse
    try:
        yield
    except HubDatasetUnavailableError:
        raise
    except Exception as error:
        dataset = _hf_dataset_in_traceback(error)
        if dataset is None or reachable:
            raise
        raise HubDatasetUnavailableError(
            _offline_message(task_label, dataset) + f"\nCause: {error}"
        ) from error
    finally:
        inspect_hf._call_with_hf_retry = original


def _hf_dataset_in_traceback(error: BaseException) -> str | None:
    """The dataset path if `error` was raised while Inspect's `hf_dataset` was loading it."""
    for frame, _ in traceback.walk_tb(error.__traceback__):
        code = frame.f_code
        if code.co_name == "hf_dataset" and code.co_filename.endswith(
            os.path.join("_sources", "hf.py")
        ):
            return str(frame.f_locals.get("path"))
    return None


def _offline_message(task_label: str, dataset: str) -> str:
    from inspect_ai._util.appdirs import inspect_cache_dir

    cache = inspect_cache_dir("hf_datasets")
    return (
        f"Task {task_label!r} needs the Hugging Face dataset {dataset!r}, which is not in "
        "Inspect's dataset cache, and the Hugging Face hub is unreachable. To run offline: "
        "on a machine with hub access, `pip install datasets` and run the task once (or load "
        f"the dataset with inspect_ai.dataset.hf_dataset) to fill {cache} "
        "and the Hugging Face cache, copy both caches here, then set HF_HUB_OFFLINE=1."
    )
