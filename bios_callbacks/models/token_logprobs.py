"""Next-token log-probabilities of padded token sequences: the one place that pads, shifts by
one and scores, for the training client (evaluation), SFT (loss) and RL (policy gradient).

Row i of a `ShiftedBatch` predicts `tokens[1:]` from `tokens[:-1]`; padding sits on the right
and is masked out.

Example:
    >>> batch = ShiftedBatch.of([[5, 6, 7], [8, 9]], pad_id=0)
    >>> batch.inputs.tolist(), batch.targets.tolist(), batch.lengths
    ([[5, 6], [8, 0]], [[6, 7], [9, 0]], [2, 1])
    >>> batch.spread([[0.5, 1.0], [2.0]]).tolist()
    [[0.5, 1.0], [2.0, 0.0]]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass
class ShiftedBatch:
    """Padded inputs, their next-token targets, the attention mask and each row's length."""

    inputs: torch.Tensor
    targets: torch.Tensor
    mask: torch.Tensor
    lengths: list[int]

    @classmethod
    def of(cls, sequences: Sequence[Sequence[int]], pad_id: int) -> ShiftedBatch:
        """Pads `sequences` (each of at least 2 tokens) on the host, in one tensor each."""
        lengths = [len(tokens) - 1 for tokens in sequences]
        width = max(lengths)
        inputs = torch.full((len(sequences), width), pad_id, dtype=torch.long)
        targets = torch.full_like(inputs, pad_id)
        mask = torch.zeros_like(inputs)
        for row, (tokens, n) in enumerate(zip(sequences, lengths, strict=True)):
            row_tokens = torch.tensor(tokens, dtype=torch.long)
            inputs[row, :n], targets[row, :n], mask[row, :n] = row_tokens[:-1], row_tokens[1:], 1
        return cls(inputs, targets, mask, lengths)

    def spread(
        self, values: Sequence[Sequence[float]], starts: Sequence[int] | None = None
    ) -> torch.Tensor:
        """A (rows, width) float tensor holding row i's `values[i]` from target position
        `starts[i]` (default 0), zeros elsewhere: per-target weights, sampler log-probs."""
        out = torch.zeros(self.inputs.shape, device=self.inputs.device)
        for row, row_values in enumerate(values):
            start = 0 if starts is None else starts[row]
            out[row, start : start + len(row_values)] = torch.tensor(row_values)
        return out

    def to(self, device: torch.device | str) -> ShiftedBatch:
        """The same batch on `device` (one copy per tensor)."""
        return ShiftedBatch(
            self.inputs.to(device), self.targets.to(device), self.mask.to(device), self.lengths
        )


def token_logprobs(
    model: torch.nn.Module, batch: ShiftedBatch, *, temperature: float = 1.0
) -> torch.Tensor:
    """(rows, width) float32 `log p(target | prefix)` under `model` (logits divided by
    `temperature`); padded positions hold values to be masked by the caller."""
    logits = model(input_ids=batch.inputs, attention_mask=batch.mask).logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    losses = torch.nn.functional.cross_entropy(
        logits.flatten(0, 1), batch.targets.flatten(), reduction="none"
    )
    return -losses.view_as(batch.targets).to(torch.float32)


def score_sequences(
    model: torch.nn.Module, sequences: Sequence[Sequence[int]]
) -> list[list[float]]:
    """`log p(tokens[j] | tokens[:j])` for j >= 1 of each sequence, in one forward pass (the
    caller holds `torch.no_grad()` and eval mode).

    Example:
        >>> score_sequences(model, [[1, 2, 3], [4, 5]])  # doctest: +SKIP
        [[-10.3, -9.8], [-11.0]]
    """
    device = next(model.parameters()).device
    shifted = ShiftedBatch.of(sequences, pad_id=0).to(device)  # padding is masked: any id works
    rows = token_logprobs(model, shifted).cpu().tolist()
    return [row[:n] for row, n in zip(rows, shifted.lengths, strict=True)]
