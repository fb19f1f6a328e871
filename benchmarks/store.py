"""Per-sample records on disk: appended and flushed as they are computed, resumable."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from .records import Record

RECORDS_FILE = "records.jsonl"
FINGERPRINT_FILE = "fingerprint.json"


class ResumeMismatchError(RuntimeError):
    """An output directory holds records of a differently configured run."""


class RecordStore:
    """Append-only JSONL of records in `out_dir`, keyed by (task, condition, sample id).

    A store opened on a directory that already holds records resumes it, but only if the
    run's fingerprint (everything that changes a number) is the one the records came from.
    """

    def __init__(self, out_dir: str | Path, fingerprint: dict) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.out_dir / RECORDS_FILE
        self._check_fingerprint(fingerprint)
        self._records: dict[tuple[str, str, str], Record] = {}
        if self.path.exists():
            self._load()

    def _check_fingerprint(self, fingerprint: dict) -> None:
        path = self.out_dir / FINGERPRINT_FILE
        canonical = json.loads(json.dumps(fingerprint, sort_keys=True, default=str))
        if path.exists():
            stored = json.loads(path.read_text())
            if stored != canonical:
                changed = sorted(k for k in set(stored) | set(canonical)
                                 if stored.get(k) != canonical.get(k))
                raise ResumeMismatchError(
                    f"{self.out_dir} holds records of a run configured differently "
                    f"(changed: {', '.join(changed)}); use a new output directory "
                    f"(hydra.run.dir=...) rather than mixing results"
                )
        else:
            path.write_text(json.dumps(canonical, indent=2, sort_keys=True) + "\n")

    def _load(self) -> None:
        lines = self.path.read_text().splitlines()
        for number, line in enumerate(lines, 1):
            try:
                record = Record.from_json(json.loads(line))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
                if number == len(lines):  # a line cut short by a crash: recompute it
                    self._truncate_to(lines[:-1])
                    break
                raise ValueError(f"{self.path}:{number}: unreadable record ({err})") from err
            self._records[record.key] = record

    def _truncate_to(self, lines: list[str]) -> None:
        self.path.write_text("".join(line + "\n" for line in lines))

    def __contains__(self, key: tuple[str, str, str]) -> bool:
        return key in self._records

    def append(self, records: Iterable[Record]) -> None:
        """Write records and flush them to disk before returning."""
        new = [r for r in records if r.key not in self._records]
        if not new:
            return
        with self.path.open("a") as handle:
            for record in new:
                handle.write(json.dumps(record.to_json()) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        self._records.update((r.key, r) for r in new)

    def records(self, task: str, condition: str) -> list[Record]:
        """The stored records of one (task, condition), in sample-id order."""
        return sorted((r for (t, c, _), r in self._records.items() if t == task and c == condition),
                      key=lambda r: r.sample_id)
