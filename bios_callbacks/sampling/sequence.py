"""The state of one sample while it decodes: its tokens, its generator, when it stops."""

from __future__ import annotations

import torch

from bios_callbacks.sampling.request import Request
from bios_callbacks.types import SampledSequence

_SEED_STRIDE = 0x9E3779B97F4A7C15
_SEED_MASK = (1 << 63) - 1


class Sequence:
    """Sample `index` of `request`: tokens so far, stop conditions and its own generator.

    Sample i is seeded with `request.seed + (request.first_sample + i) * stride`, so its tokens
    do not depend on which other rows share the batch, on the wave it joined in, nor on which
    process decodes it.
    """

    def __init__(self, request: Request, index: int, stop_ids: set[int], tokenizer) -> None:
        params = request.params
        self.request, self.index, self.tokenizer = request, index, tokenizer
        self.stop_ids = stop_ids | set(params.stop_token_ids())
        self.stop_strings = params.stop_strings()
        self.window = max((len(s) for s in self.stop_strings), default=0) + 2
        seed = (request.seed + (request.first_sample + index) * _SEED_STRIDE) & _SEED_MASK
        self.generator = torch.Generator().manual_seed(seed)
        self.tokens: list[int] = []
        self.logprobs: list[float] = []

    def uniform(self) -> float:
        """The next number in [0, 1) from this sample's generator (0 for greedy)."""
        if self.request.params.temperature == 0:
            return 0.0
        return float(torch.rand((), generator=self.generator))

    def push(self, token: int, logprob: float) -> bool:
        """Records a token; returns True when the sequence is finished."""
        self.tokens.append(token)
        self.logprobs.append(logprob)
        if token in self.stop_ids or self._ends_with_stop_string():
            reason = "stop"
        elif len(self.tokens) >= self.request.max_new_tokens:
            reason = "length"
        else:
            return False
        self.request.record(self.index, SampledSequence(self.tokens, self.logprobs, reason))
        return True

    def _ends_with_stop_string(self) -> bool:
        if not self.stop_strings:
            return False
        tail = self.tokenizer.decode(self.tokens[-self.window :], skip_special_tokens=False)
        return any(s in tail for s in self.stop_strings)
