"""Refactoring moves no number: the shipped default run, and attack and training figures
captured from the code before a refactoring, recomputed and compared bit for bit.

`fixtures/numbers.json` holds the capture: the attack records of a small grid in full, and the
training objective's terms and gradients on one batch, with the environment they came from.
Write it again only when a change is meant to move numbers (and say so in the commit):

    HF_HUB_OFFLINE=1 python tests/test_numbers_unchanged.py --write

Thread count: on the capturing machine 1 and 2 threads give the same bits (the `mibench` CLI,
2 threads, reproduces the shipped records as this test's 1 thread does); the test pins 1
thread all the same, since other CPUs may split their reductions by thread. Bits also depend
on the torch build and the CPU's kernels, so the bit-for-bit checks hold where torch version
and CPU capability are the capture's; elsewhere the default run must give the shipped
decisions with probabilities within 1e-4, and the captured figures are skipped.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.utils import instantiate
from omegaconf import OmegaConf

from mibench.cli import build_plugins
from mibench.perturbations.image import BlankImage
from mibench.perturbations.pgd_embed import EmbeddingPGD
from mibench.perturbations.pgd_pixel import PixelPGD
from mibench.perturbations.text import MisleadingText
from mibench.runner import run_benchmark
from mibench.seeding import rng_for
from mibench.tasks.shapes import ShapesTask
from mibench.training.data import Pair
from mibench.training.objective import LossWeights, batch_loss

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = Path(__file__).parent / "fixtures" / "numbers.json"
SHIPPED = ROOT / "results" / "submissions" / "toy_llava" / "records.jsonl.gz"
# Cells of the default run covering every scoring path: image batches, text-only batches,
# text conditions sharing clean's plan and image encoding, an image condition. A cell's
# records do not depend on which other cells run (each plan follows its own samples).
DEFAULT_CELLS = {"toy_image_heavy": ["clean", "misleading_text"],
                 "toy_text_heavy": ["clean", "switched_image"],
                 "toy_vqa": ["clean"]}
THREADS = 1  # as the `one_thread` fixture every test here runs under
pytestmark = pytest.mark.usefixtures("one_thread")


def environment() -> dict:
    return {"torch": torch.__version__, "cpu": torch.backends.cpu.get_cpu_capability()}


def read_records(path: Path) -> dict[tuple[str, str, str], dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return {(r["task"], r["condition"], r["sample_id"]): r for r in rows}


def default_run(out_dir: Path) -> dict[tuple[str, str, str], dict]:
    """The default benchmark's cells in DEFAULT_CELLS, as `mibench` scores them."""
    with initialize_config_module("mibench.conf", version_base="1.3"):
        cfg = compose("config", overrides=["progress=false"])
    tasks, conditions = build_plugins(cfg)
    tasks = {n: t for n, t in tasks.items() if n in DEFAULT_CELLS}
    wanted = {c for names in DEFAULT_CELLS.values() for c in names}
    conditions = {n: c for n, c in conditions.items() if n in wanted}
    run_benchmark(instantiate(cfg.model), tasks, conditions, out_dir,
                  batch_size=int(cfg.batch_size), seed=int(cfg.seed), progress=False)
    records = read_records(out_dir / "records.jsonl")
    return {k: r for k, r in records.items() if k[1] in DEFAULT_CELLS[k[0]]}


def toy_adapter():
    with initialize_config_module("mibench.conf", version_base="1.3"):
        cfg = compose("config", overrides=["model.device=cpu"])
    return instantiate(cfg.model)


BLACK = dict(name="black_image", color=(0, 0, 0), size=(224, 224))


def attack_grid() -> dict:
    """Every attack space, norm, update rule, mask, target and base, on the trained toy."""
    return {
        "embed_text": EmbeddingPGD(name="embed_text", mask="text", eps=0.2, alpha=0.05, steps=3,
                                   restarts=2),
        "embed_distractor": EmbeddingPGD(name="embed_distractor", mask="distractor", norm="l2",
                                         eps=0.5, alpha=0.2, steps=3, targeted="lure",
                                         base=MisleadingText()),
        "embed_study": EmbeddingPGD(name="embed_study", mask="text", eps=0.05,
                                    eps_scale="absolute", alpha=0.1, steps=2, update="grad"),
        "embed_image": EmbeddingPGD(name="embed_image", mask="image", eps=0.2, alpha=0.05,
                                    steps=3, targeted="random", base=BlankImage(**BLACK)),
        "pixel_linf": PixelPGD(name="pixel_linf", eps=0.031, alpha=0.008, steps=3,
                               base=BlankImage(**BLACK)),
        "pixel_l2": PixelPGD(name="pixel_l2", norm="l2", eps=1.0, alpha=0.3, steps=3, restarts=2,
                             base=BlankImage(**BLACK)),
    }


def attack_run(adapter, out_dir: Path) -> dict[tuple[str, str, str], dict]:
    tasks = {"ih": ShapesTask("image_heavy", 10, name="ih"),
             "th": ShapesTask("text_heavy", 10, name="th")}
    run_benchmark(adapter, tasks, attack_grid(), out_dir, batch_size=4, seed=0, progress=False)
    return read_records(out_dir / "records.jsonl")


def training_pairs() -> list[Pair]:
    """Image-heavy samples with misleading twins, text-heavy ones with black-image twins, and
    a VQA sample without one: every term of the study's objective has rows."""
    misleading, black = MisleadingText(), BlankImage(**BLACK)
    ih = ShapesTask("image_heavy", 3, split="train").samples()
    th = ShapesTask("text_heavy", 3, split="train").samples()
    vqa = ShapesTask("vqa", 1, split="train").samples()
    return ([Pair("ih", s, misleading.apply(s, rng_for(0, s.id)), "misleading_text") for s in ih]
            + [Pair("th", s, black.apply(s, rng_for(0, s.id)), "black_image") for s in th]
            + [Pair("vqa", s) for s in vqa])


def training_step(adapter) -> dict:
    """The study objective's terms and gradients on one batch (weights left as they were)."""
    with initialize_config_module("mibench.conf", version_base="1.3"):
        cfg = compose("train")
    attacks = {str(c): instantiate(a) for c, a in cfg.train.adversarial.items()}
    weights = LossWeights(**OmegaConf.to_container(cfg.train.loss, resolve=True))
    model = adapter.model
    model.train()
    try:
        loss = batch_loss(model, adapter, training_pairs(), weights, attacks, seed=0, step=3)
        loss.total.backward()
        digest = hashlib.sha256()
        norm = 0.0
        for name, p in model.named_parameters():
            if p.grad is not None:
                digest.update(name.encode() + p.grad.detach().cpu().numpy().tobytes())
                norm += float(p.grad.double().square().sum())
    finally:
        model.zero_grad(set_to_none=True)
        model.eval()
    return {"terms": {k: float(v).hex() for k, v in sorted(loss.terms.items())},
            "rows": loss.rows, "grad_sha256": digest.hexdigest(), "grad_norm": norm ** 0.5}


# -- the tests -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def capture() -> dict:
    return json.loads(FIXTURE.read_text())


@pytest.fixture(scope="module")
def default_records(tmp_path_factory):
    return default_run(tmp_path_factory.mktemp("default-run"))


def same_environment(capture: dict) -> None:
    if capture["environment"] != environment():
        pytest.skip(f"captured under {capture['environment']}, running under {environment()}: "
                    "bits may differ (see the module docstring)")


def test_default_run_gives_the_shipped_records(default_records, capture):
    shipped = read_records(SHIPPED)
    exact = capture["environment"] == environment()
    assert default_records and set(default_records) <= set(shipped)
    for key, record in default_records.items():
        want = shipped[key]
        assert (record["prediction"], record["lure"]) == (want["prediction"], want["lure"]), key
        if exact:
            assert record["probs"] == want["probs"], key
        else:
            np.testing.assert_allclose(record["probs"], want["probs"], rtol=0, atol=1e-4,
                                       err_msg=str(key))


def test_attack_records_are_bit_identical_to_the_capture(tmp_path, capture):
    same_environment(capture)
    got = attack_run(toy_adapter(), tmp_path)
    want = {tuple(k.split("/")): r for k, r in capture["attacks"].items()}
    assert set(got) == set(want)
    for key, record in got.items():
        assert (record["probs"], record["prediction"], record["lure"]) == (
            want[key]["probs"], want[key]["prediction"], want[key]["lure"]), key


def test_training_objective_is_bit_identical_to_the_capture(capture):
    same_environment(capture)
    assert training_step(toy_adapter()) == capture["training"]


def write(path: Path) -> None:
    """Capture every figure above from the code as it is now."""
    import tempfile

    torch.set_num_threads(THREADS)
    with tempfile.TemporaryDirectory() as tmp:
        attacks = attack_run(toy_adapter(), Path(tmp) / "attacks")
    capture = {
        "environment": environment(), "threads": THREADS,
        "attacks": {"/".join(k): {"probs": r["probs"], "prediction": r["prediction"],
                                  "lure": r["lure"]} for k, r in sorted(attacks.items())},
        "training": training_step(toy_adapter()),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(capture, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="write the capture")
    parser.add_argument("--out", type=Path, default=FIXTURE)
    args = parser.parse_args()
    if not args.write:
        sys.exit("nothing to do: pass --write to capture the figures")
    write(args.out)
