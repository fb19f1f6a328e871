"""Results of scorer=generate through submit, validate, compare and the leaderboard: every
metric recomputed, a generated answer never paired or ranked with a likelihood one."""

from __future__ import annotations

import copy
import json

import pytest
from test_submission import benchmark_run

from mibench.results.compare import IncomparableRunsError, compare_runs, load_run
from mibench.results.leaderboard import build
from mibench.results.submission import (
    SubmissionError,
    build_submission,
    records_digest,
    validate_main,
    validate_submission,
    write_submission,
)

GENERATE = ("scorer=generate", "scorer.max_new_tokens=3")


@pytest.fixture(scope="module")
def runs(tiny_checkpoint, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("scorers")
    return {"likelihood": benchmark_run(tiny_checkpoint, root / "likelihood"),
            "generate": benchmark_run(tiny_checkpoint, root / "generate", *GENERATE)}


def tampered(document: dict, rows: list[dict], out, change) -> str:
    document, rows = copy.deepcopy(document), copy.deepcopy(rows)
    change(document, rows)
    document["records"].update(count=len(rows), sha256=records_digest(rows))
    with pytest.raises(SubmissionError) as err:
        validate_submission(write_submission(document, rows, out))
    return str(err.value)


def test_a_generate_run_submits_validates_and_keeps_its_answers(runs, tmp_path):
    document, rows = build_submission(runs["generate"])
    assert document["scorer"]["name"] == "generate"
    assert document["scorer"]["parser"]["name"] == "letter"
    assert all(r["generated"]["responses"] for r in rows)
    cell = document["results"]["toy_image_heavy"]["misleading_text"]
    assert {"accuracy_parsed", "parse_failure_rate", "js_divergence"} <= set(cell)
    validate_submission(write_submission(document, rows, tmp_path / "sub"))


def test_tampered_generated_answers_are_refused(runs, tmp_path):
    document, rows = build_submission(runs["generate"])

    def unreasoned(doc, rows):  # an answer with neither an option nor a failure reason
        rows[0]["prediction"], rows[0]["correct"] = None, False
        rows[0]["generated"]["failure"] = None

    assert "an option or a failure reason, not both or neither" in tampered(
        document, rows, tmp_path / "a", unreasoned)

    def relabelled(doc, rows):  # generated answers passed off as likelihood scores
        doc["scorer"] = {"name": "likelihood", "class": "mibench.scorers.LikelihoodScorer"}

    message = tampered(document, rows, tmp_path / "b", relabelled)
    assert "scorer: declared" in message and "generated answers" in message
    assert "config_hash" in message

    def other_parser(doc, rows):  # the config names another parser than was used
        doc["config"]["scorer"]["parser"] = "study"

    assert "scorer: declared" in tampered(document, rows, tmp_path / "c", other_parser)

    def wrong_retries(doc, rows):
        rows[0]["generated"]["retries"] = 1

    assert "1 retries but 1 responses" in tampered(document, rows, tmp_path / "d",
                                                   wrong_retries)


def test_a_likelihood_run_is_never_compared_with_a_generate_run(runs):
    with pytest.raises(IncomparableRunsError, match="different scorers"):
        compare_runs(load_run(runs["likelihood"]), load_run(runs["generate"]))
    same = compare_runs(load_run(runs["generate"]), load_run(runs["generate"]))
    assert same and all(t.difference.value == 0 for t in same)


def test_the_leaderboard_ranks_each_scorer_apart(runs, tmp_path):
    results = tmp_path / "results"
    for kind, run_dir in runs.items():
        document, rows = build_submission(run_dir, f"tiny-{kind}")
        path = write_submission(document, rows, tmp_path / kind)
        assert validate_main([str(path), "--accept", str(results)]) == 0
    md_path, _, board = build(results)
    assert sorted(len(entries) for entries in board.values()) == [1, 1]
    text = md_path.read_text()
    assert "seed 0; scorer likelihood " in text and "seed 0; scorer generate " in text
    # the same weights under two scorers: in one group the second would be unranked as a
    # duplicate of the first; apart, each stands alone (ranked, or at chance on the toy)
    entries = [e for group in board.values() for e in group]
    assert entries[0].weights and entries[0].weights == entries[1].weights
    assert all(e.duplicate_of is None for e in entries)
    assert all(e.rank == 1 or e.unranked_reason.startswith("clean accuracy not above chance")
               for e in entries)
    assert json.loads((results / "submissions" / "tiny-generate" / "submission.json")
                      .read_text())["scorer"]["name"] == "generate"
