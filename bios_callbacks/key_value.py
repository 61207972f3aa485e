"""`key=value` command-line words, read by the field types of a dataclass: the one parser
behind every command line here (the trainers, the examples, run_inspect_evals).

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
import types
import typing
from collections.abc import Sequence
from typing import Any


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
