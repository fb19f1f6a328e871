"""Seconds per PGD step per batch against one forward+backward pass on the same batch.

The reference is what a gradient step cannot avoid: one forward pass (full logits, as the
adapter scores) and one backward pass to the attacked input, with the parameters frozen (no
parameter gradients), both through the model's own contract (`DifferentiableAdapter`) — pixel
PGD: `answer_logits(inputs, pixels=...)`, differentiated to the pixels through the whole
model; embedding PGD: `answer_logits(embedded, embeds=...)` on the sequence `embed` captured
once, differentiated to the embeddings.
A step's cost is measured as (time of an attack with S steps − time with 0 steps) / S, so the
per-batch work (encoding, the clean pass, the final scoring pass) is left out; the target is
a ratio ≤ 1.2.

    python scripts/bench_pgd.py                       # toy model (or a random tiny LLaVA)
    python scripts/bench_pgd.py --model /path/to/ckpt --batch-size 8 --device cuda
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from mibench.cli import asset_path
from mibench.models import toy_builder
from mibench.models.base import DifferentiableAdapter, option_log_probs
from mibench.models.hf import HFModelAdapter
from mibench.perturbations.image import BlankImage
from mibench.perturbations.pgd_embed import EmbeddingPGD
from mibench.perturbations.pgd_pixel import PixelPGD
from mibench.tasks.shapes import ShapesTask, shapes_vocabulary


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, repeats: int) -> float:
    """Best-of-`repeats` seconds after one warm-up (as timeit: least disturbed by other load)."""
    fn()
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return min(times)


def load(path: str, dtype: str, device: str) -> HFModelAdapter:
    if Path(path).exists() or not path.startswith("/"):  # a directory or a hub id
        return HFModelAdapter.from_pretrained(path, dtype=dtype, device=device)
    print(f"no checkpoint at {path}: timing a random tiny LLaVA of the toy's size")
    processor = toy_builder.build_processor(shapes_vocabulary())
    model = toy_builder.build_model(processor)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    return HFModelAdapter(model.to(device), processor, "toy-size-random")


def option_ce(adapter: DifferentiableAdapter, logits: torch.Tensor, samples) -> torch.Tensor:
    """The untargeted attack's loss: mean CE of the gold option over the option letters."""
    logp = option_log_probs(adapter.letter_logits(logits, samples), samples)
    gold = torch.tensor([s.answer for s in samples], device=logits.device)
    return -logp.gather(1, gold[:, None]).mean()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=asset_path("toy_llava"))
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    adapter = load(args.model, args.dtype, args.device)
    device = next(adapter.model.parameters()).device
    ih = ShapesTask("image_heavy", args.batch_size, name="ih").samples()
    th = [BlankImage("black_image").apply(s, None)
          for s in ShapesTask("text_heavy", args.batch_size, name="th").samples()]

    th_inputs, ih_inputs = adapter.encode(th), adapter.encode(ih)
    th_pixels = adapter.pixel_layout(th_inputs).pixels
    with adapter.frozen():
        ih_embedded = adapter.embed(ih_inputs)

    def forward_backward_pixels():
        pixels = th_pixels.clone().requires_grad_(True)
        loss = option_ce(adapter, adapter.answer_logits(th_inputs, pixels=pixels), th)
        torch.autograd.grad(loss, pixels)

    def forward_backward_embeds():
        embeds = ih_embedded.embeds.clone().requires_grad_(True)
        loss = option_ce(adapter, adapter.answer_logits(ih_embedded, embeds=embeds), ih)
        torch.autograd.grad(loss, embeds)

    cases = [("pixel L∞ (text-heavy + black image)", th, forward_backward_pixels,
              lambda s: PixelPGD(steps=s)),
             ("embedding L∞ (image-heavy, text positions)", ih, forward_backward_embeds,
              lambda s: EmbeddingPGD(steps=s))]
    seeds = list(range(args.batch_size))
    print(f"model {adapter.name} on {device} ({args.dtype}, {torch.get_num_threads()} threads), "
          f"batch {args.batch_size}, {args.steps} steps, best of {args.repeats}")
    print("| attack | forward+backward s | PGD step s | ratio | whole attack s/batch |")
    print("|---|---|---|---|---|")
    for label, samples, reference, make in cases:
        with adapter.frozen():
            t_ref = timed(reference, device, args.repeats)
        full, empty = make(args.steps), make(0)
        t_full = timed(lambda a=full, s=samples: a.run(adapter, s, seeds), device, args.repeats)
        t_zero = timed(lambda a=empty, s=samples: a.run(adapter, s, seeds), device, args.repeats)
        t_step = (t_full - t_zero) / args.steps
        print(f"| {label} | {t_ref:.4f} | {t_step:.4f} | {t_step / t_ref:.2f} | {t_full:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
