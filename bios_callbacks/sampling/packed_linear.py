"""Linear layers with weights pre-packed for oneDNN, for decoding on CPUs.

A decode step multiplies a few dozen rows by every weight matrix. On these 2-core CPUs MKL's
plain `sgemm` reaches 50-90 GFLOP/s on such skinny products (about 50 on the 49k-row output
embedding) of a ~150 GFLOP/s peak; oneDNN, with each weight reordered once into its blocked
layout, reaches about 110 (`bench/decode_step.py` prints a step with both).

`WeightPacks` holds the packed copies: each is made on first use (0.4 s for SmolLM2-135M's 134M
weights), remade if a weight changes (its version counter moves), and freed with the packs, so
a live training model costs one extra copy of its linear weights only while it is sampling.
Layers that share an input can be packed side by side and run as one product (the engine's own
decode loop, `decode_forward`, does that for q/k/v and gate/up). `packed_linears(model)` instead
lets a model's own `nn.Linear` layers use packed copies while a block runs.

Only float32 weights on CPU qualify (oneDNN's bf16 path needs AVX-512 or AVX-NE-CONVERT).
Only decode steps (one token per sequence) of up to `DECODE_ROWS` rows use the packs, and a
step of one sequence only once they are made (the last long answer of a batch); a prefill, and
anything computed with gradients or under autocast keep the plain layer, so a busy period of
single requests never packs.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator

import torch

from bios_callbacks.models.shared_blocks import SharedBlocks

DECODE_ROWS = 256
"""Products with at most this many input rows use the packed weights. Above (a prefill), MKL's
`sgemm` is faster (115-170 vs 95-140 GFLOP/s at 1344 rows); below, oneDNN is: a SmolLM2-135M
decode step of 2-12 rows ran 1.4-2.1x faster packed, of 1 row 1.25x (AVX2 EPYC, 2026-12-02)."""

_patched_blocks = SharedBlocks()  # the layers patched while blocks run on a model
_pack_blocks = SharedBlocks()  # the packs shared by the blocks open on a model


class WeightPacks:
    """Packed copies of linear layers' weights, made on first use and remade when they change.

    Example:
        >>> layers = (torch.nn.Linear(4, 3), torch.nn.Linear(4, 2))
        >>> x = torch.randn(8, 4)
        >>> with torch.no_grad():
        ...     out = WeightPacks().linear(x, layers)
        ...     expected = torch.cat([layer(x) for layer in layers], dim=-1)
        >>> out.shape, bool(torch.allclose(out, expected, atol=1e-6))
        (torch.Size([8, 5]), True)
    """

    def __init__(self) -> None:
        self._packs: dict[tuple[torch.nn.Linear, ...], tuple[tuple, torch.Tensor, object]] = {}
        self._lock = threading.Lock()  # two engines over one model pack each weight once

    @property
    def made(self) -> bool:
        """Whether any weight is packed yet."""
        return bool(self._packs)

    def linear(self, x: torch.Tensor, layers: tuple[torch.nn.Linear, ...]) -> torch.Tensor:
        """`x` through `layers` side by side: their outputs concatenated on the last dim."""
        tensors = [t for layer in layers for t in (layer.weight, layer.bias) if t is not None]
        version = tuple((t.data_ptr(), t._version) for t in tensors)
        entry = self._packs.get(layers)
        if entry is None or entry[0] != version:
            with self._lock:
                entry = self._packs.get(layers)
                if entry is None or entry[0] != version:
                    entry = (version, *_pack(layers))
                    self._packs[layers] = entry
        return torch.ops.mkldnn._linear_pointwise(x, entry[1], entry[2], "none", [], "")

    def keep_only(self, groups: set[tuple[torch.nn.Linear, ...]]) -> None:
        """Frees the packs of any other layers (replaced ones, say)."""
        self._packs = {key: entry for key, entry in self._packs.items() if key in groups}

    def clear(self) -> None:
        """Frees every pack."""
        self._packs = {}


def packing_available() -> bool:
    """Whether this torch build has oneDNN's packed linear op."""
    mkldnn = torch.ops.mkldnn
    return torch.backends.mkldnn.is_available() and hasattr(mkldnn, "_linear_pointwise")


def is_packed_forward(forward: object) -> bool:
    """Whether `forward` (found on a module instance) is the one `packed_linears` set."""
    return getattr(forward, "_bios_packed", False)


def packable(rows: int, packed: bool) -> bool:
    """Whether a decode step of `rows` sequences (one input row each) should run on packed
    weights, where `packed` says whether packs are made already: one sequence is not worth
    packing for (0.4 s for SmolLM2-135M), but runs faster on packs that exist."""
    return rows <= DECODE_ROWS and (rows > 1 or packed)


@contextlib.contextmanager
def shared_packs(model: torch.nn.Module) -> Iterator[WeightPacks]:
    """One `WeightPacks` for `model`, shared by the blocks open on it at once (two clients
    over one model), freed when the last ends."""
    with _pack_blocks.block(model, WeightPacks, lambda packs: None) as packs:
        yield packs


@contextlib.contextmanager
def packed_linears(model: torch.nn.Module) -> Iterator[None]:
    """Runs the block with `model`'s float32 CPU `nn.Linear` layers on packed weights.

    Blocks may overlap (two clients over one model): the layers are patched by the first and
    restored by the last. Without oneDNN in this torch build, nothing changes.
    """

    def patch() -> list[torch.nn.Linear]:
        if not packing_available():
            return []
        patched = [m for m in model.modules() if _qualifies(m)]
        packs = WeightPacks()
        for module in patched:
            module.forward = _packed_forward(module, packs)
        return patched

    def restore(patched: list[torch.nn.Linear]) -> None:
        for module in patched:
            del module.forward  # back to the class's forward

    with _patched_blocks.block(model, patch, restore):
        yield


def _pack(layers: tuple[torch.nn.Linear, ...]) -> tuple[torch.Tensor, torch.Tensor | None]:
    weights = [layer.weight.detach() for layer in layers]
    weight = weights[0] if len(weights) == 1 else torch.cat(weights)
    bias = None  # side by side, a layer without a bias adds zeros
    if any(layer.bias is not None for layer in layers):
        parts = [
            layer.bias.detach() if layer.bias is not None else w.new_zeros(w.shape[0])
            for layer, w in zip(layers, weights, strict=True)
        ]
        bias = torch.cat(parts)
    return torch.ops.mkldnn._reorder_linear_weight(weight), bias


def _qualifies(module: torch.nn.Module) -> bool:
    if type(module) is not torch.nn.Linear or "forward" in module.__dict__:
        return False
    weight = module.weight
    return weight.dtype == torch.float32 and weight.device.type == "cpu"


def _packed_forward(
    module: torch.nn.Linear, packs: WeightPacks
) -> Callable[[torch.Tensor], torch.Tensor]:
    plain = torch.nn.Linear.forward.__get__(module)
    layers = (module,)

    def forward(x: torch.Tensor) -> torch.Tensor:
        if (
            x.dim() != 3
            or x.shape[1] != 1  # a prefill: MKL is as fast at its row counts, and needs no pack
            or not packable(x.shape[0], packs.made)
            or x.dtype != module.weight.dtype
            or torch.is_grad_enabled()
            or torch.is_autocast_enabled("cpu")
        ):
            return plain(x)
        return packs.linear(x, layers)

    forward._bios_packed = True  # type: ignore[attr-defined]
    return forward
