"""Choosing the next token for a batch of rows, each with its own sampling settings.

Every row brings one uniform number drawn from its own generator, and the token is found by
inverting the row's cumulative distribution. A row's result therefore depends only on its own
logits and seed, not on which other rows share the batch.
"""

from __future__ import annotations

import torch


def next_tokens(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    top_k: torch.Tensor,
    top_p: torch.Tensor,
    uniform: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Picks one token per row and returns `(tokens, logprobs)`.

    Args:
        logits: (rows, vocab) float logits.
        temperature: (rows,) 0 for greedy.
        top_k: (rows,) k, or <= 0 for no limit.
        top_p: (rows,) nucleus mass in (0, 1].
        uniform: (rows,) numbers in [0, 1) from each row's generator; None when every row is
            greedy (the caller knows, so no device sync is spent finding out).

    The log-probability is that of the distribution the token was drawn from (after
    temperature, top-k and top-p); greedy rows report the model's own log-probability.

    Example:
        >>> logits = torch.tensor([[0.0, 5.0, 1.0]])
        >>> tokens, _ = next_tokens(logits, torch.zeros(1), torch.zeros(1), torch.ones(1), None)
        >>> tokens.tolist()
        [1]
    """
    logits = logits.float()
    if uniform is None:
        tokens = logits.argmax(dim=-1)
        logprobs = torch.log_softmax(logits, dim=-1).gather(1, tokens[:, None])[:, 0]
        return tokens, logprobs
    greedy = temperature == 0

    scaled = logits / torch.where(greedy, 1.0, temperature)[:, None]
    scaled = _mask_top_k(scaled, top_k)
    scaled = _mask_top_p(scaled, top_p)
    logp = torch.log_softmax(scaled, dim=-1)
    cdf = logp.exp().cumsum(dim=-1)
    targets = uniform[:, None] * cdf[:, -1:]
    sampled = torch.searchsorted(cdf, targets)[:, 0].clamp_(max=logits.shape[-1] - 1)
    # Never land on a masked token because of rounding at the top of the CDF.
    sampled = torch.where(
        torch.isinf(logp.gather(1, sampled[:, None]))[:, 0], scaled.argmax(dim=-1), sampled
    )

    tokens = torch.where(greedy, logits.argmax(dim=-1), sampled)
    greedy_logp = torch.log_softmax(logits, dim=-1).gather(1, tokens[:, None])[:, 0]
    sampled_logp = logp.gather(1, tokens[:, None])[:, 0]
    return tokens, torch.where(greedy, greedy_logp, sampled_logp)


def _mask_top_k(scaled: torch.Tensor, top_k: torch.Tensor) -> torch.Tensor:
    limited = (top_k > 0) & (top_k < scaled.shape[-1])
    if not bool(limited.any()):
        return scaled
    k_max = int(top_k[limited].max())
    top_values = scaled.topk(k_max, dim=-1).values
    kth = top_values.gather(1, (top_k.clamp(1, k_max) - 1)[:, None])
    drop = limited[:, None] & (scaled < kth)
    return scaled.masked_fill(drop, float("-inf"))


def _mask_top_p(scaled: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    limited = top_p < 1.0
    if not bool(limited.any()):
        return scaled
    sorted_logits, order = scaled.sort(dim=-1, descending=True)
    probs = torch.softmax(sorted_logits, dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs
    drop_sorted = limited[:, None] & (mass_before >= top_p[:, None])
    drop = torch.zeros_like(drop_sorted).scatter(1, order, drop_sorted)
    return scaled.masked_fill(drop, float("-inf"))
