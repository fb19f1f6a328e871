"""The audit trail: what each sample was shown as, recorded beside its scored answer.

A record keeps a digest of its rendered prompt, the added text and the sample's metadata
(`records.Audit`); the prompt texts go to `prompts.jsonl`, once per distinct prompt, so
records stay small. Like the records, each process appends to its own shard as batches
finish (flushed before the records that name them) and the main process merges the shards:
a resumed run writes the same file as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .atomic import write_text_atomic
from .records import Audit, Sample

PROMPTS_FILE = "prompts.jsonl"
SHARDS_DIR = "shards"  # as the record store's

# Bounds on what a record carries (a submission's record line is bounded too, and its schema
# says these): texts and lists are cut, the cut marked, rather than let one column or one
# long caption blow up every record. The full added text stays in the prompt's text.
MAX_META_KEYS = 32
MAX_META_KEY = 100
MAX_META_TEXT = 200
MAX_META_ITEMS = 16
MAX_META_JSON = 8192  # keys past this much JSON are left out, in the sample's order
MAX_DISTRACTOR = 2000
CUT = "…"


def prompt_digest(text: str) -> str:
    """sha256 (hex) of a rendered prompt: its key in prompts.jsonl."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _text(value: str, limit: int) -> str:
    return value if len(value) <= limit else value[: limit - len(CUT)] + CUT


def _scalar(value: Any) -> str | int | float | bool | None:
    if isinstance(value, bool) or value is None or isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)  # records are strict JSON
    if isinstance(value, str):
        return _text(value, MAX_META_TEXT)
    return _text(str(value), MAX_META_TEXT)


def plain_meta(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The metadata as a record keeps it: string keys, scalar values or flat lists of them.

    Anything else (a nested mapping, an object) is kept as its JSON text; texts are cut to
    MAX_META_TEXT characters, lists to MAX_META_ITEMS items; at most MAX_META_KEYS keys, and
    no more than MAX_META_JSON characters of JSON, are kept (in the sample's order).
    """
    out: dict[str, Any] = {}
    size = 2
    for key, value in list(meta.items())[:MAX_META_KEYS]:
        if isinstance(value, (list, tuple)):
            kept: Any = [_scalar(v) if not isinstance(v, (list, tuple, Mapping)) else
                         _text(json.dumps(v, default=str), MAX_META_TEXT)
                         for v in value[:MAX_META_ITEMS]]
        elif isinstance(value, Mapping):
            kept = _text(json.dumps(value, default=str, sort_keys=True), MAX_META_TEXT)
        else:
            kept = _scalar(value)
        name = _text(str(key), MAX_META_KEY)
        size += len(json.dumps({name: kept})) - 1
        if size > MAX_META_JSON:
            break
        out[name] = kept
    return out


def audits(samples: Sequence[Sample], render: Callable[[Sample], str]
           ) -> tuple[list[Audit], dict[str, str]]:
    """Each sample's audit, and its prompts by digest (the texts prompts.jsonl needs)."""
    found, prompts = [], {}
    for sample in samples:
        text = render(sample)
        digest = prompt_digest(text)
        prompts[digest] = text
        found.append(Audit(prompt=digest, distractor=_text(sample.distractor, MAX_DISTRACTOR),
                           meta=plain_meta(sample.meta)))
    return found, prompts


def _read_lines(path: Path, repair: bool = False) -> dict[str, str]:
    """{digest: text} of a prompts file; a last line cut short by a crash is dropped (and cut
    if `repair`); any other unreadable line is an error naming the file and line."""
    if not path.exists():
        return {}
    lines = path.read_text(encoding="utf-8").splitlines()
    found: dict[str, str] = {}
    for number, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
            found[str(row["prompt"])] = str(row["text"])
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            if number == len(lines):
                if repair:
                    path.write_text("".join(f"{kept}\n" for kept in lines[:-1]),
                                    encoding="utf-8")
                break
            raise ValueError(f"{path}:{number}: unreadable prompt line ({err})") from err
    return found


def _line(digest: str, text: str) -> str:
    return json.dumps({"prompt": digest, "text": text}) + "\n"  # ASCII: any locale reads it


class PromptLog:
    """The rendered prompts of one output directory, each written once, keyed by digest."""

    def __init__(self, out_dir: str | Path, rank: int = 0) -> None:
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / PROMPTS_FILE
        self.shard = self.out_dir / SHARDS_DIR / f"prompts-rank-{rank}.jsonl"
        self.shard.parent.mkdir(parents=True, exist_ok=True)
        self._known: set[str] = set(_read_lines(self.path))
        for shard in self._shards():
            self._known |= set(_read_lines(shard, repair=shard == self.shard))
        self.new: dict[str, str] = {}  # written by this process in this run

    def _shards(self) -> list[Path]:
        return sorted(self.shard.parent.glob("prompts-rank-*.jsonl"))

    def append(self, prompts: Mapping[str, str]) -> None:
        """Write the prompts not yet known to this process's shard, flushed to disk."""
        new = {d: t for d, t in prompts.items() if d not in self._known}
        if not new:
            return
        with self.shard.open("a", encoding="utf-8") as handle:
            handle.writelines(_line(d, t) for d, t in new.items())
            handle.flush()
            os.fsync(handle.fileno())
        self._known |= new.keys()
        self.new.update(new)

    def merge(self, gathered: Iterable[tuple[str, str]] = ()) -> Path:
        """Main process: every prompt (file, shards, other processes') into prompts.jsonl,
        sorted by digest (the same file for any number of processes), shards removed."""
        everything = _read_lines(self.path)
        for shard in self._shards():
            everything.update(_read_lines(shard))
        everything.update(gathered)  # (digest, text) pairs of every process's `new`
        write_text_atomic(self.path, "".join(_line(d, everything[d]) for d in sorted(everything)))
        for shard in self._shards():
            shard.unlink()
        return self.path


def read_prompts(out_dir: str | Path, wanted: Iterable[str] | None = None) -> dict[str, str]:
    """{digest: text} of a run directory's prompts (merged file and any shards of a run still
    going), only the `wanted` digests if given."""
    out_dir = Path(out_dir)
    found = _read_lines(out_dir / PROMPTS_FILE)
    for shard in sorted((out_dir / SHARDS_DIR).glob("prompts-rank-*.jsonl")):
        found.update(_read_lines(shard))
    if wanted is None:
        return found
    return {d: found[d] for d in set(wanted) if d in found}
