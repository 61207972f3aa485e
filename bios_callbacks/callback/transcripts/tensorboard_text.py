"""Transcripts on TensorBoard's Text tab: one markdown text per evaluator and step.

Example:
    >>> from bios_callbacks.evaluators import Transcript
    >>> print(as_markdown([Transcript("2+2?", "4", 1.0)]))
    **prompt:** 2+2?
    <BLANKLINE>
    **response:** 4
    <BLANKLINE>
    **score:** 1
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from bios_callbacks.evaluators.base import Transcript


def as_markdown(items: Sequence[Transcript]) -> str:
    """The items as markdown, separated by rules; score and explanation where there are any."""
    texts = []
    for item in items:
        text = f"**prompt:** {item.prompt}\n\n**response:** {item.response}"
        if item.score is not None:
            text += f"\n\n**score:** {item.score:g}"
        if item.explanation:
            text += f"\n\n**explanation:** {item.explanation}"
        texts.append(text)
    return "\n\n---\n\n".join(texts)


def write(logger: Any, step: int, transcripts: Mapping[str, Sequence[Transcript]]) -> None:
    """`add_text` under `eval/<name>/samples` for each evaluator."""
    for name, items in transcripts.items():
        logger.experiment.add_text(f"eval/{name}/samples", as_markdown(items), global_step=step)
