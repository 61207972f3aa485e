"""Smoke test of every private Inspect AI name we use (bios_callbacks/eval/inspect_private.py):
an Inspect upgrade that moves one fails here, by name."""

from __future__ import annotations

from pathlib import Path

from inspect_ai.dataset._sources import hf as inspect_hf

from bios_callbacks.eval import inspect_private

FIXTURE = Path(__file__).parent / "inspect_tasks_fixture.py"


def test_task_loading_names_resolve():
    names = inspect_private.task_names_in_file(FIXTURE)
    assert names
    [task] = inspect_private.load_task_file(f"{FIXTURE}@{names[0]}")
    assert task.name == names[0]
    assert issubclass(inspect_private.prerequisite_error(), Exception)
    assert inspect_private.registry_task("no_such_package/no_such_task") is None


def test_model_info_key_and_registry_tagging():
    from inspect_ai._util.registry import registry_info

    assert isinstance(inspect_private.model_info_api_key(), str)

    class API:
        def __init__(self, model_name: str) -> None:
            self.model_name = model_name

    api = API("m")
    inspect_private.register_model_api(api, "bios", {"model_name": "m"})
    assert registry_info(api).name == "bios"


def test_hf_dataset_source_is_where_we_look_and_its_retry_is_restored():
    assert inspect_hf.__file__.endswith(inspect_private.HF_SOURCE_FILE)
    retrying = inspect_hf._call_with_hf_retry
    with inspect_private.hf_loads_once():
        assert inspect_hf._call_with_hf_retry(lambda: 42) == 42
        assert inspect_hf._call_with_hf_retry is not retrying
    assert inspect_hf._call_with_hf_retry is retrying


def test_quiet_display_is_undone_by_preserved_terminal():
    import rich

    console = rich.get_console()
    before = console.quiet
    with inspect_private.preserved_terminal():
        inspect_private.quiet_display()
        assert rich.get_console().quiet
    assert rich.get_console().quiet == before
