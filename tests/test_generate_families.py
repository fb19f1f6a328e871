"""Every supported family generates (scorer=generate) the same answers in a mixed batch as
alone, and gives the first answer token's option letters with their log-probabilities."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from conftest import image_heavy_samples, make_image, text_heavy_samples

from mibench.models.generation import letter_probs

pytestmark = pytest.mark.usefixtures("one_thread")


def mixed(family) -> list:
    """Images of the family's sizes (varied token counts) between text-only samples."""
    ih = [dataclasses.replace(s, image=make_image(i).resize(family.sizes[i % len(family.sizes)]))
          for i, s in enumerate(image_heavy_samples(3))]
    th = text_heavy_samples(3)
    return [ih[0], th[0], ih[1], th[1], th[2], ih[2]]


def test_a_mixed_batch_generates_what_each_sample_generates_alone(family):
    spec, adapter = family
    samples = mixed(spec)
    options = dict(max_new_tokens=6, repetition_penalty=1.2)
    batched = adapter.generate(samples, **options)
    alone = [adapter.generate([s], **options)[0] for s in samples]
    assert [g.text for g in batched] == [g.text for g in alone]
    assert [g.finish_reason for g in batched] == [g.finish_reason for g in alone]
    for sample, b, a in zip(samples, batched, alone):
        assert set(adapter.tokenizer.decode([i]) for i in adapter.letter_ids[:len(sample.options)]
                   ) <= set(b.top_logprobs[0])
        np.testing.assert_allclose(letter_probs(b.top_logprobs[0], sample.letters),
                                   letter_probs(a.top_logprobs[0], sample.letters), atol=1e-4)


def test_first_token_letter_probabilities_are_the_likelihood_scores(family):
    """Before any penalty, the first answer token's letters are what likelihood scores."""
    spec, adapter = family
    samples = mixed(spec)
    generated = adapter.generate(samples, max_new_tokens=1)
    for sample, g, probs in zip(samples, generated, adapter.option_probs(samples)):
        np.testing.assert_allclose(letter_probs(g.top_logprobs[0], sample.letters), probs,
                                   atol=1e-4)
