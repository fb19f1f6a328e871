"""scorer=generate on a local model: answers that do not depend on the batch, records that
keep every response and why a parse failed, metrics over parsed and all answers, and the
config group that selects it."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hydra import compose, initialize_config_module
from hydra.utils import instantiate

from mibench.cli import asset_path, run
from mibench.models.base import ModelAdapter
from mibench.models.hf import HFModelAdapter
from mibench.perturbations.pgd_embed import EmbeddingPGD
from mibench.perturbations.text import MisleadingText
from mibench.records import Generated, Record
from mibench.runner import run_benchmark
from mibench.scorers import GenerateScorer, LikelihoodScorer
from mibench.scoring import clean_metrics, condition_metrics
from mibench.store import RECORDS_FILE
from mibench.tasks.shapes import ShapesTask

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def toy() -> HFModelAdapter:
    return HFModelAdapter.from_pretrained(asset_path("toy_llava"), device="cpu")


@pytest.fixture(scope="module")
def tasks():
    return {"ih": ShapesTask("image_heavy", 10, name="ih"),
            "th": ShapesTask("text_heavy", 10, name="th")}


def records_of(out_dir) -> dict[tuple, dict]:
    rows = [json.loads(line) for line in (out_dir / RECORDS_FILE).read_text().splitlines()]
    return {(r["task"], r["condition"], r["sample_id"]): r for r in rows}


def compose_cfg(*overrides: str):
    with initialize_config_module("mibench.conf", version_base="1.3"):
        return compose("config", overrides=list(overrides))


# -- answers that do not depend on the batch -------------------------------------------------
@pytest.mark.parametrize("scorer", ["generate", "study"])
def test_generated_answers_do_not_depend_on_batch_size(toy, tasks, tmp_path, scorer):
    """The same responses, parses and retries at batch 1, 3 and 8, under the study's
    repetition penalty and retry too; probabilities within 1e-4."""
    method = instantiate(compose_cfg(f"scorer={scorer}").scorer)
    runs = {}
    for batch_size in (1, 3, 8):
        run_benchmark(toy, tasks, {"misleading_text": MisleadingText()},
                      tmp_path / str(batch_size), batch_size=batch_size, progress=False,
                      scorer=method)
        runs[batch_size] = records_of(tmp_path / str(batch_size))
    reference = runs[1]
    assert len(reference) == 10 * 2 + 10
    for records in runs.values():
        assert records.keys() == reference.keys()
        for key, row in records.items():
            want = reference[key]
            assert (row["generated"], row["prediction"]) == (want["generated"],
                                                             want["prediction"]), key
            np.testing.assert_allclose(row["probs"], want["probs"], atol=1e-4, rtol=0)
    assert all(r["generated"]["responses"][0].strip() for r in reference.values())


def test_a_near_tie_is_generated_again_alone(toy, monkeypatch):
    """Where a margin between the best two tokens falls below `tie_margin`, the sample's
    answer is generated again alone; with every margin counted as a near-tie, every sample
    of a batch is, and the answers are still the same."""
    samples = ShapesTask("image_heavy", 5, name="ih").samples()
    before = toy.generate(samples, max_new_tokens=4)
    redos = toy.generation_redos
    monkeypatch.setattr(type(toy), "tie_margin", property(lambda self: float("inf")))
    again = toy.generate(samples, max_new_tokens=4)
    assert toy.generation_redos - redos == len(samples)
    assert [g.text for g in again] == [g.text for g in before]


def test_stop_strings_end_the_answer_and_are_left_out(toy):
    samples = ShapesTask("image_heavy", 3, name="ih").samples()
    free = toy.generate(samples, max_new_tokens=8)
    stopped = toy.generate(samples, max_new_tokens=8, stop=[" "])
    for f, s in zip(free, stopped):
        assert s.text == f.text.split(" ")[0] and s.finish_reason == "stop"
        assert f.finish_reason == "length"


# -- records and metrics ---------------------------------------------------------------------
def test_unparsed_answers_keep_every_response_the_reason_and_count_as_wrong(toy, tmp_path):
    """The toy answers with a letter, which names no option's text: the option_text parser
    fails, the study's retry asks once more, and the record says so."""
    method = GenerateScorer(parser="option_text", retry="study", max_new_tokens=3)
    task = {"th": ShapesTask("text_heavy", 4, name="th")}
    result = run_benchmark(toy, task, {}, tmp_path, batch_size=4, progress=False,
                           scorer=method)
    for row in records_of(tmp_path).values():
        assert row["prediction"] is None and row["correct"] is False
        answer = row["generated"]
        assert answer["failure"] == "no_option_text" and answer["retries"] == 1
        assert len(answer["responses"]) == 2 and answer["options"] == 6
    clean = result.metrics["th"]["clean"]
    assert clean["accuracy"].value == 0.0 and clean["parse_failure_rate"].value == 1.0
    assert clean["accuracy_parsed"].n == 0


def generated(cond, sid, prediction, gold, probs=None, failure=None):
    return Record("t", cond, sid, probs, prediction, gold,
                  generated=Generated(("x",), failure if prediction is None else None,
                                      None, 2))


def test_metrics_of_generated_answers_against_hand_values():
    clean = [generated("clean", "a", 0, 0), generated("clean", "b", None, 1, failure="empty"),
             generated("clean", "c", 1, 1), generated("clean", "d", None, 0,
                                                      failure="no_letter")]
    pert = [generated("p", "a", None, 0, failure="no_letter"), generated("p", "b", None, 1,
                                                                        failure="empty"),
            generated("p", "c", 0, 1), generated("p", "d", 0, 0)]
    m = clean_metrics(clean)
    # unparsed answers are wrong over all samples; over parsed ones, 2 of 2 are right
    assert (m["accuracy"].value, m["accuracy_parsed"].value, m["accuracy_parsed"].n) == (
        0.5, 1.0, 2)
    assert m["parse_failure_rate"].value == 0.5
    c = condition_metrics(clean, pert)
    # flips: a (0 -> none), c (1 -> 0), d (none -> 0); b is unread both times: no flip
    assert c["flip_rate"].value == 0.75
    # clean-correct a and c both became wrong
    assert c["harm_rate"].value == 1.0 and c["harm_rate"].n == 2
    assert (c["accuracy"].value, c["accuracy_parsed"].value) == (0.25, 0.5)
    assert c["parse_failure_rate"].value == 0.5
    assert "js_divergence" not in c  # no probabilities: left out, not made up
    with_probs = [generated("p", r.sample_id, r.prediction, r.gold, probs=(0.5, 0.5),
                            failure=r.generated.failure) for r in pert]
    clean_probs = [generated("clean", r.sample_id, r.prediction, r.gold, probs=(0.5, 0.5),
                             failure=r.generated.failure) for r in clean]
    assert condition_metrics(clean_probs, with_probs)["js_divergence"].value == 0.0


def test_likelihood_records_keep_their_json_and_generated_ones_round_trip():
    likelihood = Record("t", "clean", "s", (0.25, 0.75), 1, 1, lure=0)
    assert list(likelihood.to_json()) == ["task", "condition", "sample_id", "probs",
                                          "prediction", "gold", "correct", "lure"]
    answer = Record("t", "clean", "s", None, None, 1,
                    generated=Generated(("I think", "B"), "not_an_option", "E", 4))
    row = answer.to_json()
    assert row["generated"] == {"responses": ["I think", "B"], "retries": 1,
                                "failure": "not_an_option", "matched": "E", "options": 4}
    assert Record.from_json(json.loads(json.dumps(row))) == answer
    with pytest.raises(ValueError, match="retries 3 but 2 responses"):
        Record.from_json({**row, "generated": {**row["generated"], "retries": 3}})


# -- what generation cannot score ------------------------------------------------------------
class ScoresOnly(ModelAdapter):
    """A backend that scores options but cannot generate."""

    name = "scores-only"

    def option_probs(self, samples, prepared=None):
        return [np.full(len(s.options), 1 / len(s.options)) for s in samples]

    def prompt_length(self, sample):
        return 1

    def describe(self):
        return {"name": self.name}


def test_a_backend_that_cannot_generate_is_refused_in_one_line(tmp_path):
    task = ShapesTask("text_heavy", 2, name="th")
    result = run_benchmark(ScoresOnly(), {"th": task}, {}, tmp_path, progress=False,
                           scorer=GenerateScorer())
    (failure,) = result.failures
    assert failure.error == ("model 'scores-only' (ScoresOnly) cannot generate answers; "
                             "score it with scorer=likelihood")


def test_attacks_are_refused_by_name_under_generation(toy, tmp_path):
    attack = EmbeddingPGD(name="pgd", mask="text", eps=0.1, alpha=0.05, steps=1)
    task = {"ih": ShapesTask("image_heavy", 2, name="ih")}
    result = run_benchmark(toy, task, {"pgd": attack}, tmp_path, progress=False,
                           scorer=GenerateScorer(max_new_tokens=2))
    assert result.conditions == {"ih": ["clean"]}
    (failure,) = result.failures
    assert failure.condition == "pgd" and "scorer 'generate' cannot score attack 'pgd'" in (
        failure.error)


# -- the config group --------------------------------------------------------------------------
def test_the_scorer_group_builds_each_scorer():
    assert isinstance(instantiate(compose_cfg().scorer), LikelihoodScorer)
    study = instantiate(compose_cfg("scorer=study").scorer).describe()
    assert (study["name"], study["parser"]["name"], study["retry"]["name"],
            study["max_new_tokens"], study["repetition_penalty"], study["decoding"]) == (
        "study", "study", "study", 10, 1.2, "greedy")
    assert study["retry"]["retries"] == 1


def test_mibench_scorer_generate_runs_end_to_end(tmp_path, capsys):
    document = run(compose_cfg("scorer=generate", "task=toy_image_heavy", "task.n=8",
                               "perturbation=misleading_text", f"out_dir={tmp_path}",
                               "progress=false"))
    cell = document["results"]["toy_image_heavy"]["misleading_text"]
    assert {"accuracy", "accuracy_parsed", "parse_failure_rate", "flip_rate", "harm_rate",
            "js_divergence", "drop"} <= set(cell)
    assert document["scorer"]["name"] == "generate" and "omitted_metrics" not in document
    assert "unparsed %" in capsys.readouterr().out
    likelihood = run(compose_cfg("task=toy_image_heavy", "task.n=8",
                                 "perturbation=misleading_text", f"out_dir={tmp_path}/l",
                                 "progress=false"))
    assert "accuracy_parsed" not in likelihood["results"]["toy_image_heavy"]["clean"]
    # the local first-token distribution is likelihood's: the same clean JS inputs
    gen, lik = records_of(tmp_path), records_of(tmp_path / "l")
    for key, row in lik.items():
        np.testing.assert_allclose(gen[key]["probs"], row["probs"], atol=1e-4)


def test_a_run_directory_of_one_scorer_refuses_another(tmp_path):
    task = {"th": ShapesTask("text_heavy", 2, name="th")}
    toy = ScoresOnly()
    run_benchmark(toy, task, {}, tmp_path, progress=False)
    with pytest.raises(Exception, match="changed: scorer"):
        run_benchmark(toy, task, {}, tmp_path, progress=False, scorer=GenerateScorer())

