"""The study-layout tables and radar plot, checked against the metrics they came from."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mibench import scoring
from mibench.records import Record
from mibench.report import metrics_document, write_metrics
from mibench.results.metrics_file import MetricsFileError
from mibench.results.tables import (
    TablesInputError,
    category_table,
    columns,
    load_runs,
    main,
    render_tables,
)
from mibench.runner import BenchmarkResult

CELL = re.compile(r"(-?[\d.]+) \[(-?[\d.]+), (-?[\d.]+)\]")
TASKS = {"mini_imagenet": "image_heavy", "mmlu": "text_heavy", "scienceqa": "vqa"}
CONDITIONS = {"image_heavy": ["unrelated_text", "misleading_text"],
              "text_heavy": ["black_image", "switched_image"], "vqa": []}


def records(task, condition, correct):
    return [Record(task, condition, f"s{i}", (0.7, 0.3) if ok else (0.3, 0.7), 0 if ok else 1, 0)
            for i, ok in enumerate(correct)]


def write_run(out: Path, model: str, seed: int) -> dict:
    """A run directory whose metrics come from the real scoring functions."""
    rng = np.random.default_rng(seed)
    metrics, conditions = {}, {}
    for task, category in TASKS.items():
        n = int(rng.integers(20, 60))
        clean = records(task, "clean", rng.random(n) < 0.8)
        metrics[task] = {"clean": scoring.clean_metrics(clean)}
        conditions[task] = ["clean"]
        for cond in CONDITIONS[category]:
            metrics[task][cond] = scoring.condition_metrics(
                clean, records(task, cond, rng.random(n) < 0.5), seed=0)
            conditions[task].append(cond)
    fingerprint = {"model": {"name": model}, "seed": 0,
                   "tasks": {t: {"name": t, "category": c} for t, c in TASKS.items()}}
    document = metrics_document(BenchmarkResult(metrics, conditions, out), fingerprint, {})
    out.mkdir(parents=True)
    write_metrics(document, out)
    return document


@pytest.fixture
def two_runs(tmp_path):
    return {"base": write_run(tmp_path / "base", "llava-7b", 1),
            "tuned": write_run(tmp_path / "tuned", "llava-7b", 2)}, tmp_path


def parse_tables(text: str) -> dict[tuple[str, str, str], tuple[float, float, float]]:
    """{(row, task, condition): (value, low, high)} from every table in the text."""
    cells, header = {}, None
    for line in text.splitlines():
        if line.startswith("| model |"):
            header = [c.strip() for c in line.strip("|").split("|")][1:]
        elif line.startswith("| ") and header and not line.startswith("|---"):
            parts = [c.strip() for c in line.strip("|").split("|")]
            for name, cell in zip(header, parts[1:]):
                task, condition = name.split(" / ")
                if cell != "-":
                    cells[(parts[0], task, condition)] = tuple(
                        map(float, CELL.fullmatch(cell).groups()))
    return cells


def test_tables_parse_back_to_the_metrics(two_runs):
    documents, root = two_runs
    runs = load_runs([root / "base", root / "tuned" / "metrics.json"])
    assert [r.label for r in runs] == ["llava-7b (base)", "llava-7b (tuned)"]
    text = render_tables(runs)
    assert text.index("### Image-heavy") < text.index("### Text-heavy") < text.index("### VQA")
    cells = parse_tables(text)
    expected = 0
    for run, key in zip(runs, ("base", "tuned")):
        for task, conds in documents[key]["results"].items():
            for cond, metrics in conds.items():
                acc = metrics["accuracy"]
                got = cells[(run.label, task, cond)]
                assert got == pytest.approx(
                    (100 * acc["value"], 100 * acc["low"], 100 * acc["high"]), abs=0.051)
                expected += 1
    assert len(cells) == expected == 2 * (3 + 3 + 1)


def test_other_metrics_and_missing_cells(two_runs, tmp_path):
    documents, root = two_runs
    partial = json.loads((root / "base" / "metrics.json").read_text())
    del partial["results"]["mini_imagenet"]["misleading_text"]
    (tmp_path / "partial.json").write_text(json.dumps(partial))
    runs = load_runs([root / "tuned", tmp_path / "partial.json"], labels=["tuned", "partial"])
    table = category_table(runs, "image_heavy", metric="flip_rate")
    header = [c.strip() for c in table.splitlines()[0].strip("|").split("|")]
    row = next(line for line in table.splitlines() if line.startswith("| partial |"))
    cell = [c.strip() for c in row.strip("|").split("|")]
    assert cell[header.index("mini_imagenet / misleading_text")] == "-"
    assert cell[header.index("mini_imagenet / unrelated_text")] != "-"
    flip = documents["tuned"]["results"]["mini_imagenet"]["misleading_text"]["flip_rate"]
    cells = parse_tables(table)
    assert cells[("tuned", "mini_imagenet", "misleading_text")][0] == pytest.approx(
        100 * flip["value"], abs=0.051)
    assert ("partial", "mini_imagenet", "misleading_text") not in cells
    js = parse_tables(category_table(runs, "text_heavy", metric="js_divergence"))
    want = documents["tuned"]["results"]["mmlu"]["black_image"]["js_divergence"]["value"]
    assert js[("tuned", "mmlu", "black_image")][0] == pytest.approx(want, abs=5e-4)
    assert columns(runs, "vqa") == [("scienceqa", "clean")]


def test_cli_writes_markdown_and_a_radar_png(two_runs, tmp_path, capsys):
    _, root = two_runs
    out = tmp_path / "tables"
    assert main([str(root / "base"), str(root / "tuned"), "--out", str(out)]) == 0
    text = (out / "tables_accuracy.md").read_text()
    assert len(parse_tables(text)) == 14
    with Image.open(out / "radar_accuracy.png") as png:
        assert png.format == "PNG" and png.size[0] > 200
        # two coloured polygons: more than a handful of distinct colours
        assert len(png.convert("RGB").getcolors(1_000_000)) > 10
    assert "tables in" in capsys.readouterr().out


def test_bad_inputs_name_the_file(tmp_path):
    with pytest.raises(MetricsFileError, match="no metrics.json"):
        load_runs([tmp_path])
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(MetricsFileError, match="x.json has no 'results'"):
        load_runs([tmp_path / "x.json"])
    (tmp_path / "y.json").write_text('{"results": {"t": {"clean": {"accuracy": 0.5}}}}')
    with pytest.raises(MetricsFileError, match=r"y.json: results.t.clean is not an object of"):
        load_runs([tmp_path / "y.json"])
    (tmp_path / "z.json").write_text("[" * 100 + "]" * 100)
    with pytest.raises(MetricsFileError, match="z.json"):
        load_runs([tmp_path / "z.json"])
    (tmp_path / "w.json").write_text('{"results": {}}')
    with pytest.raises(TablesInputError, match="2 labels for 1 runs"):
        load_runs([tmp_path / "w.json"], labels=["a", "b"])
