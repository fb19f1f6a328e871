"""Leaderboard submissions: write one from a run directory, and validate one before accepting it.

A submission is `submission.json` (schema: `schemas/submission.v1.json`) plus the per-sample
records beside it as `records.jsonl.gz`. Both are plain JSON by content, never pickle. The
validator trusts nothing it can recompute: it rebuilds the tasks from the submitted config and
checks every sample id, recomputes every metric from the records with `mibench.scoring`, and
checks the config hash and the records' sha256.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import math
import re
import shutil
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np

from mibench import __version__

from . import scoring
from .errors import MibenchError
from .prompts import ANSWER_INSTRUCTION
from .records import Record
from .report import METRICS_FILE, SCHEMA_VERSION, config_hash
from .runner import CLEAN, applies_to
from .store import RECORDS_FILE

SUBMISSION_FILE = "submission.json"
RECORDS_GZ = "records.jsonl.gz"
SUBMISSION_VERSION = 1
RECORDS_FORMAT = "jsonl+gzip; canonical lines sorted by (task, condition, sample_id)"
MAX_RECORDS_BYTES = 1 << 30  # a decompressed records file larger than 1 GiB is refused
FLOAT_TOLERANCE = 1e-6  # recomputed metric vs submitted (bootstrap ends may move in the 1e-9s)
TARGET_PREFIX = "mibench."  # the only `_target_`s a submitted config may instantiate
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


class SubmissionError(MibenchError, ValueError):
    """A submission that cannot be accepted; `problems` lists every reason found."""

    def __init__(self, source: str | Path, problems: list[str]) -> None:
        self.source, self.problems = str(source), list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{self.source} is not a valid submission:\n{lines}")


@dataclass(frozen=True)
class Submission:
    """A loaded submission: the document and its records."""

    path: Path
    document: dict
    records: list[Record]

    @property
    def name(self) -> str:
        return self.document["name"]


# -- plain JSON in, plain JSON out -------------------------------------------------------------
def _refuse_constant(token: str) -> float:
    raise ValueError(f"{token} is not a JSON number")


def parse_json(text: bytes | str, source: str) -> Any:
    """Strict JSON (no NaN/Infinity); anything else is refused by content, naming the source."""
    if isinstance(text, bytes):
        if text[:1] == b"\x80":
            raise SubmissionError(source, ["looks like a Python pickle; submissions must be "
                                           "plain JSON (pickle is never loaded)"])
        if text[:2] == b"\x1f\x8b":
            raise SubmissionError(source, ["is gzip-compressed; submission.json must be "
                                           "plain, uncompressed JSON"])
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as err:
            raise SubmissionError(source, [f"is not UTF-8 text, so not JSON ({err})"]) from err
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except ValueError as err:
        raise SubmissionError(source, [f"is not plain JSON: {err}"]) from err


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


def _sort_key(row: dict) -> tuple[str, str, str]:
    return (row["task"], row["condition"], row["sample_id"])


def records_digest(rows: Iterable[dict]) -> str:
    """sha256 of the canonical records text: sorted canonical lines (independent of gzip)."""
    digest = hashlib.sha256()
    for row in sorted(rows, key=_sort_key):
        digest.update(canonical_line(row).encode())
    return digest.hexdigest()


def write_records_gz(rows: Iterable[dict], path: Path) -> None:
    """Canonical lines, sorted, in a gzip with a fixed mtime: same records, same bytes."""
    with path.open("wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw,
                                               mtime=0) as gz:
        for row in sorted(rows, key=_sort_key):
            gz.write(canonical_line(row).encode())


def _json_lines(lines: Iterator[bytes], source: str) -> list[dict]:
    rows, problems = [], []
    check = _validator("record")
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = parse_json(line, f"{source}:{number}")
        except SubmissionError as err:
            problems.append(f"line {number}: {err.problems[0]}")
        else:
            errors = list(check.iter_errors(row))
            if errors:
                problems.append(f"line {number}: not a record ({errors[0].message})")
            else:
                rows.append(row)
        if len(problems) >= 5:
            problems.append("(stopped after 5 unreadable lines)")
            break
    if problems:
        raise SubmissionError(source, problems)
    return rows


def read_records_gz(path: Path) -> list[dict]:
    """Records from a gzip of JSON lines; refuses, by content, anything else."""
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
    data = io.BytesIO()
    try:
        with gzip.open(path, "rb") as gz:
            while chunk := gz.read(1 << 20):
                data.write(chunk)
                if data.tell() > MAX_RECORDS_BYTES:
                    raise SubmissionError(source, ["decompresses to more than 1 GiB; refused"])
    except (OSError, EOFError) as err:
        raise SubmissionError(source, [f"is a broken gzip file ({err})"]) from err
    return _json_lines(iter(data.getvalue().splitlines()), source)


def read_records_jsonl(path: Path) -> list[dict]:
    """A run directory's records.jsonl, as canonical record dicts."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no records; is this a mibench run directory?")
    rows = _json_lines(iter(path.read_bytes().splitlines()), str(path))
    return [Record.from_json(r).to_json() for r in rows]


# -- writing a submission --------------------------------------------------------------------
def weights_sha256(path: str | None) -> str | None:
    """sha256 over a local checkpoint's weight files (name and bytes, by name); None if remote."""
    if not path or not Path(path).is_dir():
        return None
    files = sorted(p for p in Path(path).iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    if not files:
        return None
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.name.encode() + b"\0")
        with file.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def benchmark_key(tasks: dict, threat_models: dict, prompt: dict, seed: int) -> str:
    """What makes two submissions comparable: the same tasks, threat models, prompt and seed."""
    return config_hash({"tasks": tasks, "conditions": threat_models, "prompt": prompt,
                        "seed": seed})


def _safe_name(text: str) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "model"
    return name[:100]


def build_submission(run_dir: str | Path, name: str | None = None) -> tuple[dict, list[dict]]:
    """The submission document and its records from a finished run directory."""
    run_dir = Path(run_dir)
    metrics_path = run_dir / METRICS_FILE
    if not metrics_path.is_file():
        raise FileNotFoundError(f"{metrics_path}: missing; `mibench submit` needs a finished "
                                "run directory (records.jsonl + metrics.json)")
    metrics = json.loads(metrics_path.read_text())  # our own file: NaN allowed, made null below
    rows = read_records_jsonl(run_dir / RECORDS_FILE)
    config = metrics.get("config") or {}
    _, conditions = build_plugins_from_config(config, str(metrics_path))
    model = metrics["model"]
    document = {
        "submission_version": SUBMISSION_VERSION,
        "name": _safe_name(name or model.get("name") or "model"),
        "model": {
            "id": model.get("name") or "model",
            "path": model.get("path"),
            "revision": model.get("revision"),
            "commit": model.get("commit"),
            "dtype": model.get("dtype"),
            "weights_sha256": weights_sha256(model.get("path")),
            "info": model,
        },
        "suite": {"version": metrics["suite_version"], "git_sha": metrics.get("git_sha"),
                  "metrics_schema_version": metrics["schema_version"]},
        "seed": metrics["seed"],
        "config": config,
        "config_hash": metrics["config_hash"],
        "benchmark": {
            "name": (config.get("grid") or {}).get("name"),
            "key": benchmark_key(metrics["tasks"], metrics["conditions"], metrics["prompt"],
                                 metrics["seed"]),
        },
        "tasks": metrics["tasks"],
        "threat_models": metrics["conditions"],
        "condition_kinds": {n: kind_of(c) for n, c in conditions.items()},
        "prompt": metrics["prompt"],
        "results": metrics["results"],
        "records": {"file": RECORDS_GZ, "format": RECORDS_FORMAT, "count": len(rows),
                    "sha256": records_digest(rows)},
    }
    return plain(document), rows


def write_submission(document: dict, rows: list[dict], out_dir: str | Path) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_records_gz(rows, out_dir / RECORDS_GZ)
    path = out_dir / SUBMISSION_FILE
    path.write_text(dumps(document))
    return path


# -- plugins from a submitted config ---------------------------------------------------------
def _targets(node: Any, where: str = "config") -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "_target_":
                yield f"{where}._target_", value
            else:
                yield from _targets(value, f"{where}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _targets(value, f"{where}[{i}]")


def build_plugins_from_config(config: dict, source: str) -> tuple[dict, dict]:
    """The tasks and conditions a run's resolved config builds, exactly as `mibench` built them.

    Only `mibench.` targets are instantiated: a submitted config is data, not code to run.
    """
    from omegaconf import OmegaConf

    from .cli import build_plugins

    foreign = [f"{where}={target!r}" for where, target in _targets(config)
               if not (isinstance(target, str) and target.startswith(TARGET_PREFIX))]
    if foreign:
        raise SubmissionError(source, [f"config: only {TARGET_PREFIX}* targets may be "
                                       f"instantiated; refusing {', '.join(foreign)}"])
    try:
        return build_plugins(OmegaConf.create(config))
    except Exception as err:
        raise SubmissionError(source, [f"config: cannot build its tasks and conditions "
                                       f"({type(err).__name__}: {err})"]) from err


def kind_of(condition: Any) -> str:
    from mibench.perturbations.base import Attack

    return "attack" if isinstance(condition, Attack) else "heuristic"


# -- loading and validating ------------------------------------------------------------------
def _submission_path(path: str | Path) -> Path:
    path = Path(path)
    return path / SUBMISSION_FILE if path.is_dir() else path


def load_submission(path: str | Path) -> Submission:
    """Parse and schema-check a submission and its records, and check the records' sha256."""
    path = _submission_path(path)
    if not path.is_file():
        raise SubmissionError(path, ["no such file"])
    document = parse_json(path.read_bytes(), str(path))
    problems = schema_problems(document)
    if problems:
        raise SubmissionError(path, problems)
    rows = read_records_gz(path.parent / document["records"]["file"])
    problems = []
    if len(rows) != document["records"]["count"]:
        problems.append(f"records: {RECORDS_GZ} holds {len(rows)} records, the submission "
                        f"declares {document['records']['count']}")
    digest = records_digest(rows)
    if digest != document["records"]["sha256"]:
        problems.append(f"records: sha256 of {RECORDS_GZ} is {digest}, the submission "
                        f"declares {document['records']['sha256']}: the records were changed")
    if problems:
        raise SubmissionError(path, problems)
    return Submission(path, document, [Record.from_json(r) for r in rows])


def _rows_problems(rows: list[dict]) -> list[str]:
    """Records that contradict themselves: a prediction that is not the argmax, and so on."""
    problems = []
    for row in rows:
        probs = np.asarray(row["probs"], dtype=np.float64)
        where = f"record {row['task']}/{row['condition']}/{row['sample_id']}"
        if abs(probs.sum() - 1) > 1e-3:
            problems.append(f"{where}: probs sum to {probs.sum():.4f}, not 1")
        elif row["prediction"] != int(probs.argmax()):
            problems.append(f"{where}: prediction {row['prediction']} is not the most likely "
                            f"option {int(probs.argmax())}")
        if row["correct"] != (row["prediction"] == row["gold"]):
            problems.append(f"{where}: correct={row['correct']} contradicts prediction "
                            f"{row['prediction']} and gold {row['gold']}")
    return problems


def _ids(ids: Iterable[str], limit: int = 5) -> str:
    ids = sorted(ids)
    more = f" (+{len(ids) - limit} more)" if len(ids) > limit else ""
    return ", ".join(repr(i) for i in ids[:limit]) + more


def _compatibility_problems(doc: dict) -> list[str]:
    problems = []
    theirs, ours = doc["suite"]["version"], __version__
    if theirs.split(".")[0] != ours.split(".")[0]:
        problems.append(f"suite: measured with mibench {theirs}, which is not compatible with "
                        f"this mibench {ours} (major versions differ); re-run with mibench "
                        f"{ours.split('.')[0]}.x")
    if doc["suite"]["metrics_schema_version"] != SCHEMA_VERSION:
        problems.append(f"suite: metrics schema version {doc['suite']['metrics_schema_version']}"
                        f" is not this suite's {SCHEMA_VERSION}")
    if doc["prompt"] != {"instruction": ANSWER_INSTRUCTION}:
        problems.append(f"prompt: {doc['prompt']!r} is not this suite's prompt "
                        f"{ {'instruction': ANSWER_INSTRUCTION}!r}")
    return problems


def _config_problems(doc: dict, tasks: dict, conditions: dict) -> list[str]:
    """The submitted config must build exactly the tasks and threat models that were measured."""
    problems = []
    if doc["config"].get("seed") != doc["seed"]:
        problems.append(f"config: seed={doc['config'].get('seed')!r} but the records were "
                        f"measured with seed={doc['seed']!r}")
    for label, built, declared in (("task", tasks, doc["tasks"]),
                                   ("threat model", conditions, doc["threat_models"])):
        built = {n: plain(p.describe()) for n, p in built.items()}
        for name in sorted(set(built) | set(declared)):
            if name not in declared:
                problems.append(f"config: builds {label} {name!r}, which the submission does "
                                "not declare")
            elif name not in built:
                problems.append(f"config: does not build {label} {name!r}, which the "
                                "submission declares")
            elif built[name] != declared[name]:
                changed = sorted(k for k in set(built[name]) | set(declared[name])
                                 if built[name].get(k) != declared[name].get(k))
                problems.append(f"config: {label} {name!r} as configured differs from the one "
                                f"measured in {', '.join(changed)} (configured "
                                f"{ {k: built[name].get(k) for k in changed} }, measured "
                                f"{ {k: declared[name].get(k) for k in changed} })")
    kinds = {n: kind_of(c) for n, c in conditions.items()}
    if kinds != doc["condition_kinds"]:
        problems.append(f"condition_kinds: {doc['condition_kinds']} but the config builds {kinds}")
    fingerprint = {"model": doc["model"]["info"], "tasks": doc["tasks"],
                   "conditions": doc["threat_models"], "prompt": doc["prompt"],
                   "seed": doc["seed"]}
    expected = config_hash(fingerprint)
    if expected != doc["config_hash"]:
        problems.append(f"config_hash: {doc['config_hash']} is not the hash of the declared "
                        f"model, tasks, threat models, prompt and seed ({expected})")
    key = benchmark_key(doc["tasks"], doc["threat_models"], doc["prompt"], doc["seed"])
    if key != doc["benchmark"]["key"]:
        problems.append(f"benchmark.key: {doc['benchmark']['key']} is not the hash of the "
                        f"declared tasks, threat models, prompt and seed ({key})")
    return problems


def _sample_problems(rows: list[dict], tasks: dict, conditions: dict) -> list[str]:
    """Every (task, condition) cell must hold each of the task's samples exactly once."""
    problems = []
    counts = Counter(_sort_key(r) for r in rows)
    duplicates = defaultdict(list)
    for (task, cond, sid), count in counts.items():
        if count > 1:
            duplicates[(task, cond)].append(sid)
    for (task, cond), sids in sorted(duplicates.items()):
        problems.append(f"records: duplicate sample ids in {task}/{cond}: {_ids(sids)}")
    cells: dict[tuple[str, str], set[str]] = defaultdict(set)
    for task, cond, sid in counts:
        cells[(task, cond)].add(sid)
    expected = {(t, c) for t, task in tasks.items()
                for c in [CLEAN, *(n for n, p in conditions.items() if applies_to(p, task))]}
    for task, cond in sorted(set(cells) - expected):
        problems.append(f"records: {task}/{cond} is not a cell of the configured benchmark")
    by_row = {_sort_key(r): r for r in rows}
    for name, task in tasks.items():
        samples = {s.id: s for s in task.samples()}
        for cell in sorted(c for c in expected if c[0] == name):
            have = cells.get(cell, set())
            missing, unknown = set(samples) - have, have - set(samples)
            if missing:
                problems.append(f"records: missing samples in {cell[0]}/{cell[1]}: "
                                f"{_ids(missing)} ({len(missing)} of {len(samples)})")
            if unknown:
                problems.append(f"records: sample ids in {cell[0]}/{cell[1]} that task "
                                f"{name!r} does not have: {_ids(unknown)}")
            wrong = [sid for sid in sorted(have & set(samples))
                     if by_row[(*cell, sid)]["gold"] != samples[sid].answer
                     or len(by_row[(*cell, sid)]["probs"]) != len(samples[sid].options)]
            if wrong:
                problems.append(f"records: gold answer or option count in {cell[0]}/{cell[1]} "
                                f"differ from task {name!r}'s samples: {_ids(wrong)}")
    return problems


def recompute_cell(records: Iterable[Record], task: str, condition: str, seed: int
                   ) -> dict[str, dict]:
    """One cell's metrics from per-sample records, by `mibench.scoring` itself."""
    records = list(records)
    clean = sorted((r for r in records if (r.task, r.condition) == (task, CLEAN)),
                   key=lambda r: r.sample_id)
    if condition == CLEAN:
        metrics = scoring.clean_metrics(clean)
    else:
        perturbed = sorted((r for r in records if (r.task, r.condition) == (task, condition)),
                           key=lambda r: r.sample_id)
        if not perturbed:
            raise ValueError("no records")
        metrics = scoring.condition_metrics(clean, perturbed, seed=seed)
    return plain({k: e.to_json() for k, e in metrics.items()})


def _same_number(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return math.isclose(a, b, rel_tol=0, abs_tol=FLOAT_TOLERANCE)


def _metric_problems(doc: dict, records: list[Record], tasks: dict, conditions: dict
                     ) -> list[str]:
    cells = {t: [CLEAN, *(n for n, p in conditions.items() if applies_to(p, task))]
             for t, task in tasks.items()}
    submitted = doc["results"]
    problems = [f"results: task {task!r} is not in the configured benchmark"
                for task in sorted(set(submitted) - set(cells))]
    by_task: dict[str, list[Record]] = defaultdict(list)
    for record in records:
        by_task[record.task].append(record)
    for task, conds in cells.items():
        for cond in conds:
            theirs = submitted.get(task, {}).get(cond)
            if theirs is None:
                problems.append(f"results: no metrics for {task}/{cond}")
                continue
            try:
                mine = recompute_cell(by_task[task], task, cond, doc["seed"])
            except ValueError as err:
                problems.append(f"results: {task}/{cond}: cannot recompute its metrics from "
                                f"the records ({err})")
                continue
            for metric in sorted(set(mine) | set(theirs)):
                a, b = mine.get(metric), theirs.get(metric)
                where = f"results: {task}/{cond}/{metric}"
                if a is None or b is None:
                    what = "missing" if b is None else "not a metric of this suite"
                    problems.append(f"{where}: {what} (the records give {sorted(mine)})")
                    continue
                for field in ("value", "low", "high", "n", "method"):
                    same = (a[field] == b[field] if field in ("n", "method")
                            else _same_number(a[field], b[field]))
                    if not same:
                        problems.append(f"{where}.{field}: submitted {b[field]!r}, but the "
                                        f"records give {a[field]!r}")
    return problems


def validate_submission(path: str | Path) -> Submission:
    """Accept a submission only if every check passes; otherwise raise with every reason."""
    submission = load_submission(path)
    doc, source = submission.document, submission.path
    problems = _compatibility_problems(doc)
    tasks, conditions = build_plugins_from_config(doc["config"], str(source))
    rows = [r.to_json() for r in submission.records]
    problems += _config_problems(doc, tasks, conditions)
    problems += _rows_problems(rows)[:20]
    problems += _sample_problems(rows, tasks, conditions)
    problems += _metric_problems(doc, submission.records, tasks, conditions)[:50]
    if problems:
        raise SubmissionError(source, problems)
    return submission


def accept(submission: Submission, results_dir: str | Path, force: bool = False) -> Path:
    """Copy a validated submission into results/submissions/<name>/."""
    target = Path(results_dir) / "submissions" / submission.name
    if target.exists() and not force:
        old = target / SUBMISSION_FILE
        if old.is_file() and old.read_bytes() == submission.path.read_bytes():
            return target
        raise FileExistsError(f"{target} already holds a submission named {submission.name!r}; "
                              "choose another name (mibench submit --name) or pass --force")
    target.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(submission.path, target / SUBMISSION_FILE)
    shutil.copyfile(submission.path.parent / submission.document["records"]["file"],
                    target / RECORDS_GZ)
    return target


# -- commands --------------------------------------------------------------------------------
def submit_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="mibench submit",
        description="Write a leaderboard submission (submission.json + records.jsonl.gz) "
                    "from a finished run directory, and validate it.")
    parser.add_argument("run_dir", help="a run directory holding records.jsonl and metrics.json")
    parser.add_argument("--out", help="where to write it (default: RUN_DIR/submission)")
    parser.add_argument("--name", help="display and folder name (default: the model's name)")
    args = parser.parse_args(argv)
    try:
        document, rows = build_submission(args.run_dir, args.name)
        path = write_submission(document, rows,
                                args.out or Path(args.run_dir) / "submission")
        validate_submission(path)
    except (SubmissionError, FileNotFoundError) as err:
        print(f"mibench submit: {err}", file=sys.stderr)
        return 1
    print(f"wrote {path} and {path.parent / RECORDS_GZ} ({len(rows)} records); valid.\n"
          f"to add it to the leaderboard: mibench validate {path} --accept results/ && "
          "mibench leaderboard")
    return 0


def validate_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="mibench validate",
        description="Check a submission: schema, suite compatibility, config, sample ids, and "
                    "every metric recomputed from the per-sample records.")
    parser.add_argument("submission", help="submission.json (or the folder holding it)")
    parser.add_argument("--accept", metavar="RESULTS",
                        help="if valid, copy it into RESULTS/submissions/<name>/")
    parser.add_argument("--force", action="store_true", help="replace an accepted namesake")
    args = parser.parse_args(argv)
    try:
        submission = validate_submission(args.submission)
        target = accept(submission, args.accept, args.force) if args.accept else None
    except (SubmissionError, FileExistsError) as err:
        print(f"mibench validate: {err}", file=sys.stderr)
        return 1
    n_cells = sum(len(c) for c in submission.document["results"].values())
    print(f"{submission.path}: valid ({submission.name}, {len(submission.records)} records, "
          f"{n_cells} cells recomputed)")
    if target is not None:
        print(f"accepted into {target}; rebuild the leaderboard with: mibench leaderboard "
              f"--results {args.accept}")
    return 0
