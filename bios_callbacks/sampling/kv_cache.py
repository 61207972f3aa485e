"""A key/value cache whose rows can join and leave between decode steps.

The decode engine keeps one cache for all running sequences, left-padded to a common length.
Transformers' `DynamicCache` grows by concatenation, which copies the whole cache on every
step; the layers here write into pre-allocated buffers that double when full, and expose the
valid region as views. Rows are selected, merged and trimmed between steps.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

_MIN_HEADROOM = 64


def uses_sliding_window(config) -> bool:
    """Whether a model's attention is windowed. Windows count cache columns, so they would count
    padding inside a row (between a cached prefix and the rest of a prompt) as tokens."""
    window = getattr(config, "sliding_window", None)
    return bool(window) and getattr(config, "use_sliding_window", True) is not False


class BufferedLayer(DynamicLayer):
    """One layer's keys and values in a growable buffer; `keys`/`values` view the valid part."""

    def _allocate(self, keys: torch.Tensor, values: torch.Tensor, capacity: int) -> None:
        batch, heads, length, dim = keys.shape
        self._key_buffer = keys.new_empty(batch, heads, capacity, dim)
        self._value_buffer = values.new_empty(batch, heads, capacity, values.shape[-1])
        self._key_buffer[:, :, :length] = keys
        self._value_buffer[:, :, :length] = values
        self._start, self._end = 0, length
        self._refresh_views()

    def _refresh_views(self) -> None:
        self.keys = self._key_buffer[:, :, self._start : self._end]
        self.values = self._value_buffer[:, :, self._start : self._end]

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device = key_states.device
        self.is_initialized = True
        length = key_states.shape[-2]
        empty = (key_states[:, :, :0], value_states[:, :, :0])
        self._allocate(*empty, length + max(length, _MIN_HEADROOM))

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        new = key_states.shape[-2]
        if self._end + new > self._key_buffer.shape[2]:
            length = self._end - self._start + new
            self._allocate(self.keys, self.values, length + max(length, _MIN_HEADROOM))
        self._key_buffer[:, :, self._end : self._end + new] = key_states
        self._value_buffer[:, :, self._end : self._end + new] = value_states
        self._end += new
        self._refresh_views()
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self._end - self._start if self.is_initialized else 0

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        keys, values = self.keys[indices], self.values[indices]
        self._allocate(keys, values, self._key_buffer.shape[2] - self._start)

    def trim_left(self, count: int) -> None:
        """Drops the first `count` positions (padding every row has)."""
        self._start += count
        self._refresh_views()

    def stack_rows(self, other: BufferedLayer, headroom: int) -> None:
        """Appends `other`'s rows, left-padding the shorter side, in one copy into a new buffer
        with room for `headroom` more positions."""
        length = max(self._end - self._start, other.get_seq_length())
        capacity = length + max(headroom, 1)
        self._key_buffer = _stack_left_padded(self.keys, other.keys, length, capacity)
        self._value_buffer = _stack_left_padded(self.values, other.values, length, capacity)
        self._start, self._end = 0, length
        self._refresh_views()

    def set_states(self, keys: torch.Tensor, values: torch.Tensor, headroom: int) -> None:
        """Replaces the contents with `keys`/`values` and room for `headroom` more positions."""
        self.device = keys.device
        self.is_initialized = True
        self._allocate(keys, values, keys.shape[-2] + max(headroom, 1))


class BatchCache(DynamicCache):
    """A `DynamicCache` made of `BufferedLayer`s, plus the row operations the engine needs."""

    def __init__(self) -> None:
        super().__init__()
        self.layer_class_to_replicate = BufferedLayer

    def select_rows(self, indices: torch.Tensor) -> None:
        """Keeps only the rows in `indices`, in that order."""
        for layer in self.layers:
            layer.batch_select_indices(indices)

    def trim_left(self, count: int) -> None:
        """Drops the first `count` positions of every row."""
        if count > 0:
            for layer in self.layers:
                layer.trim_left(count)

    def append_rows(self, other: BatchCache, headroom: int) -> None:
        """Adds the rows of `other`, left-padding whichever side is shorter with zeros."""
        for mine, theirs in zip(self.layers, other.layers, strict=True):
            mine.stack_rows(theirs, headroom)


def _stack_left_padded(
    a: torch.Tensor, b: torch.Tensor, length: int, capacity: int
) -> torch.Tensor:
    """(batch, heads, capacity, dim): `a`'s rows then `b`'s, each ending at position `length`."""
    rows = a.shape[0]
    out = a.new_empty(rows + b.shape[0], a.shape[1], capacity, a.shape[3])
    out[:rows, :, : length - a.shape[2]] = 0
    out[:rows, :, length - a.shape[2] : length] = a
    out[rows:, :, : length - b.shape[2]] = 0
    out[rows:, :, length - b.shape[2] : length] = b
    return out
