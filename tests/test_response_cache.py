"""The response cache on disk, and option probabilities from top log-probabilities."""

from __future__ import annotations

import json
import math
import threading

import numpy as np
import pytest
from conftest import make_image
from hypothesis import given
from hypothesis import strategies as st

from mibench.models.generation import letter_probs
from mibench.models.openai_chat import OpenAIChatAdapter, ServerInfo
from mibench.models.response_cache import (
    ResponseCache,
    cache_file,
    request_bytes,
    request_key,
)
from mibench.records import Sample

KEY_A, KEY_B = "a" * 64, "b" * 64


def test_cache_survives_a_reopen(tmp_path):
    cache = ResponseCache(tmp_path / "c.jsonl")
    cache.put(KEY_A, {"text": "B"})
    cache.put(KEY_A, {"text": "not kept: the first answer stays"})
    again = ResponseCache(tmp_path / "c.jsonl")
    assert again.get(KEY_A) == {"text": "B"} and len(again) == 1 and again.skipped == 0


def test_a_line_cut_short_is_skipped_and_the_next_one_starts_fresh(tmp_path, caplog):
    path = tmp_path / "c.jsonl"
    ResponseCache(path).put(KEY_A, {"text": "A"})
    with open(path, "ab") as f:
        f.write(b'{"key": "' + KEY_B.encode() + b'", "val')  # killed mid-write
    cache = ResponseCache(path)
    assert cache.skipped == 1 and KEY_B not in cache and "skipped 1" in caplog.text
    cache.put(KEY_B, {"text": "B"})
    reread = ResponseCache(path)
    assert reread.skipped == 1 and reread.get(KEY_B) == {"text": "B"}


@pytest.mark.parametrize("line", [
    b"[1, 2]", b'{"key": "../../etc", "value": {}}', b'{"key": "' + b"a" * 64 + b'"}',
    b'{"key": "' + b"c" * 64 + b'", "value": "text"}', b"\xff\xfe", b"{" * 100_000,
])
def test_lines_not_written_by_the_cache_are_skipped(tmp_path, line):
    path = tmp_path / "c.jsonl"
    path.write_bytes(line + b"\n")
    assert len(ResponseCache(path)) == 0


def test_appends_from_many_threads_never_interleave(tmp_path):
    cache = ResponseCache(tmp_path / "c.jsonl")
    keys = [f"{i:064x}" for i in range(200)]

    def put(chunk):
        for key in chunk:
            cache.put(key, {"text": key * 50})
    threads = [threading.Thread(target=put, args=(keys[i::8],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lines = (tmp_path / "c.jsonl").read_bytes().splitlines()
    assert len(lines) == 200 and all(json.loads(line)["value"]["text"] == json.loads(
        line)["key"] * 50 for line in lines)


def test_the_key_is_the_digest_of_the_bytes_sent():
    a = request_bytes({"model": "m", "seed": 0, "messages": []})
    b = request_bytes({"messages": [], "seed": 0, "model": "m"})
    assert a == b and request_key(a) == request_key(b)
    assert request_key(request_bytes({"model": "m", "seed": 1, "messages": []})) != request_key(a)
    assert cache_file("/c", "Qwen/Qwen2.5-VL-72B").name.startswith("Qwen_Qwen2.5-VL-72B-")


def test_a_changed_image_or_suffix_changes_the_request(tmp_path):
    """The cache must never answer one question with another's response."""
    adapter = OpenAIChatAdapter("http://127.0.0.1:1/v1", "m", cache_dir=str(tmp_path),
                                api_key_env=None, logprobs=False)
    adapter._server = ServerInfo("m", None, False, "not asked")  # no server to probe
    base = Sample(id="s", question="q", options=("a", "b"), answer=0, category="image_heavy",
                  image=make_image(0))
    bodies = [adapter.request_body(s, max_new_tokens=2, suffix=suffix) for s, suffix in (
        (base, ""), (base, "\nagain"), (Sample(**{**sample_fields(base), "image":
                                                  make_image(1)}), ""))]
    assert len({request_key(request_bytes(b)) for b in bodies}) == 3
    content = bodies[0]["messages"][0]["content"]
    assert content[0]["image_url"]["url"].startswith("data:image/png;base64,")
    assert content[1]["text"].endswith("directly.") and bodies[0]["temperature"] == 0
    assert bodies[1]["messages"][0]["content"][1]["text"].endswith("directly.\nagain")
    adapter.close()


def sample_fields(sample: Sample) -> dict:
    return {f: getattr(sample, f) for f in sample.__slots__}


# -- letter probabilities ---------------------------------------------------------------------
def test_letter_probs_reads_letters_in_any_spelling():
    top = {" B": math.log(0.5), "B": math.log(0.2), "(A": math.log(0.1), "The": math.log(0.15)}
    probs = letter_probs(top, ("A", "B", "C"))
    # C is missing: it shares the 0.05 left out, capped by the least likely listed (0.1)
    assert np.allclose(probs, np.array([0.1, 0.7, 0.05]) / 0.85)


logprob_tables = st.dictionaries(
    st.sampled_from(["A", " A", "B", " B", "C", "D", " E", "the", "(", "I"]),
    st.floats(-20, 0), max_size=8).filter(lambda d: sum(math.exp(v) for v in d.values()) <= 1)


@given(top=logprob_tables, n=st.integers(2, 5))
def test_letter_probs_is_a_distribution_that_follows_the_listed_order(top, n):
    letters = tuple("ABCDE"[:n])
    probs = letter_probs(top, letters)
    assert probs.shape == (n,) and np.all(probs >= 0) and math.isclose(probs.sum(), 1.0)
    mass = {L: sum(math.exp(v) for t, v in top.items() if t.strip() == L) for L in letters}
    for a in letters:
        for b in letters:
            if mass[a] > mass[b] > 0:
                assert probs[letters.index(a)] >= probs[letters.index(b)]
            if mass[a] > 0 and mass[b] == 0:  # a missing letter never beats a listed one
                assert probs[letters.index(a)] >= probs[letters.index(b)] - 1e-12


@given(top=logprob_tables)
def test_letter_probs_does_not_depend_on_the_order_of_the_table(top):
    reordered = dict(reversed(list(top.items())))
    assert np.allclose(letter_probs(top, "ABCD"), letter_probs(reordered, "ABCD"))
