"""Responses kept on disk by a digest of the exact request, so no request is ever paid twice.

One JSON-lines file per served model: each line `{"key": sha256 hex, "value": {...}}`,
appended with a single `write` on a file opened for appending, so lines from several
threads or processes never interleave, and a run killed mid-write loses at most its last
line (skipped on reading, with a warning). Only what the server answered is stored: never
a header, so never the API key.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MAX_LINE_BYTES = 64 << 20  # a line longer than this is not a response we wrote
KEY = re.compile(r"[0-9a-f]{64}")


def request_bytes(body: dict[str, Any]) -> bytes:
    """The canonical bytes of a request body: these are sent, and these are digested."""
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def request_key(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


def cache_file(cache_dir: str | os.PathLike, model: str) -> Path:
    """`<cache_dir>/<model, made a file name>-<digest of the model name>.jsonl`."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", model).strip("._")[:80] or "model"
    return Path(cache_dir) / f"{safe}-{hashlib.sha256(model.encode()).hexdigest()[:8]}.jsonl"


class ResponseCache:
    """Responses by request key, read from `path` once and appended to as they arrive."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._entries: dict[str, dict[str, Any]] = {}
        self._needs_newline = False
        self.skipped = 0
        if self.path.exists():
            self._load()

    def _load(self) -> None:
        with open(self.path, "rb") as f:
            for line in f:
                entry = self._entry(line)
                if entry is None:
                    self.skipped += 1
                else:
                    self._entries[entry[0]] = entry[1]
                self._needs_newline = not line.endswith(b"\n")
        if self.skipped:
            log.warning("response cache %s: skipped %d unreadable line(s) (a run stopped "
                        "mid-write, or not a file mibench wrote); those requests are sent "
                        "again", self.path, self.skipped)

    @staticmethod
    def _entry(line: bytes) -> tuple[str, dict[str, Any]] | None:
        if len(line) > MAX_LINE_BYTES or not line.strip():
            return None
        try:
            row = json.loads(line)
        except ValueError:
            return None
        if (not isinstance(row, dict) or not isinstance(row.get("key"), str)
                or not KEY.fullmatch(row["key"]) or not isinstance(row.get("value"), dict)):
            return None
        return row["key"], row["value"]

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def get(self, key: str) -> dict[str, Any] | None:
        return self._entries.get(key)

    def put(self, key: str, value: dict[str, Any]) -> None:
        """Keep `value` under `key`, in memory and as one appended line on disk."""
        line = json.dumps({"key": key, "value": value}, ensure_ascii=False,
                          separators=(",", ":")).encode() + b"\n"
        with self._lock:
            if key in self._entries:
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self._needs_newline:  # the last line was cut short: start a fresh one
                line = b"\n" + line
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                view = memoryview(line)
                while view:
                    view = view[os.write(fd, view):]
            finally:
                os.close(fd)
            self._needs_newline = False
            self._entries[key] = value
