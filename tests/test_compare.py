"""Paired statistics against hand-worked values, and `mibench compare` on two real runs."""

from __future__ import annotations

import json
import shutil
from math import comb

import numpy as np
import pytest
from test_submission import benchmark_run, other_checkpoint

from mibench.results.compare import (
    IncomparableRunsError,
    compare_main,
    compare_runs,
    format_report,
    load_run,
)
from mibench.results.stats import holm, mcnemar_exact, mcnemar_from_counts, paired_difference
from mibench.results.submission import build_submission, write_submission


# -- McNemar -------------------------------------------------------------------------------
@pytest.mark.parametrize("b, c, expected", [
    (8, 2, 2 * sum(comb(10, k) for k in range(3)) / 2**10),  # = 0.109375
    (2, 8, 0.109375),
    (0, 5, 2 / 2**5),  # 0.0625
    (5, 5, 1.0),
    (0, 0, 1.0),  # no discordant pair: no evidence
    (1, 11, 2 * (1 + 12) / 2**12),
])
def test_exact_mcnemar_matches_hand_computed_binomial_tails(b, c, expected):
    assert mcnemar_from_counts(b, c).pvalue == pytest.approx(expected, rel=1e-12)


def test_mcnemar_counts_the_discordant_pairs():
    a = [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0]  # 8 only-A, 2 only-B, 2 both, 2 neither
    b = [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 0, 0]
    test = mcnemar_exact(np.array(a, bool), np.array(b, bool))
    assert (test.b, test.c) == (8, 2)
    assert test.pvalue == pytest.approx(0.109375)
    with pytest.raises(ValueError, match="differ in length: 3 vs 2"):
        mcnemar_exact([True] * 3, [True] * 2)


# -- Holm ----------------------------------------------------------------------------------
def test_holm_matches_a_hand_worked_example():
    # sorted: 0.005*4=0.02, 0.01*3=0.03, 0.03*2=0.06, 0.04*1=0.04 -> monotone 0.06
    adjusted = holm([0.01, 0.04, 0.03, 0.005])
    np.testing.assert_allclose(adjusted, [0.03, 0.06, 0.06, 0.02])
    assert list(adjusted < 0.05) == [True, False, False, True]


def test_holm_caps_at_one_and_keeps_ties_and_order():
    np.testing.assert_allclose(holm([0.5, 0.2, 0.2]), [0.6, 0.6, 0.6])
    np.testing.assert_allclose(holm([0.9, 0.8]), [1.0, 1.0])
    np.testing.assert_allclose(holm([0.04]), [0.04])
    assert holm([]).size == 0
    with pytest.raises(ValueError, match="must lie in"):
        holm([0.1, 1.2])


# -- paired bootstrap ----------------------------------------------------------------------
def test_paired_bootstrap_matches_the_normal_approximation():
    # differences b - a: 30 x +1, 60 x 0, 10 x -1 -> mean 0.2, sd 0.6, se 0.06
    a = np.array([0] * 30 + [0] * 60 + [1] * 10, dtype=float)
    b = np.array([1] * 30 + [0] * 60 + [0] * 10, dtype=float)
    estimate = paired_difference(a, b, seed=0)
    assert estimate.value == pytest.approx(0.2)
    assert estimate.n == 100
    assert estimate.low == pytest.approx(0.2 - 1.96 * 0.06, abs=0.015)
    assert estimate.high == pytest.approx(0.2 + 1.96 * 0.06, abs=0.015)
    assert paired_difference(a, b, seed=0) == estimate  # seeded: the same numbers again


def test_paired_bootstrap_of_identical_differences_has_no_width():
    estimate = paired_difference(np.zeros(5), np.ones(5))
    assert (estimate.value, estimate.low, estimate.high) == (1.0, 1.0, 1.0)


# -- comparing two runs --------------------------------------------------------------------
@pytest.fixture(scope="module")
def runs(tiny_checkpoint, tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    a = benchmark_run(tiny_checkpoint, root / "a")
    b = benchmark_run(other_checkpoint(root / "ckpt-b"), root / "b")
    return a, b


def records_of(run_dir):
    rows = [json.loads(line) for line in (run_dir / "records.jsonl").read_text().splitlines()]
    return {(r["task"], r["condition"], r["sample_id"]): r for r in rows}


def test_compare_pairs_samples_and_matches_hand_counts(runs):
    a_dir, b_dir = runs
    tests = compare_runs(load_run(a_dir), load_run(b_dir))
    ra, rb = records_of(a_dir), records_of(b_dir)
    cells = {(t.task, t.condition, t.metric): t for t in tests}
    assert len(tests) == 9 + 6  # accuracy in 9 cells, flip rate in the 6 perturbed ones
    metrics_a = json.loads((a_dir / "metrics.json").read_text())["results"]
    metrics_b = json.loads((b_dir / "metrics.json").read_text())["results"]
    for (task, cond, metric), test in cells.items():
        keys = sorted(k for k in ra if k[:2] == (task, cond))
        if metric == "accuracy":
            xa = [ra[k]["correct"] for k in keys]
            xb = [rb[k]["correct"] for k in keys]
        else:
            xa = [ra[k]["prediction"] != ra[(task, "clean", k[2])]["prediction"] for k in keys]
            xb = [rb[k]["prediction"] != rb[(task, "clean", k[2])]["prediction"] for k in keys]
        b = sum(x and not y for x, y in zip(xa, xb))
        c = sum(y and not x for x, y in zip(xa, xb))
        assert (test.mcnemar.b, test.mcnemar.c, test.n) == (b, c, len(keys))
        assert test.mcnemar.pvalue == mcnemar_from_counts(b, c).pvalue
        assert test.a == pytest.approx(metrics_a[task][cond][metric]["value"])
        assert test.b == pytest.approx(metrics_b[task][cond][metric]["value"])
        assert test.difference.value == pytest.approx(test.b - test.a)
        assert test.difference.low <= test.difference.value <= test.difference.high
    np.testing.assert_allclose([t.p_holm for t in tests],
                               holm([t.mcnemar.pvalue for t in tests]))


def test_compare_cli_writes_report_and_plot(runs, tmp_path, capsys):
    a_dir, b_dir = runs
    out = tmp_path / "cmp" / "report.md"
    assert compare_main([str(a_dir), str(b_dir), "--out", str(out)]) == 0
    report = out.read_text()
    assert report == capsys.readouterr().out.rstrip("\n") + "\n"
    assert "| task | condition | n | A % | B % | B − A (points) | b / c | p | p Holm |" in report
    assert "## Flip rate (answer changed vs clean)" in report
    assert "| toy_text_heavy | switched_image | 12 |" in report
    assert "![B − A per cell](report.png)" in report
    assert (tmp_path / "cmp" / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_submission_compares_like_its_run(runs, tmp_path):
    a_dir, b_dir = runs
    document, rows = build_submission(a_dir)
    write_submission(document, rows, tmp_path / "sub")
    from_run = compare_runs(load_run(a_dir), load_run(b_dir))
    from_submission = compare_runs(load_run(tmp_path / "sub"), load_run(b_dir))
    assert [(t.task, t.condition, t.metric, t.mcnemar, t.difference) for t in from_run] == [
        (t.task, t.condition, t.metric, t.mcnemar, t.difference) for t in from_submission]
    a, b = load_run(a_dir), load_run(b_dir)
    assert format_report(a, b, from_run).startswith(f"# {b.label} (B) vs {a.label} (A)")


def copy_run(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_refuses_runs_under_different_threat_models(runs, tmp_path, capsys):
    a_dir, b_dir = runs
    changed = copy_run(b_dir, tmp_path / "b")
    metrics = json.loads((changed / "metrics.json").read_text())
    metrics["conditions"]["misleading_text"]["params"]["template"] = "It is a {option}."
    (changed / "metrics.json").write_text(json.dumps(metrics))
    assert compare_main([str(a_dir), str(changed)]) == 1
    err = capsys.readouterr().err
    assert "a paired comparison needs the same samples under the same conditions" in err
    assert ("different threat models / conditions: misleading_text: params: template: "
            "'The picture seems to describe a {option}. {facts}' vs 'It is a {option}.'") in err


def test_refuses_runs_on_different_samples(runs, tmp_path):
    a_dir, b_dir = runs
    changed = copy_run(b_dir, tmp_path / "b")
    lines = (changed / "records.jsonl").read_text().splitlines()
    dropped = json.loads(lines[0])
    (changed / "records.jsonl").write_text("\n".join(lines[1:]) + "\n")
    with pytest.raises(IncomparableRunsError) as err:
        compare_runs(load_run(a_dir), load_run(changed))
    key = "/".join((dropped["task"], dropped["condition"], dropped["sample_id"]))
    assert f"different samples: only {load_run(a_dir).label} has {key}" in str(err.value)


def test_refuses_runs_of_different_tasks(runs, tmp_path):
    a_dir, b_dir = runs
    changed = copy_run(b_dir, tmp_path / "b")
    metrics = json.loads((changed / "metrics.json").read_text())
    metrics["tasks"]["toy_vqa"]["n"] = 8
    (changed / "metrics.json").write_text(json.dumps(metrics))
    with pytest.raises(IncomparableRunsError, match=r"different tasks \(samples\): toy_vqa: "
                                                    r"n: 6 vs 8"):
        compare_runs(load_run(a_dir), load_run(changed))
