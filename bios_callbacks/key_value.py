"""`key=value` command-line words, read by the field types of a dataclass: the one parser
behind every command line here (the trainers, the examples, run_inspect_evals, watch, compare),
and `command_main`, the shared shape of the offline commands (`--help`, `error:` lines, exit 2).

Strings stay strings (`run_name=007` is "007"), numbers must parse, lists are comma-separated
(each item stripped of surrounding spaces),
`true`/`false` are booleans and `none` is None where the field allows it. (tinker-cookbook uses
`chz` for this; its configs are `@chz.chz` classes with nested dotted keys, while ours are plain
public dataclasses with flat keys, which this reads without a dependency.)

Example:
    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class Args:
    ...     steps: int = 20
    ...     run_name: str | None = None
    ...     tasks: list[str] | None = None
    >>> parse_words(Args, ["steps=5", "run_name=007", "tasks=a, b"])
    {'steps': 5, 'run_name': '007', 'tasks': ['a', 'b']}
"""

from __future__ import annotations

import dataclasses
import math
import sys
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any


class UsageError(ValueError):
    """A bad command-line value (a word, a run, a task name): one `error:` line, exit 2."""


def parse_words(fields: type, argv: Sequence[str]) -> dict[str, Any]:
    """`key=value` words read as the fields of the dataclass `fields` say (the trainers' and
    examples' command lines); unknown keys and values that do not fit the type are errors.

    Example:
        >>> from dataclasses import dataclass
        >>> @dataclass
        ... class Args:
        ...     learning_rate: float = 1e-5
        >>> parse_words(Args, ["learning_rate=abc"])
        Traceback (most recent call last):
        ...
        ValueError: learning_rate=abc: expected a number.
    """
    keys = [f.name for f in dataclasses.fields(fields)]
    words: dict[str, str] = {}
    for word in argv:
        key, sep, raw = word.partition("=")
        if not sep or not key:
            raise ValueError(f"Argument {word!r} is not key=value. Valid keys: {', '.join(keys)}.")
        words[key] = raw
    unknown = sorted(set(words) - set(keys))
    if unknown:
        raise ValueError(
            f"Unknown {fields.__name__} key(s) {unknown}. Valid keys: {', '.join(keys)}."
        )
    hints = typing.get_type_hints(fields)
    return {key: _parse_value(key, raw, hints[key]) for key, raw in words.items()}


_NONE_WORDS = ("none", "null")
_BOOL_WORDS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def _parse_value(key: str, raw: str, hint: Any) -> Any:
    """Reads a command-line string as the field's type says: strings stay strings (`007`),
    numbers must parse, lists are comma-separated, `none` is None where the field allows it."""
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    options = typing.get_args(hint) if union else (hint,)
    if type(None) in options and raw.lower() in _NONE_WORDS:
        return None
    kinds = {typing.get_origin(option) or option for option in options}
    if str in kinds:
        return raw
    if list in kinds:
        return [part.strip() for part in raw.split(",") if part.strip()]
    if bool in kinds:
        if raw.lower() not in _BOOL_WORDS:
            raise ValueError(f"{key}={raw}: expected true or false.")
        return _BOOL_WORDS[raw.lower()]
    if int in kinds:
        try:
            return int(raw)
        except ValueError:
            raise ValueError(f"{key}={raw}: expected an integer.") from None
    if float in kinds:
        try:
            number = float(raw)
        except ValueError:
            number = math.nan
        if not math.isfinite(number):
            raise ValueError(f"{key}={raw}: expected a number.")
        return number
    return raw


def command_main(
    argv: list[str] | None,
    usage: str,
    parse: Callable[[list[str]], Any],
    act: Callable[[Any], int],
    *,
    report_errors: bool,
) -> int:
    """The shared shape of the offline commands (run_inspect_evals, watch, compare): `--help`
    prints `usage`; a bad word is one `error:` line followed by `usage`, and a bad run, task or
    other value found later (a `UsageError`) one `error:` line, both exit 2; with
    `report_errors`, any other error is one line and exit 1 instead of a traceback. Returns
    what `act(parse(argv))` returns."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in {"-h", "--help", "help"}:
        print(usage)
        return 0
    try:
        args = parse(argv)
    except UsageError as error:
        print(f"error: {error}\n\n{usage}", file=sys.stderr)
        return 2
    try:
        return act(args)
    except UsageError as error:  # a bad tasks=, run= or builder value
        print(f"error: {error}", file=sys.stderr)
        return 2
    except Exception as error:
        if not report_errors:
            raise
        print(f"error: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
