"""The model contract: attacks and training reach a model only through its adapter.

A test family defined here (another pixel layout, another way to feed embeddings) is attacked
without any change to `perturbations/`; a model that can only be queried is refused in one
line; every forward pass of an attack goes through the family's `answer_logits`, overrides
included; the runner applies an attack's base perturbation once per batch.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence

import numpy as np
import pytest
import torch
from conftest import ListTask, image_heavy_samples, text_heavy_samples
from families_builders import load

from mibench.errors import MibenchError
from mibench.models.base import (
    DifferentiableAdapter,
    Embedded,
    ModelAdapter,
    PixelLayout,
    WhiteBoxError,
)
from mibench.models.hf import HFModelAdapter
from mibench.perturbations.image import BlankImage
from mibench.perturbations.pgd_embed import EmbeddingPGD
from mibench.perturbations.pgd_mllm import AttackError
from mibench.perturbations.pgd_pixel import PixelPGD
from mibench.records import Sample
from mibench.runner import run_benchmark

BLACK = BlankImage("black_image", size=(32, 32))
pytestmark = pytest.mark.usefixtures("one_thread")


def seeds_for(samples):
    return [500 + i for i in range(len(samples))]


def distracted(n):
    return [dataclasses.replace(s, distractor="anna has a box .") for s in image_heavy_samples(n)]


# -- a family the attacks have never seen --------------------------------------------------------
class ChannelsLastLayout(PixelLayout):
    """(images, H, W, C) pixels, normalised per channel on the last axis."""

    def __init__(self, pixels: torch.Tensor, mean, std, rescale: float) -> None:
        self.pixels, self.valid = pixels, torch.ones_like(pixels, dtype=torch.bool)
        std, mean = (torch.as_tensor(v, dtype=torch.float64) for v in (std, mean))
        self.gain = 255.0 * rescale / std
        self.offset = mean / (255.0 * rescale)

    def split(self, pixels):
        return pixels

    def merge(self, x):
        return x


class ChannelsLastLlava(HFModelAdapter):
    """A LLaVA whose 'processor' hands pixels channels-last and whose language model is fed
    explicit embeddings (no hooks): both differences live here, in its adapter."""

    reuses_image_features = False  # its image encoder would need the pixels turned back

    def _encode_images(self, samples, add_special_tokens):
        encoding = super()._encode_images(samples, add_special_tokens)
        encoding["pixel_values"] = encoding["pixel_values"].permute(0, 2, 3, 1).contiguous()
        return encoding

    def _network_inputs(self, inputs, pixels=None) -> dict:
        batch = dict(inputs)
        pixels = batch.get("pixel_values") if pixels is None else pixels
        if pixels is not None:
            batch["pixel_values"] = pixels.permute(0, 3, 1, 2).contiguous()
        return batch

    def answer_logits(self, inputs, *, pixels=None, embeds=None, shift=None, network=None):
        if embeds is not None:
            net = self.model if network is None else network
            logits = net(inputs_embeds=embeds.to(self.dtype),
                         attention_mask=inputs["attention_mask"]).logits[:, -1, :]
            return logits.float()
        return super().answer_logits(self._network_inputs(inputs, pixels), shift=shift,
                                     network=network)

    def embed(self, inputs) -> Embedded:
        net, batch = self.model, self._network_inputs(inputs)
        with torch.no_grad():
            embeds = net.get_input_embeddings()(batch["input_ids"])
            if "pixel_values" in batch:
                features = torch.cat(net.get_image_features(
                    pixel_values=batch["pixel_values"]).pooler_output)
                where = net.model.get_placeholder_mask(batch["input_ids"], embeds, features)
                embeds = embeds.masked_scatter(where, features.to(embeds.dtype))
            logits = self.answer_logits(inputs)
        return Embedded(inputs, embeds, logits)

    def pixel_layout(self, inputs) -> PixelLayout:
        ip = self.processor.image_processor
        return ChannelsLastLayout(inputs["pixel_values"], ip.image_mean, ip.image_std,
                                  float(ip.rescale_factor))


@pytest.fixture(scope="module")
def channels_last(tiny_checkpoint) -> ChannelsLastLlava:
    return ChannelsLastLlava.from_pretrained(tiny_checkpoint, name="channels-last", device="cpu")


@pytest.mark.parametrize("make", [
    lambda: (EmbeddingPGD(mask="text", eps=0.0, steps=2), distracted(3)),
    lambda: (EmbeddingPGD(mask="distractor", eps=0.0, steps=2), distracted(3)),
    lambda: (EmbeddingPGD(mask="image", eps=0.0, steps=2, base=BLACK), text_heavy_samples(3)),
    lambda: (PixelPGD(eps=0.0, steps=2, base=BLACK), text_heavy_samples(3)),
], ids=["embed-text", "embed-distractor", "embed-image", "pixel"])
def test_a_new_family_is_attacked_exactly_at_eps_zero(channels_last, make):
    attack, samples = make()
    prepared = attack.apply_base(samples, seeds_for(samples))
    assert channels_last.encode(prepared)["pixel_values"].shape[-1] == 3  # channels last
    outcome = attack.run(channels_last, samples, seeds_for(samples))
    for got, want in zip(outcome.probs, channels_last.option_probs(outcome.samples)):
        np.testing.assert_array_equal(got, want)


def test_a_new_pixel_layout_gives_the_same_attack_as_the_usual_one(channels_last, tiny_adapter):
    """Without a random start, sign steps do not depend on how the pixels are laid out."""
    samples = text_heavy_samples(3)
    attack = PixelPGD(eps=8 / 255, alpha=2 / 255, steps=3, random_start=False, base=BLACK)
    usual = attack.run(tiny_adapter, samples, seeds_for(samples))
    other = attack.run(channels_last, samples, seeds_for(samples))
    assert not all(np.allclose(p, q) for p, q in zip(
        usual.probs, tiny_adapter.option_probs(usual.samples)))  # the attack moved something
    torch.testing.assert_close(other.x, usual.x.permute(0, 2, 3, 1), rtol=0, atol=1e-6)
    for got, want in zip(other.probs, usual.probs):
        np.testing.assert_allclose(got, want, atol=1e-6)


def test_a_new_embedding_feed_moves_the_answer_inside_its_ball(channels_last, tiny_adapter):
    samples = distracted(3)
    attack = EmbeddingPGD(mask="text", eps=0.3, alpha=0.1, steps=3)
    other = attack.run(channels_last, samples, seeds_for(samples))
    usual = attack.run(tiny_adapter, samples, seeds_for(samples))
    torch.testing.assert_close(other.x0, usual.x0, rtol=0, atol=1e-6)  # the same sequence
    for got, want in zip(other.probs, usual.probs):
        np.testing.assert_allclose(got, want, atol=1e-5)
    delta = (other.x - other.x0)[other.mask]
    assert 0 < delta.abs().max() <= (other.eps.max() * 1.0001)


# -- what only the contract may do -------------------------------------------------------------
class QueriedModel(ModelAdapter):
    """A model behind an API: option distributions, nothing to differentiate."""

    name = "served"

    def option_probs(self, samples: Sequence[Sample], prepared: object = None):
        return [np.full(len(s.options), 1 / len(s.options)) for s in samples]

    def prompt_length(self, sample: Sample) -> int:
        return len(sample.question)

    def describe(self) -> dict:
        return {"name": self.name}


@pytest.mark.parametrize("attack", [EmbeddingPGD(mask="image", base=BLACK),
                                    PixelPGD(base=BLACK)], ids=["embed", "pixel"])
def test_a_model_that_can_only_be_queried_is_refused_in_one_line(attack, tmp_path):
    samples = text_heavy_samples(2)
    assert not isinstance(QueriedModel(), DifferentiableAdapter)
    with pytest.raises(AttackError, match="QueriedModel can only be queried") as err:
        attack.run(QueriedModel(), samples, [1, 2])
    assert "\n" not in str(err.value) and isinstance(err.value, MibenchError)
    result = run_benchmark(QueriedModel(), {"th": ListTask("th", "text_heavy", samples)},
                           {attack.name: attack}, tmp_path, batch_size=2, progress=False)
    [failure] = result.failures  # the attack fails as its condition, in one line
    assert (failure.task, failure.condition) == ("th", attack.name)
    assert "can only be queried" in failure.error and "\n" not in failure.error
    assert list(result.metrics["th"]) == ["clean"]
    clean = [json.loads(line) for line in (tmp_path / "records.jsonl").open()]
    assert {r["condition"] for r in clean} == {"clean"} and len(clean) == 2  # kept


def through_answer_logits(adapter: DifferentiableAdapter):
    """Counts the network's forward passes, and fails any made outside `answer_logits`."""
    state = {"inside": 0, "forwards": 0, "calls": 0}
    method = adapter.answer_logits

    def answer_logits(*args, **kwargs):
        state["inside"] += 1
        state["calls"] += 1
        try:
            return method(*args, **kwargs)
        finally:
            state["inside"] -= 1

    def hook(module, args, kwargs):
        assert state["inside"] > 0, "a forward pass bypassed answer_logits"
        state["forwards"] += 1

    adapter.answer_logits = answer_logits  # the instance's, so overrides still run inside
    handle = adapter.model.register_forward_pre_hook(hook, with_kwargs=True)
    return state, lambda: (handle.remove(), delattr(adapter, "answer_logits"))


@pytest.fixture(scope="module")
def instructblip(tmp_path_factory):
    return load("instructblip", tmp_path_factory.mktemp("contract-instructblip"))[1]


@pytest.mark.parametrize("make", [
    lambda: (EmbeddingPGD(mask="text", eps=0.2, steps=2), distracted(2)),
    lambda: (EmbeddingPGD(mask="image", eps=0.2, steps=2, base=BlankImage("black_image",
                                                                         size=(16, 16))),
             text_heavy_samples(2)),
    lambda: (PixelPGD(eps=0.05, steps=2, base=BlankImage("black_image", size=(16, 16))),
             text_heavy_samples(2)),
], ids=["embed-text", "embed-image", "pixel"])
def test_instructblip_attacks_run_through_its_answer_logits(instructblip, make):
    """InstructBLIP overrides answer_logits; every pass an attack makes goes through it."""
    attack, samples = make()
    state, undo = through_answer_logits(instructblip)
    try:
        attack.run(instructblip, samples, [1, 2])
    finally:
        undo()
    assert state["forwards"] >= 2 + 1 and state["calls"] >= state["forwards"]


class BiasedLetters(HFModelAdapter):
    """A family whose answer logits are not the network's raw ones (a calibration offset)."""

    def answer_logits(self, inputs, **options):
        logits = super().answer_logits(inputs, **options).clone()
        logits[:, self.option_token_ids(2)[1]] += 3.0
        return logits


@pytest.mark.parametrize("make", [
    lambda: (EmbeddingPGD(mask="text", eps=0.0, steps=1), distracted(3)),
    lambda: (PixelPGD(eps=0.0, steps=1, base=BLACK), text_heavy_samples(3)),
], ids=["embed", "pixel"])
def test_attacks_score_with_the_familys_own_answer_logits(tiny_checkpoint, tiny_adapter, make):
    biased = BiasedLetters.from_pretrained(tiny_checkpoint, name="biased", device="cpu")
    attack, samples = make()
    outcome = attack.run(biased, samples, seeds_for(samples))
    own = biased.option_probs(outcome.samples)
    for got, want, raw in zip(outcome.probs, own, tiny_adapter.option_probs(outcome.samples)):
        np.testing.assert_array_equal(got, want)
        assert got[1] > raw[1]


def test_embeddings_need_the_batch_embed_returned(tiny_adapter):
    inputs = tiny_adapter.encode(distracted(1))
    with pytest.raises(WhiteBoxError, match="embed"):
        tiny_adapter.answer_logits(inputs, embeds=torch.zeros(1, 4, 8))


# -- the runner ----------------------------------------------------------------------------------
class CountedBlack(BlankImage):
    """A black base image that counts how often it is applied."""

    applied = 0

    def apply(self, sample, rng):
        CountedBlack.applied += 1
        return super().apply(sample, rng)


def test_the_runner_applies_an_attacks_base_once_per_sample(tiny_adapter, tmp_path):
    samples = text_heavy_samples(5)
    attack = PixelPGD(eps=0.02, steps=1, targeted="random", base=CountedBlack("black_image",
                                                                               size=(32, 32)))
    CountedBlack.applied = 0
    run_benchmark(tiny_adapter, {"th": ListTask("th", "text_heavy", samples)},
                  {attack.name: attack}, tmp_path, batch_size=2, progress=False)
    assert CountedBlack.applied == len(samples)
    rows = [json.loads(line) for line in (tmp_path / "records.jsonl").read_text().splitlines()]
    lures = {r["sample_id"]: r["lure"] for r in rows if r["condition"] == attack.name}
    seeds = [stable_seed_of(attack, s) for s in samples]
    assert [lures[s.id] for s in samples] == attack.targets(samples, seeds)


def stable_seed_of(attack, sample):
    from mibench.seeding import stable_seed

    return stable_seed(0, "th", attack.name, sample.id)
