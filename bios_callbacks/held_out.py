"""The held-out guard: do evaluation prompts occur in the training data?

Example:
    >>> overlap = find_overlap(["What is 2+2?"], ["Q: What is 2+2? A: 4", "Hello"])
    >>> overlap.found, overlap.checked
    (1, 1)
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

MAX_TRAINING_ITEMS = 20_000
"""At most this many training items are read when scanning a dataset."""


@dataclass(frozen=True)
class Overlap:
    """How many eval prompts were checked, how many occur in training texts, and one of them."""

    found: int
    checked: int
    example: str | None


def find_overlap(prompts: Iterable[str], training_texts: Iterable[str]) -> Overlap:
    """Counts prompts that occur verbatim (as substrings) in any training text."""
    corpus = "\x00".join(training_texts)
    checked = [p.strip() for p in prompts if p and p.strip()]
    hits = [p for p in checked if p in corpus]
    return Overlap(found=len(hits), checked=len(checked), example=hits[0] if hits else None)


def texts_from_dataset(dataset: Iterable[Any], tokenizer: Any = None) -> list[str]:
    """Collects the strings in a dataset's items (token ids are decoded with ``tokenizer``).

    Reads at most `MAX_TRAINING_ITEMS` items.
    """
    texts: list[str] = []
    for index, item in enumerate(dataset):
        if index >= MAX_TRAINING_ITEMS:
            break
        texts.extend(_texts_in(item, tokenizer))
    return texts


def _texts_in(item: Any, tokenizer: Any) -> Iterator[str]:
    if isinstance(item, str):
        yield item
    elif isinstance(item, Mapping):
        for value in item.values():
            yield from _texts_in(value, tokenizer)
    elif hasattr(item, "tolist") and not isinstance(item, (list, tuple)):
        yield from _texts_in(item.tolist(), tokenizer)
    elif isinstance(item, (list, tuple)) and item:
        if all(isinstance(t, int) for t in item):
            if tokenizer is not None:
                yield tokenizer.decode(item)
        elif not all(isinstance(t, float) for t in item):  # e.g. loss weights: no text there
            for value in item:
                yield from _texts_in(value, tokenizer)
