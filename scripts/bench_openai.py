"""Throughput of `model=openai`: samples/s at 1, 8 and 32 requests in flight.

Starts `transformers serve` with the toy checkpoint on 127.0.0.1 (or uses --base-url), asks
the same samples (half image-, half text-heavy) at each concurrency with an empty response
cache, so every request is sent, then once more from the cache. Each answer is read with the
`letter` parser; the script prints how many were read and right, as a check that the figures
measure real answers.

    python scripts/bench_openai.py                    # toy server, 64 samples
    python scripts/bench_openai.py --base-url http://127.0.0.1:8000/v1 --model NAME --n 256
"""

from __future__ import annotations

import argparse
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

from mibench.answer_parsing import LetterParser
from mibench.cli import asset_path
from mibench.models.local_server import served
from mibench.models.openai_chat import OpenAIChatAdapter
from mibench.records import Sample
from mibench.tasks.shapes import ShapesTask


def served_throughput(base_url: str, model: str, samples: list[Sample],
                      concurrencies: list[int], max_new_tokens: int,
                      api_key_env: str | None, scratch: Path) -> None:
    """Prints samples/s at each concurrency, every request sent (an empty cache), then the
    same samples again from the cache."""
    letter = LetterParser()
    print(f"server {base_url}  model {model}  samples {len(samples)}  "
          f"max_new_tokens {max_new_tokens}")
    for concurrency in concurrencies:
        adapter = OpenAIChatAdapter(base_url, model, api_key_env=api_key_env,
                                    cache_dir=str(scratch / f"cache-{concurrency}"),
                                    concurrency=concurrency)
        adapter.describe()  # the capability probe, outside the timing
        start = time.perf_counter()
        answers = adapter.generate(samples, max_new_tokens=max_new_tokens)
        elapsed = time.perf_counter() - start
        start = time.perf_counter()
        adapter.generate(samples, max_new_tokens=max_new_tokens)
        cached = time.perf_counter() - start
        parsed = [letter.parse(a.text, s).option for a, s in zip(answers, samples)]
        right = sum(p == s.answer for p, s in zip(parsed, samples))
        stats = adapter.stats()
        adapter.close()
        print(f"{concurrency:3d} in flight: {len(samples) / elapsed:8.1f} samples/s  "
              f"({stats.sent - 1} requests, retries {dict(stats.retries) or 0}; "
              f"parsed {sum(p is not None for p in parsed)}/{len(samples)}, "
              f"right {right})   from the cache: {len(samples) / cached:9.0f} samples/s")


def toy_samples(n: int) -> list[Sample]:
    """Half image-heavy, half text-heavy toy samples."""
    half = n // 2
    return (ShapesTask("image_heavy", half, name="ih").samples()
            + ShapesTask("text_heavy", n - half, name="th").samples())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", help="a running server; default: start the toy's")
    parser.add_argument("--model", help="the server's model name (with --base-url)")
    parser.add_argument("--api-key-env", default=None, help="variable holding the key, if any")
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--max-new-tokens", type=int, default=2)
    args = parser.parse_args()

    samples = toy_samples(args.n)
    with tempfile.TemporaryDirectory() as scratch:
        server = (nullcontext() if args.base_url else
                  served(asset_path("toy_llava"), Path(scratch) / "server.log"))
        with server as local:
            served_throughput(args.base_url or local.base_url, args.model or local.model,
                              samples, args.concurrency, args.max_new_tokens,
                              args.api_key_env, Path(scratch))


if __name__ == "__main__":
    main()
