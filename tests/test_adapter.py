import numpy as np
import pytest
from conftest import image_heavy_samples, text_heavy_samples

from mibench.models import toy_builder
from mibench.models.hf import AnswerTokenError, HFModelAdapter


def mixed_batch():
    ih, th = image_heavy_samples(5), text_heavy_samples(4)
    return [ih[0], th[0], ih[1], th[1], ih[2], th[2], ih[3], th[3], ih[4]]


def test_batched_equals_one_by_one_with_mixed_lengths_and_images(tiny_adapter):
    samples = mixed_batch()
    assert len({tiny_adapter.prompt_length(s) for s in samples}) > 3
    batched = tiny_adapter.option_probs(samples)
    for sample, probs in zip(samples, batched, strict=True):
        alone = tiny_adapter.option_probs([sample])[0]
        assert probs.shape == (len(sample.options),)
        np.testing.assert_allclose(probs, alone, atol=1e-4)
        assert probs.sum() == pytest.approx(1.0, abs=1e-9)


def test_letters_are_single_tokens_in_emitted_form(tiny_adapter):
    tok = tiny_adapter.tokenizer
    assert tok.convert_ids_to_tokens(list(tiny_adapter.letter_ids[:3])) == ["A", "B", "C"]


def test_image_changes_the_answer_distribution(tiny_adapter):
    import dataclasses

    from conftest import make_image

    sample = image_heavy_samples(1)[0]
    other = dataclasses.replace(sample, image=make_image(99))
    a, b = tiny_adapter.option_probs([sample, other])
    assert np.abs(a - b).max() > 1e-6


def test_gradients_reach_the_pixels(tiny_adapter):
    inputs = tiny_adapter.encode(image_heavy_samples(2))
    inputs["pixel_values"].requires_grad_(True)
    tiny_adapter.answer_logits(inputs)[:, list(tiny_adapter.letter_ids[:2])].sum().backward()
    assert inputs["pixel_values"].grad.abs().sum() > 0
    tiny_adapter.model.zero_grad(set_to_none=True)  # the adapter is shared by other tests


def test_checkpoint_without_letter_tokens_is_refused(tmp_path):
    words = [w for w in toy_builder.words_of(["USER: ASSISTANT: which letter ? x y"])]
    processor = toy_builder.build_processor(words)  # no "A", "B", ...: letters become <unk>
    model = toy_builder.build_model(processor)
    with pytest.raises(AnswerTokenError, match="' A' is the unknown token"):
        HFModelAdapter(model, processor, name="no-letters")
