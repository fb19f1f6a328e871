"""Metrics per subgroup of samples (`mibench tables --by meta.KEY`), against the suite's own
scoring on each subgroup's records, with small groups pooled and said."""

import dataclasses
import json

import numpy as np
import pytest
from conftest import ListTask, image_heavy_samples
from dataset_fixtures import write_seed_bench
from hydra import compose, initialize_config_module
from hydra.utils import instantiate
from PIL import Image

from mibench import scoring
from mibench.models.hf import HFModelAdapter
from mibench.perturbations.text import MisleadingText
from mibench.records import Audit, Record
from mibench.report import metrics_document, write_metrics
from mibench.results.subgroups import OTHER, format_split, split_run
from mibench.results.tables import main as tables_main
from mibench.runner import run_benchmark

pytestmark = pytest.mark.usefixtures("one_thread")


def record(condition, i, correct, attribute, prediction=None, **meta):
    audit = None if attribute is None else Audit("0" * 64, "", {"attribute": attribute, **meta})
    pred = (0 if correct else 1) if prediction is None else prediction
    return Record("t", condition, f"s{i}", (0.7, 0.3) if pred == 0 else (0.3, 0.7), pred, 0,
                  audit=audit)


def hand_run():
    """10 samples: 6 colour questions (clean all right; 2 wrong under the condition) and 4
    shape questions (clean 3 right; all 4 wrong under the condition)."""
    groups = ["colour"] * 6 + ["shape"] * 4
    clean_ok = [True] * 6 + [True, True, True, False]
    cond_ok = [True, True, True, True, False, False] + [False] * 4
    records = [record("clean", i, ok, g) for i, (ok, g) in enumerate(zip(clean_ok, groups))]
    records += [record("cond", i, ok, g) for i, (ok, g) in enumerate(zip(cond_ok, groups))]
    return {r.key: r for r in records}, {"t": ["clean", "cond"]}


def subset(records, condition, ids):
    return [records[("t", condition, f"s{i}")] for i in ids]


def test_each_subgroup_gets_every_metric_of_its_own_samples():
    records, cells = hand_run()
    split = split_run("run", records, cells, "attribute", min_n=3, seed=0)
    rows = {(r.condition, r.group): r for r in split.rows}
    assert set(rows) == {("clean", "colour"), ("clean", "shape"), ("cond", "colour"),
                         ("cond", "shape")}
    colour, shape = range(6), range(6, 10)
    assert rows[("clean", "shape")].metrics == scoring.clean_metrics(subset(records, "clean",
                                                                            shape))
    assert rows[("cond", "colour")].metrics == scoring.condition_metrics(
        subset(records, "clean", colour), subset(records, "cond", colour), seed=0)
    # by hand: colour 6 -> 4 right (drop 2/6, harm 2/6), shape 3 right -> 0 (drop 3/4)
    assert rows[("cond", "colour")].metrics["drop"].value == pytest.approx(2 / 6)
    assert rows[("cond", "shape")].metrics["drop"].value == pytest.approx(3 / 4)
    assert rows[("cond", "shape")].metrics["harm_rate"].value == 1.0
    assert rows[("cond", "shape")].metrics["flip_rate"].value == 3 / 4
    assert rows[("cond", "shape")].n == 4 and rows[("cond", "colour")].n == 6
    for row in split.rows:
        for estimate in row.metrics.values():
            assert estimate.low <= estimate.value <= estimate.high


def test_groups_under_min_n_are_pooled_into_other_and_the_output_says_so():
    records, cells = hand_run()
    split = split_run("run", records, cells, "attribute", min_n=5, seed=0)
    rows = {(r.condition, r.group): r for r in split.rows}
    assert set(rows) == {("clean", "colour"), ("clean", OTHER), ("cond", "colour"),
                         ("cond", OTHER)}
    assert rows[("cond", OTHER)].pooled == (("shape", 4),)
    text = format_split([split])
    assert 'groups under 5 samples pooled into "other"' in text
    assert '- t: pooled into "other" (each under 5 samples): shape (n=4)' in text
    assert "| t | cond | other | 4 |" in text


def test_a_key_a_condition_notes_splits_that_condition_only():
    records, cells = hand_run()
    for i in range(10):
        key = ("t", "cond", f"s{i}")
        r = records[key]
        records[key] = dataclasses.replace(r, audit=dataclasses.replace(
            r.audit, meta={**r.audit.meta, "donor": "d1" if i < 5 else "d2"}))
    split = split_run("run", records, cells, "donor", min_n=1)
    assert {(r.condition, r.group, r.n) for r in split.rows} == {("cond", "d1", 5),
                                                                 ("cond", "d2", 5)}


def test_records_without_the_key_or_without_an_audit_say_why():
    records, cells = hand_run()
    split = split_run("run", records, cells, "subject")
    assert not split.rows
    assert split.skipped == {"t": "no meta.subject in its records (they hold: attribute)"}
    old = {k: dataclasses.replace(r, audit=None) for k, r in records.items()}
    split = split_run("run", old, cells, "attribute")
    assert "no audit trail" in split.skipped["t"]


def write_run(tiny_adapter, out):
    """A real run of the tiny model on samples whose metadata splits them 5 / 3."""
    samples = [dataclasses.replace(s, meta={"attribute": "shape" if i < 5 else "colour"})
               for i, s in enumerate(image_heavy_samples(8))]
    result = run_benchmark(tiny_adapter, {"ih": ListTask("ih", "image_heavy", samples)},
                           {"misleading_text": MisleadingText()}, out, batch_size=4,
                           progress=False)
    fingerprint = {"model": {"name": "tiny"}, "seed": 0, "prompt": {},
                   "tasks": {"ih": {"name": "ih", "category": "image_heavy"}}, "conditions": {}}
    write_metrics(metrics_document(result, fingerprint, {}), out)
    return out


def test_tables_by_a_meta_key_writes_markdown_json_and_a_plot(tiny_adapter, tmp_path, capsys):
    run = write_run(tiny_adapter, tmp_path / "run")
    out = tmp_path / "tables"
    assert tables_main([str(run), "--by", "meta.attribute", "--min-n", "4", "--out",
                        str(out)]) == 0
    text = capsys.readouterr().out
    assert "### tiny: by meta.attribute" in text
    assert "| ih | misleading_text | shape | 5 |" in text
    assert "| ih | misleading_text | other | 3 |" in text
    assert '- ih: pooled into "other" (each under 4 samples): colour (n=3)' in text
    saved = json.loads((out / "subgroups_attribute.json").read_text())
    assert saved[0]["by"] == "meta.attribute" and saved[0]["min_n"] == 4
    assert {(r["condition"], r["group"], r["n"]) for r in saved[0]["rows"]} == {
        ("clean", "shape", 5), ("clean", OTHER, 3), ("misleading_text", "shape", 5),
        ("misleading_text", OTHER, 3)}
    assert (out / "subgroups_attribute.md").read_text() == text.split("\nsubgroups in ")[0]
    assert Image.open(out / "subgroups_attribute_accuracy.png").size[0] > 100


@pytest.mark.parametrize("by, message", [
    ("attribute", "give a metadata key as meta.KEY"),
    ("meta.subject", "no run could be split by meta.subject"),
])
def test_tables_by_refuses_what_it_cannot_split(tiny_adapter, tmp_path, capsys, by, message):
    run = write_run(tiny_adapter, tmp_path / "run")
    assert tables_main([str(run), "--by", by, "--out", str(tmp_path / "t")]) == 1
    assert message in capsys.readouterr().err


def test_seed_bench_question_types_split_a_seed_bench_format_run(tiny_checkpoint, tmp_path):
    """SEED-Bench's question_type_id (a meta column of its YAML) reaches the records and splits
    them; a 3-row fixture, so every type is pooled at the default min_n."""
    root = tmp_path / "data"
    write_seed_bench(root)
    with initialize_config_module("mibench.conf", version_base="1.3"):
        cfg = compose("config", overrides=["task=seed_bench", f"data_root={root}"])
    task = instantiate(cfg.task)
    model = HFModelAdapter.from_pretrained(tiny_checkpoint, name="tiny", device="cpu",
                                           unknown_words_refuse=1.0)
    out = tmp_path / "run"
    result = run_benchmark(model, {"seed_bench": task}, {}, out, progress=False)
    records = {r.key: r for r in result_records(out)}
    assert {r.audit.meta["question_type_id"] for r in records.values()} == {1, 3, 5}
    split = split_run("tiny", records, result.conditions, "question_type_id")
    (row,) = split.rows
    assert row.group == OTHER and row.pooled == (("1", 1), ("3", 1), ("5", 1))
    split = split_run("tiny", records, result.conditions, "question_type_id", min_n=1)
    assert [r.group for r in split.rows] == ["1", "3", "5"]
    assert np.isclose(sum(r.metrics["accuracy"].value for r in split.rows) / 3,
                      result.metrics["seed_bench"]["clean"]["accuracy"].value)


def result_records(out):
    return [Record.from_json(json.loads(line))
            for line in (out / "records.jsonl").read_text().splitlines()]
