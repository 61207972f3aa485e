"""One evaluation round's results, and the ``eval_results.jsonl`` file they are appended to.

Example:
    >>> record = RoundRecord(step=10, metrics={"eval/nll/loss": 2.5}, failures=[], time_s=0.4)
    >>> record.to_json()["step"]
    10
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

RESULTS_FILE_NAME = "eval_results.jsonl"


@dataclass
class RoundRecord:
    """What one round produced: the step it describes, metrics, failures and wall time.

    Each failure is ``{"evaluator": name, "kind": "exception" | "timeout" | "build" |
    "invalid_value" | "duplicate_key", "message": str}``.
    """

    step: int
    metrics: dict[str, float]
    failures: list[dict[str, str]] = field(default_factory=list)
    time_s: float = 0.0
    lists: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RoundRecord:
        """The inverse of `to_json`."""
        return cls(**data)


def append_record(log_dir: str | Path, record: RoundRecord) -> Path:
    """Appends ``record`` as one JSON line to ``<log_dir>/eval_results.jsonl``."""
    path = Path(log_dir) / RESULTS_FILE_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(record.to_json()) + "\n")
    return path


def read_records(path: str | Path) -> list[RoundRecord]:
    """Reads every round from an ``eval_results.jsonl`` file.

    Example:
        >>> read_records("lightning_logs/version_0/eval_results.jsonl")  # doctest: +SKIP
        [RoundRecord(step=0, ...), RoundRecord(step=10, ...)]
    """
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [RoundRecord.from_json(json.loads(line)) for line in lines if line.strip()]
