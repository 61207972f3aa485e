"""Held-out loss: mean per-token negative log-likelihood of weighted examples, and bits per byte."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from bios_callbacks.evaluators.base import TrainingClientEvaluator
from bios_callbacks.evaluators.stats import ratio_stderr
from bios_callbacks.training_client import TrainingClient


def _tokens_and_weights(example: Any, index: int) -> tuple[list[int], list[float]]:
    if isinstance(example, Mapping):
        tokens, weights = example.get("tokens"), example.get("weights")
    elif hasattr(example, "tokens"):
        tokens, weights = example.tokens, getattr(example, "weights", None)
    elif isinstance(example, tuple) and len(example) == 2 and not isinstance(example[0], int):
        tokens, weights = example
    else:
        tokens, weights = example, None
    if tokens is None:
        raise ValueError(
            f"NLLEvaluator example {index} is {example!r}: expected a token list, a "
            "(tokens, weights) pair, a dict with 'tokens'/'weights', or a SupervisedExample."
        )
    tokens = [int(t) for t in tokens]
    weights = [1.0] * len(tokens) if weights is None else [float(w) for w in weights]
    if len(tokens) < 2:
        raise ValueError(
            f"NLLEvaluator example {index} has {len(tokens)} token(s): need at least 2 "
            "(a prefix and a token to score)."
        )
    if len(weights) != len(tokens):
        raise ValueError(
            f"NLLEvaluator example {index}: {len(tokens)} tokens but {len(weights)} weights; "
            "give one weight per token."
        )
    return tokens, weights


def _counted_bytes(tokens: list[int], counted: list[bool], tokenizer: Any) -> int:
    """UTF-8 bytes of the counted tokens' text, each run of counted tokens decoded together
    (a character split across tokens is counted once)."""
    runs: list[list[int]] = [[]]
    for token, is_counted in zip(tokens, counted, strict=True):
        if is_counted:
            runs[-1].append(token)
        elif runs[-1]:
            runs.append([])
    return sum(
        len(tokenizer.decode(run, skip_special_tokens=False).encode("utf-8")) for run in runs if run
    )


class NLLEvaluator(TrainingClientEvaluator):
    """Test loss: weighted mean of ``-log p(token | prefix)`` over held-out examples, and bits
    per byte.

    Each example is a token list (every token but the first counts), a ``(tokens, weights)``
    pair, a dict with ``tokens``/``weights``, or a renderer's ``SupervisedExample`` (weight 1 on
    assistant tokens). The weight of token j scales the loss of predicting it from tokens[:j].

    Returns ``loss`` (mean per-token NLL in nats) and ``nll`` (the same number under
    tinker-cookbook's name), each with ``<name>_stderr``: the loss is a ratio (all examples'
    weighted NLL over all their weights), so its standard error treats each example as one draw
    (delta method, clustered by example); it is left out with fewer than two weighted examples.

    With a tokenizer (``tokenizer=``, else the training client's) it also returns ``bpb``, bits
    per byte as tinker-cookbook computes it: ``sum(-log p) / (ln 2 * bytes)`` over the tokens
    with weight > 0 that are not special tokens (end-of-turn markers carry no text), where
    ``bytes`` is the UTF-8 length of those tokens' text. Unlike the per-token loss it does not
    depend on the tokenizer, so it compares models with different vocabularies. ``bpb_stderr``
    comes with it; both are left out when the counted tokens have no text.

    Example:
        >>> from bios_callbacks.renderers import get_renderer          # doctest: +SKIP
        >>> renderer = get_renderer(name="chatml", tokenizer=tokenizer)  # doctest: +SKIP
        >>> evaluator = NLLEvaluator.from_conversations(held_out_chats, renderer)  # doctest: +SKIP
        >>> await evaluator(training_client)                            # doctest: +SKIP
        {'loss': 2.31, 'loss_stderr': 0.08, 'nll': 2.31, 'nll_stderr': 0.08, 'bpb': 0.93,
         'bpb_stderr': 0.03}
    """

    def __init__(
        self,
        examples: Sequence[Any],
        *,
        name: str = "nll",
        prompts: Sequence[str] = (),
        tokenizer: Any = None,
    ):
        if len(examples) == 0:
            raise ValueError("NLLEvaluator got no examples: pass at least one held-out example.")
        self.examples = [_tokens_and_weights(e, i) for i, e in enumerate(examples)]
        if sum(sum(w[1:]) for _, w in self.examples) <= 0:
            raise ValueError(
                "NLLEvaluator: every weight after the first token is 0, so there is no loss to "
                "average; put weight 1 on the tokens to score."
            )
        self.name = name
        self.tokenizer = tokenizer
        self._prompts = list(prompts)
        self._counted_for: tuple[Any, list[list[bool]], list[float]] | None = None

    @classmethod
    def from_conversations(
        cls,
        conversations: Sequence[Sequence[Mapping[str, str]]],
        renderer: Any,
        *,
        name: str = "nll",
    ) -> NLLEvaluator:
        """Builds examples with ``renderer.build_supervised_example`` (loss on every assistant
        message: ``TrainOnWhat.ALL_ASSISTANT_MESSAGES``); bits per byte use its tokenizer.

        Example:
            >>> NLLEvaluator.from_conversations(  # doctest: +SKIP
            ...     [[{"role": "user", "content": "Hi"},
            ...       {"role": "assistant", "content": "Hello"}]],
            ...     renderer)
        """
        examples = [
            renderer.build_supervised_example(list(c), "all_assistant_messages")
            for c in conversations
        ]
        prompts = [m["content"] for c in conversations for m in c if m.get("role") == "user"]
        return cls(examples, name=name, prompts=prompts, tokenizer=renderer.tokenizer)

    def eval_prompts(self) -> Sequence[str]:
        """The user turns of the held-out conversations (when built from conversations)."""
        return self._prompts

    async def __call__(self, training_client: TrainingClient) -> dict[str, float]:
        logprobs = await training_client.compute_logprobs_async([t for t, _ in self.examples])
        nll_sums: list[float] = []  # per example: its weighted NLL and its total weight
        weight_sums: list[float] = []
        for (_, weights), lps in zip(self.examples, logprobs, strict=True):
            pairs = list(zip(weights[1:], lps, strict=True))
            nll_sums.append(-sum(weight * lp for weight, lp in pairs))
            weight_sums.append(sum(weight for weight, _ in pairs))
        loss = sum(nll_sums) / sum(weight_sums)
        stderr = ratio_stderr(nll_sums, weight_sums)
        result: dict[str, float] = {}
        for key in ("loss", "nll"):  # nll: tinker-cookbook's name for the same number
            result[key] = loss
            if stderr is not None:
                result[f"{key}_stderr"] = stderr
        tokenizer = self.tokenizer or getattr(training_client, "tokenizer", None)
        if tokenizer is not None:
            result |= self._bits_per_byte(logprobs, tokenizer)
        return result

    def _counted(self, tokenizer: Any) -> tuple[list[list[bool]], list[float]]:
        """Per example: which tokens bits per byte counts, and their bytes. The same every
        round, so decoded once per tokenizer."""
        if self._counted_for is None or self._counted_for[0] is not tokenizer:
            special = set(getattr(tokenizer, "all_special_ids", None) or ())
            masks: list[list[bool]] = []
            byte_counts: list[float] = []
            for tokens, weights in self.examples:
                counted = [w > 0 and t not in special for t, w in zip(tokens, weights, strict=True)]
                counted[0] = False  # the first token has no prefix: never scored
                masks.append(counted)
                byte_counts.append(float(_counted_bytes(tokens, counted, tokenizer)))
            self._counted_for = (tokenizer, masks, byte_counts)
        return self._counted_for[1], self._counted_for[2]

    def _bits_per_byte(self, logprobs: list[list[float]], tokenizer: Any) -> dict[str, float]:
        masks, byte_counts = self._counted(tokenizer)
        bits = [  # per example: the counted tokens' NLL in bits
            -sum(lp for lp, c in zip(lps, counted[1:], strict=True) if c) / math.log(2)
            for lps, counted in zip(logprobs, masks, strict=True)
        ]
        if sum(byte_counts) == 0:
            return {}
        result = {"bpb": sum(bits) / sum(byte_counts)}
        stderr = ratio_stderr(bits, byte_counts)
        if stderr is not None:
            result["bpb_stderr"] = stderr
        return result
