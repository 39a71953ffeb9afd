"""A run's OUTPUT/metrics.jsonl: one JSON object per epoch, written by the training loop
(rank 0) and read by the report's cost section."""
import json
import os
from typing import Dict, List

from dynunc.io import atomic_write_text


class MetricsLog:
    """OUTPUT/metrics.jsonl: one JSON object per epoch. On a resume, the lines of epochs
    that will be re-run are dropped first. Every change rewrites the file atomically (it
    is one short line per epoch), so a write error or a crash never leaves a torn line."""

    def __init__(self, output: str):
        self.path = os.path.join(output, "metrics.jsonl")

    def truncate_from(self, epoch: int) -> List[Dict]:
        """Drop the records of epochs >= epoch; returns the records kept."""
        if not os.path.exists(self.path):
            return []
        kept = [r for r in self.read() if r.get("epoch", -1) < epoch]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        return kept

    def read(self) -> List[Dict]:
        if not os.path.exists(self.path):
            return []
        records = []
        with open(self.path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{self.path}:{lineno}: not a JSON record: {e}") from None
        return records

    def append(self, record: Dict) -> None:
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in self.read() + [record]))
