"""`mibench model=openai scorer=generate` against a real OpenAI-compatible server
(`transformers serve` with the toy): whole runs, not single requests.

The served toy agrees with the local toy's generated answers; a run whose server dies
mid-run resumes from its records and its response cache and sends only what is missing;
429s and 503s are retried and counted; the API key appears in no file a run writes.
A relay (tests/relay.py) between adapter and server counts requests and injects faults.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from hydra import compose, initialize_config_module
from relay import Relay

from mibench.cli import run, run_id
from mibench.models.openai_chat import OpenAIChatAdapter
from mibench.models.response_cache import request_bytes, request_key
from mibench.runner import run_benchmark
from mibench.scorers import GenerateScorer
from mibench.store import RECORDS_FILE
from mibench.tasks.shapes import ShapesTask

pytestmark = pytest.mark.usefixtures("one_thread")
SENTINEL = "sk-mibench-SENTINEL-5e0a91"
MAX_NEW_TOKENS = 3  # the toy answers with its letter, then goes on ("F F F")


def compose_cfg(*overrides: str):
    with initialize_config_module("mibench.conf", version_base="1.3"):
        return compose("config", overrides=list(overrides))


def served(server, base_url: str | None = None) -> list[str]:
    return ["model=openai", f"model.base_url={base_url or server.base_url}",
            f"model.model={server.model}", "model.api_key_env=null"]


def records_of(out_dir) -> dict[tuple, dict]:
    rows = [json.loads(line) for line in (out_dir / RECORDS_FILE).read_text().splitlines()]
    return {(r["task"], r["condition"], r["sample_id"]): r for r in rows}


def adapter_for(base_url: str, server, **options) -> OpenAIChatAdapter:
    options = {"api_key_env": None, "concurrency": 1, "max_retries": 2, "backoff_s": 0.01,
               **options}
    return OpenAIChatAdapter(base_url, server.model, **options)


def test_served_and_local_generation_agree(toy_server, tmp_path):
    cell = ["task=toy_image_heavy", "task.n=20", "perturbation=misleading_text",
            "scorer=generate", f"scorer.max_new_tokens={MAX_NEW_TOKENS}", "progress=false"]
    remote = run(compose_cfg(*served(toy_server), *cell, "model.concurrency=4",
                             f"out_dir={tmp_path / 'served'}"))
    local = run(compose_cfg(*cell, f"out_dir={tmp_path / 'local'}"))
    a, b = records_of(tmp_path / "served"), records_of(tmp_path / "local")
    assert a.keys() == b.keys() and len(a) == 40
    agree = sum(a[k]["prediction"] == b[k]["prediction"] for k in a) / len(a)
    assert agree >= 0.97, [(k, a[k]["generated"], b[k]["generated"]) for k in a
                           if a[k]["prediction"] != b[k]["prediction"]]
    # the server gives no log-probabilities: JS is left out, with the reason, not made up
    assert "js_divergence" not in remote["results"]["toy_image_heavy"]["misleading_text"]
    assert "without log-probabilities" in remote["omitted_metrics"]["js_divergence"]
    assert "js_divergence" in local["results"]["toy_image_heavy"]["misleading_text"]
    assert all(r["probs"] is None for r in a.values())
    # the responses were kept in the run's own directory
    assert list((tmp_path / "served" / "responses").glob("*.jsonl"))
    # settings that change how answers are fetched change no fingerprint: the same
    # directory is resumed (complete: nothing is asked) under other ones
    again = run(compose_cfg(*served(toy_server), *cell, "model.concurrency=1",
                            "model.timeout_s=30", "model.max_retries=0",
                            f"out_dir={tmp_path / 'served'}"))
    assert again["results"] == remote["results"]


def test_the_run_directory_is_named_by_the_served_model_not_by_fetch_settings(toy_server):
    base = [*served(toy_server), "scorer=generate", "task=toy_text_heavy"]
    name = run_id(_root_=compose_cfg(*base))
    assert name.startswith("toy_llava-toy_text_heavy-")
    for fetch in ("model.concurrency=32", "model.timeout_s=5", "model.max_retries=1",
                  "model.backoff_s=0.1", "model.max_backoff_s=2", "model.cache_dir=/tmp/x"):
        assert run_id(_root_=compose_cfg(*base, fetch)) == name, fetch
    for changed in ("scorer.max_new_tokens=3", "scorer=study", "model.seed=1",
                    "model.base_url=http://127.0.0.1:1/v1"):
        assert run_id(_root_=compose_cfg(*base, changed)) != name, changed


def test_429_and_503_in_a_run_are_retried_and_counted(toy_server, tmp_path):
    task = {"th": ShapesTask("text_heavy", 4, name="th")}
    scorer = GenerateScorer(max_new_tokens=MAX_NEW_TOKENS)
    with Relay(f"http://127.0.0.1:{toy_server.port}") as relay:
        adapter = adapter_for(relay.base_url, toy_server, max_retries=3)
        adapter.bind_run_dir(tmp_path / "faulty")
        adapter.describe()  # the probe; then two faults before each of the first two answers
        relay.faults.extend([429, 503])
        relay.after_forward = lambda n: relay.faults.extend([503, 429]) if n == 2 else None
        result = run_benchmark(adapter, task, {}, tmp_path / "faulty", progress=False,
                               scorer=scorer)
        stats = adapter.stats()
        adapter.close()
    direct = adapter_for(toy_server.base_url, toy_server)
    direct.bind_run_dir(tmp_path / "direct")
    run_benchmark(direct, task, {}, tmp_path / "direct", progress=False, scorer=scorer)
    direct.close()
    assert not result.failures and relay.injected == {"429": 2, "503": 2}
    assert stats.retries == {"429": 2, "503": 2} and stats.sent == 1 + 4 + 4
    assert records_of(tmp_path / "faulty") == records_of(tmp_path / "direct")


def test_a_run_whose_server_died_resumes_and_sends_only_what_is_missing(toy_server, tmp_path):
    """Batch 1 (4 samples) is scored and stored; batch 2 is half answered when the server is
    killed. The resumed run skips batch 1 (its records are kept), reads batch 2's answers
    from the response cache and sends only the requests never answered."""
    task = {"th": ShapesTask("text_heavy", 8, name="th")}
    scorer = GenerateScorer(max_new_tokens=MAX_NEW_TOKENS)
    server, out = toy_server, tmp_path / "run"
    try:
        with Relay(f"http://127.0.0.1:{server.port}") as relay:
            first = adapter_for(relay.base_url, server)
            first.bind_run_dir(out)
            relay.after_forward = lambda n: server.stop(kill=True) if n == 1 + 4 + 2 else None
            broken = run_benchmark(first, task, {}, out, batch_size=4, progress=False,
                                   scorer=scorer)
            first.close()
            assert [f.task for f in broken.failures] == ["th"]
            assert "run again to resume" in broken.failures[0].error
            done = {k[2] for k in records_of(out)}
            assert len(done) == 4 and len(first.cache) == 1 + 4 + 2

            server.start()
            relay.after_forward, forwarded = None, relay.forwarded
            resumed = adapter_for(relay.base_url, server)
            resumed.bind_run_dir(out)
            # the requests of the unfinished batch, and which of them were answered
            left = {s.id: request_key(request_bytes(resumed.request_body(
                s, max_new_tokens=MAX_NEW_TOKENS))) for s in task["th"].samples()
                if s.id not in done}
            answered = {k for k in left.values() if k in resumed.cache}
            result = run_benchmark(resumed, task, {}, out, batch_size=4, progress=False,
                                   scorer=scorer)
            stats = resumed.stats()
            resumed.close()
        assert not result.failures and len(left) == 4 and answered
        assert relay.forwarded - forwarded == len(set(left.values()) - answered) == stats.sent
        assert stats.cache_hits == sum(k in answered for k in left.values())
        whole = adapter_for(server.base_url, server)
        whole.bind_run_dir(tmp_path / "whole")
        run_benchmark(whole, task, {}, tmp_path / "whole", batch_size=4, progress=False,
                      scorer=scorer)
        whole.close()
        assert records_of(out) == records_of(tmp_path / "whole")
    finally:
        if server.process is None or server.process.poll() is not None:
            server.start()


def test_the_api_key_is_in_no_file_of_a_mibench_run(toy_server, tmp_path):
    """A whole `mibench` run with W&B logging, a retried 429, and a 401 whose message
    quotes the key back (the task fails and says why): the key reaches the server in the
    Authorization header and appears in no file of the run directory, nor on the console."""
    out = tmp_path / "run"
    with Relay(f"http://127.0.0.1:{toy_server.port}") as relay:
        relay.faults.append(429)
        relay.after_forward = lambda n: relay.faults.append("echo_key") if n == 3 else None
        command = [sys.executable, "-m", "mibench.cli", *served(toy_server, relay.base_url),
                   "model.api_key_env=MIBENCH_TEST_KEY", "model.concurrency=1",
                   "model.backoff_s=0.01", "scorer=generate",
                   f"scorer.max_new_tokens={MAX_NEW_TOKENS}", "task=toy_text_heavy",
                   "task.n=4", "perturbation=black_image", "batch_size=2",
                   "logger=wandb", "logger.mode=offline", "progress=false",
                   f"hydra.run.dir={out}"]
        env = {**os.environ, "MIBENCH_TEST_KEY": SENTINEL, "HF_HUB_OFFLINE": "1"}
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert set(relay.authorizations) == {f"Bearer {SENTINEL}"}
    assert relay.injected == {"429": 1, "echo_key": 1}
    assert done.returncode == 1, done.stderr[-3000:]  # the task that got the 401 failed
    metrics = json.loads((out / "metrics.json").read_text())
    fetched = metrics["scoring"]["fetch"]  # the retried 429 is counted in the provenance
    assert fetched["retries"] == {"429": 1} and fetched["requests"] == (relay.forwarded
                                                          + sum(relay.injected.values()))
    assert [s["model"] for s in fetched["served"]] == [toy_server.model]
    assert "HTTP 401" in json.dumps(metrics["failed"]) and "<redacted>" in json.dumps(
        metrics["failed"])
    files = [p for p in out.rglob("*") if p.is_file()]
    assert any(p.suffix == ".wandb" for p in files) and (out / RECORDS_FILE).exists()
    assert any(p.parent.name == "responses" for p in files)
    for path in files:
        assert SENTINEL.encode() not in path.read_bytes(), path
    for text in (done.stdout, done.stderr):
        assert SENTINEL not in text
