"""PGD attacks: the tensor core's guarantees, the MLLM wrappers on a tiny real LLaVA, configs."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import WORDS, ListTask, image_heavy_samples, make_image, text_heavy_samples
from families_builders import build
from hydra import compose, initialize_config_module
from hydra.utils import instantiate
from hypothesis import given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

import mibench.conf
from mibench.cli import build_plugins
from mibench.models import toy_builder
from mibench.models.hf import HFModelAdapter
from mibench.perturbations.base import Attack
from mibench.perturbations.image import BlankImage
from mibench.perturbations.pgd import Evaluation, pgd
from mibench.perturbations.pgd_embed import EmbeddingPGD
from mibench.perturbations.pgd_mllm import AttackError
from mibench.perturbations.pgd_pixel import PixelPGD
from mibench.perturbations.text import MisleadingText
from mibench.runner import run_benchmark

CONF = Path(mibench.conf.__file__).parent / "perturbation"
pytestmark = pytest.mark.usefixtures("one_thread")
BLACK = BlankImage("black_image", size=(32, 32))


def seeds_for(samples):
    return [1000 + i for i in range(len(samples))]


def distracted(n):
    """Image-heavy samples with a distractor span, so all three masks have something."""
    return [dataclasses.replace(s, distractor="anna has a box .") for s in image_heavy_samples(n)]


@pytest.fixture(scope="module")
def adapter64():
    """The tiny random LLaVA in float64: gradients without float32 noise."""
    processor = toy_builder.build_processor(WORDS)
    model = toy_builder.build_model(processor, seed=1).double()
    return HFModelAdapter(model, processor, "tiny64")


# -- the tensor core -----------------------------------------------------------------------
@st.composite
def problems(draw):
    batch, groups, width = draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.integers(1, 5))
    seed = draw(st.integers(0, 2**31))
    gen = torch.Generator().manual_seed(seed)
    x0 = torch.rand(batch, groups, width, generator=gen, dtype=torch.float64)
    weight = torch.randn(batch, groups, width, generator=gen, dtype=torch.float64)
    mask = torch.rand(batch, groups, 1, generator=gen) < 0.6
    return dict(
        x0=x0, weight=weight, mask=mask.expand_as(x0),
        eps=torch.tensor(draw(st.lists(st.floats(0, 2), min_size=batch, max_size=batch)),
                         dtype=torch.float64),
        alpha=draw(st.floats(0, 1)), steps=draw(st.integers(0, 4)),
        restarts=draw(st.integers(1, 2)), norm=draw(st.sampled_from(["linf", "l2"])),
        update=draw(st.sampled_from(["sign", "grad"])), bounded=draw(st.booleans()),
        per_token=draw(st.booleans()), seeds=list(range(seed, seed + batch)))


@settings(max_examples=80, deadline=None)
@given(problem=problems())
def test_core_stays_in_its_ball_and_range_and_moves_only_masked_entries(problem):
    p = problem
    x0, weight, mask = p["x0"], p["weight"], p["mask"]

    def objective(x):  # non-linear, so steps go everywhere
        return Evaluation(value=(torch.sin(3 * x) * weight).sum(dim=(1, 2)))

    result = pgd(objective, x0, eps=p["eps"], alpha=p["alpha"], steps=p["steps"],
                 seeds=p["seeds"], norm=p["norm"], update=p["update"], restarts=p["restarts"],
                 mask=mask, bounds=(0.0, 1.0) if p["bounded"] else None,
                 group_dims=(-1,) if p["per_token"] else None)
    eps = p["eps"].view(-1, 1, 1)
    for x in (result.x, *result.final):
        delta = x - x0
        assert torch.equal(x[~mask], x0[~mask])
        if p["norm"] == "linf":
            assert (delta.abs() <= eps + 1e-12).all()
        else:
            dims = (-1,) if p["per_token"] else (1, 2)
            assert (torch.linalg.vector_norm(delta, dim=dims, keepdim=True)
                    <= eps * (1 + 1e-9) + 1e-12).all()
        if p["bounded"]:
            assert ((x >= 0) & (x <= 1)).all()


def test_core_random_start_depends_only_on_the_sample_seed_and_its_masked_entries():
    x0 = torch.zeros(1, 5, 3, dtype=torch.float64)
    wide = torch.zeros(2, 8, 3, dtype=torch.float64)  # same sample, left-padded, other row
    mask = torch.zeros_like(x0, dtype=torch.bool)
    mask[0, 2:] = True
    wide_mask = torch.zeros_like(wide, dtype=torch.bool)
    wide_mask[1, 5:] = True

    def objective(x):
        return Evaluation(value=x.sum(dim=(1, 2)))

    for norm in ("linf", "l2"):
        one = pgd(objective, x0, eps=0.5, alpha=0.0, steps=0, seeds=[7], norm=norm,
                  mask=mask, group_dims=(-1,))
        two = pgd(objective, wide, eps=0.5, alpha=0.0, steps=0, seeds=[3, 7], norm=norm,
                  mask=wide_mask, group_dims=(-1,))
        assert torch.equal(one.x[0, 2:], two.x[1, 5:])
        assert (one.x[0, 2:] != 0).all()


def test_pgd_finds_what_random_search_of_the_same_budget_misses():
    """Independent check on a small trained classifier: gradient steps beat random points."""
    gen = torch.Generator().manual_seed(0)
    n, side = 256, 8
    labels = torch.randint(0, 2, (n,), generator=gen)
    pattern = torch.randn(1, side, side, generator=gen, dtype=torch.float64).sign() * 0.15
    images = (0.5 + (2 * labels - 1).view(-1, 1, 1, 1) * pattern[None]
              + 0.08 * torch.randn(n, 1, side, side, generator=gen, dtype=torch.float64))
    images = images.clamp(0, 1)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Flatten(), torch.nn.Linear(4 * side * side, 2)).double()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(60):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(images), labels).backward()
        opt.step()
    net.requires_grad_(False)
    correct = net(images).argmax(-1) == labels
    assert correct.float().mean() > 0.95
    x0, y = images[correct][:64], labels[correct][:64]

    def objective(x):
        logits = net(x)
        return Evaluation(value=torch.nn.functional.cross_entropy(logits, y, reduction="none"),
                          success=logits.argmax(-1) != y)

    eps, steps = 0.2, 10  # the decision margin is about 0.15 per pixel along the pattern
    attack = pgd(objective, x0, eps=eps, alpha=eps / 4, steps=steps, seeds=range(len(y)),
                 bounds=(0.0, 1.0))
    found = torch.zeros(len(y), dtype=torch.bool)
    for _ in range(steps + 1):  # the same number of model evaluations, at random points
        noise = torch.rand(x0.shape, generator=gen, dtype=torch.float64) * 2 - 1
        found |= objective((x0 + eps * noise).clamp(0, 1)).success
    pgd_rate, random_rate = attack.success.double().mean(), found.double().mean()
    assert pgd_rate >= 0.8, pgd_rate
    assert random_rate <= 0.2, random_rate


# -- the MLLM wrappers -----------------------------------------------------------------------
@pytest.mark.parametrize("make", [
    lambda: (EmbeddingPGD(mask="text", eps=0.0, steps=2), distracted(4)),
    lambda: (EmbeddingPGD(mask="distractor", eps=0.0, steps=2), distracted(4)),
    lambda: (EmbeddingPGD(mask="image", eps=0.0, steps=2, base=BLACK), text_heavy_samples(4)),
    lambda: (PixelPGD(eps=0.0, steps=2, base=BLACK), text_heavy_samples(4)),
    lambda: (PixelPGD(eps=0.0, steps=2, norm="l2", restarts=2), distracted(3)),
], ids=["embed-text", "embed-distractor", "embed-image", "pixel-linf", "pixel-l2"])
def test_eps_zero_gives_the_clean_probabilities_exactly(tiny_adapter, make):
    attack, samples = make()
    outcome = attack.run(tiny_adapter, samples, seeds_for(samples))
    clean = tiny_adapter.option_probs(outcome.samples)  # after the base perturbation
    for got, want in zip(outcome.probs, clean):
        np.testing.assert_array_equal(got, want)


class LayerInputs:
    """Records what the first decoder layer receives: the sequence the language model reads."""

    def __init__(self, adapter):
        self.seen: list[torch.Tensor] = []
        layer = adapter.model.get_decoder().layers[0]
        self.handle = layer.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        self.seen.append(hidden.detach().clone())

    def close(self):
        self.handle.remove()


@pytest.mark.parametrize("mask", ["text", "distractor", "image"])
def test_embedding_attack_leaves_the_other_positions_bit_identical(tiny_adapter, mask):
    samples = distracted(4)
    attack = EmbeddingPGD(mask=mask, eps=0.5, alpha=0.2, steps=3, restarts=2)
    probe = LayerInputs(tiny_adapter)
    try:
        outcome = attack.run(tiny_adapter, samples, seeds_for(samples))
    finally:
        probe.close()
    clean, *steps = probe.seen
    moving = outcome.mask[..., 0]
    assert moving.any(-1).all()
    image = tiny_adapter.encode(samples)["input_ids"] == tiny_adapter.model.config.image_token_id
    if mask == "image":
        assert torch.equal(moving, image)
    else:
        assert not (moving & image).any()
    assert len(steps) > 2 * 3
    for seen in steps:  # every forward of the attack, random starts included
        assert torch.equal(seen[~moving], clean[~moving])
    assert not torch.equal(steps[-1][moving], clean[moving])
    delta = (outcome.x - outcome.x0)[moving]
    assert (delta.abs().amax(-1) <= outcome.eps.repeat_interleave(moving.sum(-1)) * 1.0001
            ).all()


def test_pixel_attack_keeps_text_inputs_and_stays_in_its_ball(tiny_adapter):
    samples = text_heavy_samples(4)
    attack = PixelPGD(eps=4 / 255, alpha=1 / 255, steps=3, base=BLACK)
    calls = []
    hook = tiny_adapter.model.register_forward_pre_hook(
        lambda m, a, kw: calls.append((kw["input_ids"].clone(), kw["attention_mask"].clone(),
                                       kw["pixel_values"].detach().clone())), with_kwargs=True)
    try:
        outcome = attack.run(tiny_adapter, samples, seeds_for(samples))
    finally:
        hook.remove()
    enc = tiny_adapter.encode(outcome.samples)
    for ids, attention, _ in calls:
        assert torch.equal(ids, enc["input_ids"]) and torch.equal(attention, enc["attention_mask"])
    assert any(not torch.equal(pv, enc["pixel_values"]) for *_, pv in calls)
    delta = outcome.x - outcome.x0
    assert delta.abs().max() <= 4 / 255 + 1e-6 and delta.abs().max() > 1 / 255
    assert outcome.x.min() >= outcome.x0.min().clamp(max=0) and outcome.x.max() <= 1
    # black base: pixels can only go up, and u = 0 maps back to the processor's black
    assert torch.allclose(outcome.x0, torch.zeros_like(outcome.x0), atol=1e-6)


@pytest.mark.parametrize("attack", [
    EmbeddingPGD(mask="text", eps=0.05, alpha=0.005, steps=4, random_start=True),
    EmbeddingPGD(mask="text", eps=0.05, alpha=0.5, steps=4, update="grad", eps_scale="rms"),
    EmbeddingPGD(mask="text", eps=0.05, alpha=0.005, steps=4, norm="l2"),
    PixelPGD(eps=4 / 255, alpha=0.5 / 255, steps=4),
    PixelPGD(eps=0.5, alpha=0.05, steps=4, norm="l2"),
], ids=["embed-sign", "embed-grad", "embed-l2", "pixel-linf", "pixel-l2"])
def test_steps_increase_the_loss_from_the_random_start(adapter64, attack):
    """A wrong-sign bug would make the last iterate's loss lower than the start's."""
    samples = distracted(3)
    outcome = attack.run(adapter64, samples, seeds_for(samples))
    history = outcome.result.history[0]
    assert (history[-1] > history[0]).all(), history
    assert (torch.diff(history, dim=0) > -1e-9).float().mean() > 0.9


def grid(attacks, *sample_lists):
    tasks = {f"t{i}": ListTask(f"t{i}", samples[0].category, samples)
             for i, samples in enumerate(sample_lists)}
    return tasks, {a.name: a for a in attacks}


def read_records(out_dir):
    rows = [json.loads(line) for line in (out_dir / "records.jsonl").read_text().splitlines()]
    return {(r["task"], r["condition"], r["sample_id"]): r for r in rows}


def test_attack_records_do_not_depend_on_batch_size(tiny_adapter, tmp_path):
    attacks = [EmbeddingPGD(name="embed", eps=0.3, steps=3, restarts=2),
               EmbeddingPGD(name="embed_l2", eps=0.3, steps=3, norm="l2", mask="distractor"),
               PixelPGD(name="pixel", eps=0.05, alpha=0.02, steps=3, restarts=2, base=BLACK)]
    runs = {}
    for batch_size in (1, 4):
        out = tmp_path / f"bs{batch_size}"
        run_benchmark(tiny_adapter, *grid(attacks, distracted(5), text_heavy_samples(5)), out,
                      batch_size=batch_size, progress=False)
        runs[batch_size] = read_records(out)
    assert len(runs[1]) == 5 * 3 + 5 * 2
    for key, ref in runs[1].items():
        np.testing.assert_allclose(runs[4][key]["probs"], ref["probs"], atol=1e-5)
        assert runs[4][key]["prediction"] == ref["prediction"]


def test_eps_zero_records_equal_clean_beside_text_conditions(tiny_adapter, tmp_path):
    """Clean shares its plan with the text conditions; the attack, which starts from clean,
    must still meet each sample in the same batch as clean did."""
    samples = [dataclasses.replace(s, id=f"s{i}",  # lengths that the text conditions reorder
                                   question="what shape is in the image ?" + " ?" * (i % 7))
               for i, s in enumerate(image_heavy_samples(16))]
    conditions = {"misleading_text": MisleadingText(),
                  "pgd0": EmbeddingPGD(name="pgd0", mask="text", eps=0.0, steps=1)}
    run_benchmark(tiny_adapter, {"t": ListTask("t", "image_heavy", samples)}, conditions,
                  tmp_path, batch_size=4, progress=False)
    records = read_records(tmp_path)
    for s in samples:
        assert records[("t", "pgd0", s.id)]["probs"] == records[("t", "clean", s.id)]["probs"]


def test_robust_accuracy_does_not_increase_with_eps(tiny_adapter, tmp_path):
    samples = [dataclasses.replace(s, id=f"s{i}") for i, s in enumerate(distracted(16))]
    epsilons = (0.0, 0.05, 0.1, 0.2, 0.5, 2.0)
    attacks = [EmbeddingPGD(name=f"pgd_eps{e}", eps=e, alpha=e / 4, steps=5) for e in epsilons]
    result = run_benchmark(tiny_adapter, *grid(attacks, samples), tmp_path, batch_size=8,
                           progress=False)
    metrics = result.metrics["t0"]
    accuracy = [metrics[f"pgd_eps{e}"]["accuracy"].value for e in epsilons]
    clean = metrics["clean"]["accuracy"].value
    assert accuracy[0] == clean > 0
    assert all(a >= b for a, b in zip(accuracy, accuracy[1:])), accuracy
    assert accuracy[-1] < clean
    # success rate = share of clean-correct samples made wrong
    assert metrics[f"pgd_eps{epsilons[-1]}"]["harm_rate"].value > 0


def test_targeted_attack_pushes_toward_the_lure(tiny_adapter):
    samples = image_heavy_samples(6)
    seeds = seeds_for(samples)
    attack = EmbeddingPGD(mask="distractor", eps=2.0, alpha=0.5, steps=4, targeted="lure",
                          base=MisleadingText())
    outcome = attack.run(tiny_adapter, samples, seeds)
    lures = [s.meta["lure"] for s in outcome.samples]
    assert outcome.targets == lures
    decided = [int(p.argmax()) for p in outcome.probs]
    assert [d == t for d, t in zip(decided, lures)] == outcome.result.success.tolist()
    assert outcome.result.success.float().mean() >= 0.5
    untargeted = EmbeddingPGD(targeted="random").targets(samples, seeds)
    assert all(t != s.answer for t, s in zip(untargeted, samples))


def test_model_is_left_as_it_was(tiny_adapter):
    model = tiny_adapter.model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    samples = text_heavy_samples(2)
    PixelPGD(steps=2, base=BLACK).run(tiny_adapter, samples, seeds_for(samples))
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_bad_inputs_are_refused_by_name(tiny_adapter):
    samples = text_heavy_samples(2)
    with pytest.raises(AttackError, match="th-0.*base image"):
        PixelPGD().run(tiny_adapter, samples, seeds_for(samples))
    with pytest.raises(AttackError, match="ih-0.*no distractor"):
        EmbeddingPGD(mask="distractor").run(tiny_adapter, image_heavy_samples(2), [1, 2])
    with pytest.raises(ValueError, match="norm='l3'"):
        PixelPGD(norm="l3")
    with pytest.raises(ValueError, match="touches the text, but its base"):
        EmbeddingPGD(mask="text", base=BLACK)
    with pytest.raises(AttackError, match="object can only be queried"):
        PixelPGD(base=BLACK).run(object(), samples, [1, 2])
    mixed = [samples[0], dataclasses.replace(samples[1], image=make_image(3))]
    with pytest.raises(AttackError, match=r"\['th-0'\]"):  # the one without an image
        PixelPGD(steps=1).run(tiny_adapter, mixed, [1, 2])


# -- other model families (tiny random checkpoints from tests/families_builders.py) ----------
def test_attacks_run_on_every_family_or_refuse_it_by_name(family):
    fam, adapter = family
    sizes = fam.sizes
    ih = [dataclasses.replace(s, image=make_image(i).resize(sizes[i % len(sizes)]),
                              distractor="anna has a box .")
          for i, s in enumerate(image_heavy_samples(3))]
    th = text_heavy_samples(3)
    black = BlankImage("black_image", size=sizes[0])
    cases = [(EmbeddingPGD(mask="text", eps=0.0, steps=1), ih),
             (EmbeddingPGD(mask="distractor", eps=0.0, steps=1), ih),
             (EmbeddingPGD(mask="image", eps=0.0, steps=1, base=black), th),
             (PixelPGD(eps=0.0, steps=1), ih)]
    def refused(attack, samples) -> bool:
        if type(attack).__name__ not in fam.refused_attacks:
            return False
        with pytest.raises(AttackError, match=type(adapter.model).__name__):
            attack.run(adapter, samples, [1, 2, 3])
        return True

    for attack, samples in cases:
        if refused(attack, samples):
            continue
        outcome = attack.run(adapter, samples, [1, 2, 3])
        for got, want in zip(outcome.probs, adapter.option_probs(outcome.samples)):
            np.testing.assert_array_equal(got, want)
    clean = adapter.option_probs(ih)
    for attack in (EmbeddingPGD(mask="text", eps=1.0, steps=2), PixelPGD(eps=0.3, steps=2)):
        if refused(attack, ih):
            continue
        moved = attack.run(adapter, ih, [1, 2, 3])
        assert any(not np.allclose(a, b) for a, b in zip(moved.probs, clean))
        delta = (moved.x - moved.x0).abs()
        assert delta.max() <= attack.eps * (1 + 1e-6) and torch.equal(
            moved.x[~moved.mask], moved.x0[~moved.mask])


def test_pixel_attack_on_tiles_does_not_depend_on_the_batch(tmp_path):
    """LLaVA-NeXT: images of different sizes give different tile counts (padded tiles)."""
    fam = build("llava_next", tmp_path)
    adapter = HFModelAdapter.from_pretrained(fam.path, device="cpu")
    sizes = [(16, 16), (64, 64), (32, 32)]  # 3, 5 and 5 tiles: the first gets 2 padding tiles
    samples = [dataclasses.replace(s, image=make_image(i).resize(size))
               for i, (s, size) in enumerate(zip(text_heavy_samples(3), sizes))]
    attack = PixelPGD(eps=0.05, alpha=0.02, steps=2, restarts=2, norm="l2")
    together = attack.run(adapter, samples, [1, 2, 3])
    assert not together.mask.all()  # some tiles are padding and were left alone
    assert torch.equal(together.x[~together.mask], together.x0[~together.mask])
    for i, sample in enumerate(samples):
        alone = attack.attack(adapter, [sample], [i + 1])[0]
        np.testing.assert_allclose(alone, together.probs[i], atol=1e-5)


# -- configs -----------------------------------------------------------------------------------
@pytest.mark.parametrize("stem", ["pgd_embed", "pgd_pixel"])
def test_configs_build_attacks_that_state_their_threat_model(stem):
    attack = instantiate(OmegaConf.load(CONF / f"{stem}.yaml"))
    assert isinstance(attack, Attack) and attack.name == stem
    threat = attack.describe()["threat_model"]
    for key in ("norm", "eps", "alpha", "steps", "restarts", "update", "objective", "space"):
        assert key in threat
    json.dumps(attack.describe())


def test_attack_runs_as_a_benchmark_cell_from_hydra_overrides():
    with initialize_config_module("mibench.conf", version_base="1.3"):
        cfg = compose("config", overrides=[
            "task=toy_text_heavy", "perturbation=pgd_embed", "perturbation.mask=image",
            "perturbation.eps=0.03", "perturbation.base={_target_:"
            "mibench.perturbations.image.BlankImage,name:black_image}"])
        pixel = compose("config", overrides=["task=toy_text_heavy", "perturbation=pgd_pixel",
                                              "perturbation.eps=0.01"])
    tasks, conditions = build_plugins(cfg)
    attack = conditions["pgd_embed"]
    assert (attack.touches, attack.eps, attack.describe()["params"]["base"]["name"]) == (
        "image", 0.03, "black_image")
    _, conditions = build_plugins(pixel)
    assert conditions["pgd_pixel"].eps == 0.01


@pytest.mark.parametrize("attack, expect", [
    (EmbeddingPGD(name="pgd_embed", mask="text", eps=0.5, steps=1, targeted="random"),
     "target"),
    (EmbeddingPGD(name="pgd_embed", mask="distractor", eps=0.5, steps=1,
                  base=MisleadingText()), "caption"),
])
def test_records_carry_the_option_the_attack_pushes_toward(tiny_adapter, tmp_path, attack,
                                                          expect):
    samples = image_heavy_samples(5)
    result = run_benchmark(tiny_adapter, {"ih": ListTask("ih", "image_heavy", samples)},
                           {attack.name: attack}, tmp_path, batch_size=2, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "records.jsonl").read_text().splitlines()]
    attacked = {r["sample_id"]: r for r in rows if r["condition"] == attack.name}
    from mibench.seeding import stable_seed

    for sample in samples:
        seed = stable_seed(0, "ih", attack.name, sample.id)
        lure = attacked[sample.id]["lure"]
        assert lure is not None and lure != sample.answer
        if expect == "caption":  # the wrong option the misleading base caption names
            caption = MisleadingText().apply(sample, np.random.default_rng(seed))
            assert lure == caption.meta["lure"]
    assert result.metrics["ih"][attack.name]["lure_rate"].n == len(samples)
