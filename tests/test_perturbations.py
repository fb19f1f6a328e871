"""Contract and property tests for every perturbation config in conf/perturbation."""

import dataclasses
import tempfile
from pathlib import Path

import numpy as np
import pytest
from conftest import ListTask, image_heavy_samples, make_image, text_heavy_samples
from hydra.utils import instantiate
from hypothesis import given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf
from study_fixtures import write_pool

import mibench.conf
from mibench.perturbations.base import Attack, Perturbation
from mibench.perturbations.image import SwitchedImage
from mibench.perturbations.text import MisleadingText
from mibench.records import RELEVANT_MODALITIES, Sample
from mibench.runner import applies_to, check_untouched
from mibench.seeding import rng_for

CONF = Path(mibench.conf.__file__).parent / "perturbation"


# The study's image pool as a fixture tree (its released code is the conftest's fixture copy).
POOL_ROOT = Path(tempfile.mkdtemp(prefix="mibench-pool-"))
write_pool(POOL_ROOT / "study_data")


def load(path: Path) -> Perturbation | Attack:
    cfg = OmegaConf.load(path)
    if "release" in cfg:  # the study's texts: from the fixture copy, which no pin matches
        cfg.release = {"verify": False}
    if "data_dir" in (cfg.get("donors") or {}):  # the study's image pool
        cfg.donors.data_dir = str(POOL_ROOT)
    return instantiate(cfg)


def with_facts(sample: Sample) -> Sample:
    """An image-heavy sample as the study's items come: a released fact on a wrong option."""
    wrong = sample.options[(sample.answer + 1) % len(sample.options)]
    fact = f"The picture seems to describe a {wrong}. It is a {wrong}."
    return dataclasses.replace(sample, meta={**sample.meta, "facts": {wrong: fact}})


# Heuristic (model-free) perturbations; attacks have tests of their own.
HEURISTIC = {p: c for p in sorted(CONF.glob("*.yaml")) if not isinstance(c := load(p), Attack)}
YAMLS = list(HEURISTIC)


def target_samples(perturbation: Perturbation) -> list[Sample]:
    """Samples of the category this perturbation is meant for."""
    if perturbation.touches == "text":
        return [with_facts(s) for s in image_heavy_samples(6)]
    return text_heavy_samples(6)


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: p.stem)
def test_config_contract(path):
    perturbation = load(path)
    assert isinstance(perturbation, Perturbation)
    assert perturbation.name == path.stem
    samples = target_samples(perturbation)
    task = ListTask("t", samples[0].category, samples)
    assert applies_to(perturbation, task)
    for sample in samples:
        a = perturbation.apply(sample, rng_for(0, sample.id))
        b = perturbation.apply(sample, rng_for(0, sample.id))
        check_untouched(sample, a, perturbation)
        assert (a.question, a.distractor, a.options) == (b.question, b.distractor, b.options)
        if a.image is not None:
            assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
        assert (a.image is not sample.image) or (a.distractor != sample.distractor)
    assert perturbation.describe()["name"] == path.stem


sample_text = st.text(alphabet="abcdefg ?.", min_size=1, max_size=40).filter(str.strip)


@st.composite
def samples(draw, category):
    n = draw(st.integers(2, 6))
    options = tuple(f"opt{i}" for i in range(n))
    image = make_image(draw(st.integers(0, 10**6)), 8) if category == "image_heavy" else None
    sample = Sample(id=draw(st.text("xyz0123456789", min_size=1, max_size=8)),
                    question=draw(sample_text), options=options,
                    answer=draw(st.integers(0, n - 1)), category=category, image=image)
    return with_facts(sample) if category == "image_heavy" else sample


@pytest.mark.parametrize("category", ["image_heavy", "text_heavy"])
@settings(max_examples=60, deadline=None)
@given(data=st.data(), seed=st.integers(0, 2**32))
def test_perturbations_never_touch_the_relevant_modality_or_label(category, data, seed):
    sample = data.draw(samples(category))
    for perturbation in HEURISTIC.values():
        if perturbation.touches in RELEVANT_MODALITIES[sample.category]:
            continue
        out = perturbation.apply(sample, rng_for(seed, sample.id))
        check_untouched(sample, out, perturbation)
        if category == "image_heavy":
            assert out.image is sample.image and out.question == sample.question
        else:
            assert out.image is not None and out.distractor == sample.distractor


@settings(max_examples=60, deadline=None)
@given(sample=samples("image_heavy"), seed=st.integers(0, 2**32))
def test_misleading_text_names_a_wrong_option(sample, seed):
    out = MisleadingText().apply(sample, rng_for(seed))
    lure = out.meta["lure"]
    assert lure != sample.answer
    assert f"describe a {sample.options[lure]}." in out.distractor


def test_switched_image_shows_a_wrong_option_when_a_donor_has_one():
    donors = ListTask("donors", "image_heavy", [
        Sample(id=f"d{i}", question="what colour ?", options=("red", "green", "blue"),
               answer=i % 3, category="image_heavy", image=make_image(i)) for i in range(9)])
    switched = SwitchedImage(donors)
    for sample in text_heavy_samples(12):
        out = switched.apply(sample, rng_for(0, sample.id))
        lure = out.meta["lure"]
        assert lure != sample.answer
        donor = next(d for d in donors.samples() if d.id == out.meta["donor"])
        assert donor.options[donor.answer] == sample.options[lure]
        assert out.image is donor.image


def test_generated_facts_hook_uses_a_real_causal_lm_deterministically(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    from mibench.models import toy_builder
    from mibench.perturbations.text import FACTS_PROMPT, GeneratedFacts

    words = toy_builder.words_of([FACTS_PROMPT, "circle square . It is round", "USER ASSISTANT :"])
    tokenizer = toy_builder.build_tokenizer(words)
    torch_model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
    torch_model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)

    facts = GeneratedFacts(str(tmp_path), max_new_tokens=12)
    first = facts("circle", rng_for(0))
    assert facts("circle", rng_for(1)) == first  # greedy and cached: the seed plays no part
    assert first.count(".") <= 2 and "circle" in repr(facts._written)
    sample = image_heavy_samples(1)[0]
    out = MisleadingText(facts=facts).apply(sample, rng_for(0, sample.id))
    option = sample.options[out.meta["lure"]]
    caption = f"The picture seems to describe a {option}. {facts(option, None)}"
    assert out.distractor == caption.strip()
    assert "GeneratedFacts(model=" in MisleadingText(facts=facts).describe()["params"]["facts"]
