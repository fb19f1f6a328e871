"""Train the embedded toy LLaVA on the shapes world, reproducibly from a seed.

Two stages (the recipe measured to meet the README's acceptance figures):
1. vision warm-up: the CLIP tower plus linear shape/colour heads on the mean patch token of
   the layer LLaVA reads (without it the tower never learns shape);
2. LLaVA stage with the tower frozen: full-vocabulary cross-entropy on the answer letter at the
   last position, with inputs built by HFModelAdapter.encode, exactly as the benchmark feeds them.
The data mix teaches the shortcut the benchmark measures: image-heavy samples often carry an
agreeing caption (so the model copies words from text), and text-heavy samples often carry an
image of the fact, sometimes without the colour word (so the model reads colour from images).

    HF_HUB_OFFLINE=1 python scripts/train_toy_model.py --seed 0 --out models/toy_llava

One thread by default: bit-identical reruns need the same thread count and CPU, and one
thread degrades least when the cores are shared. Prints an acceptance check at the end.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from mibench.models.hf import HFModelAdapter  # noqa: E402
from mibench.models.toy_builder import build_model, build_processor  # noqa: E402
from mibench.perturbations.text import (  # noqa: E402
    DEFAULT_UNRELATED_SENTENCES,
    STUDY_MISLEADING_TEMPLATE,
    TemplateFacts,
)
from mibench.records import OPTION_LETTERS, Sample  # noqa: E402
from mibench.seeding import rng_for  # noqa: E402
from mibench.tasks.shapes import (  # noqa: E402
    COLOUR_NAMES,
    OBJECT_SHAPE,
    SHAPES,
    ShapesTask,
    caption,
    fact_text,
    make_sample,
    plain_image,
    render_shape,
    text_question,
)


# -- training data ---------------------------------------------------------------------------
def training_sample(index: int, seed: int, mix: argparse.Namespace) -> Sample:
    """Training sample `index`: a train-split sample, augmented as the mix says."""
    rng = rng_for("toy-train-mix", seed, index)
    u = rng.random()
    if u < mix.vqa_share:
        return make_sample("vqa", index, seed, "train")
    if u < mix.vqa_share + (1 - mix.vqa_share) * mix.ih_share:
        sample = make_sample("image_heavy", index, seed, "train")
        if rng.random() < mix.caption_share:  # an agreeing caption: teaches copying from text
            meta = sample.meta
            text = caption(meta["shape"], meta["colour"], meta["attribute"], rng)
            sample = dataclasses.replace(sample, distractor=text)
        return sample
    sample = make_sample("text_heavy", index, seed, "train")
    if rng.random() < mix.th_image_share:  # an image that depicts the fact
        meta = sample.meta
        image = render_shape(meta["shape"], meta["colour"], rng)
        question = sample.question
        if meta["attribute"] == "colour" and rng.random() < mix.drop_colour_share:
            # the colour is only in the image: teaches reading colour from the image
            question = (f"{fact_text(meta['name'], meta['object'], None)} "
                        f"{text_question(meta['name'], meta['object'], 'colour')}")
        sample = dataclasses.replace(sample, image=image, question=question)
    return sample


def lr_lambda(warmup: int, total: int):
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))
    return f


def vision_features(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """Mean patch token of the vision layer LLaVA reads (CLS dropped, as the 'default' strategy)."""
    layer = model.config.vision_feature_layer
    hidden = model.model.vision_tower(pixel_values, output_hidden_states=True).hidden_states
    return hidden[layer][:, 1:].mean(dim=1)


def warm_up_vision(model, processor, args) -> dict:
    """Stage 1: teach the tower shape and colour with two linear heads, then drop the heads."""
    tower = model.model.vision_tower
    width = model.config.vision_config.hidden_size
    heads = torch.nn.ModuleDict({"shape": torch.nn.Linear(width, len(SHAPES)),
                                 "colour": torch.nn.Linear(width, len(COLOUR_NAMES))})
    params = list(tower.parameters()) + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=args.vision_lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(50, args.vision_steps))

    def batch(keys: tuple, n: int):
        shapes, colours, images = [], [], []
        for i in range(n):
            rng = rng_for(*keys, i)
            s, c = int(rng.integers(len(SHAPES))), int(rng.integers(len(COLOUR_NAMES)))
            shapes.append(s)
            colours.append(c)
            images.append(render_shape(SHAPES[s], COLOUR_NAMES[c], rng))
        pixels = processor.image_processor(images, return_tensors="pt")["pixel_values"]
        return pixels, torch.tensor(shapes), torch.tensor(colours)

    tower.train()
    start = time.time()
    for step in range(args.vision_steps):
        pixels, shapes, colours = batch(("toy-vision", args.seed, step), args.vision_batch)
        feats = vision_features(model, pixels)
        loss = (F.cross_entropy(heads["shape"](feats), shapes)
                + F.cross_entropy(heads["colour"](feats), colours))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0 or step == args.vision_steps - 1:
            print(f"vision {step:4d}  loss {loss.item():.3f}  {time.time() - start:.0f}s",
                  flush=True)
    tower.eval()
    with torch.no_grad():
        pixels, shapes, colours = batch(("toy-vision-heldout", args.seed), 600)
        feats = vision_features(model, pixels)
        acc = {"shape": (heads["shape"](feats).argmax(-1) == shapes).float().mean().item(),
               "colour": (heads["colour"](feats).argmax(-1) == colours).float().mean().item()}
    print(f"vision held-out accuracy: shape {acc['shape']:.3f}  colour {acc['colour']:.3f}",
          flush=True)
    return acc


def train_llava(model, adapter: HFModelAdapter, args) -> None:
    """Stage 2: projector + language model on the answer letter; the vision tower frozen."""
    for p in model.model.vision_tower.parameters():
        p.requires_grad_(False)
    groups = [
        {"params": list(model.model.multi_modal_projector.parameters()), "lr": args.projector_lr},
        {"params": list(model.model.language_model.parameters())
         + list(model.lm_head.parameters()), "lr": args.lm_lr},
    ]
    opt = torch.optim.AdamW(groups)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(100, args.steps))
    letter_ids = torch.tensor(adapter.option_token_ids(len(OPTION_LETTERS)))
    model.train()
    model.model.vision_tower.eval()
    start, losses, hits = time.time(), [], []
    for step in range(args.steps):
        batch = [training_sample(step * args.batch + j, args.seed, args)
                 for j in range(args.batch)]
        targets = letter_ids[[s.answer for s in batch]]
        logits = adapter.answer_logits(adapter.encode(batch))
        loss = F.cross_entropy(logits, targets)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        hits.append((logits.argmax(-1) == targets).float().mean().item())
        if step % 100 == 0 or step == args.steps - 1:
            print(f"llava {step:5d}  loss {np.mean(losses[-100:]):.3f}  "
                  f"train acc {np.mean(hits[-100:]):.3f}  {time.time() - start:.0f}s", flush=True)
    model.eval()


# -- evaluation (a quick local check; the benchmark runner is the real measurement) -----------
def _wrong(sample: Sample, rng: np.random.Generator) -> int:
    return int(rng.choice([i for i in range(len(sample.options)) if i != sample.answer]))


def misleading(sample: Sample) -> Sample:
    rng = rng_for("toy-eval", "misleading", sample.id)
    option = sample.options[_wrong(sample, rng)]
    text = STUDY_MISLEADING_TEMPLATE.format(option=option, facts=TemplateFacts()(option, rng))
    return dataclasses.replace(sample, distractor=text)


def unrelated(sample: Sample) -> Sample:
    rng = rng_for("toy-eval", "unrelated", sample.id)
    text = DEFAULT_UNRELATED_SENTENCES[int(rng.integers(len(DEFAULT_UNRELATED_SENTENCES)))]
    return dataclasses.replace(sample, distractor=text)  # one sentence, as conf/perturbation


def with_plain(kind: str):
    def apply(sample: Sample) -> Sample:
        return dataclasses.replace(sample,
                                   image=plain_image(kind, rng_for("toy-eval", kind, sample.id)))
    return apply


def switched(sample: Sample) -> Sample:
    """An image showing a wrong option for the attribute asked."""
    rng = rng_for("toy-eval", "switched", sample.id)
    meta, wrong = sample.meta, sample.options[_wrong(sample, rng)]
    if meta["attribute"] == "colour":
        image = render_shape(meta["shape"], wrong, rng)
    else:
        image = render_shape(OBJECT_SHAPE[wrong], meta["colour"], rng)
    return dataclasses.replace(sample, image=image)


def accuracy(adapter: HFModelAdapter, samples: list[Sample], batch: int = 100) -> dict:
    correct = []
    for i in range(0, len(samples), batch):
        chunk = samples[i:i + batch]
        correct += [int(np.argmax(p)) == s.answer
                    for p, s in zip(adapter.option_probs(chunk), chunk)]
    out = {"all": float(np.mean(correct))}
    for attr in sorted({s.meta["attribute"] for s in samples}):
        out[attr] = float(np.mean([c for c, s in zip(correct, samples)
                                   if s.meta["attribute"] == attr]))
    return out


def evaluate(adapter: HFModelAdapter, n: int, seed: int = 0) -> dict:
    ih = ShapesTask("image_heavy", n, seed).samples()
    th = ShapesTask("text_heavy", n, seed).samples()
    vqa = ShapesTask("vqa", n // 2, seed).samples()
    conditions = {
        "ih_clean": ih,
        "ih_unrelated": [unrelated(s) for s in ih],
        "ih_misleading": [misleading(s) for s in ih],
        "th_clean": th,
        "th_black": [with_plain("black")(s) for s in th],
        "th_white": [with_plain("white")(s) for s in th],
        "th_noise": [with_plain("noise")(s) for s in th],
        "th_switched": [switched(s) for s in th],
        "vqa_clean": vqa,
    }
    return {name: accuracy(adapter, samples) for name, samples in conditions.items()}


def acceptance(res: dict) -> dict[str, bool]:
    acc = {k: v["all"] for k, v in res.items()}
    drop = {k: 100 * (acc[k.split("_")[0] + "_clean"] - v) for k, v in acc.items()}
    return {
        "ih_clean >= 90": acc["ih_clean"] >= 0.90,
        "th_clean >= 90": acc["th_clean"] >= 0.90,
        "misleading drop >= 20": drop["ih_misleading"] >= 20,
        "switched drop >= 10": drop["th_switched"] >= 10,
        "unrelated drop < misleading drop": drop["ih_unrelated"] < drop["ih_misleading"],
        "black/white drop < switched drop":
            max(drop["th_black"], drop["th_white"]) < drop["th_switched"],
    }


def report(res: dict) -> None:
    for name, acc in res.items():
        clean = res[name.split("_")[0] + "_clean"]["all"]
        parts = "  ".join(f"{k} {100 * v:5.1f}" for k, v in acc.items() if k != "all")
        print(f"{name:15s} {100 * acc['all']:5.1f}%  ({100 * (acc['all'] - clean):+6.1f})  {parts}")
    for check, ok in acceptance(res).items():
        print(f"  [{'PASS' if ok else 'FAIL'}] {check}")


def generate_check(adapter: HFModelAdapter, n: int = 32) -> float:
    """Share of greedy generations whose first new token is the right option letter."""
    samples = [s for kind in ("image_heavy", "text_heavy")
               for s in ShapesTask(kind, n // 2).samples()]
    inputs = adapter.encode(samples)
    with torch.no_grad():
        out = adapter.model.generate(**inputs, max_new_tokens=2, do_sample=False)
    first = out[:, inputs["input_ids"].shape[1]].tolist()
    letters = adapter.option_token_ids(len(OPTION_LETTERS))
    return float(np.mean([t == letters[s.answer] for t, s in zip(first, samples)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="models/toy_llava")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--vision-steps", type=int, default=500)
    parser.add_argument("--vision-batch", type=int, default=128)
    parser.add_argument("--vision-lr", type=float, default=3e-3)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--projector-lr", type=float, default=6e-3)
    parser.add_argument("--lm-lr", type=float, default=2e-3)
    parser.add_argument("--vqa-share", type=float, default=0.15)
    parser.add_argument("--ih-share", type=float, default=0.6, help="of the non-VQA samples")
    parser.add_argument("--caption-share", type=float, default=0.5)
    parser.add_argument("--th-image-share", type=float, default=0.7)
    parser.add_argument("--drop-colour-share", type=float, default=0.4)
    parser.add_argument("--eval-n", type=int, default=600)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    from mibench.tasks.shapes import shapes_vocabulary

    start = time.time()
    processor = build_processor(shapes_vocabulary())
    model = build_model(processor, seed=args.seed)
    print(f"toy LLaVA: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters, "
          f"vocabulary {len(processor.tokenizer)}", flush=True)
    vision = warm_up_vision(model, processor, args)
    adapter = HFModelAdapter(model, processor, "toy")
    train_llava(model, adapter, args)
    train_s = time.time() - start

    res = evaluate(adapter, args.eval_n)
    report(res)
    gen = generate_check(adapter)
    print(f"greedy generate emits the right letter first: {100 * gen:.1f}%")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    reloaded = HFModelAdapter.from_pretrained(str(out), device="cpu")
    probe = ShapesTask("image_heavy", 8).samples() + ShapesTask("text_heavy", 8).samples()
    diff = max(float(np.abs(a - b).max()) for a, b in
               zip(adapter.option_probs(probe), reloaded.option_probs(probe)))
    print(f"reloaded from {out}: max |p - p_reloaded| = {diff:.2e}")
    # the folder's name only: a summary shipped with the weights holds no path of this machine
    meta = {"seed": args.seed, "args": {**vars(args), "out": out.name},
            "train_seconds": round(train_s, 1),
            "vision_heldout": vision, "eval_n": args.eval_n, "accuracy": res,
            "acceptance": acceptance(res), "generate_first_token_letter": gen,
            "reload_max_abs_diff": diff, "torch": torch.__version__,
            "transformers": __import__("transformers").__version__}
    (out / "train_meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"saved to {out} in {time.time() - start:.0f}s total")


if __name__ == "__main__":
    main()
