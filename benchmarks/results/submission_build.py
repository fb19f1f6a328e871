"""`mibench submit`'s half: a submission document and its records from a finished run.

What leaves the machine names the model by hub id, display name and the digest of its files
recorded when the run scored it, never by a local path; and a run whose checkpoint on disk no
longer matches that digest is refused: its records are of other weights.
"""

from __future__ import annotations

import re
from pathlib import Path

from mibench.digests import checkpoint_digest
from mibench.provenance import hub_id, public_config, public_model
from mibench.report import config_hash
from mibench.scorers import scorer_of
from mibench.store import RECORDS_FILE

from .metrics_file import METRICS_FILE, read_metrics
from .submission_io import (
    RECORDS_FORMAT,
    RECORDS_GZ,
    SUBMISSION_FILE,
    SUBMISSION_VERSION,
    SubmissionError,
    dumps,
    plain,
    read_records_jsonl,
    records_digest,
    write_records_gz,
)
from .submission_validate import benchmark_key, build_plugins_from_config, kind_of


def _safe_name(text: str) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "model"
    return name[:100]


def recorded_weights(model: dict, source: str) -> str:
    """The weights digest the run recorded, once the checkpoint on disk is checked to still
    hold exactly those files."""
    name, recorded = model.get("name") or model.get("path"), model.get("weights_sha256")
    if not recorded and model.get("backend"):
        raise SubmissionError(source, [
            f"model: {name!r} was scored through a server ({model.get('backend')}), whose "
            "weights the suite cannot digest; the leaderboard names every entry by the "
            "digest of its checkpoint's files, so only locally loaded checkpoints can be "
            "submitted (`mibench compare` compares served runs)"])
    if not recorded:
        raise SubmissionError(source, [
            f"model: the run recorded no digest of {name!r}'s weights (made by an older "
            "mibench, or the checkpoint was neither a local folder nor in the hub cache); "
            "rerun the benchmark with this mibench, then submit that run"])
    now = checkpoint_digest(str(model.get("path")), model.get("commit") or model.get("revision"))
    if now is None and hub_id(model.get("path")) is None:
        raise SubmissionError(source, [
            f"model: the checkpoint the run scored ({model.get('path')}) is gone, so its "
            "weights cannot be checked against the records; submit from the machine and "
            "folder that ran it"])
    if now is not None and now != recorded:
        raise SubmissionError(source, [
            f"model: the files of {name!r} changed since the run scored them (weights "
            f"digest recorded {recorded[:16]}..., on disk now {now[:16]}...): these records "
            "are of the old weights. Rerun the benchmark into a new directory and submit "
            "that run"])
    return recorded  # a hub checkpoint missing from this cache: its commit pins it


def build_submission(run_dir: str | Path, name: str | None = None) -> tuple[dict, list[dict]]:
    """The submission document and its records from a finished run directory."""
    run_dir = Path(run_dir)
    metrics_path = run_dir / METRICS_FILE
    if not metrics_path.is_file():
        raise FileNotFoundError(f"{metrics_path}: missing; `mibench submit` needs a finished "
                                "run directory (records.jsonl + metrics.json)")
    metrics = read_metrics(metrics_path)  # NaN (an undefined interval) is made null below
    rows = read_records_jsonl(run_dir / RECORDS_FILE)
    model = metrics.model
    weights = recorded_weights(model, str(metrics_path))
    config = public_config(metrics.config)
    _, conditions = build_plugins_from_config(config, str(metrics_path))
    info = public_model(model)
    scorer = scorer_of(metrics.document)
    fingerprint = {"model": info, **metrics.setup, "scorer": scorer}
    document = {
        "submission_version": SUBMISSION_VERSION,
        "name": _safe_name(name or model.get("name") or "model"),
        "model": {
            "id": model.get("name") or hub_id(model.get("path")) or "model",
            "path": hub_id(model.get("path")),
            "revision": model.get("revision"),
            "commit": model.get("commit"),
            "dtype": model.get("dtype"),
            "weights_sha256": weights,
            "info": info,
        },
        "suite": {"version": metrics.document["suite_version"],
                  "git_sha": metrics.document.get("git_sha"),
                  "metrics_schema_version": metrics.document["schema_version"]},
        "seed": metrics.seed,
        "config": config,
        "config_hash": config_hash(fingerprint),
        "benchmark": {
            "name": (config.get("grid") or {}).get("name"),
            "key": benchmark_key(metrics.tasks, metrics.conditions, metrics.prompt,
                                 metrics.seed),
        },
        "tasks": metrics.tasks,
        "threat_models": metrics.conditions,
        "condition_kinds": {n: kind_of(c) for n, c in conditions.items()},
        "prompt": metrics.prompt,
        "scorer": scorer,
        "results": metrics.results,
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
