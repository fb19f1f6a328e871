"""Per-sample records on disk: appended and flushed as they are computed, resumable.

Each process appends to its own shard (`shards/rank-N.jsonl`) as batches finish; at the end
the main process merges everything into `records.jsonl`. A re-run in the same directory
loads the merged file and every shard, and scores only what is missing.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from .atomic import write_text_atomic
from .errors import MibenchError
from .records import Record

RECORDS_FILE = "records.jsonl"
FINGERPRINT_FILE = "fingerprint.json"
SHARDS_DIR = "shards"


class ResumeMismatchError(MibenchError, RuntimeError):
    """An output directory holds records of a differently configured run."""


def differences(old: object, new: object, where: str = "") -> list[str]:
    """'key.path: old -> new' for every leaf that differs."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [line for key in sorted(set(old) | set(new), key=str)
                for line in differences(old.get(key), new.get(key),
                                         f"{where}.{key}" if where else str(key))]
    if old == new:
        return []
    return [f"{where}: {_short(old)} -> {_short(new)}"]


def _short(value: object) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 80 else text[:77] + "..."


def check_fingerprint(out_dir: str | Path, fingerprint: dict, write: bool) -> None:
    """Refuse a directory whose records came from another configuration, other weights or
    other data, naming every difference.

    `write` (the main process only) records the fingerprint of a new directory.
    """
    path = Path(out_dir) / FINGERPRINT_FILE
    canonical = json.loads(json.dumps(fingerprint, sort_keys=True, default=str))
    if path.exists():
        stored = json.loads(path.read_text())
        if stored != canonical:
            changed = differences(stored, canonical)
            shown = "\n".join(f"  - {line}" for line in changed[:20])
            more = f"\n  (+{len(changed) - 20} more)" if len(changed) > 20 else ""
            weights = any(line.startswith("model.weights_sha256") for line in changed)
            top = sorted(k for k in set(stored) | set(canonical)
                         if stored.get(k) != canonical.get(k))
            raise ResumeMismatchError(
                f"{out_dir} holds records of a run configured differently (changed: "
                f"{', '.join(top)}), so they are not reused:\n{shown}{more}\n"
                + ("The checkpoint's files changed since those records were computed. "
                   if weights else "")
                + "Score into a new output directory (hydra.run.dir=...), or delete this one "
                "to recompute it; never mix the two.")
    elif write:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps(canonical, indent=2, sort_keys=True) + "\n")


def read_records(path: Path, repair: bool = False) -> list[Record]:
    """Records of a JSONL file; a last line cut short by a crash is dropped (and cut if
    `repair`), any other unreadable line is an error naming the file and line."""
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    records = []
    for number, line in enumerate(lines, 1):
        try:
            records.append(Record.from_json(json.loads(line)))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            if number == len(lines):
                if repair:
                    path.write_text("".join(f"{kept}\n" for kept in lines[:-1]))
                break
            raise ValueError(f"{path}:{number}: unreadable record ({err})") from err
    return records


class RecordStore:
    """The records of one output directory, keyed by (task, condition, sample id)."""

    def __init__(self, out_dir: str | Path, rank: int = 0) -> None:
        self.out_dir = Path(out_dir)
        self.shard = self.out_dir / SHARDS_DIR / f"rank-{rank}.jsonl"
        self.shard.parent.mkdir(parents=True, exist_ok=True)
        self._records: dict[tuple[str, str, str], Record] = {}
        self.new: list[Record] = []  # computed by this process in this run
        self._add(read_records(self.out_dir / RECORDS_FILE))
        for shard in sorted(self.shard.parent.glob("rank-*.jsonl")):
            self._add(read_records(shard, repair=shard == self.shard))

    def _add(self, records: Iterable[Record]) -> None:
        for record in records:
            self._records.setdefault(record.key, record)

    def __contains__(self, key: tuple[str, str, str]) -> bool:
        return key in self._records

    def append(self, records: Iterable[Record]) -> None:
        """Write records to this process's shard and flush them to disk before returning."""
        new = [r for r in records if r.key not in self._records]
        if not new:
            return
        with self.shard.open("a") as handle:
            handle.writelines(json.dumps(r.to_json()) + "\n" for r in new)
            handle.flush()
            os.fsync(handle.fileno())
        self._add(new)
        self.new.extend(new)

    def merge(self, records: Iterable[Record]) -> Path:
        """Main process: add other processes' records, write records.jsonl, drop the shards."""
        self._add(records)
        path = self.out_dir / RECORDS_FILE
        tmp = path.with_suffix(".jsonl.tmp")
        ordered = sorted(self._records.values(), key=lambda r: r.key)
        tmp.write_text("".join(json.dumps(r.to_json()) + "\n" for r in ordered))
        os.replace(tmp, path)
        for shard in self.shard.parent.glob("rank-*.jsonl"):
            shard.unlink()
        return path

    def records(self, task: str, condition: str) -> list[Record]:
        """The stored records of one (task, condition), in sample-id order."""
        return sorted((r for (t, c, _), r in self._records.items() if t == task and c == condition),
                      key=lambda r: r.sample_id)
