"""Train the shapes-world judge: a small CNN, independent of the toy MLLM, that names the shape
and colour in a 32x32 image, or says there is no shape.

It is what `perturbation=inverted_lure` asks whether an optimised image depicts its lure.
Independent of the toy LLaVA by construction: another architecture (a CNN, no CLIP tower),
its own random stream of freshly rendered images (never the toy's training samples), its own
"no shape" class trained on backgrounds, noise, smooth colour fields and plain canvases.

    python scripts/train_shapes_judge.py --seed 0 --out models/shapes_judge

Writes config.json (classes, architecture, the command, held-out accuracy) and
model.safetensors; prints held-out accuracy on fresh renders and on "no shape" images.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file

from mibench.models.judges import ShapesCNN, images_to_tensor
from mibench.seeding import rng_for
from mibench.tasks.shapes import COLOUR_NAMES, IMAGE_SIZE, OBJECT_SHAPE, SHAPES, render_shape

NONE_KINDS = ("background", "noise", "smooth", "plain")


def none_image(rng: np.random.Generator) -> Image.Image:
    """An image with no shape: the world's background alone, noise, a smooth colour field, or
    a plain canvas."""
    side = IMAGE_SIZE
    kind = NONE_KINDS[int(rng.integers(len(NONE_KINDS)))]
    if kind == "background":
        pixels = rng.uniform(90, 160) + rng.normal(0, 6, size=(side, side, 3))
    elif kind == "noise":
        pixels = rng.uniform(0, 255, size=(side, side, 3))
    elif kind == "smooth":
        cells = int(rng.integers(2, 9))
        small = rng.uniform(0, 255, size=(cells, cells, 3)).astype(np.uint8)
        big = Image.fromarray(small, "RGB").resize((side, side), Image.BILINEAR)
        pixels = np.asarray(big, dtype=np.float64) + rng.normal(0, 6, size=(side, side, 3))
    else:
        pixels = np.broadcast_to(rng.uniform(0, 255, size=3), (side, side, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).round().astype(np.uint8), "RGB")


def dataset(split: str, n: int, seed: int, none_share: float
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """n images of one split: (images, shape labels with len(SHAPES) = none, colour labels
    with -100 where there is no shape). Each image from its own seeded stream."""
    images, shapes, colours = [], [], []
    for i in range(n):
        rng = rng_for("shapes-judge", seed, split, i)
        if rng.random() < none_share:
            images.append(none_image(rng))
            shapes.append(len(SHAPES))
            colours.append(-100)
            continue
        shape = int(rng.integers(len(SHAPES)))
        colour = int(rng.integers(len(COLOUR_NAMES)))
        images.append(render_shape(SHAPES[shape], COLOUR_NAMES[colour], rng))
        shapes.append(shape)
        colours.append(colour)
    return (images_to_tensor(images, IMAGE_SIZE), torch.tensor(shapes), torch.tensor(colours))


@torch.no_grad()
def accuracy(net: ShapesCNN, x: torch.Tensor, shapes: torch.Tensor, colours: torch.Tensor
             ) -> dict[str, float]:
    shape_logits, colour_logits = net(x)
    has = shapes < len(SHAPES)
    return {
        "shape": float((shape_logits.argmax(-1)[has] == shapes[has]).float().mean()),
        "colour": float((colour_logits.argmax(-1)[has] == colours[has]).float().mean()),
        "none": float((shape_logits.argmax(-1)[~has] == len(SHAPES)).float().mean()),
        "n_shapes": int(has.sum()), "n_none": int((~has).sum()),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="models/shapes_judge")
    parser.add_argument("--n-train", type=int, default=24000)
    parser.add_argument("--n-test", type=int, default=3000)
    parser.add_argument("--none-share", type=float, default=0.2)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    x, shapes, colours = dataset("train", args.n_train, args.seed, args.none_share)
    x_test, shapes_test, colours_test = dataset("test", args.n_test, args.seed,
                                                args.none_share)
    net = ShapesCNN(len(SHAPES), len(COLOUR_NAMES), args.width, args.hidden)
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, args.lr, total_steps=args.steps)
    order = torch.Generator().manual_seed(args.seed)
    for step in range(args.steps):
        idx = torch.randint(len(x), (args.batch,), generator=order)
        batch = x[idx]
        flip = torch.rand(len(idx), generator=order) < 0.5  # shapes are mirror-symmetric
        batch = torch.where(flip[:, None, None, None], batch.flip(-1), batch)
        shape_logits, colour_logits = net(batch)
        loss = (F.cross_entropy(shape_logits, shapes[idx])
                + F.cross_entropy(colour_logits, colours[idx], ignore_index=-100))
        opt.zero_grad()
        loss.backward()
        opt.step()
        schedule.step()
        if step % 250 == 0 or step == args.steps - 1:
            print(f"step {step:5d}  loss {loss.item():.4f}", flush=True)
    net.eval()
    held_out = accuracy(net, x_test, shapes_test, colours_test)
    seconds = time.perf_counter() - start
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()},
              out / "model.safetensors")
    config = {
        "architecture": "ShapesCNN (mibench.models.judges)", "width": args.width,
        "hidden": args.hidden, "image_size": IMAGE_SIZE, "shapes": list(SHAPES),
        "colours": list(COLOUR_NAMES), "objects": dict(OBJECT_SHAPE),
        "parameters": sum(p.numel() for p in net.parameters()),
        "command": "python scripts/train_shapes_judge.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()),
        "held_out": held_out, "train_seconds": round(seconds, 1),
    }
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    print(json.dumps({"held_out": held_out, "parameters": config["parameters"],
                      "train_seconds": config["train_seconds"]}))


if __name__ == "__main__":
    main()
