"""Per-sample records on disk: appended and flushed as they are computed, resumable.

Each process appends to its own shard (`shards/rank-N.jsonl`) as batches finish; at the end
the main process merges everything into `records.jsonl`. A re-run in the same directory
loads the merged file and every shard, and scores only what is missing.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from .atomic import write_text_atomic
from .audit import PromptLog
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

    What a task read from its data (`data_digest`, `skipped_rows`) is None when the data
    could not be read (that task fails and scores nothing), so None matches anything; a
    directory that recorded None learns the value the first time the data is read. `write`
    (the main process only) records the fingerprint.
    """
    path = Path(out_dir) / FINGERPRINT_FILE
    canonical = json.loads(json.dumps(fingerprint, sort_keys=True, default=str))
    if path.exists():
        stored = json.loads(path.read_text())
        if not _matches(stored, canonical):
            # a data key one side could not read is no difference (see above)
            changed = differences(_known(canonical, stored), _known(stored, canonical))
            shown = "\n".join(f"  - {line}" for line in changed[:20])
            more = f"\n  (+{len(changed) - 20} more)" if len(changed) > 20 else ""
            weights = any(line.startswith("model.weights_sha256") for line in changed)
            data = "".join(f"The data of task {task!r} changed (data digest {old} -> {new}). "
                           for task, old, new in dict.fromkeys(_digest_changes(stored, canonical)))
            top = sorted(k for k in set(stored) | set(canonical)
                         if not _matches(stored.get(k), canonical.get(k)))
            raise ResumeMismatchError(
                f"{out_dir} holds records of a run configured differently (changed: "
                f"{', '.join(top)}), so they are not reused:\n{shown}{more}\n"
                + ("The checkpoint's files changed since those records were computed. "
                   if weights else "") + data
                + "Score into a new output directory (hydra.run.dir=...), or delete this one "
                "to recompute it; never mix the two.")
        canonical = _known(stored, canonical)
        if canonical == stored or not write:
            return
    elif not write:
        return
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(canonical, indent=2, sort_keys=True) + "\n")


DIGEST_KEY = "data_digest"
DATA_KEYS = frozenset({DIGEST_KEY, "skipped_rows"})  # known once a task's data is read


def _matches(stored: object, current: object) -> bool:
    """Equal, where a data key of None (unread data) matches any value."""
    if isinstance(stored, dict) and isinstance(current, dict):
        return set(stored) == set(current) and all(
            (k in DATA_KEYS and None in (stored[k], current[k])) or _matches(stored[k], current[k])
            for k in stored)
    if isinstance(stored, list) and isinstance(current, list):
        return len(stored) == len(current) and all(map(_matches, stored, current))
    return stored == current


def _known(stored: object, current: object) -> object:
    """`current`, keeping each data key that only `stored` knows."""
    if isinstance(stored, dict) and isinstance(current, dict):
        return {k: stored.get(k) if k in DATA_KEYS and v is None else _known(stored.get(k), v)
                for k, v in current.items()}
    if isinstance(stored, list) and isinstance(current, list):
        return [_known(a, b) for a, b in zip(stored, current)]
    return current


def without_data(description: object) -> object:
    """A describe() without what only reading the data tells (data digests, skipped rows):
    the part a config alone rebuilds, for comparing a config with what a run recorded."""
    if isinstance(description, dict):
        return {k: without_data(v) for k, v in description.items() if k not in DATA_KEYS}
    if isinstance(description, list):
        return [without_data(v) for v in description]
    return description


def _digest_changes(stored: object, current: object) -> list[tuple[str, str, str]]:
    """(task name, stored digest, current digest) for every data digest that changed."""
    if isinstance(stored, list) and isinstance(current, list):
        return [c for a, b in zip(stored, current) for c in _digest_changes(a, b)]
    if not (isinstance(stored, dict) and isinstance(current, dict)):
        return []
    found = []
    old, new = stored.get(DIGEST_KEY), current.get(DIGEST_KEY)
    if None not in (old, new) and old != new:
        found.append((str(current.get("name", "?")), str(old), str(new)))
    for key in sorted(set(stored) & set(current) - {DIGEST_KEY}):
        found += _digest_changes(stored[key], current[key])
    return found


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
        self.prompts = PromptLog(self.out_dir, rank)  # the texts the records' audits name
        self._add(read_records(self.out_dir / RECORDS_FILE))
        for shard in sorted(self.shard.parent.glob("rank-*.jsonl")):
            self._add(read_records(shard, repair=shard == self.shard))

    def _add(self, records: Iterable[Record]) -> None:
        for record in records:
            self._records.setdefault(record.key, record)

    def __contains__(self, key: tuple[str, str, str]) -> bool:
        return key in self._records

    def append(self, records: Iterable[Record], prompts: Mapping[str, str] | None = None
               ) -> None:
        """Write records to this process's shard and flush them to disk before returning;
        `prompts` (digest -> rendered text) first, so no record names a prompt not on disk."""
        self.prompts.append(prompts or {})
        new = [r for r in records if r.key not in self._records]
        if not new:
            return
        with self.shard.open("a") as handle:
            handle.writelines(json.dumps(r.to_json()) + "\n" for r in new)
            handle.flush()
            os.fsync(handle.fileno())
        self._add(new)
        self.new.extend(new)

    def merge(self, records: Iterable[Record], prompts: Iterable[tuple[str, str]] = ()
              ) -> Path:
        """Main process: add other processes' records (and prompts), write records.jsonl
        (and prompts.jsonl), drop the shards."""
        self.prompts.merge(prompts)
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
