"""Leaderboard submissions: `mibench submit` writes one from a run directory, `mibench validate`
checks one before accepting it.

The work is split by job: `submission_io` (the files, read in bounded memory and time),
`submission_build` (a submission from a run), `submission_validate` (every check, every metric
recomputed). This module is the two commands, and the names other modules import.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path
from typing import Any

from .submission_io import (
    RECORDS_GZ,
    SUBMISSION_FILE,
    Submission,
    SubmissionError,
    load_submission,
    read_records_jsonl,
    records_digest,
    schema,
    schema_problems,
)

# Building and validating need the model stack (torch, scipy); they are imported on first use,
# so `validate` reads, bounds and refuses a hostile file before loading any of it.
_LAZY = {"build_submission": "submission_build", "write_submission": "submission_build",
         "validate_submission": "submission_validate", "validate_loaded": "submission_validate",
         "accept": "submission_validate"}

__all__ = ["RECORDS_GZ", "SUBMISSION_FILE", "Submission", "SubmissionError",
           "load_submission", "read_records_jsonl", "records_digest", "schema",
           "schema_problems", "submit_main", "validate_main", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__package__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
    from .submission_build import build_submission, write_submission
    from .submission_validate import validate_submission

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
    parser.add_argument("--data-root", help="this machine's local dataset copies, for a "
                                            "benchmark that needs them (as mibench data_root)")
    args = parser.parse_args(argv)
    try:
        submission = load_submission(args.submission)  # bounded, before the model stack loads
        from .submission_validate import accept, validate_loaded

        validate_loaded(submission, args.data_root)
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
