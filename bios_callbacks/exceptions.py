"""The library's own errors: catch `BiosCallbacksError` for any of them.

Each also derives from the built-in error it refines (`ValueError` here), so code that
catches that keeps working. The names are tinker-cookbook's (`tinker_cookbook.exceptions`).

Example:
    >>> from bios_callbacks.exceptions import ConfigurationError
    >>> try:
    ...     raise ConfigurationError("tool_choice='any' requires at least one tool")
    ... except ValueError as e:
    ...     print(e)
    tool_choice='any' requires at least one tool
"""

from __future__ import annotations


class BiosCallbacksError(Exception):
    """Base of every error bios-callbacks raises on purpose."""


class ConfigurationError(BiosCallbacksError, ValueError):
    """A setting or argument that cannot work as given (the message says which and the fix)."""


class RendererError(BiosCallbacksError, ValueError):
    """A conversation or a response that a renderer cannot handle as given."""


__all__ = ["BiosCallbacksError", "ConfigurationError", "RendererError"]
