"""model=openai against a real OpenAI-compatible server (`transformers serve` with the toy).

A relay (tests/relay.py) between adapter and server counts what reaches the server and
injects 429s, 503s and dropped connections; nothing here mocks the server's answers.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import deque

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.utils import instantiate
from relay import Relay

from mibench.answer_parsing import LetterParser
from mibench.cli import asset_path
from mibench.models.hf import HFModelAdapter
from mibench.models.openai_chat import (
    LogprobsUnavailableError,
    OpenAIChatAdapter,
    OpenAIServerError,
)
from mibench.models.response_cache import request_bytes, request_key
from mibench.tasks.shapes import ShapesTask

MAX_NEW_TOKENS = 2  # the toy answers with its letter, then keeps going ("F F F")


@pytest.fixture(scope="module")
def toy_samples():
    return (ShapesTask("image_heavy", 8, name="ih").samples()
            + ShapesTask("text_heavy", 12, name="th").samples())


def adapter_for(base_url: str, model: str, cache_dir, **options) -> OpenAIChatAdapter:
    options = {"api_key_env": None, "concurrency": 4, "max_retries": 3, "backoff_s": 0.01,
               **options}
    return OpenAIChatAdapter(base_url, model, cache_dir=str(cache_dir), **options)


@pytest.fixture(scope="module")
def direct_answers(toy_server, toy_samples, tmp_path_factory) -> list[str]:
    """The toy's answers asked straight from the server, no relay: the reference."""
    adapter = adapter_for(toy_server.base_url, toy_server.model,
                          tmp_path_factory.mktemp("direct-cache"))
    try:
        return [g.text for g in adapter.generate(toy_samples, max_new_tokens=MAX_NEW_TOKENS)]
    finally:
        adapter.close()


def test_the_served_toy_answers_as_the_local_toy(toy_server, toy_samples, direct_answers):
    parser = LetterParser()
    served = [parser.parse(text, s).option for text, s in zip(direct_answers, toy_samples)]
    local_model = HFModelAdapter.from_pretrained(asset_path("toy_llava"), device="cpu")
    local = []
    for sample in toy_samples:  # greedy generation of the same checkpoint, in process
        inputs = local_model.encode([sample])
        with torch.no_grad():
            out = local_model.model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS,
                                             do_sample=False)
        text = local_model.tokenizer.decode(out[0, inputs["input_ids"].shape[1]:],
                                            skip_special_tokens=True)
        local.append(parser.parse(text, sample).option)
    agree = np.mean([a == b for a, b in zip(served, local)])
    correct = np.mean([p == s.answer for p, s in zip(served, toy_samples)])
    assert None not in served
    assert agree >= 0.97, (served, local)
    assert correct >= 0.9, served


def test_describe_names_the_server_and_why_there_are_no_logprobs(toy_server, tmp_path):
    adapter = adapter_for(toy_server.base_url, toy_server.model, tmp_path)
    info = adapter.describe()
    assert info["server"] == {"model": toy_server.model, "system_fingerprint": None}
    assert info["logprobs"]["available"] is False
    assert "without log-probabilities" in info["logprobs"]["reason"]
    assert info["base_url"] == toy_server.base_url and info["temperature"] == 0
    with pytest.raises(LogprobsUnavailableError, match="vLLM or SGLang"):
        adapter.option_probs(ShapesTask("text_heavy", 1).samples())
    adapter.close()


def test_the_cache_makes_a_repeated_run_send_nothing(toy_server, toy_samples, direct_answers,
                                                     tmp_path):
    with Relay(f"http://127.0.0.1:{toy_server.port}") as relay:
        first = adapter_for(relay.base_url, toy_server.model, tmp_path)
        answers = first.generate(toy_samples, max_new_tokens=MAX_NEW_TOKENS)
        first.close()
        # the toy set asks one text-heavy question twice: it is sent once
        unique = len({request_key(request_bytes(first.request_body(
            s, max_new_tokens=MAX_NEW_TOKENS))) for s in toy_samples})
        assert unique == len(toy_samples) - 1
        assert relay.forwarded == unique + 1  # + the capability probe
        assert [g.text for g in answers] == direct_answers
        assert not any(g.cached for g in answers)

        again = adapter_for(relay.base_url, toy_server.model, tmp_path)
        repeated = again.generate(toy_samples, max_new_tokens=MAX_NEW_TOKENS)
        again.describe()
        assert relay.forwarded == unique + 1  # not one request more
        assert [g.text for g in repeated] == direct_answers and all(g.cached for g in repeated)
        assert again.stats().sent == 0 and again.stats().cache_hits == len(toy_samples)
        again.close()


def test_requests_go_out_concurrency_at_a_time(toy_server, toy_samples, tmp_path):
    adapter = adapter_for(toy_server.base_url, toy_server.model, tmp_path, concurrency=4)
    adapter.describe()  # the probe is cached, so only the four samples' requests follow
    adapter.close()
    with Relay(f"http://127.0.0.1:{toy_server.port}") as relay:
        # the relay holds each request until four are waiting: all four must be in flight
        relay.barrier = threading.Barrier(4, timeout=60)
        adapter = adapter_for(relay.base_url, toy_server.model, tmp_path, concurrency=4)
        adapter.generate(toy_samples[:4], max_new_tokens=MAX_NEW_TOKENS)
        adapter.close()
    assert relay.max_in_flight == 4 and relay.forwarded == 4


def test_429_503_and_dropped_connections_are_retried_and_counted(toy_server, toy_samples,
                                                                 direct_answers, tmp_path):
    with Relay(f"http://127.0.0.1:{toy_server.port}") as relay:
        relay.faults.extend([429, 503, 429, "drop", 503])
        adapter = adapter_for(relay.base_url, toy_server.model, tmp_path, concurrency=1,
                              max_retries=5)
        answers = adapter.generate(toy_samples[:6], max_new_tokens=MAX_NEW_TOKENS)
        stats = adapter.stats()
        adapter.close()
    assert [g.text for g in answers] == direct_answers[:6]
    assert relay.injected == {"429": 2, "503": 2, "drop": 1}
    assert stats.retries == {"429": 2, "503": 2, "connection": 1}
    assert relay.forwarded == 7 and stats.sent == 7 + 5  # 6 samples + probe, + 5 retried


def test_a_request_that_times_out_is_sent_again(toy_server, toy_samples, direct_answers,
                                               tmp_path):
    with Relay(f"http://127.0.0.1:{toy_server.port}") as relay:
        adapter = adapter_for(relay.base_url, toy_server.model, tmp_path, timeout_s=5)
        adapter.describe()
        relay.stall_s, relay.faults = 8, deque(["stall"])
        answers = adapter.generate(toy_samples[-1:], max_new_tokens=MAX_NEW_TOKENS)
        assert adapter.stats().retries.get("timeout", 0) >= 1
        adapter.close()
    assert [g.text for g in answers] == direct_answers[-1:]


def test_a_server_refusing_logprobs_is_asked_once_and_the_reason_kept(toy_server, tmp_path):
    """Servers differ: `transformers serve` 5.24 ignores the fields, others answer 400."""
    with Relay(f"http://127.0.0.1:{toy_server.port}") as relay:
        relay.faults.append(400)  # the probe that asks for log-probabilities
        adapter = adapter_for(relay.base_url, toy_server.model, tmp_path)
        info = adapter.describe()["logprobs"]
        assert info["available"] is False and info["reason"].startswith("HTTP 400")
        assert info["reason"].endswith('"injected 400"}}') and relay.forwarded == 1
        adapter.close()
        again = adapter_for(relay.base_url, toy_server.model, tmp_path)
        assert again.describe()["logprobs"] == info and len(relay.authorizations) == 2
        again.close()


def test_retries_spent_raise_a_clear_error(toy_server, toy_samples, tmp_path):
    with Relay(f"http://127.0.0.1:{toy_server.port}") as relay:
        relay.faults.extend([503] * 3)
        adapter = adapter_for(relay.base_url, toy_server.model, tmp_path, max_retries=2)
        with pytest.raises(OpenAIServerError, match=r"after 3 tries \(last: 503.*run again"):
            adapter.describe()
        adapter.close()


def test_the_server_killed_mid_run_then_the_run_resumed_from_the_cache(
        toy_server, toy_samples, direct_answers, tmp_path):
    samples, killed_after = toy_samples[:6], 2
    server = toy_server  # killed and restarted on its port: later tests find it running
    try:
        with Relay(f"http://127.0.0.1:{server.port}") as relay:
            adapter = adapter_for(relay.base_url, server.model, tmp_path, concurrency=1,
                                  max_retries=2)
            adapter.describe()  # the probe: then the run
            relay.after_forward = (
                lambda n: server.stop(kill=True) if n == 1 + killed_after else None)
            with pytest.raises(OpenAIServerError, match="run again to resume"):
                adapter.generate(samples, max_new_tokens=MAX_NEW_TOKENS)
            assert adapter.stats().retries == {"connection": 3}
            adapter.close()
            assert len(adapter.cache) == 1 + killed_after

            server.start()  # the relay's upstream again
            relay.after_forward = None
            forwarded = relay.forwarded
            resumed = adapter_for(relay.base_url, server.model, tmp_path)
            answers = resumed.generate(samples, max_new_tokens=MAX_NEW_TOKENS)
            resumed.close()
        assert relay.forwarded - forwarded == len(samples) - killed_after  # only the missing
        assert [g.cached for g in answers] == [True] * killed_after + [False] * (
            len(samples) - killed_after)
        assert [g.text for g in answers] == direct_answers[:6]
    finally:
        if server.process is None or server.process.poll() is not None:
            server.start()


SENTINEL = "sk-mibench-SENTINEL-7c1d0e"


def test_the_api_key_reaches_the_server_and_nothing_else(toy_server, toy_samples, tmp_path,
                                                         monkeypatch, caplog, capsys):
    monkeypatch.setenv("MIBENCH_TEST_KEY", SENTINEL)
    caplog.set_level(logging.DEBUG)  # every logger, httpx's and httpcore's included
    cache_dir = tmp_path / "run"
    errors = []
    with Relay(f"http://127.0.0.1:{toy_server.port}") as relay:
        relay.faults.extend([429, "drop"])
        adapter = adapter_for(relay.base_url, toy_server.model, cache_dir,
                              api_key_env="MIBENCH_TEST_KEY")
        answers = adapter.generate(toy_samples[:3], max_new_tokens=MAX_NEW_TOKENS)
        written = {"describe": adapter.describe(), "stats": adapter.stats().retries,
                   "served": adapter.served(), "repr": repr(adapter),
                   "answers": [g.text for g in answers]}
        (cache_dir / "provenance.json").write_text(json.dumps(written))
        relay.faults.append("echo_key")  # a 401 that quotes the key back, as hosted APIs do
        with pytest.raises(OpenAIServerError) as refused:
            adapter.generate(toy_samples[3:4], max_new_tokens=MAX_NEW_TOKENS)
        errors.append(str(refused.value))
        adapter.close()
    assert relay.authorizations and set(relay.authorizations) == {f"Bearer {SENTINEL}"}
    assert "MIBENCH_TEST_KEY" in errors[0] and "HTTP 401" in errors[0]
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.suffix == ".jsonl" for p in files)
    for path in files:
        assert SENTINEL.encode() not in path.read_bytes(), path
    out, err = capsys.readouterr()
    for text in (caplog.text, out, err, *errors):
        assert SENTINEL not in text
    assert "429" in caplog.text  # the retries were logged, without the key


def test_a_key_in_the_config_is_refused_without_echoing_it():
    with pytest.raises(Exception, match="must NAME an environment variable") as refused:
        OpenAIChatAdapter("http://127.0.0.1:1/v1", "m", api_key_env=SENTINEL)
    assert SENTINEL not in str(refused.value)


def test_the_openai_config_builds_the_adapter_without_contacting_the_server(tmp_path):
    with initialize_config_module("mibench.conf", version_base="1.3"):
        cfg = compose("config", overrides=[
            "model=openai", "model.base_url=http://127.0.0.1:9/v1", "model.model=org/some-vlm",
            f"model.cache_dir={tmp_path}", "model.concurrency=2"])
    adapter = instantiate(cfg.model)  # port 9 (discard) answers nothing: no request made
    assert isinstance(adapter, OpenAIChatAdapter)
    assert (adapter.name, adapter.api_key_env, adapter.logprobs) == ("some-vlm",
                                                                     "OPENAI_API_KEY", "auto")
    assert adapter.prompt_length(ShapesTask("text_heavy", 1).samples()[0]) > 0
    adapter.close()
