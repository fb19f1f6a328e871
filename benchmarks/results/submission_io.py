"""Submission files in and out: plain JSON by content, read in bounded memory and time.

A submission is `submission.json` (schema: `schemas/submission.v1.json`) plus the per-sample
records beside it as `records.jsonl.gz`. Both are plain JSON by content, never pickle. Reading
trusts nothing: submission.json is size- and depth-bounded; its config passes the config guard
before anything else, which bounds how many records its benchmark can produce; the records are
streamed and refused as soon as they exceed what the submission declares.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema

from mibench.bounded_json import UnreadableJSONError, gzip_lines, loads, read_bounded
from mibench.config_guard import UntrustedConfigError, guard_run_config, samples_bound
from mibench.errors import MibenchError
from mibench.records import Record

SUBMISSION_FILE = "submission.json"
RECORDS_GZ = "records.jsonl.gz"
SUBMISSION_VERSION = 1
RECORDS_FORMAT = "jsonl+gzip; canonical lines sorted by (task, condition, sample_id)"
MAX_SUBMISSION_BYTES = 8 << 20  # the full cai2025 grid's document is well under 1 MiB
MAX_DEPTH = 32  # submission.json: the config nests about 6 levels deep
# one record: ids, up to 26 probabilities, generated responses, and its audit (bounded by
# mibench.audit: added text and metadata cut so that the line stays well under this)
MAX_RECORD_LINE = 64 << 10
MAX_RECORD_DEPTH = 4  # a list, a generated answer (object, list), an audit (meta: lists)
MAX_RECORDS_BYTES = 1 << 30  # never more than 1 GiB of decompressed records
MAX_REPORTED = 5  # unreadable record lines listed before giving up


class SubmissionError(MibenchError, ValueError):
    """A submission that cannot be accepted; `problems` lists every reason found."""

    def __init__(self, source: str | Path, problems: list[str]) -> None:
        self.source, self.problems = str(source), list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{self.source} is not a valid submission:\n{lines}")


@dataclass(frozen=True)
class Submission:
    """A loaded submission: the document, its records, and its config as the guard rebuilt
    it (the only config anything is ever built from)."""

    path: Path
    document: dict
    records: list[Record]
    plugins_config: dict = field(default_factory=dict, repr=False)

    @property
    def name(self) -> str:
        return self.document["name"]


# -- plain JSON in, plain JSON out -------------------------------------------------------------
def parse_json(data: bytes | str, source: str, max_depth: int = MAX_DEPTH) -> Any:
    """Strict JSON (no NaN/Infinity, bounded depth); anything else is refused by content."""
    if isinstance(data, bytes):
        if data[:1] == b"\x80":
            raise SubmissionError(source, ["looks like a Python pickle; submissions must be "
                                           "plain JSON (pickle is never loaded)"])
        if data[:2] == b"\x1f\x8b":
            raise SubmissionError(source, ["is gzip-compressed; submission.json must be "
                                           "plain, uncompressed JSON"])
    try:
        return loads(data, source, max_depth)
    except UnreadableJSONError as err:
        raise SubmissionError(source, [err.reason]) from err


def plain(value: Any) -> Any:
    """JSON-ready copy: NaN/inf become null, tuples become lists, unknown objects strings."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if value is None or isinstance(value, (str, int, bool)):
        return value
    return str(value)


def dumps(document: Any) -> str:
    return json.dumps(plain(document), indent=2, allow_nan=False) + "\n"


@cache
def schema() -> dict:
    """The submission JSON Schema shipped in the package."""
    text = resources.files("mibench").joinpath("schemas/submission.v1.json").read_text()
    return json.loads(text)


def _validator(definition: str | None = None) -> jsonschema.protocols.Validator:
    full = schema()
    target = full if definition is None else {**full["$defs"][definition],
                                              "$defs": full["$defs"]}
    cls = jsonschema.validators.validator_for(full)
    return cls(target)


def schema_problems(document: Any, definition: str | None = None) -> list[str]:
    """Every schema violation, each naming the JSON path where it is."""
    errors = sorted(_validator(definition).iter_errors(document), key=lambda e: list(e.path))
    return [f"schema: at {e.json_path}: {e.message}" for e in errors]


# -- records -------------------------------------------------------------------------------
def canonical_line(row: dict) -> str:
    return json.dumps(row, sort_keys=True, separators=(",", ":"), allow_nan=False) + "\n"


def sort_key(row: dict) -> tuple[str, str, str]:
    return (row["task"], row["condition"], row["sample_id"])


def records_digest(rows: Iterable[dict]) -> str:
    """sha256 of the canonical records text: sorted canonical lines (independent of gzip)."""
    digest = hashlib.sha256()
    for row in sorted(rows, key=sort_key):
        digest.update(canonical_line(row).encode())
    return digest.hexdigest()


def write_records_gz(rows: Iterable[dict], path: Path) -> None:
    """Canonical lines, sorted, in a gzip with a fixed mtime: same records, same bytes."""
    with path.open("wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw,
                                               mtime=0) as gz:
        for row in sorted(rows, key=sort_key):
            gz.write(canonical_line(row).encode())


def _json_lines(lines: Iterator[tuple[int, bytes]], source: str, limit: int | None = None
                ) -> list[dict]:
    rows, problems = [], []
    check = _validator("record")
    for number, line in lines:
        if limit is not None and number > limit:
            problems.append(f"holds more than the {limit} records the submission declares; "
                            "refused without reading further")
            break
        try:
            if not line.strip():
                raise SubmissionError(source, ["is empty (canonical records have no blank "
                                               "lines)"])
            row = parse_json(line, f"{source}:{number}", MAX_RECORD_DEPTH)
        except SubmissionError as err:
            problems.append(f"line {number}: {err.problems[0]}")
        else:
            errors = list(check.iter_errors(row))
            if errors:
                problems.append(f"line {number}: not a record ({errors[0].message})")
            else:
                rows.append(row)
        if len(problems) >= MAX_REPORTED:
            problems.append(f"(stopped after {MAX_REPORTED} unreadable lines)")
            break
    if problems:
        raise SubmissionError(source, problems)
    return rows


def read_records_gz(path: Path, limit: int) -> list[dict]:
    """At most `limit` records from a gzip of JSON lines, streamed; refuses, by content,
    anything else, and stops at the first sign of more text than `limit` records take."""
    source = str(path)
    if not path.is_file():
        raise SubmissionError(source, [f"missing: the records ({RECORDS_GZ}) must sit beside "
                                       f"{SUBMISSION_FILE}"])
    with path.open("rb") as handle:
        magic = handle.read(2)
    if magic != b"\x1f\x8b":
        kind = "a Python pickle" if magic[:1] == b"\x80" else "not gzip"
        raise SubmissionError(source, [f"is {kind}; records must be gzip-compressed JSON "
                                       "lines (pickle is never loaded)"])
    budget = min(MAX_RECORDS_BYTES, max(1, limit) * MAX_RECORD_LINE)
    try:
        return _json_lines(gzip_lines(path, MAX_RECORD_LINE, budget), source, limit)
    except UnreadableJSONError as err:
        raise SubmissionError(source, [err.reason]) from err


def read_records_jsonl(path: Path) -> list[dict]:
    """A run directory's records.jsonl (our own file), as canonical record dicts."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no records; is this a mibench run directory?")
    with path.open("rb") as handle:
        rows = _json_lines(enumerate(handle, 1), str(path))
    return [Record.from_json(r).to_json() for r in rows]


# -- a submission ------------------------------------------------------------------------------
def submission_path(path: str | Path) -> Path:
    path = Path(path)
    return path / SUBMISSION_FILE if path.is_dir() else path


def read_document(path: Path) -> dict:
    """submission.json, size- and depth-bounded and schema-checked."""
    if not path.is_file():
        raise SubmissionError(path, ["no such file"])
    try:
        data = read_bounded(path, MAX_SUBMISSION_BYTES)
    except UnreadableJSONError as err:
        raise SubmissionError(path, [err.reason]) from err
    document = parse_json(data, str(path))
    problems = schema_problems(document)
    if problems:
        raise SubmissionError(path, problems)
    return document


def load_submission(path: str | Path) -> Submission:
    """Parse a submission, guard its config, then stream its records, at most as many as its
    benchmark can produce, and check their count and sha256."""
    path = submission_path(path)
    document = read_document(path)
    try:
        guarded = guard_run_config(document["config"])
    except UntrustedConfigError as err:
        raise SubmissionError(path, err.problems) from err
    declared, most = document["records"]["count"], samples_bound(guarded)
    if declared > most:
        raise SubmissionError(path, [f"records.count: declares {declared:,} records; its "
                                     f"config's benchmark can produce at most {most:,}"])
    rows = read_records_gz(path.parent / document["records"]["file"], declared)
    problems = []
    if len(rows) != declared:
        problems.append(f"records: {RECORDS_GZ} holds {len(rows)} records, the submission "
                        f"declares {declared}")
    digest = records_digest(rows)
    if digest != document["records"]["sha256"]:
        problems.append(f"records: sha256 of {RECORDS_GZ} is {digest}, the submission "
                        f"declares {document['records']['sha256']}: the records were changed")
    if problems:
        raise SubmissionError(path, problems)
    return Submission(path, document, [_record(r, path) for r in rows], guarded)


def _record(row: dict, path: Path) -> Record:
    """One record of a submission; one that contradicts itself is named, not raised raw."""
    try:
        return Record.from_json(row)
    except (KeyError, TypeError, ValueError) as err:
        where = "/".join(str(row.get(k, "?")) for k in ("task", "condition", "sample_id"))
        raise SubmissionError(path, [f"record {where}: {err}"]) from err
