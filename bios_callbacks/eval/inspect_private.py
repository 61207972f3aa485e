"""Every private Inspect AI name this package uses, in one place, so that an Inspect upgrade
that moves one breaks here (and in `tests/test_inspect_private.py`) rather than somewhere deep.

Also the two global states Inspect changes that we put back: Rich's console (Inspect makes it
quiet for its "none" display) and its dataset loader's retry wrapper (pointless offline).

Example:
    >>> with hf_loads_once():
    ...     pass  # Inspect's hf_dataset loads without its retry loop in here
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HF_SOURCE_FILE = os.path.join("_sources", "hf.py")
"""The tail of the path of Inspect's `hf_dataset` module (to find its frame in a traceback)."""


def load_task_file(spec: str) -> list[Any]:
    """The tasks `file.py@name` (or `file.py`) defines, as Inspect's CLI loads them."""
    from inspect_ai._eval.loader import load_task_spec

    return load_task_spec(spec)


def task_names_in_file(file: Path) -> list[str]:
    """The names of the `@task` functions in `file`, read without running it."""
    from inspect_ai._util.decorator import parse_decorators

    return [found[0] for found in parse_decorators(file, "task")]


def prerequisite_error() -> type[Exception]:
    """Inspect's error for a task that cannot be loaded (e.g. a missing name in a file)."""
    from inspect_ai._util.error import PrerequisiteError

    return PrerequisiteError


def registry_task(name: str) -> Any | None:
    """A registered task (`inspect_evals/ifeval`) created with its defaults, or None."""
    from inspect_ai._eval.registry import task_create
    from inspect_ai._util.registry import registry_lookup

    return task_create(name) if registry_lookup("task", name) is not None else None


def register_model_api(api: Any, name: str, model_args: dict[str, Any]) -> None:
    """Tags a ModelAPI instance as Inspect's registry does for the providers it creates."""
    from inspect_ai._util.registry import RegistryInfo, registry_tag

    registry_tag(type(api), api, RegistryInfo(type="modelapi", name=name), **model_args)


def model_info_api_key() -> str:
    """The key Inspect's model-info lookup uses for API keys (kept out of logged arguments)."""
    from inspect_ai.model._model_info import MODEL_INFO_LOOKUP_API_KEY

    return MODEL_INFO_LOOKUP_API_KEY


@contextlib.contextmanager
def hf_loads_once() -> Iterator[None]:
    """Inspect's `hf_dataset` calls the loader once, without its retry loop (when the hub is
    unreachable, retrying only waits)."""
    from inspect_ai.dataset._sources import hf as inspect_hf

    retrying = inspect_hf._call_with_hf_retry
    inspect_hf._call_with_hf_retry = lambda load: load()
    try:
        yield
    finally:
        inspect_hf._call_with_hf_retry = retrying


@contextlib.contextmanager
def preserved_terminal() -> Iterator[None]:
    """Restores Rich's global console and the root logger after Inspect changed them."""
    import rich

    console = rich.get_console()
    console_state = dict(console.__dict__)
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    try:
        yield
    finally:
        console.__dict__.clear()
        console.__dict__.update(console_state)
        root.setLevel(level)
        root.handlers[:] = handlers


def quiet_display() -> None:
    """No Inspect progress display: the training loop's own bars stay in charge.

    Inspect applies its "none" display by making Rich's global console quiet, but only the
    first time it sets the console up; `preserved_terminal` undoes that after every run, so
    the console is made quiet again here for each run.
    """
    import rich
    from inspect_ai.util._display import init_display_type

    init_display_type("none")
    rich.get_console().quiet = True
