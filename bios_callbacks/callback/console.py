"""What a round prints on the console, through the progress bar so a TQDM or Rich bar stays
intact: a start line, each evaluator's values as it finishes, and a heartbeat with the samples
finished so far while a long round runs.

Example:
    >>> format_values({"accuracy": 0.875, "scored": 16.0})
    'accuracy=0.875 scored=16'
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

Emit = Callable[[str], None]


class RoundConsole:
    """Prints one round's progress at `step` through `emit` (None: print nothing); `where`
    (e.g. "in the background") is added to the start line."""

    def __init__(
        self, emit: Emit | None, step: int, names: Sequence[str], clients: Any, where: str = ""
    ) -> None:
        self.emit, self.step, self.clients = emit, step, clients
        self.pending = list(names)
        self.base = clients.sampling_progress()
        self.where = f" {where}" if where else ""

    def follow(self, clients: Any) -> None:
        """Counts samples on `clients` from now on: those the round runs on (under split
        rounds, rank 0's split clients rather than the callback's own)."""
        self.clients, self.base = clients, clients.sampling_progress()

    def started(self, lists: Sequence[str]) -> None:
        if self.emit:
            count = len(self.pending)
            self.emit(
                f"[eval] step {self.step}: running {count} evaluator(s) ({', '.join(lists)})"
                f"{self.where}"
            )

    def evaluator_done(self, name: str, seconds: float, values: dict[str, float] | None) -> None:
        self.pending.remove(name)
        if self.emit:
            shown = "FAILED" if values is None else format_values(values)
            self.emit(f"[eval] step {self.step} {name}: {shown} ({seconds:.1f}s)")

    def still_running(self, seconds: float) -> None:
        if not self.emit:
            return
        finished, requested = self.clients.sampling_progress()
        samples = f"{finished - self.base[0]}/{requested - self.base[1]} samples"
        self.emit(
            f"[eval] step {self.step}: {seconds:.0f}s, {samples} done, "
            f"waiting for {', '.join(self.pending)}"
        )


def format_values(values: dict[str, float]) -> str:
    """``accuracy=0.875 scored=16``: every value, compactly."""
    return " ".join(f"{key}={value:.4g}" for key, value in values.items()) or "(no values)"


def printer(trainer: Any) -> Emit | None:
    """The progress bar's `print` on rank 0 (plain `print` without a bar), None elsewhere."""
    if not trainer.is_global_zero:
        return None
    bar = trainer.progress_bar_callback
    return bar.print if bar is not None else print
