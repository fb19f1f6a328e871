"""Every supported model family, as a tiny random checkpoint saved and loaded by local path,
scores a mixed batch (images of different sizes and text-only samples) correctly."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import logging

import numpy as np
import pytest
import torch
from conftest import image_heavy_samples, make_image, text_heavy_samples
from families_builders import FAMILIES, Family, build, missing_requirement, train_tokenizer
from omegaconf import OmegaConf
from transformers import (
    AutoModelForImageTextToText,
    AutoProcessor,
    CLIPImageProcessorPil,
    LlamaConfig,
    LlamaForCausalLM,
    LlavaProcessor,
)

from mibench.models import catalog
from mibench.models.base import ModelAdapter
from mibench.models.hf import TOKEN_KEYS, AnswerTokenError, CheckpointError, HFModelAdapter
from mibench.models.mllama import MllamaAdapter
from mibench.prompts import chat_messages, format_prompt
from mibench.records import Sample

torch.set_num_threads(min(2, torch.get_num_threads()))


def adapter_class(family: Family) -> type[HFModelAdapter]:
    module, cls = family.adapter.split(":")
    return getattr(importlib.import_module(module), cls)


@pytest.fixture(scope="session")
def family_root(tmp_path_factory):
    return tmp_path_factory.mktemp("families")


_LOADED: dict[str, tuple[Family, HFModelAdapter]] = {}


def load_family(name: str, root) -> tuple[Family, HFModelAdapter]:
    """A tiny checkpoint of the family, built once per session, loaded through the suite."""
    reason = missing_requirement(name)
    if reason:
        pytest.skip(reason)
    if name not in _LOADED:
        family = build(name, root)
        adapter = adapter_class(family).from_pretrained(family.path, name=family.name,
                                                        device="cpu", **family.load_kwargs)
        _LOADED[name] = (family, adapter)
    return _LOADED[name]


@pytest.fixture(scope="session", params=list(FAMILIES))
def loaded(request, family_root) -> tuple[Family, HFModelAdapter]:
    return load_family(request.param, family_root)


def image_samples(family: Family, n: int = 3) -> list[Sample]:
    """Image samples whose sizes cycle through the family's sizes (varied token counts)."""
    return [dataclasses.replace(s, image=make_image(i).resize(family.sizes[i % len(family.sizes)]))
            for i, s in enumerate(image_heavy_samples(n))]


def mixed_batch(family: Family) -> list[Sample]:
    ih, th = image_samples(family, 3), text_heavy_samples(3)
    return [ih[0], th[0], ih[1], th[1], th[2], ih[2]]


def image_token_count(adapter: HFModelAdapter, sample: Sample) -> int:
    ids = adapter.encode([sample])["input_ids"][0]
    image_id = getattr(adapter.processor, "image_token_id", None)
    if image_id is None:
        image_id = adapter.tokenizer.convert_tokens_to_ids(str(adapter.processor.image_token))
    return int((ids == image_id).sum())


def test_letters_scored_in_the_form_the_model_emits(loaded):
    family, adapter = loaded
    tokens = adapter.tokenizer.convert_ids_to_tokens(list(adapter.letter_ids[:4]))
    if family.letter_form == "A":  # after a template ending in "\n"
        assert tokens == ["A", "B", "C", "D"]
    else:  # after "ASSISTANT:", "[/INST]", "Answer:": sentencepiece "▁A" or byte-level "ĠA"
        assert [t[1:] for t in tokens] == ["A", "B", "C", "D"]
        assert {t[0] for t in tokens} <= {"▁", "Ġ"}


def test_mixed_batch_equals_one_by_one(loaded):
    family, adapter = loaded
    samples = mixed_batch(family)
    batched = adapter.option_probs(samples)
    for sample, probs in zip(samples, batched, strict=True):
        alone = adapter.option_probs([sample])[0]
        assert probs.shape == (len(sample.options),)
        assert probs.sum() == pytest.approx(1.0, abs=1e-9)
        np.testing.assert_allclose(probs, alone, atol=1e-4, err_msg=f"{family.name} {sample.id}")


def test_a_sample_gets_the_same_token_inputs_alone_and_in_a_mixed_batch(loaded):
    """Token ids, masks and token types of each row, padding aside, do not depend on the
    batch (a missing key in one path, e.g. PaliGemma's token types, changes attention)."""
    family, adapter = loaded
    samples = mixed_batch(family)
    batch = adapter.encode(samples)
    for row, sample in enumerate(samples):
        alone = adapter.encode([sample])
        n = alone["input_ids"].shape[1]
        for key in TOKEN_KEYS:
            assert (key in batch) == (key in alone), f"{family.name} {sample.id}: {key}"
            if key in batch:
                assert batch[key][row, -n:].tolist() == alone[key][0].tolist(), (
                    f"{family.name} {sample.id}: {key}")


def test_padding_is_all_on_the_left(loaded):
    """A hole inside a row (InstructBLIP's processor puts query tokens before the padding)
    shifts relative positions by the batch's padding: invisible at 1e-4 in a tiny random
    model (~1e-5 here), not in a real one."""
    family, adapter = loaded
    mask = adapter.encode(mixed_batch(family))["attention_mask"]
    assert (mask[:, 1:] >= mask[:, :-1]).all()
    assert (mask[:, -1] == 1).all() and (mask == 0).any()


def test_gradients_reach_the_pixels(loaded):
    family, adapter = loaded
    inputs = adapter.encode(image_samples(family, 2))
    inputs["pixel_values"].requires_grad_(True)
    adapter.answer_logits(inputs)[:, list(adapter.letter_ids[:2])].sum().backward()
    adapter.model.zero_grad(set_to_none=True)  # the adapter is shared by later tests
    assert inputs["pixel_values"].grad.abs().sum() > 0


def test_the_image_changes_the_answer(loaded):
    family, adapter = loaded
    sample = image_samples(family, 1)[0]
    other = dataclasses.replace(sample, image=make_image(99).resize(sample.image.size))
    a, b = adapter.option_probs([sample, other])
    assert np.abs(a - b).max() > 1e-7


def test_text_only_samples_carry_no_image(loaded):
    family, adapter = loaded
    samples = text_heavy_samples(2)
    inputs = adapter.encode(samples)
    assert "pixel_values" not in inputs
    assert all(image_token_count(adapter, s) == 0 for s in samples)
    bos = adapter.tokenizer.bos_token_id
    if bos is not None:  # templates that write BOS themselves must not get a second one
        for row, mask in zip(inputs["input_ids"], inputs["attention_mask"]):
            assert int((row[mask.bool()] == bos).sum()) <= 1


def test_variable_image_token_counts_are_covered(loaded):
    family, adapter = loaded
    counts = {image_token_count(adapter, s) for s in image_samples(family, 3)}
    assert min(counts) > 0
    if len(set(family.sizes)) > 1:
        assert len(counts) > 1, f"{family.name}: image sizes {family.sizes} gave {counts} tokens"


def test_describe_records_provenance(loaded):
    family, adapter = loaded
    info = adapter.describe()
    assert info["path"] == family.path and info["revision"] is None
    assert info["dtype"] == "float32" and info["trust_remote_code"] is False
    assert info["adapter"] == type(adapter).__name__


def test_paligemma_image_prompt_is_the_text_prompt_after_the_image(family_root):
    family, adapter = load_family("paligemma", family_root)
    sample = image_samples(family, 1)[0]
    ids = adapter.encode([sample])["input_ids"][0].tolist()
    n_image = adapter.processor.image_seq_length
    assert ids[:n_image] == [adapter.processor.image_token_id] * n_image
    assert ids[n_image:] == adapter._token_ids(adapter.render(sample))


def test_paligemma_with_a_chat_template_gets_one_image_and_the_same_scores(family_root):
    """A PaliGemma checkpoint carrying a chat template, loaded as `model=hf` loads it: one
    image placeholder per prompt, the letter bare after the processor's "\n", and the very
    numbers of the same weights without a template."""
    family, adapter = load_family("paligemma_chat", family_root)
    plain_family, plain = load_family("paligemma", family_root)
    assert type(adapter).__name__ == "PaliGemmaAdapter" and adapter.chat_template is not None
    sample = image_samples(family, 1)[0]
    ids = adapter.encode([sample])["input_ids"][0].tolist()
    n_image = adapter.processor.image_seq_length
    assert ids.count(adapter.processor.image_token_id) == n_image
    assert ids[n_image:] == adapter._token_ids(adapter.render(sample)) == plain._token_ids(
        plain.render(sample))
    assert adapter.render(sample).endswith("directly.\n") and adapter.letter_ids == plain.letter_ids
    samples = mixed_batch(family)
    for a, b in zip(adapter.option_probs(samples), plain.option_probs(samples), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-7)


def reference_probs(family: Family, sample: Sample) -> np.ndarray:
    """One sample in float64, straight through transformers (the processor's own template and
    layout, a plain forward), softmax over the letters in the form the family emits."""
    processor = AutoProcessor.from_pretrained(family.path)
    model = AutoModelForImageTextToText.from_pretrained(family.path, dtype=torch.float64).eval()
    tok = processor.tokenizer
    if family.name.startswith("paligemma"):  # the processor writes BOS and "\n" itself
        if sample.image is None:
            inputs = tok([tok.bos_token + format_prompt(sample) + "\n"], return_tensors="pt",
                         add_special_tokens=False)
            inputs["token_type_ids"] = torch.zeros_like(inputs["input_ids"])
        else:
            inputs = processor(text=["<image>" + format_prompt(sample)], images=[[sample.image]],
                               return_tensors="pt")
            inputs.pop("labels")
    else:
        text = processor.apply_chat_template(chat_messages(sample), add_generation_prompt=True,
                                             tokenize=False)
        images = None if sample.image is None else [[sample.image]]
        inputs = processor(text=[text], images=images, return_tensors="pt",
                           add_special_tokens=False)  # the template wrote BOS
    assert family.letter_form == "A"  # the families checked here: the letter comes bare
    with torch.no_grad():
        logits = model(**inputs).logits[0, -1, tok.convert_tokens_to_ids(list(sample.letters))]
    return torch.softmax(logits, -1).numpy()


@pytest.mark.parametrize("name", ["mllama", "aya_vision", "paligemma", "paligemma_chat"])
def test_batched_scores_match_a_float64_one_at_a_time_reference(name, family_root):
    family, adapter = load_family(name, family_root)
    samples = mixed_batch(family)
    gaps = [np.abs(probs - reference_probs(family, sample)).max()
            for sample, probs in zip(samples, adapter.option_probs(samples), strict=True)]
    print(f"{name}: batched float32 vs one-at-a-time float64, max gap {max(gaps):.1e}")
    assert max(gaps) < 1e-6


def test_mllama_never_runs_text_only_and_image_rows_in_one_pass(family_root):
    """Through cross-attention a text-only row is computed differently beside an image row
    (the generic adapter moves it by ~1e-3 here); the adapter splits such batches, and
    images of different tile counts still batch like one-by-one."""
    family, adapter = load_family("mllama", family_root)
    shapes = [dataclasses.replace(s, image=make_image(i).resize(size)) for i, (s, size) in
              enumerate(zip(image_heavy_samples(3), ((16, 16), (32, 16), (16, 32))))]
    samples = [shapes[0], *text_heavy_samples(2), shapes[1], shapes[2]]
    inputs = adapter.encode(samples)
    assert len(set(inputs["aspect_ratio_ids"][[0, 3, 4], 0].tolist())) == 3  # 1x1, 1x2, 2x1
    for sample, probs in zip(samples, adapter.option_probs(samples), strict=True):
        np.testing.assert_allclose(probs, adapter.option_probs([sample])[0], atol=1e-4)
    generic = HFModelAdapter(adapter.model, adapter.processor, name="generic")
    leaks = [np.abs(p - generic.option_probs([s])[0]).max()
             for s, p in zip(samples, generic.option_probs(samples))]
    assert max(leaks) > 1e-4  # the leak the split removes is real in this tiny model


def test_mllama_cross_attention_mask_moves_with_right_padded_tokens(family_root):
    family, adapter = load_family("mllama", family_root)
    right = MllamaAdapter.from_pretrained(family.path, device="cpu")
    right.tokenizer.init_kwargs["padding_side"] = "right"  # as some hub tokenizers say
    samples = mixed_batch(family)
    inputs = right.encode(samples)
    image_id = right.processor.image_token_id
    rows, cols = (inputs["input_ids"] == image_id).nonzero(as_tuple=True)
    assert inputs["cross_attention_mask"][rows, cols].flatten(1).any(1).all()
    for a, b in zip(right.option_probs(samples), adapter.option_probs(samples), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_model_hf_loads_each_family_with_its_adapter(loaded):
    """`model=hf` (the generic class) on a family that needs its own adapter uses it."""
    family, adapter = loaded
    routed = HFModelAdapter.from_pretrained(family.path, device="cpu")
    assert type(routed) is type(adapter)
    samples = mixed_batch(family)
    for a, b in zip(routed.option_probs(samples), adapter.option_probs(samples), strict=True):
        np.testing.assert_array_equal(a, b)


def test_instructblip_scores_text_only_with_the_language_model_alone(family_root):
    family, adapter = load_family("instructblip", family_root)
    assert adapter.describe()["text_only"].startswith("language model alone")
    sample = text_heavy_samples(1)[0]
    inputs = adapter.encode([sample])
    direct = adapter.model.language_model(**inputs).logits[:, -1].float()
    torch.testing.assert_close(adapter.answer_logits(inputs), direct)


def test_instructblip_qformer_prompt_starts_at_position_zero(family_root):
    family, _ = load_family("instructblip", family_root)
    adapter = adapter_class(family).from_pretrained(family.path, device="cpu")
    adapter.tokenizer.init_kwargs["padding_side"] = "left"  # as hub Vicuna tokenizers have
    mask = adapter.encode(image_samples(family, 4))["qformer_attention_mask"]
    assert (mask[:, 0] == 1).all() and (mask[:, 1:] <= mask[:, :-1]).all() and (mask == 0).any()


def test_reused_image_features_give_the_same_numbers(loaded):
    """A batch scored again with a new text but the same images reuses the image encoder's
    output (where the family's forward takes `mm_encoder_outputs`), bit for bit."""
    family, adapter = loaded
    samples = image_samples(family, n=3)
    retexted = [dataclasses.replace(s, question=s.question + " (think again)") for s in samples]
    direct = []
    with torch.no_grad():
        for batch in (samples, retexted):
            logits = adapter.answer_logits(adapter.encode(batch))
            direct.append([torch.softmax(row[list(adapter.letter_ids[:len(s.options)])]
                                         .double(), -1).numpy() for row, s in zip(logits, batch)])
    adapter.clear_caches()
    before = adapter.image_feature_reuses
    for batch, expected in zip((samples, retexted), direct, strict=True):
        prepared = adapter.prepare(batch)  # as the runner does, one batch ahead
        for got, want in zip(adapter.option_probs(batch, prepared), expected, strict=True):
            np.testing.assert_array_equal(got, want)
    if adapter.reuses_image_features:  # all but InstructBLIP, whose Q-Former reads the prompt
        assert adapter.image_feature_reuses == before + 1


# -- loading, precision, errors -----------------------------------------------------------
@pytest.fixture(scope="session")
def llava(family_root) -> Family:
    return load_family("llava", family_root)[0]


def test_bf16_from_config_string(llava):
    adapter = HFModelAdapter.from_pretrained(llava.path, dtype="bf16", device="cpu")
    assert adapter.model.dtype == torch.bfloat16 and adapter.describe()["dtype"] == "bfloat16"
    probs = adapter.option_probs(mixed_batch(FAMILIES["llava"][1]))
    assert all(p.sum() == pytest.approx(1.0) for p in probs)


def test_placement_and_attention_from_config(llava):
    adapter = HFModelAdapter.from_pretrained(llava.path, device_map="cpu",
                                             attn_implementation="eager")
    info = adapter.describe()
    assert info["device_map"] == "cpu" and info["attn_implementation"] == "eager"
    assert adapter.model.config.text_config._attn_implementation == "eager"
    reference = HFModelAdapter.from_pretrained(llava.path, device="cpu")
    samples = mixed_batch(FAMILIES["llava"][1])
    for a, b in zip(adapter.option_probs(samples), reference.option_probs(samples)):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_a_tokenizer_saved_with_right_padding_is_still_padded_left(llava):
    reference = HFModelAdapter.from_pretrained(llava.path, device="cpu")
    adapter = HFModelAdapter.from_pretrained(llava.path, device="cpu")
    adapter.tokenizer.init_kwargs["padding_side"] = "right"  # processors pass it on
    samples = mixed_batch(FAMILIES["llava"][1])
    assert (adapter.encode(samples)["attention_mask"][:, -1] == 1).all()
    for a, b in zip(adapter.option_probs(samples), reference.option_probs(samples)):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_unknown_dtype_is_refused(llava):
    with pytest.raises(ValueError, match="model.dtype='int3'"):
        HFModelAdapter.from_pretrained(llava.path, dtype="int3", device="cpu")


def test_text_only_checkpoint_gives_a_clear_error(tmp_path):
    tok = train_tokenizer("sp", [], bos="<s>", eos="</s>", pad="<pad>", unk="<unk>")
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=16,
                                 num_hidden_layers=1, num_attention_heads=2)
                     ).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    expected = r"cannot be loaded by HFModelAdapter.*LlamaConfig.*mibench models"
    with pytest.raises(CheckpointError, match=expected) as raised:
        HFModelAdapter.from_pretrained(str(tmp_path), device="cpu")
    message = str(raised.value)
    assert "\n" not in message and "\\n" not in message  # one line, no repr'd newlines
    assert "trust_remote_code" not in message  # the error is not about remote code


def test_missing_checkpoint_gives_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="no-such-model' is not a directory"):
        HFModelAdapter.from_pretrained(str(tmp_path / "no-such-model"), device="cpu")


def test_no_chat_template_and_no_prompt_format_is_refused(llava):
    processor = AutoProcessor.from_pretrained(llava.path)
    processor.chat_template = processor.tokenizer.chat_template = None
    model = AutoModelForImageTextToText.from_pretrained(llava.path)
    with pytest.raises(CheckpointError, match="prompt_format"):
        HFModelAdapter(model, processor, name="bare")
    adapter = HFModelAdapter(model, processor, name="bare", prompt_format="{prompt} ASSISTANT:")
    assert adapter.render(text_heavy_samples(1)[0]).endswith("directly. ASSISTANT:")
    assert adapter.describe()["prompt_format"] == "{prompt} ASSISTANT:"


def test_letters_that_merge_with_the_prompt_are_refused(llava):
    # A tokenizer that learned "\nA" as one piece: after a prompt ending in "\n" the letter
    # is not a token of its own, so one forward pass cannot score it.
    tok = train_tokenizer("sp", ["<image>"], bos="<s>", eos="</s>", pad="<pad>", unk="<unk>",
                          extra_special_tokens={"image_token": "<image>"}, split_newlines=False)
    assert "\nA" in tok.get_vocab()
    processor = LlavaProcessor(image_processor=CLIPImageProcessorPil(), tokenizer=tok,
                               patch_size=4, vision_feature_select_strategy="default")
    model = AutoModelForImageTextToText.from_pretrained(llava.path)
    with pytest.raises(AnswerTokenError, match=r"'A' after the generation prompt is not one"):
        HFModelAdapter(model, processor, name="merge", prompt_format="{prompt}\n")


# -- out-of-memory back-off ---------------------------------------------------------------
class OOMAbove(HFModelAdapter):
    """Runs out of "memory" on any batch larger than `limit` samples."""

    limit = 2

    def answer_logits(self, inputs):
        if inputs["input_ids"].shape[0] > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return super().answer_logits(inputs)


def test_oom_splits_the_batch_and_keeps_the_numbers(llava, caplog):
    reference = HFModelAdapter.from_pretrained(llava.path, device="cpu")
    family = FAMILIES["llava"][1]
    samples = mixed_batch(family) + text_heavy_samples(1)  # 7 samples
    expected = reference.option_probs(samples)
    adapter = OOMAbove.from_pretrained(llava.path, device="cpu")
    with caplog.at_level(logging.WARNING, logger="mibench.models.hf"):
        got = adapter.option_probs(samples)
    # 7 -> 3 + 4; 3 -> 1 + 2; 4 -> 2 + 2
    assert adapter.oom_backoffs == 3
    assert sum("out of memory" in r.message for r in caplog.records) == 3
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_oom_on_one_sample_names_it(llava):
    adapter = OOMAbove.from_pretrained(llava.path, device="cpu")
    adapter.limit = 0
    with pytest.raises(CheckpointError, match="'th-0' alone"):
        adapter.option_probs(text_heavy_samples(1))


# -- the configs and `mibench models` -----------------------------------------------------
CONFIGS = sorted(catalog.config_dir().glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_model_config_fits_its_adapter(path):
    cfg = OmegaConf.to_container(catalog.read_model_yaml(path), resolve=False)
    target = cfg.pop("_target_")
    if "base_url" in cfg:  # a served model: the adapter class itself is the target
        module, cls = target.rsplit(".", 1)
        adapter = factory = getattr(importlib.import_module(module), cls)
        assert issubclass(adapter, ModelAdapter)
    else:
        module, cls, method = target.rsplit(".", 2)
        adapter = getattr(importlib.import_module(module), cls)
        assert issubclass(adapter, HFModelAdapter) and method == "from_pretrained"
        factory = adapter.from_pretrained
        assert cfg["trust_remote_code"] is False  # no shipped config runs hub code
    inspect.signature(factory).bind(**cfg)  # every key is a real argument
    assert cfg["name"] in (None, path.stem)


def test_models_listing_shows_every_config(capsys):
    assert catalog.main([]) == 0
    out = capsys.readouterr().out
    for path in CONFIGS:
        assert f"| {path.stem} " in out
    assert "InstructBlipAdapter" in out and "num2words" in out


def test_models_listing_flags_a_broken_target(tmp_path, capsys):
    (tmp_path / "broken.yaml").write_text(
        "_target_: mibench.models.nothing.Adapter.from_pretrained\npath: x/y\n")
    assert catalog.main(["--dir", str(tmp_path)]) == 1
    assert "BROKEN" in capsys.readouterr().out
