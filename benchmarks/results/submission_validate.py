"""`mibench validate`'s half: accept a submission only if everything it claims is recomputed.

The validator trusts nothing it can recompute: it rebuilds the tasks from the submitted config
(after the config guard: data, never code), checks every sample id and gold answer, recomputes
every metric from the records with `mibench.scoring`, and checks the config hash, the benchmark
key and the records' sha256. Reading is bounded (submission_io) before anything is built.
"""

from __future__ import annotations

import math
import shutil
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from mibench import __version__, scoring
from mibench.answer_parsing import FAILURES
from mibench.config_guard import UntrustedConfigError, build_guarded
from mibench.prompts import ANSWER_INSTRUCTION
from mibench.provenance import hub_id
from mibench.records import Record
from mibench.registry import plugin_class
from mibench.report import SCHEMA_VERSION, config_hash
from mibench.runner import CLEAN, applies_to
from mibench.scorers import GenerateScorer, LikelihoodScorer, scorer_of
from mibench.store import without_data

from .submission_io import (
    RECORDS_GZ,
    SUBMISSION_FILE,
    Submission,
    SubmissionError,
    load_submission,
    plain,
    sort_key,
)

FLOAT_TOLERANCE = 1e-6  # recomputed metric vs submitted (bootstrap ends may move in the 1e-9s)


def benchmark_key(tasks: dict, threat_models: dict, prompt: dict, seed: int) -> str:
    """What makes two submissions comparable: the same tasks, threat models, prompt and seed."""
    return config_hash({"tasks": tasks, "conditions": threat_models, "prompt": prompt,
                        "seed": seed})


def build_plugins_from_config(config: Any, source: str, data_root: str | None = None
                              ) -> tuple[dict, dict]:
    """The tasks and conditions a run's config builds, exactly as `mibench` built them, from
    the config guard's rebuilt copy only (allowlisted plug-ins, checked and bounded values)."""
    from mibench.cli import build_plugins

    try:
        return build_guarded(config, build_plugins, data_root)
    except UntrustedConfigError as err:
        raise SubmissionError(source, err.problems) from err
    except Exception as err:
        raise SubmissionError(source, [f"config: cannot build its tasks and conditions "
                                       f"({type(err).__name__}: {err})"]) from err


def kind_of(condition: Any) -> str:
    from mibench.perturbations.base import Attack

    return "attack" if isinstance(condition, Attack) else "heuristic"


def _rows_problems(rows: list[dict]) -> list[str]:
    """Records that contradict themselves: a likelihood prediction that is not the argmax, a
    generated answer without a response or with a reason beside its option, and so on."""
    problems = []
    for row in rows:
        where = f"record {row['task']}/{row['condition']}/{row['sample_id']}"
        generated = row.get("generated")
        probs = None if row["probs"] is None else np.asarray(row["probs"], dtype=np.float64)
        if probs is not None and abs(probs.sum() - 1) > 1e-3:
            problems.append(f"{where}: probs sum to {probs.sum():.4f}, not 1")
        elif generated is None and probs is None:
            problems.append(f"{where}: no probabilities, and not a generated answer")
        elif generated is None and row["prediction"] != int(probs.argmax()):
            problems.append(f"{where}: prediction {row['prediction']} is not the most likely "
                            f"option {int(probs.argmax())}")
        elif generated is not None:
            problems += _generated_problems(where, row, generated)
        if row["correct"] != (row["prediction"] == row["gold"]):
            problems.append(f"{where}: correct={row['correct']} contradicts prediction "
                            f"{row['prediction']} and gold {row['gold']}")
    return problems


def _generated_problems(where: str, row: dict, generated: dict) -> list[str]:
    """A generated answer: an option or a known reason, among its own options."""
    problems = []  # retries against responses: checked as the records are read
    if (row["prediction"] is None) == (generated["failure"] is None):
        problems.append(f"{where}: a generated answer has an option or a failure reason, "
                        f"not both or neither (prediction {row['prediction']}, failure "
                        f"{generated['failure']!r})")
    elif generated["failure"] is not None and generated["failure"] not in FAILURES:
        problems.append(f"{where}: failure {str(generated['failure'])[:40]!r} is not one of "
                        f"{sorted(FAILURES)}")
    if row["probs"] is not None and len(row["probs"]) != generated["options"]:
        problems.append(f"{where}: {len(row['probs'])} probabilities for "
                        f"{generated['options']} options")
    if row["prediction"] is not None and row["prediction"] >= generated["options"]:
        problems.append(f"{where}: prediction {row['prediction']} is not one of its "
                        f"{generated['options']} options")
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
        # what only reading the data tells (data digests) is not in a config: compare the rest
        built = {n: without_data(plain(p.describe())) for n, p in built.items()}
        declared = {n: without_data(d) for n, d in declared.items()}
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
    if "scorer" in doc:  # submissions made before scorers were configurable have none
        fingerprint["scorer"] = doc["scorer"]
    expected = config_hash(fingerprint)
    if expected != doc["config_hash"]:
        problems.append(f"config_hash: {doc['config_hash']} is not the hash of the declared "
                        f"model, tasks, threat models, prompt, seed and scorer ({expected})")
    key = benchmark_key(doc["tasks"], doc["threat_models"], doc["prompt"], doc["seed"])
    if key != doc["benchmark"]["key"]:
        problems.append(f"benchmark.key: {doc['benchmark']['key']} is not the hash of the "
                        f"declared tasks, threat models, prompt and seed ({key})")
    return problems


def _sample_problems(rows: list[dict], tasks: dict, conditions: dict) -> list[str]:
    """Every (task, condition) cell must hold each of the task's samples exactly once."""
    problems = []
    counts = Counter(sort_key(r) for r in rows)
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
    by_row = {sort_key(r): r for r in rows}
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
                     or _options(by_row[(*cell, sid)]) != len(samples[sid].options)]
            if wrong:
                problems.append(f"records: gold answer or option count in {cell[0]}/{cell[1]} "
                                f"differ from task {name!r}'s samples: {_ids(wrong)}")
    return problems


def _options(row: dict) -> int:
    """How many options a record answered among."""
    if row["probs"] is not None:
        return len(row["probs"])
    return (row.get("generated") or {}).get("options", 0)


def _scorer_problems(submission: Submission, rows: list[dict]) -> list[str]:
    """The declared scorer is the one the config builds, and the records are its kind:
    generated answers exactly when the scorer generates."""
    doc, problems = submission.document, []
    node = submission.plugins_config.get("scorer")
    try:
        built = (LikelihoodScorer() if node is None else plugin_class(node["_target_"])(
            **{k: v for k, v in node.items() if k != "_target_"}))
    except Exception as err:  # a bad setting the guard's types let through
        return [f"config.scorer: cannot build it ({type(err).__name__}: {err})"]
    declared = scorer_of(doc)
    if plain(built.describe()) != declared:
        problems.append(f"scorer: declared {declared} but the config builds "
                        f"{plain(built.describe())}")
    # the records must be the declared scorer's kind (a mismatch with the config is above)
    generates = declared.get("class") == GenerateScorer().describe()["class"]
    mismatched = [r for r in rows if (r.get("generated") is not None) != generates]
    if mismatched:
        what = "likelihood" if generates else "generated"
        problems.append(f"records: {len(mismatched)} {what} answers (e.g. "
                        f"{'/'.join(sort_key(mismatched[0]))}) in a submission scored by "
                        f"{declared['name']!r}")
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
        problems += [f"results: {task}/{cond} is not a cell of the configured benchmark"
                     for cond in sorted(set(submitted.get(task, {})) - set(conds))]
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


def _benchmark_problems(submission: Submission) -> list[str]:
    """The benchmark's name is the one its config composes (a registered one, or none)."""
    declared = submission.document["benchmark"]["name"]
    built = (submission.plugins_config.get("grid") or {}).get("name")
    if declared != built:
        return [f"benchmark.name: {str(declared)[:60]!r} is not the name of the benchmark "
                f"its config composes ({built!r})"]
    return []


def _model_problems(doc: dict) -> list[str]:
    """The model is named by hub id, name and weights digest, consistently, never by a
    local path."""
    model, problems = doc["model"], []
    info = model["info"]
    if model["weights_sha256"] is None:
        problems.append("model.weights_sha256: missing; submit a run made by this mibench (it "
                        "records the digest of the checkpoint's files)")
    elif info.get("weights_sha256") != model["weights_sha256"]:
        problems.append("model.weights_sha256: differs from model.info.weights_sha256, the "
                        "digest recorded when the records were computed")
    for where, value in (("model.path", model["path"]), ("model.info.path", info.get("path"))):
        if value is not None and hub_id(value) != value:
            problems.append(f"{where}: {str(value)[:80]!r} is not a hub id; a submission names "
                            "no local path (null for a local checkpoint)")
    return problems


def validate_submission(path: str | Path, data_root: str | None = None) -> Submission:
    """Accept a submission only if every check passes; otherwise raise with every reason.

    `data_root`: this machine's local dataset copies, for benchmarks that need them.
    """
    return validate_loaded(load_submission(path), data_root)


def validate_loaded(submission: Submission, data_root: str | None = None) -> Submission:
    """The checks of `validate_submission` on a submission `load_submission` has read."""
    doc, source = submission.document, submission.path
    problems = (_compatibility_problems(doc) + _benchmark_problems(submission)
                + _model_problems(doc))
    tasks, conditions = build_plugins_from_config(doc["config"], str(source), data_root)
    rows = [r.to_json() for r in submission.records]
    problems += _config_problems(doc, tasks, conditions)
    problems += _scorer_problems(submission, rows)
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


