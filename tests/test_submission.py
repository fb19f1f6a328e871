"""Submissions: run -> submit -> validate, and every kind of bad submission refused by reason."""

from __future__ import annotations

import copy
import gzip
import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import WORDS
from hydra import compose, initialize_config_module

from mibench.cli import run
from mibench.models import toy_builder
from mibench.results.submission import (
    RECORDS_GZ,
    SUBMISSION_FILE,
    SubmissionError,
    build_submission,
    records_digest,
    schema_problems,
    submit_main,
    validate_main,
    validate_submission,
    write_submission,
)

# The toy benchmark, shrunk: 12 + 12 + 6 samples, 6 heuristic conditions, 102 records.
SMALL = ["grid.tasks.toy_image_heavy.n=12", "grid.tasks.toy_text_heavy.n=12",
         "grid.tasks.toy_vqa.n=6", "grid.conditions.switched_image.donors.n=20",
         "progress=false"]
N_RECORDS = 12 * 3 + 12 * 5 + 6


def benchmark_run(model_path: str, out_dir: Path, *overrides: str) -> Path:
    """A real `mibench` run of a local checkpoint on the small toy benchmark."""
    with initialize_config_module("mibench.conf", version_base="1.3"):
        cfg = compose("config", overrides=[
            "model=hf", f"model.path={model_path}", "model.dtype=float32", "model.device=cpu",
            f"out_dir={out_dir}", *SMALL, *overrides])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: one thread is fastest on a shared machine
    try:
        run(cfg)
    finally:
        torch.set_num_threads(threads)
    return out_dir


def other_checkpoint(path: Path) -> str:
    """A second tiny random LLaVA (another seed): a different checkpoint to compare."""
    processor = toy_builder.build_processor(WORDS)
    toy_builder.build_model(processor, seed=1).save_pretrained(path)
    processor.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def run_dir(tiny_checkpoint, tmp_path_factory) -> Path:
    return benchmark_run(tiny_checkpoint, tmp_path_factory.mktemp("run"))


@pytest.fixture
def submission(run_dir, tmp_path) -> tuple[dict, list[dict], Path]:
    document, rows = build_submission(run_dir)
    return document, rows, tmp_path / "sub"


def rewrite(document: dict, rows: list[dict], out: Path) -> Path:
    """Write a (tampered) submission whose records digest and count agree with its records."""
    document = copy.deepcopy(document)
    document["records"].update(count=len(rows), sha256=records_digest(rows))
    return write_submission(document, rows, out)


def refused(path: Path) -> str:
    with pytest.raises(SubmissionError) as err:
        validate_submission(path)
    return str(err.value)


def test_round_trip_run_submit_validate(run_dir, tmp_path, capsys):
    out = tmp_path / "sub"
    assert submit_main([str(run_dir), "--out", str(out), "--name", "tiny"]) == 0
    document = json.loads((out / SUBMISSION_FILE).read_text())
    assert schema_problems(document) == []
    assert document["name"] == "tiny"
    assert document["records"]["count"] == N_RECORDS
    assert document["threat_models"]["misleading_text"]["params"]["template"].startswith(
        "The picture seems to describe")
    assert set(document["condition_kinds"].values()) == {"heuristic"}
    assert document["config"]["grid"]["tasks"]["toy_vqa"]["_target_"] == (
        "mibench.tasks.shapes.ShapesTask")
    assert len(document["model"]["weights_sha256"]) == 64
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert document["results"] == json.loads(json.dumps(metrics["results"]).replace(
        "NaN", "null"))
    with gzip.open(out / RECORDS_GZ, "rt") as handle:
        assert len(handle.read().splitlines()) == N_RECORDS
    submission = validate_submission(out / SUBMISSION_FILE)
    assert len(submission.records) == N_RECORDS
    first = (out / RECORDS_GZ).read_bytes(), (out / SUBMISSION_FILE).read_bytes()
    assert submit_main([str(run_dir), "--out", str(out), "--name", "tiny"]) == 0
    assert ((out / RECORDS_GZ).read_bytes(), (out / SUBMISSION_FILE).read_bytes()) == first
    capsys.readouterr()
    assert validate_main([str(out), "--accept", str(tmp_path / "results")]) == 0
    assert "valid (tiny, 102 records, 9 cells recomputed)" in capsys.readouterr().out
    accepted = tmp_path / "results" / "submissions" / "tiny"
    assert (accepted / SUBMISSION_FILE).read_bytes() == first[1]
    assert (accepted / RECORDS_GZ).read_bytes() == first[0]


def test_tampered_metric_is_rejected(submission):
    document, rows, out = submission
    cell = document["results"]["toy_image_heavy"]["misleading_text"]
    submitted = cell["flip_rate"]["value"]
    cell["flip_rate"]["value"] = submitted - 0.25
    message = refused(rewrite(document, rows, out))
    assert ("results: toy_image_heavy/misleading_text/flip_rate.value: submitted "
            f"{submitted - 0.25!r}, but the records give {submitted!r}") in message


def test_missing_sample_is_rejected(submission):
    document, rows, out = submission
    gone = next(r for r in rows if (r["task"], r["condition"]) == ("toy_text_heavy",
                                                                      "black_image"))
    message = refused(rewrite(document, [r for r in rows if r is not gone], out))
    assert (f"records: missing samples in toy_text_heavy/black_image: {gone['sample_id']!r} "
            "(1 of 12)") in message


def test_duplicated_sample_is_rejected(submission):
    document, rows, out = submission
    copied = next(r for r in rows if r["condition"] == "clean" and r["task"] == "toy_vqa")
    message = refused(rewrite(document, [*rows, dict(copied)], out))
    assert (f"records: duplicate sample ids in toy_vqa/clean: {copied['sample_id']!r}"
            in message)


def test_records_changed_after_submission_are_rejected(submission):
    document, rows, out = submission
    path = write_submission(document, rows[1:], out)  # digest still of the full records
    message = refused(path)
    assert f"holds {N_RECORDS - 1} records, the submission declares {N_RECORDS}" in message
    assert "the records were changed" in message


@pytest.mark.parametrize("change, expected", [
    (lambda c: c["grid"]["tasks"]["toy_vqa"].update(n=5),
     "config: task 'toy_vqa' as configured differs from the one measured in n "
     "(configured {'n': 5}, measured {'n': 6})"),
    (lambda c: c["grid"]["conditions"]["misleading_text"].update(template="It is a {option}."),
     "config: threat model 'misleading_text' as configured differs from the one measured in "
     "params"),
    (lambda c: c.update(seed=3), "config: seed=3 but the records were measured with seed=0"),
    (lambda c: c["grid"]["conditions"].pop("white_image"),
     "config: does not build threat model 'white_image', which the submission declares"),
])
def test_changed_config_is_rejected(submission, change, expected):
    document, rows, out = submission
    change(document["config"])
    assert expected in refused(rewrite(document, rows, out))


def test_config_that_would_run_foreign_code_is_refused(submission):
    document, rows, out = submission
    document["config"]["grid"]["tasks"]["toy_vqa"]["_target_"] = "os.system"
    message = refused(rewrite(document, rows, out))
    assert "config.grid.tasks.toy_vqa._target_: 'os.system' is not a task the suite ships" \
        in message


def test_incompatible_suite_and_declared_hashes_are_rejected(submission):
    document, rows, out = submission
    document["suite"]["version"] = "7.0.0"
    document["tasks"]["toy_vqa"]["n"] = 7
    message = refused(rewrite(document, rows, out))
    assert "measured with mibench 7.0.0, which is not compatible" in message
    assert "config_hash:" in message and "benchmark.key:" in message


def test_gold_answers_must_be_the_tasks(submission):
    document, rows, out = submission
    row = next(r for r in rows if r["task"] == "toy_image_heavy" and r["condition"] == "clean")
    row["gold"] = (row["gold"] + 1) % len(row["probs"])
    row["correct"] = row["prediction"] == row["gold"]
    message = refused(rewrite(document, rows, out))
    assert ("gold answer or option count in toy_image_heavy/clean differ from task "
            f"'toy_image_heavy''s samples: {row['sample_id']!r}") in message


PICKLE = b"\x80\x04K\x01."  # pickle.dumps(1, protocol=4), written out: pickle is banned here


@pytest.mark.parametrize("target, content, expected", [
    (SUBMISSION_FILE, PICKLE, "looks like a Python pickle; submissions must be plain JSON"),
    (SUBMISSION_FILE, b"{'name': 'x'}", "is not plain JSON: Expecting property name"),
    (SUBMISSION_FILE, b'{"value": NaN}', "is not plain JSON: NaN is not a JSON number"),
    (SUBMISSION_FILE, gzip.compress(b"{}"), "is gzip-compressed; submission.json must be"),
    (RECORDS_GZ, PICKLE, "is a Python pickle; records must be gzip-compressed JSON lines"),
    (RECORDS_GZ, b'{"task": "t"}\n', "is not gzip; records must be gzip-compressed"),
    (RECORDS_GZ, gzip.compress(PICKLE + b"\n"), "line 1: looks like a Python pickle"),
    (RECORDS_GZ, gzip.compress(b'{"task": "t"}\n'), "line 1: not a record ('condition' is a "
                                                      "required property)"),
])
def test_anything_but_plain_json_is_refused(submission, target, content, expected):
    document, rows, out = submission
    write_submission(document, rows, out)
    (out / target).write_bytes(content)
    assert expected in refused(out / SUBMISSION_FILE)


def test_schema_violations_name_the_path(submission, tmp_path):
    document, rows, out = submission
    document["results"]["toy_vqa"]["clean"]["accuracy"]["n"] = "six"
    del document["model"]["id"]
    message = refused(write_submission(document, rows, out))
    assert "schema: at $.results.toy_vqa.clean.accuracy.n: 'six' is not of type 'integer'" \
        in message
    assert "schema: at $.model: 'id' is a required property" in message


def test_submit_refuses_a_directory_that_is_not_a_run(tmp_path, capsys):
    assert submit_main([str(tmp_path)]) == 1
    assert "metrics.json: missing; `mibench submit` needs a finished run directory" in (
        capsys.readouterr().err)


def test_validate_cli_reports_every_reason(submission, capsys):
    document, rows, out = submission
    document["results"]["toy_vqa"]["clean"]["accuracy"]["value"] = 1.0
    rewrite(document, [r for r in rows if r["task"] != "toy_text_heavy"
                       or r["condition"] != "white_image"], out)
    assert validate_main([str(out / SUBMISSION_FILE)]) == 1
    err = capsys.readouterr().err
    assert "is not a valid submission" in err
    assert "results: toy_vqa/clean/accuracy.value: submitted 1.0" in err
    assert "records: missing samples in toy_text_heavy/white_image" in err
    assert "results: toy_text_heavy/white_image: cannot recompute its metrics from the " \
        "records (no records)" in err
    shutil.rmtree(out)


def test_the_shipped_schema_is_a_valid_json_schema():
    import jsonschema

    from mibench.results.submission import schema

    jsonschema.Draft202012Validator.check_schema(schema())
    assert schema()["properties"]["submission_version"] == {"const": 1}
