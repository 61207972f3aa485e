"""The held-out guard: do evaluation prompts occur in the training data?

`EvalCallback(training_texts=...)` runs `check_held_out` once, on rank 0, before the first
round; a match is a one-time warning (those scores measure memorization).

Example:
    >>> overlap = find_overlap(["What is 2+2?"], ["Q: What is 2+2? A: 4", "Hello"])
    >>> overlap.found, overlap.checked
    (1, 1)
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("bios_callbacks.callback")

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


HookFailure = tuple[str, str, BaseException]
"""(evaluator name, message, exception) of an optional hook that raised."""


def check_held_out(
    slots: Sequence[Any], training_texts: Iterable[str] | str, trainer: Any, module: Any
) -> list[HookFailure]:
    """Warns once if the evaluators' prompts occur in the training data.

    `training_texts` is strings or "from_trainer" (the train dataloaders' datasets, token ids
    decoded with the module's tokenizer). An evaluator whose `eval_prompts()` raises is left
    out and returned, to be counted as a failure in the next round.
    """
    prompts: list[str] = []
    failures: list[HookFailure] = []
    for slot in slots:
        if slot.evaluator is None:
            continue
        try:
            prompts.extend(slot.hook("eval_prompts"))
        except Exception as error:
            log.warning(
                "evaluator %r: eval_prompts() raised %r; its prompts are not checked against "
                "the training data",
                slot.name,
                error,
            )
            failures.append((slot.name, f"eval_prompts() raised {error!r}", error))
    if not prompts:
        return failures
    if training_texts == "from_trainer":
        tokenizer = getattr(module, "tokenizer", None)
        texts = [
            text
            for loader in _dataloaders(trainer.train_dataloader)
            for text in texts_from_dataset(loader.dataset, tokenizer)
        ]
    else:
        texts = list(training_texts)
    overlap = find_overlap(prompts, texts)
    if overlap.found:
        from lightning.pytorch.utilities import rank_zero_warn

        rank_zero_warn(
            f"EvalCallback: {overlap.found} of {overlap.checked} eval prompts occur in the "
            f"training data (e.g. {overlap.example[:200]!r}); those scores measure "
            "memorization. Evaluate on held-out data."
        )
    return failures


def _dataloaders(loaders: Any) -> list[Any]:
    if loaders is None:
        return []
    if hasattr(loaders, "dataset"):
        return [loaders]
    if isinstance(loaders, dict):
        loaders = list(loaders.values())
    if isinstance(loaders, (list, tuple)):
        return [loader for item in loaders for loader in _dataloaders(item)]
    return _dataloaders(getattr(loaders, "iterables", None))
