"""The `mibench` Hydra app end to end on the embedded toy model, offline."""

import json
import os
import subprocess
import sys

import pytest
from hydra import compose, initialize_config_module

from mibench.cli import run

SMALL = ["grid.tasks.toy_image_heavy.n=24", "grid.tasks.toy_text_heavy.n=24",
         "grid.tasks.toy_vqa.n=12", "progress=false"]


def compose_cfg(overrides):
    with initialize_config_module("mibench.conf", version_base="1.3"):
        return compose("config", overrides=overrides)


def test_console_script_runs_the_default_benchmark_offline(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    out = subprocess.run(
        [sys.executable, "-m", "mibench.cli", f"hydra.run.dir={tmp_path}", *SMALL],
        capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "| toy_image_heavy | misleading_text | 24 |" in out.stdout
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["model"]["name"] == "toy_llava"
    assert set(metrics["results"]) == {"toy_image_heavy", "toy_text_heavy", "toy_vqa"}
    assert set(metrics["results"]["toy_text_heavy"]) == {
        "clean", "random_pixels", "black_image", "white_image", "switched_image"}
    assert set(metrics["results"]["toy_vqa"]) == {"clean"}
    lines = (tmp_path / "records.jsonl").read_text().splitlines()
    assert len(lines) == 24 * 3 + 24 * 5 + 12
    assert (tmp_path / "table.md").exists()


def test_one_cell_replaces_the_grid(tmp_path):
    cfg = compose_cfg(["task=toy_image_heavy", "perturbation=misleading_text",
                       "task.n=16", f"out_dir={tmp_path}", "progress=false"])
    document = run(cfg)
    assert list(document["results"]) == ["toy_image_heavy"]
    assert list(document["results"]["toy_image_heavy"]) == ["clean", "misleading_text"]
    cell = document["results"]["toy_image_heavy"]["misleading_text"]
    for metric in ("accuracy", "drop", "flip_rate", "harm_rate", "js_divergence", "lure_rate"):
        assert {"value", "low", "high", "n", "method"} <= set(cell[metric])
        assert cell[metric]["low"] <= cell[metric]["value"] <= cell[metric]["high"]


@pytest.mark.parametrize("override, message", [
    ("task=no_such_task", "Could not find 'task/no_such_task'"),
    ("perturbation=no_such_perturbation", "Could not find 'perturbation/no_such_perturbation'"),
    ("model=no_such_model", "Could not find 'model/no_such_model'"),
])
def test_unknown_names_list_the_available_options(override, message):
    from hydra.errors import MissingConfigException

    with pytest.raises(MissingConfigException, match=message) as err:
        compose_cfg([override])
    assert "Available options" in str(err.value) or err.value.options


def test_wandb_offline_logs_metrics_table_and_plot(tmp_path):
    cfg = compose_cfg(["task=toy_text_heavy", "perturbation=black_image", "task.n=8",
                       f"out_dir={tmp_path}", "logger=wandb", "logger.mode=offline",
                       "progress=false"])
    run(cfg)
    (run_dir,) = tmp_path.glob("wandb/offline-run-*")
    (log,) = run_dir.glob("run-*.wandb")  # the run's protobuf log, synced later
    logged = log.read_bytes()
    for key in ("toy_text_heavy/black_image/flip_rate", "toy_text_heavy/clean/accuracy/low"):
        assert key.encode() in logged
    (table,) = run_dir.glob("files/media/table/records_*.table.json")
    rows = json.loads(table.read_text())
    records = [json.loads(line) for line in (tmp_path / "records.jsonl").read_text().splitlines()]
    assert len(rows["data"]) == len(records) == 16
    column = rows["columns"].index("prediction")
    assert sorted(r[column] for r in rows["data"]) == sorted(r["prediction"] for r in records)
    assert list(run_dir.glob("files/media/images/plots/accuracy_*.png"))
