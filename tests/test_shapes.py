"""The shapes world: deterministic, well-formed samples, a covering vocabulary, a loadable toy."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

import mibench.models
from mibench.models.hf import HFModelAdapter
from mibench.models.toy_builder import build_processor
from mibench.perturbations.text import (
    DEFAULT_UNRELATED_SENTENCES,
    STUDY_MISLEADING_TEMPLATE,
    TemplateFacts,
)
from mibench.seeding import rng_for
from mibench.tasks.shapes import (
    COLOUR_NAMES,
    KINDS,
    NAMES,
    OBJECTS,
    SHAPES,
    ShapesTask,
    make_sample,
    plain_image,
    render_shape,
    shapes_vocabulary,
)

TOY_CHECKPOINT = Path(mibench.models.__file__).parent / "toy_llava"


def _key(s) -> tuple:
    pixels = None if s.image is None else np.asarray(s.image).tobytes()
    return (s.id, s.question, s.options, s.answer, dict(s.meta), pixels)


def _same(a, b) -> bool:
    return _key(a) == _key(b)


@pytest.mark.parametrize("kind", KINDS)
def test_sample_i_does_not_depend_on_n(kind):
    short, long = ShapesTask(kind, 5).samples(), ShapesTask(kind, 12).samples()
    assert all(_same(a, b) for a, b in zip(short, long))
    assert all(_same(a, b) for a, b in zip(short, ShapesTask(kind, 5).samples()))
    other_seed = ShapesTask(kind, 5, seed=1).samples()
    assert not all(_same(a, b) for a, b in zip(short, other_seed))


def test_ids_unique_and_splits_disjoint():
    train = [s for k in KINDS for s in ShapesTask(k, 40, split="train").samples()]
    test = [s for k in KINDS for s in ShapesTask(k, 40, split="test").samples()]
    train_ids, test_ids = {s.id for s in train}, {s.id for s in test}
    assert len(train_ids) == len(train) and len(test_ids) == len(test)
    assert not train_ids & test_ids
    # different random streams: no image is shared between the splits
    train_images = {np.asarray(s.image).tobytes() for s in train if s.image}
    assert train_images and not train_images & {
        np.asarray(s.image).tobytes() for s in test if s.image}


@pytest.mark.parametrize("kind", KINDS)
def test_samples_are_well_formed(kind):
    task = ShapesTask(kind, 30, name=f"toy_{kind}")
    assert task.name == f"toy_{kind}" and task.category == kind
    for s in task.samples():
        assert s.category == kind and s.id.startswith(f"shapes-test-{kind}-")
        meta = s.meta
        if kind == "image_heavy":
            pool = SHAPES if meta["attribute"] == "shape" else COLOUR_NAMES
            assert s.options == pool and s.options[s.answer] == meta[meta["attribute"]]
        elif kind == "text_heavy":
            assert s.image is None
            pool = COLOUR_NAMES if meta["attribute"] == "colour" else OBJECTS
            assert s.options == pool and s.options[s.answer] == meta[meta["attribute"]]
            assert f"{meta['name']} has a {meta['colour']} {meta['object']}." in s.question
        else:
            assert s.image is not None and s.options == NAMES
            owner = s.options[s.answer]
            assert owner in meta["names"] and f"{owner} has a {s.meta['colour']}" in s.question
        if s.image is not None:
            assert s.image.mode == "RGB" and s.image.size == (32, 32)


def test_render_and_plain_images():
    for shape in SHAPES:
        for colour in COLOUR_NAMES:
            image = render_shape(shape, colour, rng_for("test", shape, colour))
            assert image.size == (32, 32) and image.mode == "RGB"
    assert np.asarray(plain_image("black")).max() == 0
    assert np.asarray(plain_image("white")).min() == 255
    with pytest.raises(ValueError, match="hexagon"):
        render_shape("hexagon", "red", np.random.default_rng(0))
    with pytest.raises(ValueError, match="kind"):
        ShapesTask("audio_heavy", 3)


def _world_prompts() -> list:
    samples = [make_sample(k, i) for k in KINDS for i in range(40)]
    perturbed = []
    for s in samples[:20]:
        rng = rng_for("test", s.id)
        wrong = s.options[(s.answer + 1) % len(s.options)]
        facts = TemplateFacts()(wrong, rng)
        misleading = STUDY_MISLEADING_TEMPLATE.format(option=wrong, facts=facts)
        perturbed.append(dataclasses.replace(s, distractor=misleading))
        perturbed.append(dataclasses.replace(s, distractor=" ".join(DEFAULT_UNRELATED_SENTENCES)))
    return samples + perturbed


def test_vocabulary_covers_world_and_perturbation_prompts():
    processor = build_processor(shapes_vocabulary())
    class _Model:  # HFModelAdapter only needs .eval() and .device to render prompts
        device = "cpu"

        def eval(self):
            return self
    adapter = HFModelAdapter(_Model(), processor, "vocab-check")
    unk = processor.tokenizer.unk_token_id
    for s in _world_prompts():
        ids = adapter._token_ids(adapter.render(s))
        assert unk not in ids, (s.id, processor.tokenizer.convert_ids_to_tokens(ids))


@pytest.mark.skipif(not (TOY_CHECKPOINT / "model.safetensors").exists(),
                    reason="toy checkpoint not trained yet (scripts/train_toy_model.py)")
def test_shipped_checkpoint_loads_and_scores_a_mixed_batch():
    adapter = HFModelAdapter.from_pretrained(str(TOY_CHECKPOINT), device="cpu")
    assert set(shapes_vocabulary()) <= set(adapter.tokenizer.get_vocab())
    batch = [make_sample(k, i) for i in range(4) for k in KINDS]
    probs = adapter.option_probs(batch)
    for p, s in zip(probs, batch):
        assert p.shape == (len(s.options),) and abs(p.sum() - 1) < 1e-6
    # a trained toy answers clean samples well above chance
    hits = [int(np.argmax(p)) == s.answer for p, s in zip(probs, batch)]
    assert np.mean(hits) >= 0.75
