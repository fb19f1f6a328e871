"""Diagnostics from a model's own activations: hand-computed values on tiny arrays, the
adapter's hidden states on every family, `mibench diagnose` end to end, and --across."""

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from conftest import ListTask, image_heavy_samples, make_image, text_heavy_samples

from mibench.diagnose import Settings, diagnose_tasks, measure
from mibench.diagnose_across import correlate, load_diagnosed, run_across
from mibench.diagnose_cli import diagnose_main
from mibench.diagnostics import (
    TokenSums,
    entropy_bits,
    modality_gap,
    probe_separability,
    spearman,
    split_by_sample,
)
from mibench.loggers import NullLogger
from mibench.models.base import WhiteBoxError
from mibench.perturbations.image import BlankImage

pytestmark = pytest.mark.usefixtures("one_thread")


# -- the modality gap, by hand -----------------------------------------------------------------
def test_gap_of_two_samples_by_hand():
    sums = TokenSums.empty()
    sums.add(np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]]))  # sample A
    sums.add(np.array([[3.0, 0.0]]), np.array([[0.0, 3.0]]))  # sample B
    gap = modality_gap(sums, seed=0, resamples=200)
    # centroids (2, 0) and (0, 2): L2 sqrt(8); unit vectors (1, 0) and (0, 1): sqrt(2);
    # orthogonal centroids: cosine distance 1
    assert gap["gap_l2"].value == pytest.approx(math.sqrt(8))
    assert gap["gap_l2_unit"].value == pytest.approx(math.sqrt(2))
    assert gap["gap_cosine"].value == pytest.approx(1.0)
    # resamples are {A, A} (sqrt 2), {A, B} (sqrt 8) or {B, B} (sqrt 18)
    assert math.sqrt(2) - 1e-12 <= gap["gap_l2"].low <= gap["gap_l2"].high <= math.sqrt(18) + 1e-12
    assert gap["gap_l2_unit"].low == gap["gap_l2_unit"].high == pytest.approx(math.sqrt(2))
    assert gap["gap_l2"].n == 2


def test_centroids_pool_tokens_and_the_cosine_variant_by_hand():
    sums = TokenSums.empty()
    sums.add(np.array([[2.0, 0.0]]), np.array([[1.0, 0.0]]))
    sums.add(np.array([[4.0, 0.0], [4.0, 0.0], [4.0, 4.0]]), np.array([[1.0, 0.0]]))
    gap = modality_gap(sums, resamples=10)
    image = np.array([(2 + 4 + 4 + 4) / 4, 4 / 4])  # (3.5, 1): every token counts once
    assert gap["gap_l2"].value == pytest.approx(np.linalg.norm(image - [1.0, 0.0]))
    assert gap["gap_cosine"].value == pytest.approx(1 - 3.5 / np.linalg.norm(image))
    unit = np.array([1 + 1 + 1 + 1 / math.sqrt(2), 1 / math.sqrt(2)]) / 4
    assert gap["gap_l2_unit"].value == pytest.approx(np.linalg.norm(unit - [1.0, 0.0]))


def test_no_gap_without_both_modalities():
    with pytest.raises(ValueError, match="no sample"):
        modality_gap(TokenSums.empty())


# -- the probe ---------------------------------------------------------------------------------
def tokens(n_samples=40, per=4, shift=3.0, seed=0):
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(n_samples), 2 * per)
    labels = np.tile(np.r_[np.ones(per, bool), np.zeros(per, bool)], n_samples)
    x = rng.normal(size=(labels.size, 6)) + shift * labels[:, None]
    return x, labels, groups


def test_split_by_sample_never_puts_one_sample_on_both_sides():
    _, _, groups = tokens()
    train, test = split_by_sample(groups, 0.3, seed=1)
    assert not set(groups[train]) & set(groups[test])
    assert len(set(groups[test])) == 12 and len(set(groups[train])) == 28


def test_probe_on_separable_tokens_is_perfect():
    x, labels, groups = tokens(shift=10.0)
    result = probe_separability(x, labels, groups, seed=0, resamples=200)
    assert result.accuracy.value == result.accuracy.low == result.accuracy.high == 1.0
    assert (result.train_samples, result.test_samples) == (28, 12)
    assert (result.train_tokens, result.test_tokens) == (28 * 8, 12 * 8)


def test_probe_on_identical_tokens_is_exactly_chance():
    _, labels, groups = tokens()
    result = probe_separability(np.zeros((labels.size, 6)), labels, groups, resamples=200)
    # nothing to separate: one answer for every token, so each class's recall is 0 or 1
    assert result.accuracy.value == 0.5


def test_probe_on_inseparable_tokens_is_near_chance_and_seeded():
    x, labels, groups = tokens(n_samples=200, shift=0.0)
    first = probe_separability(x, labels, groups, seed=3, resamples=200)
    assert 0.4 < first.accuracy.value < 0.6 and first.accuracy.low < 0.5 < first.accuracy.high
    assert probe_separability(x, labels, groups, seed=3, resamples=200) == first


# -- entropy and rank correlation ------------------------------------------------------------------
def test_entropy_in_bits_by_hand():
    assert entropy_bits([0.25] * 4) == pytest.approx(2.0)
    assert entropy_bits([0.5, 0.5]) == pytest.approx(1.0)
    assert entropy_bits([1.0, 0.0, 0.0]) == 0.0


def test_spearman_by_hand_with_an_exact_permutation_p():
    # ranks (1,2,3,4) vs (1,3,2,4): sum d^2 = 2, rho = 1 - 6*2 / (4*15) = 0.8; of the 24
    # pairings, 8 reach |rho| >= 0.8 (rho = +-1 once each, +-0.8 three times each)
    result = spearman([1, 2, 3, 4], [10, 30, 20, 40], seed=0, resamples=500)
    assert result.rho == pytest.approx(0.8) and result.pvalue == pytest.approx(8 / 24)
    assert -1 <= result.low <= result.rho <= result.high <= 1 and result.n == 4


def test_a_perfect_ranking_has_a_degenerate_interval():
    # every resample with two distinct runs ranks them the same way: rho = 1
    result = spearman([1, 2, 3, 4, 5], [0.1, 0.5, 0.6, 0.9, 1.5], seed=0, resamples=500)
    assert result.rho == pytest.approx(1) and result.low == pytest.approx(1)
    assert result.pvalue == pytest.approx(2 / 120)  # +1 and -1 of 5! pairings


def test_two_runs_or_a_constant_side_give_no_correlation_and_say_so():
    two = spearman([1, 2], [3, 1])
    assert two.rho == pytest.approx(-1) and math.isnan(two.low) and "not meaningful" in two.note
    flat = spearman([1, 2, 3], [5, 5, 5])
    assert math.isnan(flat.rho) and "constant" in flat.note


# -- the adapter's hidden states -----------------------------------------------------------------
def mixed(n=3):
    return image_heavy_samples(n) + text_heavy_samples(2)


def test_hidden_states_start_at_the_embedded_sequence_and_end_at_the_output(tiny_adapter):
    inputs = tiny_adapter.encode(mixed())
    embedded = tiny_adapter.embed(inputs)
    assert torch.equal(tiny_adapter.hidden_states(inputs, layer=0), embedded.embeds.float())
    layers = tiny_adapter.model.config.text_config.num_hidden_layers
    last = tiny_adapter.hidden_states(embedded, layer=-1)
    assert torch.equal(last, tiny_adapter.hidden_states(inputs, layer=layers))
    with torch.no_grad():
        out = tiny_adapter.model.get_decoder()(inputs_embeds=embedded.embeds,
                                               attention_mask=inputs["attention_mask"])
    torch.testing.assert_close(last, out.last_hidden_state.float(), rtol=0, atol=1e-5)
    with pytest.raises(WhiteBoxError, match=f"no layer {layers + 1}; .* has {layers} layers"):
        tiny_adapter.hidden_states(inputs, layer=layers + 1)


def test_hidden_states_on_every_family(family):
    fam, adapter = family
    samples = [dataclasses.replace(s, image=make_image(i).resize(fam.sizes[i % len(fam.sizes)]))
               for i, s in enumerate(image_heavy_samples(2))]
    inputs = adapter.encode(samples)
    try:
        embedded = adapter.embed(inputs)
    except WhiteBoxError:  # a family the contract refuses embeddings for
        return
    states = adapter.hidden_states(inputs, layer=0)
    assert torch.equal(states, embedded.embeds.float()), fam.name
    assert adapter.hidden_states(inputs, layer=-1).shape == embedded.embeds.shape


# -- measuring a model ---------------------------------------------------------------------------
def test_measure_on_the_tiny_model(tiny_adapter):
    ih, th = image_heavy_samples(12), text_heavy_samples(6)
    settings = Settings(layers=(1, -1), max_tokens=4, batch_size=5)
    result = measure(tiny_adapter, ih, settings)
    assert list(result["layers"]) == ["0", "1", "-1"]
    assert result["samples"] == result["samples_with_both_modalities"] == 12
    assert result["tokens_per_sample"]["image"] == 16  # the tiny CLIP's patches
    for values in result["layers"].values():
        for name in ("gap_l2", "gap_l2_unit", "gap_cosine"):
            assert values[name]["low"] <= values[name]["value"] <= values[name]["high"]
        assert 0 <= values["probe"]["accuracy"]["value"] <= 1
    # the entropy is that of the very distributions the records hold
    want = np.mean([entropy_bits(p) for p in tiny_adapter.option_probs(ih)])
    assert result["entropy_bits"]["value"] == pytest.approx(want, abs=1e-6)
    assert measure(tiny_adapter, ih, dataclasses.replace(settings, batch_size=12)) == result

    text_only = measure(tiny_adapter, th, settings)
    assert text_only["layers"] == {} and "--on" in text_only["note"]


def test_text_only_tasks_are_measured_under_an_image_condition(tiny_adapter):
    tasks = {"th": ListTask("th", "text_heavy", text_heavy_samples(6)),
             "ih": ListTask("ih", "image_heavy", image_heavy_samples(6))}
    black = BlankImage("black_image", size=(32, 32))
    found = diagnose_tasks(tiny_adapter, tasks, {"black_image": black},
                           Settings(on="black_image", max_tokens=4))
    assert found["th"]["measured_on"] == "black_image" and found["th"]["layers"]
    assert found["ih"]["measured_on"] == "clean"


def test_diagnose_command_writes_diagnostics_and_logs_them(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["--out", str(out), "--limit", "10", "--layer", "2", "--max-tokens", "4",
            "task=toy_image_heavy", "logger=wandb", "logger.mode=offline"]
    assert diagnose_main(args) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "| toy_image_heavy | clean | 2 |" in printed
    doc = json.loads((out / "diagnostics.json").read_text())
    assert doc["model"]["name"] == "toy_llava" and doc["settings"]["layers"] == [2]
    result = doc["tasks"]["toy_image_heavy"]
    assert result["samples"] == 10 and set(result["layers"]) == {"0", "2"}
    (log,) = out.glob("wandb/offline-run-*/run-*.wandb")
    assert b"diagnostics/toy_image_heavy/0/gap_l2" in log.read_bytes()


# -- across runs ---------------------------------------------------------------------------------
def estimate(value):
    return {"value": value, "low": value - 0.1, "high": value + 0.1, "n": 10, "method": "m"}


def write_diagnosed(folder, name, gap, drop, settings=None):
    folder.mkdir(parents=True)
    metrics = {"model": {"name": name}, "results": {"t": {
        "clean": {"accuracy": estimate(0.9)},
        "cond": {"accuracy": estimate(0.9 - drop), "drop": estimate(drop)}}}}
    layer = {"gap_l2": estimate(gap), "gap_l2_unit": estimate(gap / 10),
             "gap_cosine": estimate(1.0), "probe": {"accuracy": estimate(1.0)}}
    diagnostics = {"settings": settings or {"layers": [-1]}, "tasks": {"t": {
        "task": {"name": "t"}, "measured_on": "clean", "samples": 10,
        "entropy_bits": estimate(gap / 100), "layers": {"0": layer}}}}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    (folder / "diagnostics.json").write_text(json.dumps(diagnostics))
    return folder


def test_across_runs_the_gap_is_rank_correlated_with_the_drop(tmp_path, capsys):
    gaps, drops = [1.0, 2.0, 3.0, 4.0], [0.1, 0.3, 0.2, 0.4]
    runs = [write_diagnosed(tmp_path / f"r{i}", f"m{i}", g, d)
            for i, (g, d) in enumerate(zip(gaps, drops))]
    doc = correlate(load_diagnosed(runs), seed=0)
    rows = {r["diagnostic"]: r for r in doc["correlations"]}
    assert {r["score"] for r in doc["correlations"]} == {"t/cond/drop"}
    assert rows["gap_l2@0"]["rho"] == pytest.approx(0.8)
    assert rows["gap_l2@0"]["pvalue"] == pytest.approx(8 / 24)
    assert math.isnan(rows["gap_cosine@0"]["rho"]) and "constant" in rows["gap_cosine@0"]["note"]
    assert run_across([str(r) for r in runs], None, tmp_path / "out", NullLogger()) == 0
    text = capsys.readouterr().out
    assert "| t | gap_l2@0 | t/cond/drop | 4 | +0.80 [" in text
    assert (tmp_path / "out" / "correlation_t__cond__drop.png").stat().st_size > 1000
    assert json.loads((tmp_path / "out" / "correlation.json").read_text())["runs"] == {
        f"m{i}": str(r) for i, r in enumerate(runs)}


def test_across_two_runs_says_a_correlation_means_nothing(tmp_path):
    runs = [write_diagnosed(tmp_path / f"r{i}", f"m{i}", g, d)
            for i, (g, d) in enumerate([(1.0, 0.7), (2.0, 0.3)])]
    rows = correlate(load_diagnosed(runs))["correlations"]
    assert all(r["n"] == 2 and "not meaningful" in r["note"] for r in rows)


def test_across_refuses_runs_diagnosed_differently_or_without_diagnostics(tmp_path):
    a = write_diagnosed(tmp_path / "a", "a", 1.0, 0.1)
    b = write_diagnosed(tmp_path / "b", "b", 2.0, 0.2, settings={"layers": [2]})
    with pytest.raises(ValueError, match="not diagnosed alike: settings"):
        correlate(load_diagnosed([a, b]))
    (b / "diagnostics.json").unlink()
    with pytest.raises(ValueError, match="no diagnostics.json"):
        load_diagnosed([a, b])
    with pytest.raises(ValueError, match="TASK/CONDITION/METRIC"):
        correlate(load_diagnosed([a, a]), scores=["t/cond"])
