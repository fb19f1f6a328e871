"""Throughput of the suite's scoring path against the study's generate-and-parse loop.

Prints samples/s of (1) the suite end to end (`run_benchmark`: batch plan, option likelihood
from one forward pass per batch, records written and flushed, metrics), (2) the bare batched
forward passes on the same batches, pre-encoded (the limit for (1)), and
(3) per-sample greedy `generate` + answer parsing (how the study's code scored), on the same
model and samples, plus their ratios and how often the two scorers agree; (4) the suite
with `scorer=generate` (batched, left-padded greedy generation, letter parser) against (3).
Then (1) and (2) again for image-heavy samples under clean + the text conditions, where the
suite encodes each batch's images once for all three and the bare forward passes encode them
every time. Last, for a local checkpoint, `model=openai` against `transformers serve` of the
same checkpoint on 127.0.0.1 at 1, 8 and 32 requests in flight (scripts/bench_openai.py).

    python scripts/bench_throughput.py                       # toy model, 256 samples
    python scripts/bench_throughput.py --model /path/to/ckpt --n 64 --batch-size 8
    python scripts/bench_throughput.py --served-concurrency  # no server
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from bench_openai import served_throughput, toy_samples

from mibench.cli import asset_path
from mibench.models.hf import HFModelAdapter
from mibench.models.local_server import served
from mibench.perturbations.text import MisleadingText, UnrelatedText
from mibench.records import Sample
from mibench.runner import batch_plan, perturb_all, run_benchmark
from mibench.scorers import GenerateScorer
from mibench.tasks.base import Task
from mibench.tasks.shapes import ShapesTask


class FixedTask(Task):
    """Samples made in advance."""

    def __init__(self, name: str, category: str, samples: list[Sample]) -> None:
        self.name, self.category, self._samples = name, category, samples

    def samples(self) -> list[Sample]:
        return self._samples


def parse_letter(text: str, n_options: int) -> int | None:
    """The first standalone option letter in generated text, or None (no guessing)."""
    letters = "".join(chr(ord("A") + i) for i in range(n_options))
    match = re.search(rf"\b([{letters}])\b", text)
    return None if match is None else ord(match.group(1)) - ord("A")


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def best_of_interleaved(suite, bare, repeat: int) -> tuple[float, float, object]:
    """Best times of `suite` and `bare`, alternated so both see the same machine."""
    t_suite, t_bare, out = float("inf"), float("inf"), None
    for _ in range(max(1, repeat)):
        elapsed, out = timed(suite)
        t_suite = min(t_suite, elapsed)
        t_bare = min(t_bare, timed(bare)[0])
    return t_suite, t_bare, out


def bare_forward(adapter: HFModelAdapter, encoded: list) -> Callable[[], None]:
    """The model's forward passes alone, on inputs encoded in advance (waited for on a GPU)."""
    def run() -> None:
        with torch.no_grad():
            for inputs in encoded:
                adapter.model(**inputs)
        if adapter.device.type == "cuda":
            torch.cuda.synchronize(adapter.device)
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=asset_path("toy_llava"))
    parser.add_argument("--n", type=int, default=256, help="samples (half image-, half text-heavy)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16")
    parser.add_argument("--repeat", type=int, default=5,
                        help="best of this many timings (the generate loop runs once)")
    parser.add_argument("--served-concurrency", type=int, nargs="*", default=[1, 8, 32],
                        help="requests in flight to the served checkpoint; none: skip")
    parser.add_argument("--served-n", type=int, default=64, help="samples sent to the server")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    adapter = HFModelAdapter.from_pretrained(args.model, device=args.device, dtype=args.dtype)
    half = args.n // 2
    samples = toy_samples(args.n)
    lengths = adapter.prompt_lengths(samples)
    batches = [[samples[i] for i in b] for b in batch_plan(samples, lengths, args.batch_size)]
    adapter.option_probs(batches[0])  # warm-up

    # the samples exist before any timing starts: generating data is the dataset's cost
    tasks = {"ih": FixedTask("ih", "image_heavy", samples[:half]),
             "th": FixedTask("th", "text_heavy", samples[half:])}
    def suite(scorer: GenerateScorer | None = None) -> dict[str, int | None]:
        adapter.clear_caches()  # no prompt rendered before the clock starts
        with tempfile.TemporaryDirectory() as out_dir:  # the whole suite: plan, score, store
            run_benchmark(adapter, tasks, {}, out_dir, batch_size=args.batch_size,
                          progress=False, scorer=scorer)
            rows = map(json.loads, (Path(out_dir) / "records.jsonl").read_text().splitlines())
            return {row["sample_id"]: row["prediction"] for row in rows}

    bare = bare_forward(adapter, [adapter.encode(b) for b in batches])
    t_suite, t_bare, records = best_of_interleaved(suite, bare, args.repeat)
    suite_pred = [records[s.id] for b in batches for s in b]

    def generate_loop() -> list[int | None]:
        preds = []
        for batch in batches:
            for sample in batch:
                inputs = adapter.encode([sample])
                with torch.no_grad():
                    out = adapter.model.generate(**inputs, max_new_tokens=args.max_new_tokens,
                                                 do_sample=False)
                text = adapter.tokenizer.decode(out[0, inputs["input_ids"].shape[1]:],
                                                skip_special_tokens=True)
                preds.append(parse_letter(text, len(sample.options)))
        return preds

    t_gen, gen_pred = timed(generate_loop)
    n = len(samples)
    unparsed = sum(p is None for p in gen_pred)
    agree = sum(a == b for a, b in zip(suite_pred, gen_pred, strict=True)) / n
    print(f"model {args.model}  device {args.device}  samples {n}  batch size "
          f"{args.batch_size}  threads {args.threads}  best of {args.repeat}")
    print(f"suite (run_benchmark, clean):      {n / t_suite:9.1f} samples/s")
    print(f"bare batched forward (the limit):  {n / t_bare:9.1f} samples/s  "
          f"(suite overhead {100 * (t_suite / t_bare - 1):.1f}%)")
    print(f"per-sample generate + parse:       {n / t_gen:9.1f} samples/s")
    print(f"suite / generate loop:             {t_gen / t_suite:9.1f}x")
    print(f"answers agree: {100 * agree:.1f}%   unparsed generations: {unparsed}")

    # the suite generating: batched greedy generation and the letter parser, the same rule
    t_batched, batched = timed(lambda: suite(GenerateScorer(max_new_tokens=args.max_new_tokens)))
    batched_pred = [batched[s.id] for b in batches for s in b]
    same = sum(a == b for a, b in zip(batched_pred, gen_pred, strict=True)) / n
    print(f"suite, scorer=generate (batched):  {n / t_batched:9.1f} samples/s")
    print(f"batched generate / generate loop:  {t_gen / t_batched:9.1f}x")
    print(f"batched and per-sample generated answers agree: {100 * same:.1f}%   "
          f"unparsed: {sum(p is None for p in batched_pred)}")

    # image-heavy under clean + the text conditions: the images of a batch are shared
    text_conditions = {"unrelated_text": UnrelatedText(), "misleading_text": MisleadingText()}
    ih_samples = ShapesTask("image_heavy", args.n, name="ih").samples()
    image_heavy = {"ih": FixedTask("ih", "image_heavy", ih_samples)}
    variants = [ih_samples] + [perturb_all(ih_samples, c, 0, "ih")
                               for c in text_conditions.values()]
    grid_bare = bare_forward(adapter, [
        adapter.encode([v[i] for i in batch]) for v in variants
        for batch in batch_plan(v, adapter.prompt_lengths(v), args.batch_size)])

    def grid_suite() -> None:
        adapter.clear_caches()
        with tempfile.TemporaryDirectory() as out_dir:
            run_benchmark(adapter, image_heavy, text_conditions, out_dir,
                          batch_size=args.batch_size, progress=False)

    t_grid, t_grid_bare, _ = best_of_interleaved(grid_suite, grid_bare, args.repeat)
    scored = len(variants) * args.n
    print(f"image-heavy x (clean, unrelated, misleading): {scored} scored samples")
    print(f"suite (images encoded once a batch): {scored / t_grid:9.1f} samples/s")
    print(f"bare batched forward (every time):   {scored / t_grid_bare:9.1f} samples/s  "
          f"(suite overhead {100 * (t_grid / t_grid_bare - 1):.1f}%)")

    if args.served_concurrency and Path(args.model).is_dir():
        with tempfile.TemporaryDirectory() as scratch:  # the same checkpoint, served
            with served(args.model, Path(scratch) / "server.log") as server:
                print("model=openai against transformers serve:")
                served_throughput(server.base_url, server.model, toy_samples(args.served_n),
                                  args.served_concurrency, args.max_new_tokens, None,
                                  Path(scratch))
    elif args.served_concurrency:
        print(f"model=openai: {args.model} is not a local directory; serve it yourself and "
              "run scripts/bench_openai.py --base-url URL --model NAME")


if __name__ == "__main__":
    main()
