"""Training data: loading chat conversations and RL prompts, checking them, batching them.

A conversation is `{"messages": [{"role": ..., "content": ...}, ...]}` (a bare list of messages
is accepted too). Data comes from a Python list or a JSONL file with one conversation a line.

Example:
    >>> from trainers.data import load_conversations
    >>> load_conversations([[{"role": "user", "content": "hi"},
    ...                      {"role": "assistant", "content": "hello"}]], what="train_data")
    [[{'role': 'user', 'content': 'hi'}, {'role': 'assistant', 'content': 'hello'}]]
"""

from __future__ import annotations

import json
import random
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bios_callbacks.renderers.base import ROLES

if TYPE_CHECKING:
    import torch

    from bios_callbacks.models.token_logprobs import ShiftedBatch

Messages = list[dict[str, Any]]


def _read_records(source: str | Path | list[Any], what: str) -> list[tuple[str, Any]]:
    """Returns (location, record) pairs; the location names the file line for error messages."""
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"{what}: no such file {str(path)!r}; expected a JSONL file.")
        records = []
        with path.open(encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    records.append((f"{path}:{lineno}", json.loads(line)))
                except json.JSONDecodeError as exc:
                    raise ValueError(
                        f"{what}: {path}:{lineno} is not valid JSON ({exc.msg} at column "
                        f"{exc.colno}): {line.strip()[:80]!r}"
                    ) from None
    elif isinstance(source, (list, tuple)):
        records = [(f"{what}[{i}]", record) for i, record in enumerate(source)]
    else:
        raise TypeError(f"{what}={source!r}: expected a JSONL path or a list.")
    if not records:
        raise ValueError(f"{what} is empty ({source if isinstance(source, str) else 'list'}).")
    return records


def _check_messages(messages: Any, where: str) -> Messages:
    if isinstance(messages, dict) and "messages" in messages:
        messages = messages["messages"]
    if not isinstance(messages, list) or not messages:
        raise ValueError(f'{where}: expected {{"messages": [...]}} with at least one message.')
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str):
            raise ValueError(f"{where}: message {i} needs a string 'content': {m!r}")
        if m.get("role") not in ROLES:
            raise ValueError(
                f"{where}: message {i} has role {m.get('role')!r}; valid roles: {', '.join(ROLES)}."
            )
    return messages


def load_conversations(source: str | Path | list[Any], *, what: str) -> list[Messages]:
    """Loads and checks conversations; each must contain an assistant message to learn from."""
    conversations = []
    for where, record in _read_records(source, what):
        messages = _check_messages(record, where)
        if not any(m["role"] == "assistant" for m in messages):
            raise ValueError(f"{where}: no assistant message, so nothing to train on.")
        conversations.append(messages)
    return conversations


def load_prompts(source: str | Path | list[Any], *, what: str) -> list[dict[str, Any]]:
    """Loads RL prompts: dicts with `messages` or `prompt`; other keys are kept for the reward."""
    prompts = []
    for where, record in _read_records(source, what):
        if not isinstance(record, dict):
            raise ValueError(
                f"{where}: expected a dict with 'messages' or 'prompt', got {record!r}"
            )
        record = dict(record)
        if "messages" not in record:
            if not isinstance(record.get("prompt"), str):
                raise ValueError(f"{where}: needs 'messages' or a string 'prompt': {record!r}")
            record["messages"] = [{"role": "user", "content": record["prompt"]}]
        record["messages"] = _check_messages(record["messages"], where)
        prompts.append(record)
    return prompts


def warn_on_overlap(train: list[Messages], test: list[Messages]) -> int:
    """Warns when test conversations also occur in the training data; returns how many do."""
    seen = {json.dumps(c, sort_keys=True) for c in train}
    shared = [c for c in test if json.dumps(c, sort_keys=True) in seen]
    if shared:
        warnings.warn(
            f"{len(shared)} of {len(test)} test conversations also occur in train_data, so the "
            f"test loss overstates quality. First one: {shared[0]!r}",
            stacklevel=2,
        )
    return len(shared)


def tokenize_conversations(
    conversations: list[Messages], renderer: Any, max_length: int, train_on_what: str
) -> list[tuple[list[int], list[float]]]:
    """Renders each conversation to (tokens, loss weights), truncated to `max_length` tokens;
    `train_on_what` (a `renderers.TrainOnWhat`) says which tokens carry loss."""
    examples = []
    for messages in conversations:
        example = renderer.build_supervised_example(messages, train_on_what)
        tokens = list(example.tokens)[:max_length]
        weights = [float(w) for w in example.weights][:max_length]
        if sum(weights[1:]) == 0:
            raise ValueError(
                f"A conversation has no assistant tokens within max_length={max_length} tokens; "
                f"raise max_length or shorten it: {messages!r}"[:300]
            )
        examples.append((tokens, weights))
    return examples


def collate(examples: list[tuple[list[int], list[float]]], pad_id: int) -> SupervisedBatch:
    """Pads a batch: shifted inputs and targets with each target's loss weight."""
    from bios_callbacks.models.token_logprobs import ShiftedBatch

    tokens = ShiftedBatch.of([t for t, _ in examples], pad_id)
    return SupervisedBatch(tokens, tokens.spread([w[1:] for _, w in examples]))


@dataclass
class SupervisedBatch:
    """A padded SFT batch: the shifted tokens and a loss weight per target."""

    tokens: ShiftedBatch
    weights: torch.Tensor


class BatchStream:
    """Endless shuffled batches whose order depends only on the seed: batch k of a run is the
    same whether or not the run was stopped and resumed before it.

    Each epoch is its own permutation (drawn from `seed` and the epoch number) cut into
    batches of `batch_size` (the last one of an epoch may be smaller). Iteration starts at
    batch `start`: a run resumed after N steps passes `start=N` and continues where it was.

    With `length` (an item's length, e.g. its token count), batches are bucketed to cut
    padding: each run of `BUCKET_BATCHES` batches of the permutation is sorted by length, cut
    into batches, and those batches are shuffled. Every item still comes once an epoch, in a
    batch of similar lengths.

    Example:
        >>> stream = iter(BatchStream(list("abcdef"), 4, list, seed=0, start=1))
        >>> len(next(stream)), len(next(stream))  # the end of epoch 0, the start of epoch 1
        (2, 4)
        >>> words = ["a", "bbbb", "cc", "dddd", "e", "ff"]
        >>> bucketed = BatchStream(words, 2, list, seed=0, length=len)
        >>> sorted(sorted(words[i] for i in batch) for batch in bucketed.epoch(0))
        [['a', 'e'], ['bbbb', 'dddd'], ['cc', 'ff']]
    """

    BUCKET_BATCHES = 16

    def __init__(
        self,
        items: Sequence[Any],
        batch_size: int,
        collate: Callable[[list[Any]], Any],
        *,
        seed: int,
        start: int = 0,
        length: Callable[[Any], int] | None = None,
    ):
        self.items = items
        self.batch_size = batch_size
        self.collate = collate
        self.seed = seed
        self.start = start
        self.length = length

    def epoch(self, epoch: int) -> list[list[int]]:
        """The batches of epoch `epoch`, as lists of item indices."""
        size = self.batch_size
        order = list(range(len(self.items)))
        rng = random.Random(f"{self.seed}:{epoch}")
        rng.shuffle(order)
        if self.length is None:
            return [order[i : i + size] for i in range(0, len(order), size)]
        window = size * self.BUCKET_BATCHES
        batches = []
        for start in range(0, len(order), window):
            chunk = sorted(order[start : start + window], key=lambda i: self.length(self.items[i]))
            bucketed = [chunk[i : i + size] for i in range(0, len(chunk), size)]
            rng.shuffle(bucketed)
            batches += bucketed
        return batches

    def __iter__(self) -> Iterator[Any]:
        per_epoch = -(-len(self.items) // self.batch_size)
        epoch, first = divmod(self.start, per_epoch)
        while True:
            for chosen in self.epoch(epoch)[first:]:
                yield self.collate([self.items[i] for i in chosen])
            epoch, first = epoch + 1, 0
