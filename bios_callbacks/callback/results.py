"""One evaluation round's results, and the ``eval_results.jsonl`` file they are appended to.

Example:
    >>> record = RoundRecord(step=10, metrics={"eval/nll/loss": 2.5}, failures=[], time_s=0.4)
    >>> record.to_json()["step"]
    10
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

RESULTS_FILE_NAME = "eval_results.jsonl"


@dataclass
class RoundRecord:
    """What one round produced: the step it describes, metrics, failures and wall time.

    Each failure is ``{"evaluator": name, "kind": "exception" | "timeout" | "build" |
    "invalid_value" | "duplicate_key" | "hook", "message": str}`` ("hook": an optional hook
    such as ``transcripts()`` or ``eval_prompts()`` raised). `background` is True for a round
    that ran on a snapshot of step `step`'s weights while training went on. `work` holds the
    rows (samples and scored sequences) each rank computed when the round was split over the
    ranks of a multi-process run, None otherwise.
    """

    step: int
    metrics: dict[str, float]
    failures: list[dict[str, str]] = field(default_factory=list)
    time_s: float = 0.0
    lists: list[str] = field(default_factory=list)
    background: bool = False
    work: list[int] | None = None

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RoundRecord:
        """The inverse of `to_json`."""
        return cls(**data)


class ResultsFile:
    """``<log_dir>/eval_results.jsonl``: one JSON line per round, each round written once.

    Rounds already in the file (a resumed run going over steps again) are not appended twice,
    and a torn last line left by a killed process is cut off before the next line is written.

    Example:
        >>> import tempfile
        >>> results = ResultsFile(tempfile.mkdtemp())
        >>> results.append(RoundRecord(step=0, metrics={"eval/qa/accuracy": 0.5}))
        True
        >>> results.append(RoundRecord(step=0, metrics={"eval/qa/accuracy": 0.5}))
        False
    """

    def __init__(self, log_dir: str | Path) -> None:
        self.path = Path(log_dir) / RESULTS_FILE_NAME
        existing = read_records(self.path) if self.path.exists() else []
        self._written = {_round_key(record) for record in existing}

    def append(self, record: RoundRecord) -> bool:
        """Appends ``record``; False (and nothing written) when its round is already there."""
        key = _round_key(record)
        if key in self._written:
            return False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _cut_torn_tail(self.path)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record.to_json()) + "\n")
        self._written.add(key)
        return True


def _round_key(record: RoundRecord) -> tuple[int, tuple[str, ...]]:
    return record.step, tuple(sorted(record.lists))


def _cut_torn_tail(path: Path) -> None:
    """Drops a last line without its newline (a write cut short), so appends stay parseable."""
    if not path.exists():
        return
    with path.open("rb+") as f:
        data = f.read()
        if data and not data.endswith(b"\n"):
            f.truncate(data.rfind(b"\n") + 1)


def read_records(path: str | Path) -> list[RoundRecord]:
    """Reads every round from an ``eval_results.jsonl`` file.

    A torn last line (the process was killed while writing it) is skipped with a warning; a
    bad line elsewhere is a ``ValueError`` naming the file and line.

    Example:
        >>> read_records("lightning_logs/version_0/eval_results.jsonl")  # doctest: +SKIP
        [RoundRecord(step=0, ...), RoundRecord(step=10, ...)]
    """
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    records: list[RoundRecord] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(RoundRecord.from_json(json.loads(line)))
        except (json.JSONDecodeError, TypeError) as error:
            if number < len(lines):
                raise ValueError(
                    f"{path}:{number}: not a round record ({error}); each line must be one "
                    "JSON object written by EvalCallback."
                ) from error
            warnings.warn(
                f"{path}:{number}: skipping an incomplete last line (the process writing it "
                "was probably killed)",
                stacklevel=2,
            )
    return records
