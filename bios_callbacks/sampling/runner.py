"""The model side of decoding: batch tensors, prefill, one decode step, choosing tokens.

`ModelRunner` knows the model and its tokenizer but nothing of threads or queues; the engine
tells it which samples join (`prefill`) and when to step (`decode`).
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator

import torch
from torch.profiler import record_function

from bios_callbacks.models.tokens import pad_token_id
from bios_callbacks.models.train_flags import evaluation_mode
from bios_callbacks.sampling.decode_forward import DecodeForward
from bios_callbacks.sampling.kv_cache import BatchCache, uses_sliding_window
from bios_callbacks.sampling.packed_linear import WeightPacks, packed_linears
from bios_callbacks.sampling.prefix_cache import PrefixCache, SharedPrefix
from bios_callbacks.sampling.request import Part
from bios_callbacks.sampling.sequence import Sequence
from bios_callbacks.sampling.token_sampling import next_tokens


class Batch:
    """Rows decoding together: their cache, attention mask, next inputs and sampling settings."""

    def __init__(self, seqs: list[Sequence], cache: BatchCache, mask: torch.Tensor) -> None:
        self.seqs, self.cache, self.mask = seqs, cache, mask
        self.positions = mask.sum(dim=1)
        self.next_input = torch.zeros_like(self.positions)
        params = [s.request.params for s in seqs]
        device = mask.device
        self.temperature = torch.tensor([p.temperature for p in params], device=device)
        self.top_k = torch.tensor([p.top_k for p in params], device=device)
        self.top_p = torch.tensor([p.top_p for p in params], device=device)

    def __len__(self) -> int:
        return len(self.seqs)

    def longest_reservation(self) -> int:
        """The most cache positions any of its rows can reach."""
        return max((s.request.reserved_tokens for s in self.seqs), default=0)

    def drop_abandoned(self) -> None:
        """Drops the rows of requests already resolved: cancelled by their caller, or failed."""
        rows = [row for row, seq in enumerate(self.seqs) if not seq.request.future.done()]
        if len(rows) < len(self):
            self.keep(rows)

    def keep(self, rows: list[int]) -> None:
        """Keeps only `rows`, then drops leading cache positions that are padding in all of them."""
        index = torch.tensor(rows, dtype=torch.long, device=self.mask.device)
        self.seqs = [self.seqs[i] for i in rows]
        self.cache.select_rows(index)
        for name in ("mask", "positions", "next_input", "temperature", "top_k", "top_p"):
            setattr(self, name, getattr(self, name)[index])
        padding = int(self.mask.any(dim=0).int().argmax())
        self.cache.trim_left(padding)
        self.mask = self.mask[:, padding:]

    def extend(self, other: Batch, headroom: int) -> None:
        """Appends the rows of `other`, left-padding the shorter cache."""
        self.cache.append_rows(other.cache, headroom)
        width = max(self.mask.shape[1], other.mask.shape[1])
        self.mask = torch.cat([_left_pad(self.mask, width), _left_pad(other.mask, width)])
        self.seqs += other.seqs
        for name in ("positions", "next_input", "temperature", "top_k", "top_p"):
            setattr(self, name, torch.cat([getattr(self, name), getattr(other, name)]))


class ModelRunner:
    """Runs a transformers causal LM for the engine: prefill, decode steps, token choice.

    Args:
        model: the causal LM (its weights are used in place, never copied).
        tokenizer: its tokenizer (stop strings, padding).
        compute_dtype: autocast dtype for forward passes, or None for the weights' own.
        prefix_caching: reuse the keys and values of a prompt prefix recent prompts share.
            Always off for sliding-window models.

    `pack_weights` (default True) runs float32 CPU linear layers on oneDNN-packed weights
    without autocast (`packed_linear`), and `lean_decode` (default True) runs the decode steps of
    float32 Llama-family models without autocast in one loop (`decode_forward`); benches turn
    them off to compare. Packed copies are freed at the end of each busy period, unless
    `keep_packs` (the engine's `keep_packed_weights`) keeps the own loop's from one period to the
    next, for a model nobody trains, until `release()`.
    Forward passes and token choice are labelled `bios.forward` and `bios.choose_tokens` for
    `torch.profiler`.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer,
        *,
        compute_dtype: torch.dtype | None,
        prefix_caching: bool,
    ) -> None:
        self.model, self.tokenizer, self.compute_dtype = model, tokenizer, compute_dtype
        config = model.config
        text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
        self.context_length: int | None = getattr(text_config, "max_position_embeddings", None)
        self.vocab_size: int = model.get_input_embeddings().num_embeddings
        self._stop_ids = _eos_ids(model, tokenizer)
        self._pad_id = pad_token_id(tokenizer)
        forward_args = inspect.signature(_base_model(model).forward).parameters
        self._cache_arg = "cache" if "cache" in forward_args else "past_key_values"
        self._trim_logits = "logits_to_keep" in forward_args
        caching = prefix_caching and not uses_sliding_window(text_config)
        self._prefixes = PrefixCache(self._encode_prefix) if caching else None
        self._decode_now: DecodeForward | None = None  # while serving, where usable
        self.keep_packs = False
        self._kept_packs = WeightPacks()  # kept from one busy period to the next
        self.pack_weights = True
        self.lean_decode = True

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @contextlib.contextmanager
    def serving(self) -> Iterator[None]:
        """One busy period: no gradients, eval mode (flags restored after), autocast or packed
        float32 weights (`packed_linear`), the own decode loop where the model allows it
        (`decode_forward`, checked anew: a live model may change between periods), and a prefix
        cache checked against the weights."""
        if self._prefixes is not None:
            self._prefixes.check_weights(self.model)
        lean = self._own_decode_loop()
        keep = self.keep_packs and self.pack_weights and lean is not None
        if keep:
            self._kept_packs.keep_only(lean.product_groups())
        else:
            self._kept_packs.clear()
        with contextlib.ExitStack() as speedups:
            if self.compute_dtype is not None:
                speedups.enter_context(torch.autocast(self.device.type, dtype=self.compute_dtype))
            elif self.pack_weights:
                speedups.enter_context(packed_linears(self.model))  # steps it cannot take
                if lean is not None:
                    speedups.enter_context(lean.packing(self._kept_packs if keep else None))
            speedups.enter_context(torch.no_grad())
            speedups.enter_context(evaluation_mode(self.model))
            self._decode_now = lean
            try:
                yield
            finally:
                self._decode_now = None

    def _own_decode_loop(self) -> DecodeForward | None:
        """The own decode loop for a busy period, where the settings and the model allow it."""
        if not self.lean_decode or self.compute_dtype is not None:
            return None
        lean = DecodeForward.for_model(self.model)
        return lean if lean is not None and lean.usable() else None

    def release(self) -> None:
        """Frees what is kept between busy periods (packed weights)."""
        self._kept_packs.clear()

    def prefill(self, parts: list[Part]) -> Batch:
        """Runs the prompts through the model (after a cached shared prefix, if any) and
        chooses each sample's first token; finished samples have already left the batch."""
        device = self.device
        prompts = [request.prompt for request, _ in parts]
        prefix = self._prefixes.find(prompts) if self._prefixes is not None else None
        start = len(prefix.tokens) if prefix is not None else 0
        width = max(len(p) for p in prompts) - start
        ids = torch.full((len(prompts), width), self._pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, prompt in enumerate(prompts):
            rest = prompt[start:]
            ids[row, width - len(rest) :] = torch.tensor(rest)
            mask[row, width - len(rest) :] = 1
        ids, mask = ids.to(device), mask.to(device)
        if prefix is None:
            cache = BatchCache()
        else:  # rows hold [prefix][padding][rest of the prompt]; the mask skips the padding
            cache = prefix.cache_for(len(prompts), headroom=width)
            mask = torch.cat([mask.new_ones(len(prompts), start), mask], dim=1)
        positions = (mask.cumsum(1) - 1).clamp(min=0)[:, start:]
        logits = self._forward(ids, mask, positions, cache, prefill=True)

        if any(len(samples) > 1 for _, samples in parts):
            repeats = torch.tensor([len(samples) for _, samples in parts], device=device)
            index = torch.repeat_interleave(torch.arange(len(parts), device=device), repeats)
            cache.select_rows(index)
            mask, logits = mask[index], logits[index]
        seqs = [
            Sequence(request, i, self._stop_ids, self.tokenizer)
            for request, samples in parts
            for i in samples
        ]
        batch = Batch(seqs, cache, mask)
        self._advance(batch, logits)
        return batch

    def decode(self, batch: Batch) -> None:
        """One decode step: every row gets its next token; finished rows leave."""
        mask = torch.nn.functional.pad(batch.mask, (0, 1), value=1)
        if self._decode_now is not None and self._decode_now.usable_now():
            with record_function("bios.forward"):
                logits = self._decode_now(batch.next_input, mask, batch.positions, batch.cache)
        else:
            logits = self._forward(
                batch.next_input[:, None],
                mask,
                batch.positions[:, None],
                batch.cache,
                prefill=False,
            )
        batch.mask = mask
        batch.positions = batch.positions + 1
        self._advance(batch, logits)

    def _encode_prefix(self, tokens: list[int]) -> SharedPrefix:
        ids = torch.tensor([tokens], device=self.device)
        cache = BatchCache()
        positions = torch.arange(len(tokens), device=self.device)[None]
        self._forward(ids, torch.ones_like(ids), positions, cache, prefill=True)
        return SharedPrefix(
            tuple(tokens),
            tuple(layer.keys for layer in cache.layers),
            tuple(layer.values for layer in cache.layers),
        )

    def _forward(self, ids, mask, positions, cache: BatchCache, *, prefill: bool) -> torch.Tensor:
        kwargs = {self._cache_arg: cache}
        if prefill and self._trim_logits:
            kwargs["logits_to_keep"] = 1
        with record_function("bios.forward"):
            out = self.model(
                input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **kwargs
            )
        return out.logits[:, -1]

    def _advance(self, batch: Batch, logits: torch.Tensor) -> None:
        """Samples each row's next token, records it, and lets finished rows leave."""
        with record_function("bios.choose_tokens"):
            if all(s.request.params.temperature == 0 for s in batch.seqs):
                uniform = None
            else:
                uniform = torch.tensor([s.uniform() for s in batch.seqs], device=logits.device)
            tokens, logprobs = next_tokens(
                logits, batch.temperature, batch.top_k, batch.top_p, uniform
            )
            batch.next_input = tokens
            pushed = zip(batch.seqs, tokens.tolist(), logprobs.tolist(), strict=True)
            keep = [row for row, (seq, tok, logp) in enumerate(pushed) if not seq.push(tok, logp)]
        if len(keep) < len(batch):
            batch.keep(keep)


def _left_pad(mask: torch.Tensor, width: int) -> torch.Tensor:
    return torch.nn.functional.pad(mask, (width - mask.shape[1], 0))


def _base_model(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model under a peft wrapper, if any."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def _eos_ids(model: torch.nn.Module, tokenizer) -> set[int]:
    ids: set[int] = set()
    generation_config = getattr(model, "generation_config", None)
    eos = getattr(generation_config, "eos_token_id", None)
    for value in (eos, tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif value is not None:
            ids.update(int(v) for v in value)
    return ids
