"""Numbers must not depend on how they were computed: 1 vs N processes, killed and resumed."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def mibench_args(checkpoint: str, out_dir: Path, n: int, batch_size: int) -> list[str]:
    return ["model=hf", f"model.path={checkpoint}", "model.dtype=float32",
            "task=toy_text_heavy", f"task.n={n}",
            "perturbation=switched_image", "perturbation.donors.n=40", "progress=false",
            f"batch_size={batch_size}", f"hydra.run.dir={out_dir}"]


def run_mibench(args: list[str], launcher: list[str] | None = None) -> subprocess.CompletedProcess:
    command = (launcher or [sys.executable]) + ["-m", "mibench.cli", *args]
    out = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    return out


def results(out_dir: Path) -> dict:
    return json.loads((out_dir / "metrics.json").read_text())["results"]


def test_two_processes_give_bit_identical_records(tiny_checkpoint, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    run_mibench(mibench_args(tiny_checkpoint, one, n=23, batch_size=4))
    launcher = ["accelerate", "launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    out = run_mibench(mibench_args(tiny_checkpoint, two, n=23, batch_size=4), launcher)
    assert "scored by 2 process(es)" in out.stdout  # 23 samples: 6 batches, uneven shares
    assert (one / "records.jsonl").read_bytes() == (two / "records.jsonl").read_bytes()
    assert (one / "prompts.jsonl").read_bytes() == (two / "prompts.jsonl").read_bytes()
    assert results(one) == results(two)


def test_killed_run_resumes_to_the_uninterrupted_result(tiny_checkpoint, tmp_path):
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    run_mibench(mibench_args(tiny_checkpoint, whole, n=150, batch_size=2))

    args = mibench_args(tiny_checkpoint, resumed, n=150, batch_size=2)
    proc = subprocess.Popen([sys.executable, "-m", "mibench.cli", *args], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    shard = resumed / "shards" / "rank-0.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if shard.exists() and len(shard.read_text().splitlines()) >= 170:  # past clean, mid-way
            break
        time.sleep(0.05)
    if proc.poll() is not None:
        pytest.fail("the run finished before it could be killed; make it longer")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(shard.read_text().splitlines())
    assert 170 <= done_before < 300 and not (resumed / "records.jsonl").exists()

    run_mibench(args)
    records = (resumed / "records.jsonl").read_text().splitlines()
    keys = [(r["task"], r["condition"], r["sample_id"]) for r in map(json.loads, records)]
    assert len(keys) == len(set(keys)) == 300  # no duplicate, no missing sample
    assert (resumed / "records.jsonl").read_bytes() == (whole / "records.jsonl").read_bytes()
    assert (resumed / "prompts.jsonl").read_bytes() == (whole / "prompts.jsonl").read_bytes()
    assert results(resumed) == results(whole)


def test_changed_config_on_resume_is_refused(tiny_checkpoint, tmp_path):
    run_mibench(mibench_args(tiny_checkpoint, tmp_path, n=4, batch_size=4))
    args = mibench_args(tiny_checkpoint, tmp_path, n=4, batch_size=4) + ["seed=1"]
    out = subprocess.run([sys.executable, "-m", "mibench.cli", *args], capture_output=True,
                         text=True, env=ENV, timeout=600)
    assert out.returncode != 0
    assert "holds records of a run configured differently (changed: seed)" in out.stderr
