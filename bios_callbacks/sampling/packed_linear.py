"""Linear layers with weights pre-packed for oneDNN, for decoding on CPUs.

A decode step multiplies a few dozen rows by every weight matrix. On these 2-core CPUs MKL's
plain `sgemm` reaches 50-90 GFLOP/s on such skinny products (about 50 on the 49k-row output
embedding) of a ~150 GFLOP/s peak; oneDNN, with each weight reordered once into its blocked
layout, reaches about 110 (`bench/decode_step.py` prints a step with both).
`packed_linears(model)` lets the model's `nn.Linear` layers use packed copies while the block
runs: each weight is packed on first use (0.4 s for SmolLM2-135M's 134M weights), repacked if it
changes (its version counter moves), and the copies are freed when the block ends, so a live
training model costs one extra copy of its linear weights only while it is sampling.

Only float32 weights on CPU qualify (oneDNN's bf16 path needs AVX-512 or AVX-NE-CONVERT).
Only decode-sized products (`DECODE_ROWS`) from batches of 2+ sequences use the packs; a batch
of one sequence, a prefill, and anything computed with gradients or under autocast keep the
plain layer, so a busy period of single requests never packs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch

from bios_callbacks.models.shared_blocks import SharedBlocks

DECODE_ROWS = (8, 256)
"""Products with this many input rows use the packed weights. Below, oneDNN's per-call cost
shows; above (a prefill), MKL's `sgemm` is faster (115-170 vs 95-140 GFLOP/s at 1344 rows)."""

_blocks = SharedBlocks()  # the layers patched while blocks run on a model


@contextlib.contextmanager
def packed_linears(model: torch.nn.Module) -> Iterator[None]:
    """Runs the block with `model`'s float32 CPU `nn.Linear` layers on packed weights.

    Blocks may overlap (two clients over one model): the layers are patched by the first and
    restored by the last. Without oneDNN in this torch build, nothing changes.
    """

    def patch() -> list[torch.nn.Linear]:
        if not _available():
            return []
        patched = [m for m in model.modules() if _qualifies(m)]
        packs: dict[torch.nn.Linear, tuple[tuple[int, int], torch.Tensor]] = {}
        for module in patched:
            module.forward = _packed_forward(module, packs)
        return patched

    def restore(patched: list[torch.nn.Linear]) -> None:
        for module in patched:
            del module.forward  # back to the class's forward

    with _blocks.block(model, patch, restore):
        yield


def _available() -> bool:
    mkldnn = torch.ops.mkldnn
    return torch.backends.mkldnn.is_available() and hasattr(mkldnn, "_linear_pointwise")


def _qualifies(module: torch.nn.Module) -> bool:
    if type(module) is not torch.nn.Linear or "forward" in module.__dict__:
        return False
    weight = module.weight
    return weight.dtype == torch.float32 and weight.device.type == "cpu"


def _packed_forward(
    module: torch.nn.Linear, packs: dict[torch.nn.Linear, tuple[tuple[int, int], torch.Tensor]]
) -> Callable[[torch.Tensor], torch.Tensor]:
    plain = torch.nn.Linear.forward.__get__(module)

    def forward(x: torch.Tensor) -> torch.Tensor:
        weight = module.weight
        if (
            x.shape[0] == 1  # one sequence: the plain layer is as fast, and needs no packing
            or not DECODE_ROWS[0] <= x.numel() // x.shape[-1] <= DECODE_ROWS[1]
            or x.dtype != weight.dtype
            or torch.is_grad_enabled()
            or torch.is_autocast_enabled("cpu")
        ):
            return plain(x)
        version = (weight.data_ptr(), weight._version)
        entry = packs.get(module)
        if entry is None or entry[0] != version:
            entry = (version, torch.ops.mkldnn._reorder_linear_weight(weight.detach()))
            packs[module] = entry
        return torch.ops.mkldnn._linear_pointwise(x, entry[1], module.bias, "none", [], "")

    return forward
