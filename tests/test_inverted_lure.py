"""inverted_lure: images synthesised against the source model, the judge that checks their
meaning, the cache, and `mibench lures`. Tiny real models throughout (a random tiny LLaVA, a
random tiny CLIP built offline, the shipped shapes judge and toy)."""

from __future__ import annotations

import dataclasses
import json
import string
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ListTask, text_heavy_samples
from hydra.utils import instantiate
from hypothesis import given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf
from PIL import Image

import mibench.conf
from mibench.cli import fingerprint
from mibench.lures import lure_report, lures_main
from mibench.models.judges import (
    ClipJudge,
    JudgeError,
    ShapesJudge,
    check_independent,
    judge_from_description,
)
from mibench.perturbations.base import Attack
from mibench.perturbations.inversion import Prior, invert, total_variation
from mibench.perturbations.inverted_lure import InvertedLure, target_option
from mibench.perturbations.pgd_mllm import AttackError
from mibench.registry import registry
from mibench.runner import run_benchmark
from mibench.seeding import stable_seed
from mibench.tasks.shapes import render_shape

CONF = Path(mibench.conf.__file__).parent / "perturbation" / "inverted_lure.yaml"
QUICK = dict(steps=3, lr=0.1, param_size=8, copies=2)  # a budget the tests can afford


def attack(tmp_path: Path, judge=None, **settings) -> InvertedLure:
    return InvertedLure(cache_dir=str(tmp_path / "cache"), judge=judge,
                        **{**QUICK, **settings})


def seeds_of(samples, seed: int = 0) -> list[int]:
    return [stable_seed(seed, "t", "inverted_lure", s.id) for s in samples]


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


# -- the prior -------------------------------------------------------------------------------------
def test_total_variation_by_hand():
    stripes = torch.tensor([[[[0.0, 1.0], [0.0, 1.0]]]])  # vertical 0, 0; horizontal 1, 1
    checks = torch.tensor([[[[0.0, 1.0], [1.0, 0.0]]]])  # every neighbour differs by 1
    flat = torch.full((1, 3, 4, 4), 0.3)
    ramp = torch.arange(4.0).repeat(4, 1)[None, None] / 4  # horizontal steps of 0.25
    assert total_variation(stripes).tolist() == [1.0]
    assert total_variation(checks).tolist() == [2.0]
    assert total_variation(flat).tolist() == [0.0]
    assert total_variation(ramp).tolist() == [0.25]


@settings(max_examples=12, deadline=None)
@given(parametrization=st.sampled_from(["pixel", "fourier"]),
       param_size=st.sampled_from([None, 3, 8]), decorrelate=st.booleans(),
       steps=st.integers(0, 4), copies=st.integers(1, 3), seed=st.integers(0, 2**32))
def test_budget_respected(parametrization, param_size, decorrelate, steps, copies, seed):
    """Exactly `steps` steps, each one call of the loss over all views; the parameters at
    param_size; images at the output side, in [0, 1], even when the loss pushes hard."""
    prior = Prior(steps=steps, lr=5.0, parametrization=parametrization, param_size=param_size,
                  decorrelate=decorrelate, copies=copies)
    calls = []

    def loss(views):
        calls.append(views.shape[0])
        return -(views * 100).flatten(1).sum(1)  # drives every pixel towards +inf

    result = invert(loss, [seed, seed + 1], (12, 10), prior)
    assert calls == [2 * copies] * steps
    assert result.images.shape == (2, 3, 12, 10) and result.loss.shape == (steps, 2)
    assert float(result.images.min()) >= 0 and float(result.images.max()) <= 1
    grid = (12, 10) if param_size is None else (min(param_size, 12), min(param_size, 10))
    expected = (3, *grid) if parametrization == "pixel" else (3, grid[0], grid[1] // 2 + 1, 2)
    assert result.param_shape == expected


def test_each_sample_depends_only_on_its_own_seed():
    prior = Prior(steps=3, lr=0.2, copies=2)
    target = torch.linspace(0, 1, 3 * 8 * 8).view(1, 3, 8, 8)

    def loss(views):
        return ((views - target) ** 2).flatten(1).mean(1)

    together = invert(loss, [1, 2, 3], (8, 8), prior).images
    alone = invert(loss, [2], (8, 8), prior).images
    again = invert(loss, [1, 2, 3], (8, 8), prior).images
    assert torch.equal(together, again)
    torch.testing.assert_close(alone[0], together[1], atol=1e-6, rtol=0)
    assert not torch.allclose(together[0], together[1])


# -- the condition on a model ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def samples():
    return text_heavy_samples(3)


def test_config_builds_an_attack_that_states_its_threat_model():
    condition = instantiate(OmegaConf.load(CONF))
    assert isinstance(condition, Attack) and condition.name == "inverted_lure"
    assert isinstance(condition.judge, ShapesJudge) and condition.touches == "image"
    info = condition.describe()
    json.dumps(info)
    for key in ("norm", "eps", "alpha", "steps", "restarts", "update", "objective", "space",
                "prior", "interpretation"):
        assert key in info["threat_model"]
    assert "cache_dir" not in info["params"]  # changes no number
    assert info["params"]["judge"]["weights_sha256"] == ShapesJudge().weights_sha256
    assert InvertedLure.from_description(info).describe() == info
    # the submission guard takes the shipped judge, and never a cache folder of its machine
    nested = registry().nested["mibench.perturbations.inverted_lure.InvertedLure.judge"]
    assert nested == {"mibench.models.judges.ShapesJudge"}


def test_images_are_deterministic_from_the_seed_and_leave_the_text_alone(
        tiny_adapter, samples, tmp_path, one_thread):
    a = attack(tmp_path / "a").run(tiny_adapter, samples, seeds_of(samples))
    b = attack(tmp_path / "b").run(tiny_adapter, samples, seeds_of(samples))
    other = attack(tmp_path / "c").run(tiny_adapter, samples, seeds_of(samples, seed=1))
    for x, y, z, original in zip(a.samples, b.samples, other.samples, samples):
        assert np.array_equal(pixels(x.image), pixels(y.image))
        assert not np.array_equal(pixels(x.image), pixels(z.image))
        assert x.image.size == (32, 32)  # the model's input side
        assert (x.question, x.distractor, x.options, x.answer, x.id) == (
            original.question, original.distractor, original.options, original.answer,
            original.id)
        assert original.image is None  # the runner's sample is not changed
    np.testing.assert_array_equal(np.stack(a.probs), np.stack(b.probs))
    assert a.targets == b.targets and all(t != s.answer for t, s in zip(a.targets, samples))


def test_a_sample_s_image_does_not_depend_on_its_batch(tiny_adapter, samples, tmp_path,
                                                      one_thread):
    together = attack(tmp_path / "a").run(tiny_adapter, samples, seeds_of(samples))
    alone = attack(tmp_path / "b").run(tiny_adapter, samples[1:2], seeds_of(samples)[1:2])
    difference = np.abs(pixels(alone.samples[0].image) - pixels(together.samples[1].image))
    assert difference.max() <= 1  # float rounding of batched kernels: at most one level
    np.testing.assert_allclose(alone.probs[0], together.probs[1], atol=1e-4)


@pytest.mark.parametrize("objective", ["answer", "features"])
def test_budget_on_the_model_one_pass_per_step(tiny_adapter, samples, tmp_path, one_thread,
                                               objective):
    """answer: one forward pass of the whole model per step; features: one of the vision
    tower per step and none of the whole model but one text-only pass for the option words;
    then the saved images are scored once."""
    calls = {"model": 0, "vision": 0}
    model = tiny_adapter.model
    hooks = [model.register_forward_pre_hook(lambda *a: calls.__setitem__("model", calls[
                 "model"] + 1)),
             model.base_model.vision_tower.register_forward_pre_hook(
                 lambda *a: calls.__setitem__("vision", calls["vision"] + 1))]
    try:
        out = attack(tmp_path, steps=4, objective=objective).run(tiny_adapter, samples,
                                                                 seeds_of(samples))
    finally:
        for hook in hooks:
            hook.remove()
    assert calls == ({"model": 4 + 1, "vision": 4 + 1} if objective == "answer"
                     else {"model": 1 + 1, "vision": 4 + 1})
    for item in out.images:
        assert item.sidecar["steps_done"] == 4 and item.sidecar["param_shape"] == [3, 8, 5, 2]
        assert item.sidecar["side"] == [32, 32]


def test_the_cache_makes_a_second_run_optimise_nothing(tiny_adapter, samples, tmp_path,
                                                       one_thread):
    task = ListTask("t", "text_heavy", samples)
    first = attack(tmp_path)
    run_benchmark(tiny_adapter, {"t": task}, {"inverted_lure": first}, tmp_path / "run1",
                  progress=False)
    assert first.cache_counts == {"optimised": 3, "reused": 0}
    assert len(list((tmp_path / "cache").rglob("*.png"))) == 3
    second = attack(tmp_path)  # a fresh object and a fresh run directory, same settings
    result = run_benchmark(tiny_adapter, {"t": task}, {"inverted_lure": second},
                           tmp_path / "run2", progress=False)
    assert second.cache_counts == {"optimised": 0, "reused": 3}
    assert result.metrics["t"]["inverted_lure"]["lure_rate"].n == 3
    one = (tmp_path / "run1" / "records.jsonl").read_text()
    two = (tmp_path / "run2" / "records.jsonl").read_text()
    assert one == two
    third = attack(tmp_path, steps=4)  # other settings: other images
    third.run(tiny_adapter, samples, seeds_of(samples))
    assert third.cache_counts == {"optimised": 3, "reused": 0}


def test_other_objectives_and_targets(tiny_adapter, samples, tmp_path, one_thread):
    lured = [dataclasses.replace(s, meta={"lure": (s.answer + 1) % 3}) for s in samples]
    for objective in ("probe", "answer"):
        out = attack(tmp_path, objective=objective, target="lure").run(
            tiny_adapter, lured, seeds_of(lured))
        assert out.targets == [(s.answer + 1) % 3 for s in samples]
        assert all(abs(p.sum() - 1) < 1e-6 for p in out.probs)
    with pytest.raises(AttackError, match="names no wrong option"):
        attack(tmp_path, target="lure").run(tiny_adapter, samples, seeds_of(samples))
    with pytest.raises(AttackError, match="already have one"):
        attack(tmp_path).run(tiny_adapter, [dataclasses.replace(
            samples[0], image=Image.new("RGB", (8, 8)))], [1])


def test_image_features_are_what_the_language_model_reads(tiny_adapter, samples):
    probe = [dataclasses.replace(s, image=Image.new("RGB", (32, 32), (200, 30, 30)))
             for s in samples]
    inputs = tiny_adapter.encode(probe)
    features = tiny_adapter.image_features(inputs)
    embedded = tiny_adapter.embed(inputs)
    where = tiny_adapter.image_positions(inputs)
    assert features.shape[:2] == (3, int(where[0].sum()))
    torch.testing.assert_close(features.reshape(-1, features.shape[-1]),
                               embedded.embeds[where].float(), atol=1e-5, rtol=1e-5)


def test_random_targets_are_wrong_options_drawn_from_the_seed(samples):
    for sample in samples:
        drawn = {target_option(sample, seed, "random") for seed in range(40)}
        assert drawn == set(range(3)) - {sample.answer}


# -- judges ----------------------------------------------------------------------------------------
def test_the_shapes_judge_sees_what_is_drawn_and_is_small():
    judge = ShapesJudge()
    size = sum(p.stat().st_size for p in judge.folder.iterdir())
    assert size < 500_000
    rng = np.random.default_rng(0)
    images = [render_shape("square", "green", rng), render_shape("circle", "red", rng),
              Image.new("RGB", (32, 32), (128, 128, 128))]
    colours = ("red", "green", "blue", "yellow", "purple", "cyan")
    objects = ("ball", "box", "tent", "kite", "sign", "hoop")
    verdicts = judge.verdicts(images, [colours, objects, colours], [1, 0, 1])
    assert [v.sees_lure for v in verdicts] == [True, True, False]
    assert verdicts[2].choice is None  # a blank canvas shows nothing
    wrong = judge.verdicts(images[:1], [colours], [0])[0]
    assert not wrong.sees_lure and wrong.choice == 1
    with pytest.raises(JudgeError, match="not a colour, shape or object"):
        judge.option_probs(images[:1], [("dog", "cat")])
    wash = [Image.new("RGB", (32, 32), (40, 170, 60))]  # green everywhere, no shape
    assert not judge.verdicts(wash, [colours], [1])[0].sees_lure
    assert ShapesJudge(require_shape=False).verdicts(wash, [colours], [1])[0].sees_lure


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> str:
    """A random tiny CLIP with a real processor and tokenizer, built offline."""
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPProcessor,
        CLIPTokenizer,
    )

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in [*string.ascii_lowercase, "."]:
        vocab[c] = len(vocab)
        vocab[f"{c}</w>"] = len(vocab)
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                           crop_size={"height": 32, "width": 32}),
        tokenizer=CLIPTokenizer(vocab=vocab, merges=[]))
    config = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=16, intermediate_size=32,
                         num_hidden_layers=1, num_attention_heads=2,
                         max_position_embeddings=64, bos_token_id=0, eos_token_id=1,
                         pad_token_id=1),
        vision_config=dict(image_size=32, patch_size=8, hidden_size=16, intermediate_size=32,
                           num_hidden_layers=1, num_attention_heads=2), projection_dim=8)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny-clip")
    CLIPModel(config).save_pretrained(path)
    processor.save_pretrained(path)
    return str(path)


def test_clip_judge_scores_options_zero_shot(tiny_clip):
    judge = ClipJudge(path=tiny_clip, threshold=0.0)
    images = [Image.new("RGB", (40, 30), (220, 20, 20)), Image.new("RGB", (32, 32))]
    options = [("red", "blue"), ("red", "blue", "green")]
    first = judge.option_probs(images, options)
    again = ClipJudge(path=tiny_clip).option_probs(images, options)
    assert [len(p) for p in first] == [2, 3]
    assert all(abs(p.sum() - 1) < 1e-9 for p in first)
    np.testing.assert_array_equal(first[1], again[1])
    verdicts = judge.verdicts(images, options, [0, 2])
    assert [v.sees_lure for v in verdicts] == [v.choice == t for v, t in zip(verdicts, [0, 2])]
    rebuilt = judge_from_description(judge.describe(), "test")
    assert rebuilt.weights_sha256 == judge.weights_sha256


def test_a_judge_with_the_source_weights_is_refused(tiny_adapter, tiny_checkpoint, samples,
                                                    tmp_path):
    same = ClipJudge(path=tiny_checkpoint)  # the source's own files, as a "judge"
    with pytest.raises(JudgeError, match="same weights"):
        check_independent(same, tiny_adapter.describe()["weights_sha256"], "tiny")
    with pytest.raises(JudgeError, match="independent judge"):
        attack(tmp_path, judge=same).run(tiny_adapter, samples, seeds_of(samples))
    assert not (tmp_path / "cache").exists()  # refused before anything was made
    check_independent(ShapesJudge(), tiny_adapter.describe()["weights_sha256"], "tiny")


# -- the report ------------------------------------------------------------------------------------
def test_lures_report_splits_semantic_from_adversarial_and_scores_transfer(
        tiny_adapter, samples, tmp_path, one_thread, capsys):
    task = ListTask("t", "text_heavy", samples)
    condition = InvertedLure(judge=ShapesJudge(), **QUICK)  # the default cache (the tests')
    conditions = {"inverted_lure": condition}
    run = tmp_path / "run"
    run_benchmark(tiny_adapter, {"t": task}, conditions, run, progress=False,
                  fingerprint=fingerprint(tiny_adapter, {"t": task}, conditions, 0))
    code = lures_main([str(run), "--transfer", "model=toy_llava", "--grid",
                       str(tmp_path / "grid.png")])
    printed = capsys.readouterr().out
    assert code == 0, printed
    document = json.loads((run / "lures.json").read_text())
    summary = document["tasks"]["t"]
    assert sum(summary["split"].values()) == summary["n"] == 3
    assert summary["interference"]["n"] + summary["attack"]["n"] == 3
    lured = [s["source_lured"] for s in document["samples"]]
    assert summary["source"]["lure_rate"]["value"] == pytest.approx(np.mean(lured))
    transfer = summary["transfer"]["toy_llava"]
    assert transfer["lure_rate"]["n"] == 3 and transfer["lure_rate"]["method"] == "wilson"
    assert (run / "lures.md").read_text().startswith("# Inverted lures")
    assert Image.open(tmp_path / "grid.png").size[0] > 0
    assert "transfer: toy_llava" in printed
    # the same images, not made again: the report reads the cache
    again, _ = lure_report(run)
    assert again["samples"] == [{**s, "transfer": {}} for s in document["samples"]]
    lenient, _ = lure_report(run, judge_settings={"require_shape": False})
    assert lenient["judge"]["require_shape"] is False and document["judge"]["require_shape"]


def test_lures_report_names_missing_images(tiny_adapter, samples, tmp_path, one_thread):
    task = ListTask("t", "text_heavy", samples)
    conditions = {"inverted_lure": attack(tmp_path, judge=ShapesJudge())}
    run = tmp_path / "run"
    run_benchmark(tiny_adapter, {"t": task}, conditions, run, progress=False,
                  fingerprint=fingerprint(tiny_adapter, {"t": task}, conditions, 0))
    document, _ = lure_report(run, cache_dir=str(tmp_path / "cache"))
    assert document["tasks"]["t"]["n"] == 3
    for png in (tmp_path / "cache").rglob("*.png"):
        png.unlink()
    with pytest.raises(Exception, match="not in the cache"):
        lure_report(run, cache_dir=str(tmp_path / "cache"))
