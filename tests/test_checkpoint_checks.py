"""What a user's checkpoint is checked for before it scores a task: enough single-token option
letters for the task's questions, a vocabulary that covers the task's words, and load errors
that say in one line what to do. Tiny word-level LLaVAs stand in for narrow vocabularies."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from conftest import WORDS, ListTask, text_heavy_samples

from mibench.models import toy_builder
from mibench.models.hf import AnswerTokenError, CheckpointError, HFModelAdapter, VocabularyError
from mibench.models.load_errors import load_failure
from mibench.prompts import ANSWER_INSTRUCTION
from mibench.records import OPTION_LETTERS, Sample
from mibench.runner import run_benchmark

torch.set_num_threads(min(2, torch.get_num_threads()))
SMALL = toy_builder.ToyModelSize(image_size=16, patch_size=8, vision_hidden=16, vision_layers=1,
                                 text_hidden=16, text_layers=1, heads=2, intermediate=16)


def adapter_with(words, **kwargs) -> HFModelAdapter:
    """A tiny random LLaVA whose word-level tokenizer knows only `words`."""
    processor = toy_builder.build_processor(words, SMALL)
    return HFModelAdapter(toy_builder.build_model(processor, SMALL), processor, name="narrow",
                          **kwargs)


def questions(n_options: int, n: int = 3) -> list[Sample]:
    colours = ("red", "green", "blue", "square", "circle", "triangle")
    return [Sample(id=f"q{n_options}-{i}", question="what colour is it ?",
                   options=colours[:n_options], answer=i % n_options, category="text_heavy")
            for i in range(n)]


# -- option letters: only those the task needs ---------------------------------------------
@pytest.fixture(scope="module")
def four_letters() -> HFModelAdapter:
    """A tokenizer with the letters A-D only ("E" and on are its unknown token)."""
    return adapter_with([w for w in WORDS if w not in OPTION_LETTERS[4:]])


def test_a_checkpoint_with_fewer_letters_scores_the_tasks_that_need_fewer(four_letters):
    assert len(four_letters.letter_ids) == 4
    assert four_letters.describe()["letter_token_ids"] == list(four_letters.letter_ids)
    samples = questions(4)
    four_letters.check_samples("four", samples)
    for probs in four_letters.option_probs(samples):
        assert probs.shape == (4,) and probs.sum() == pytest.approx(1.0)


def test_a_task_needing_more_letters_is_refused_naming_model_task_and_count(four_letters):
    expected = (r"model 'narrow' cannot score task 'five': its questions have up to 5 "
                r"options, but the tokenizer offers only 4 option letters \(A-D\) as single "
                r"tokens: option letter ' E' is the unknown token")
    with pytest.raises(AnswerTokenError, match=expected):
        four_letters.check_samples("five", questions(4) + questions(5, n=1))
    with pytest.raises(AnswerTokenError, match="sample 'q5-0' has 5 options"):
        four_letters.option_probs(questions(5, n=1))  # a direct call is refused too


def test_the_runner_checks_each_task_before_scoring_it(four_letters, tmp_path):
    tasks = {"four": ListTask("four", "text_heavy", questions(4)),
             "five": ListTask("five", "text_heavy", questions(5))}
    with pytest.raises(AnswerTokenError, match="cannot score task 'five'"):
        run_benchmark(four_letters, tasks, {}, tmp_path, batch_size=2, progress=False)
    stored = "".join(p.read_text() for p in (tmp_path / "shards").glob("*.jsonl"))
    assert '"four"' in stored and '"five"' not in stored  # the first task was kept


# -- vocabulary coverage ---------------------------------------------------------------------
def test_a_covered_vocabulary_passes_silently(caplog):
    adapter = adapter_with(WORDS)
    with caplog.at_level(logging.WARNING, logger="mibench.models.hf"):
        adapter.check_samples("colours", text_heavy_samples(6))
    assert not caplog.records


def test_a_few_unknown_words_warn_with_examples(caplog):
    adapter = adapter_with([w for w in WORDS if w != "anna"])
    with caplog.at_level(logging.WARNING, logger="mibench.models.hf"):
        adapter.check_samples("colours", text_heavy_samples(6))
    (record,) = caplog.records
    assert "task 'colours'" in record.message and "'anna'" in record.message
    assert "unknown token '<unk>'" in record.message


def test_a_tokenizer_lacking_most_words_is_refused_unless_the_config_allows_it(caplog):
    template_only = toy_builder.words_of(["USER: ASSISTANT:", ANSWER_INSTRUCTION,
                                          " ".join(OPTION_LETTERS), "."])
    samples = text_heavy_samples(6)
    expected = (r"model 'narrow' maps \d+% of the words of task 'colours' .* to its unknown "
                r"token '<unk>', e\.g\. .*'anna'.*model\.unknown_words_refuse")
    with pytest.raises(VocabularyError, match=expected):
        adapter_with(template_only).check_samples("colours", samples)
    lenient = adapter_with(template_only, unknown_words_refuse=1.0)
    with caplog.at_level(logging.WARNING, logger="mibench.models.hf"):
        lenient.check_samples("colours", samples)
    assert "(78 of 162 in 6 prompts)" in caplog.text and "scores on it are doubtful" in caplog.text
    assert all(np.isfinite(p).all() for p in lenient.option_probs(samples))


def test_thresholds_must_be_ordered():
    with pytest.raises(ValueError, match="unknown_words_warn <= model.unknown_words_refuse"):
        adapter_with(WORDS, unknown_words_warn=0.5, unknown_words_refuse=0.1)


# -- load errors: one line, the right hint -------------------------------------------------
def test_an_uncached_hub_id_offline_says_how_to_use_a_local_directory():
    with pytest.raises(CheckpointError) as raised:
        HFModelAdapter.from_pretrained("no-such-org/no-such-model", device="cpu")
    message = str(raised.value)
    assert "'no-such-org/no-such-model' is neither a local directory nor in the hub cache" \
        in message
    assert "hf download no-such-org/no-such-model --local-dir DIR" in message
    assert "model.path=DIR" in message and "\n" not in message


@pytest.mark.parametrize("config, hint", [
    ({"model_type": "my_vlm", "auto_map": {"AutoConfig": "configuration_my.MyConfig"}},
     "set model.trust_remote_code=true if you trust that code"),
    ({"model_type": "my_vlm"}, "a newer transformers may know its architecture"),
])
def test_a_checkpoint_of_unknown_code_gets_the_matching_hint(tmp_path, config, hint):
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError) as raised:
        HFModelAdapter.from_pretrained(str(tmp_path), device="cpu")
    message = str(raised.value)
    assert message.endswith(hint) and "\n" not in message
    assert ("trust_remote_code" in message) == ("auto_map" in config)


def test_a_key_error_is_reported_without_its_repr():
    message = load_failure(KeyError("missing 'vision_config'\nin config.json"), "x/y", None,
                           HFModelAdapter)
    assert "missing 'vision_config'; `mibench models`" in message
    assert "\\n" not in message and '"missing' not in message
