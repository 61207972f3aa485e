"""A decode step's forward pass for Llama-family models, in one loop instead of transformers'
module tree.

A decode step runs every decoder layer on one new token per sequence. Transformers' modules
spend much of such a step in Python around the operators (argument handling and decorators per
module, the attention interface lookup, building a 4-D mask per forward): ~30 ms of a ~130 ms
step for 32 rows of SmolLM2-135M on these 2 CPU cores (`bench/decode_step.py`). `DecodeForward`
runs the same computation in one loop over the layers, reading the model's weights in place:
the query, key and value products as one product on weights packed side by side
(`packed_linear.WeightPacks`), likewise the MLP's gate and up products; `rms_norm` as one
operator; and one SDPA call per layer in which the query heads that share a key/value head
attend as one group, so the cache is never repeated per query head. The embeddings and the
rotary embedding are the model's own modules, and the rotation its family's own function.

It serves float32 Llama, Mistral, Qwen2 and Qwen3 models (not wrapped, e.g. by peft) whose
linear layers are plain `nn.Linear`s and whose parameters are plain tensors, without sliding
windows, without patched `forward`s, and for the steps when no module has forward hooks
(FSDP's, a user's); everything else keeps transformers' forward. The engine checks at the start
of every busy period, so a model changed in between (an adapter injected, weights cast) is
checked again. The engine's tests compare both forwards' logits step by step.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from bios_callbacks.sampling.kv_cache import BatchCache, uses_sliding_window
from bios_callbacks.sampling.packed_linear import (
    WeightPacks,
    is_packed_forward,
    packable,
    packing_available,
    shared_packs,
)

FAMILIES = {"llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2", "qwen3": "Qwen3"}
"""transformers model packages (`transformers.models.<key>`) and their class-name prefixes."""

_ATTENTION = ("sdpa", "eager")  # what the per-layer SDPA call reproduces


class DecodeForward:
    """Logits of one decode step for a supported model; `for_model` says whether it is one.

    Example:
        >>> from transformers import LlamaConfig, LlamaForCausalLM
        >>> config = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32,
        ...                      num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1)
        >>> DecodeForward.for_model(LlamaForCausalLM(config)) is not None
        True
    """

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.decoder = model.model
        self.layers = list(self.decoder.layers[: model.config.num_hidden_layers])
        first = self.layers[0].self_attn
        self.head_dim: int = first.head_dim
        self.groups: int = first.num_key_value_groups
        self.scale: float = first.scaling
        self.qk_norm = hasattr(first, "q_norm")
        self._rotate = _family_module(model).apply_rotary_pos_emb
        # the products of each layer, as packed together: q/k/v, o, gate/up, down
        self._products = [
            (
                (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj),
                (layer.self_attn.o_proj,),
                (layer.mlp.gate_proj, layer.mlp.up_proj),
                (layer.mlp.down_proj,),
            )
            for layer in self.layers
        ]
        self._head = (model.get_output_embeddings(),)
        self._packs: WeightPacks | None = None
        # modules this loop does not call: a hook on one needs transformers' forward (the
        # embeddings and the rotary embedding are called, so their hooks run, e.g. the one
        # gradient checkpointing puts on the input embeddings)
        called = (self.decoder.embed_tokens, self.decoder.rotary_emb)
        self._bypassed = [m for m in model.modules() if all(m is not c for c in called)]

    @classmethod
    def for_model(cls, model: torch.nn.Module) -> DecodeForward | None:
        """A `DecodeForward` for `model` (a transformers causal LM, not wrapped), or None where
        its architecture, configuration or weights are not ones this loop reproduces."""
        family = _family(model)
        if family is None:
            return None
        config = model.config
        if getattr(config, "_attn_implementation", None) not in _ATTENTION:
            return None
        if uses_sliding_window(config):
            return None
        prefix = FAMILIES[family]
        decoder = getattr(model, "model", None)
        if type(decoder).__name__ != f"{prefix}Model" or not len(decoder.layers):
            return None
        norm = f"{prefix}RMSNorm"
        wanted = [f"{prefix}{kind}" for kind in ("DecoderLayer", "Attention", "MLP")] + [norm] * 2
        for layer in decoder.layers:
            attention, mlp = layer.self_attn, layer.mlp
            parts = [layer, attention, mlp, layer.input_layernorm, layer.post_attention_layernorm]
            linears = [attention.q_proj, attention.k_proj, attention.v_proj, attention.o_proj]
            linears += [mlp.gate_proj, mlp.up_proj, mlp.down_proj]
            if [type(part).__name__ for part in parts] != wanted:
                return None
            if any(type(linear) is not torch.nn.Linear for linear in linears):
                return None  # LoRA layers, quantized layers
            norms = [getattr(attention, name, None) for name in ("q_norm", "k_norm")]
            if any(n is not None and type(n).__name__ != norm for n in norms):
                return None
        if type(decoder.norm).__name__ != norm:
            return None
        if type(model.get_output_embeddings()) is not torch.nn.Linear:
            return None  # e.g. LoRA on the output layer
        if any(_patched(module) for module in model.modules()):
            return None
        if not hasattr(_family_module(model), "apply_rotary_pos_emb"):
            return None
        return cls(model)

    def usable(self) -> bool:
        """Whether this forward may serve a busy period: every parameter a plain float32
        tensor (not a DTensor shard, not a quantized subclass). `usable_now()` is asked at
        every step."""
        return all(
            p.dtype == torch.float32 and type(p.data) is torch.Tensor
            for p in self.model.parameters()
        )

    def usable_now(self) -> bool:
        """Whether this step may run here: no forward hooks on any module (FSDP gathers its
        shards in hooks; a user's hook expects to be called) and no autocast; otherwise the
        step needs transformers' forward."""
        hooks = torch.nn.modules.module
        if hooks._global_forward_hooks or hooks._global_forward_pre_hooks:
            return False
        if torch.is_autocast_enabled(self.decoder.embed_tokens.weight.device.type):
            return False
        return not any(m._forward_hooks or m._forward_pre_hooks for m in self._bypassed)

    def product_groups(self) -> set[tuple[torch.nn.Linear, ...]]:
        """The linear layers it runs as one product each (the keys of its packs)."""
        return {group for layer in self._products for group in layer} | {self._head}

    @contextlib.contextmanager
    def packing(self, kept: WeightPacks | None = None) -> Iterator[None]:
        """Runs decode-sized products of CPU weights on oneDNN-packed copies while it lasts:
        `kept` (packs the caller keeps across blocks), else packs shared with the other blocks
        open on the model and freed by the last (see `packed_linear`)."""
        weight = self.model.get_output_embeddings().weight
        if not packing_available() or weight.device.type != "cpu":
            yield
            return
        with (
            contextlib.nullcontext(kept) if kept is not None else shared_packs(self.model) as packs
        ):
            self._packs = packs
            try:
                yield
            finally:
                self._packs = None

    def __call__(
        self,
        tokens: torch.Tensor,
        mask: torch.Tensor,
        positions: torch.Tensor,
        cache: BatchCache,
    ) -> torch.Tensor:
        """Next-token logits (rows, vocab) for each row's `tokens` (rows,) at `positions`
        (rows,), attending to the cache's columns plus this one as `mask` (rows, columns) says;
        writes the new keys and values into `cache`."""
        rows, dim = tokens.shape[0], self.head_dim
        packs = (
            self._packs if self._packs is not None and packable(rows, self._packs.made) else None
        )
        # called as transformers calls them in a decode step, so their hooks see the same
        hidden = self.decoder.embed_tokens(tokens[:, None])
        cos, sin = self.decoder.rotary_emb(hidden, positions[:, None])  # (rows, 1, dim)
        hidden = hidden[:, 0]
        attend = torch.zeros(mask.shape, dtype=hidden.dtype, device=hidden.device)
        attend = attend.masked_fill_(mask == 0, float("-inf"))[:, None, None, :]
        for layer, cached, (qkv, o, gate_up, down_proj) in zip(
            self.layers, cache.layers, self._products, strict=True
        ):
            attention = layer.self_attn
            q, k, v = _products(_rms_norm(layer.input_layernorm, hidden), qkv, packs)
            q = q.view(rows, -1, self.groups, dim)
            k, v = k.view(rows, -1, 1, dim), v.view(rows, -1, 1, dim)
            if self.qk_norm:
                q, k = _rms_norm(attention.q_norm, q), _rms_norm(attention.k_norm, k)
            q, k = self._rotate(q, k, cos, sin)  # cos and sin broadcast over the heads
            keys, values = cached.update(k, v)
            # (rows, kv heads, groups, dim): a key/value head's query heads attend together
            out = F.scaled_dot_product_attention(
                q, keys, values, attn_mask=attend, scale=self.scale
            )
            (attended,) = _products(out.reshape(rows, -1), o, packs)
            hidden = hidden + attended
            gate, up = _products(_rms_norm(layer.post_attention_layernorm, hidden), gate_up, packs)
            (down,) = _products(layer.mlp.act_fn(gate) * up, down_proj, packs)
            hidden = hidden + down
        (logits,) = _products(_rms_norm(self.decoder.norm, hidden), self._head, packs)
        return logits


def _family(model: torch.nn.Module) -> str | None:
    module = type(model).__module__  # e.g. transformers.models.llama.modeling_llama
    parts = module.split(".")
    if len(parts) != 4 or parts[:2] != ["transformers", "models"] or parts[2] not in FAMILIES:
        return None
    return parts[2] if type(model).__name__ == f"{FAMILIES[parts[2]]}ForCausalLM" else None


def _family_module(model: torch.nn.Module):
    """The transformers module that defines `model`'s class (its family's functions)."""
    return sys.modules[type(model).__module__]


def _patched(module: torch.nn.Module) -> bool:
    """A `forward` set on the instance (accelerate's hooks, activation patching), which this
    loop would bypass; `packed_linears`' own (another engine over the model) is no patch."""
    forward = module.__dict__.get("forward")
    if forward is not None and not is_packed_forward(forward):
        return True
    return hasattr(module, "_hf_hook")


def _products(
    x: torch.Tensor, layers: tuple[torch.nn.Linear, ...], packs: WeightPacks | None
) -> tuple[torch.Tensor, ...]:
    """`x` through each of `layers` (which share it as input): one packed product, or plain."""
    if packs is None:
        return tuple(F.linear(x, layer.weight, layer.bias) for layer in layers)
    out = packs.linear(x, layers)
    return out.split([layer.out_features for layer in layers], dim=-1)


def _rms_norm(norm: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return F.rms_norm(x, norm.weight.shape, norm.weight, norm.variance_epsilon)
