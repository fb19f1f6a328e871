"""mibench-train: objective terms, data hygiene, alignment of the adversarial δ, a whole run
on a tiny random LLaVA (save, reload by path, model card, before/after), LoRA, gradient
accumulation, and a SIGKILLed run resuming to bit-identical weights."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module
from safetensors.torch import load_file, save_file
from scipy.spatial.distance import jensenshannon

from mibench.models import toy_builder
from mibench.models.base import option_log_probs
from mibench.models.hf import HFModelAdapter
from mibench.perturbations.image import BlankImage
from mibench.perturbations.pgd_embed import EmbeddingPGD
from mibench.perturbations.text import MisleadingText, UnrelatedText
from mibench.records import Sample
from mibench.tasks.shapes import ShapesTask, shapes_vocabulary
from mibench.train import train
from mibench.training.data import SplitLeakError, TrainingStream, check_disjoint
from mibench.training.objective import adversarial_deltas, divergence, place_deltas
from mibench.training.report import ablation_table

SIZE = toy_builder.ToyModelSize(vision_hidden=32, vision_layers=1, text_hidden=32,
                                text_layers=1, heads=2, intermediate=64)


@pytest.fixture(scope="module")
def shapes_checkpoint(tmp_path_factory) -> str:
    """A random tiny LLaVA whose tokenizer knows the shapes world (so toy tasks encode)."""
    path = tmp_path_factory.mktemp("tiny-shapes-llava")
    processor = toy_builder.build_processor(shapes_vocabulary(), SIZE)
    toy_builder.build_model(processor, SIZE, seed=0).save_pretrained(path)
    processor.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def shapes_adapter(shapes_checkpoint) -> HFModelAdapter:
    return HFModelAdapter.from_pretrained(shapes_checkpoint, name="tiny", device="cpu")


def small_overrides(checkpoint: str, run_dir: Path, *extra: str) -> list[str]:
    return [
        f"model.path={checkpoint}", f"run_dir={run_dir}", f"out_dir={run_dir}/model",
        "steps=4", "batch_size=8", "micro_batch_size=8", "log_every=1", "progress=false",
        "checkpoint_every=0", "optim.lr=3e-3", "optim.warmup_steps=1",
        "data.tasks.toy_image_heavy.n=24", "data.tasks.toy_text_heavy.n=24",
        "data.tasks.toy_vqa.n=8", "data.perturbations.switched_image.donors.n=24",
        "grid.tasks.toy_image_heavy.n=12", "grid.tasks.toy_text_heavy.n=12",
        "grid.tasks.toy_vqa.n=6", "grid.conditions.switched_image.donors.n=24",
        "eval_after=false", *extra]


def compose_train(overrides: list[str]):
    with initialize_config_module("mibench.conf", version_base="1.3"):
        return compose("train", overrides=overrides)


# -- the objective -----------------------------------------------------------------------------
def test_divergences_match_scipy_and_ignore_missing_options():
    rng = np.random.default_rng(0)
    logits = torch.tensor(rng.normal(size=(2, 26)), dtype=torch.float32)
    other = torch.tensor(rng.normal(size=(2, 26)), dtype=torch.float32)
    samples = [Sample(id=f"s{k}", question="q", options=tuple("abcdef"[:k]), answer=0,
                      category="text_heavy") for k in (3, 6)]
    logp, logq = option_log_probs(logits[:, :6], samples), option_log_probs(other[:, :6], samples)
    assert torch.isinf(logp[0, 3:]).all() and torch.isfinite(logp[1]).all()
    js = divergence(logp, logq, "js")
    kl = divergence(logp, logq, "kl")
    assert torch.isfinite(js).all() and torch.isfinite(kl).all()
    for i, k in enumerate((3, 6)):
        p, q = logp[i, :k].exp().double().numpy(), logq[i, :k].exp().double().numpy()
        assert js[i].item() == pytest.approx(jensenshannon(p, q) ** 2, rel=1e-4)
        assert kl[i].item() == pytest.approx(float(np.sum(p * np.log(p / q))), rel=1e-4)
    assert divergence(logp, logp, "js").abs().max() < 1e-6
    assert torch.allclose(divergence(logp, logq, "js"), divergence(logq, logp, "js"))


def test_stream_is_seeded_pairs_only_irrelevant_modality_and_keeps_labels():
    tasks = {n: ShapesTask(k, 12, split="train", name=n)
             for n, k in (("ih", "image_heavy"), ("th", "text_heavy"), ("vqa", "vqa"))}
    perturbations = {"misleading_text": MisleadingText(), "unrelated_text": UnrelatedText(),
                     "black_image": BlankImage("black_image", size=(32, 32))}
    a = TrainingStream(tasks, perturbations, seed=3)
    b = TrainingStream(tasks, perturbations, seed=3)
    pairs = a.pairs(range(0, 80))  # more than one epoch (36 samples)
    again = b.pairs(range(0, 80))
    assert [(p.clean.id, p.condition) for p in pairs] == [(p.clean.id, p.condition)
                                                          for p in again]
    assert [p.perturbed.distractor for p in pairs if p.perturbed] == [
        p.perturbed.distractor for p in again if p.perturbed]
    epoch0 = [p.clean.id for p in pairs[:36]]
    assert sorted(epoch0) == sorted(s.id for t in tasks.values() for s in t.samples())
    assert epoch0 != [p.clean.id for p in pairs[36:72]]  # reshuffled each epoch
    for p in pairs:
        if p.clean.category == "vqa":
            assert p.perturbed is None
            continue
        assert p.perturbed is not None and p.perturbed.answer == p.clean.answer
        if p.clean.category == "image_heavy":
            assert p.condition in ("misleading_text", "unrelated_text")
            assert p.perturbed.image is p.clean.image and p.perturbed.distractor
        else:
            assert p.condition == "black_image" and p.perturbed.question == p.clean.question
    assert {p.condition for p in pairs} - {None} == set(perturbations)
    other_seed = TrainingStream(tasks, perturbations, seed=4).pairs(range(36))
    assert [p.clean.id for p in other_seed] != epoch0
    none = TrainingStream(tasks, perturbations, seed=3, pair_share=0.0).pairs(range(36))
    assert all(p.perturbed is None for p in none)
    weighted = TrainingStream(tasks, perturbations, seed=3,
                              condition_weights={"unrelated_text": 0}).pairs(range(72))
    assert {p.condition for p in weighted if p.clean.category == "image_heavy"} == {
        "misleading_text"}
    with pytest.raises(ValueError, match="switched_image"):
        TrainingStream(tasks, perturbations, seed=3, condition_weights={"switched_image": 2})


def test_split_check_names_the_shared_ids(shapes_checkpoint, tmp_path):
    with pytest.raises(SplitLeakError, match=r"shapes-test-image_heavy-0"):
        check_disjoint({"ih": ["shapes-test-image_heavy-0", "x"]},
                       {"toy_image_heavy (evaluated)": ["shapes-test-image_heavy-0"]})
    check_disjoint({"ih": ["a"]}, {"ev": ["b"]})
    cfg = compose_train(small_overrides(shapes_checkpoint, tmp_path,
                                        "data.tasks.toy_text_heavy.split=test"))
    with pytest.raises(SplitLeakError) as err:
        train(cfg)
    message = str(err.value)
    assert "toy_text_heavy" in message and "shapes-test-text_heavy-" in message
    assert "split=train" in message
    assert not (tmp_path / "model").exists()


def test_adversarial_delta_lands_on_the_attacked_tokens_in_a_mixed_batch(shapes_adapter):
    """δ found on the attack's own encoding, right-aligned into a longer batch, gives the
    same logits as the attack's own adversarial point, and moves only text tokens."""
    adapter = shapes_adapter
    base = ShapesTask("image_heavy", 3, split="train").samples()
    rng = np.random.default_rng(0)
    perturbed = [MisleadingText().apply(s, rng) for s in base]
    attack = EmbeddingPGD(name="t", mask="text", eps=0.05, eps_scale="absolute", alpha=0.05,
                          steps=2, update="sign")
    seeds = [11, 12, 13]
    found = adversarial_deltas(adapter, {"image_heavy": attack}, perturbed, seeds)
    assert len(found) == 3
    for _, delta in found:
        assert 0 < delta.abs().max() <= 0.05 + 1e-6
    own = adapter.encode(perturbed)
    own_delta = torch.stack([d for _, d in sorted(found, key=lambda x: x[0])])
    image_rows = own["input_ids"] == adapter.model.config.image_token_id
    assert (own_delta.abs().sum(-1)[image_rows] == 0).all()  # image features untouched
    with torch.no_grad():
        expected = adapter.answer_logits(own, shift=own_delta)
    # a batch with longer clean rows first: the adversarial rows get more left padding
    longer = [dataclasses.replace(s, id=f"{s.id}-long", distractor=f"{s.distractor} " * 2)
              for s in perturbed[:2]]
    rows = longer + perturbed
    enc = adapter.encode(rows)
    assert enc["input_ids"].shape[1] > own["input_ids"].shape[1]
    full = place_deltas(found, len(longer), torch.Size((*enc["input_ids"].shape,
                                                        own_delta.shape[-1])),
                        enc["attention_mask"].bool())
    with torch.no_grad():
        got = adapter.answer_logits(enc, shift=full)
    assert torch.allclose(got[len(longer):], expected, atol=1e-4)
    with torch.no_grad():
        plain = adapter.answer_logits(enc)
    assert torch.allclose(got[:len(longer)], plain[:len(longer)], atol=1e-5)
    assert not torch.allclose(got[len(longer):], plain[len(longer):], atol=1e-4)


# -- whole runs --------------------------------------------------------------------------------
def test_run_saves_a_checkpoint_the_suite_scores_by_path(shapes_checkpoint, tmp_path):
    cfg = compose_train(small_overrides(shapes_checkpoint, tmp_path, "steps=6",
                                        "eval_after=true", "train.loss.consistency=0.1"))
    summary = train(cfg)
    out = tmp_path / "model"
    log = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in log] == [1, 2, 3, 4, 5, 6]
    for key in ("loss/sft_clean", "loss/sft_perturbed", "loss/adversarial",
                "loss/consistency_js", "lr", "throughput/rows_per_s"):
        assert all(np.isfinite(row[key]) for row in log), key
    assert log[-1]["loss/sft_clean"] < log[0]["loss/sft_clean"]  # it learns
    before = load_file(str(Path(shapes_checkpoint) / "model.safetensors"))
    after = load_file(str(out / "model.safetensors"))
    assert before.keys() == after.keys()
    vision = [k for k in before if "vision_tower" in k]
    assert vision and all(torch.equal(before[k], after[k]) for k in vision)  # frozen
    assert any(not torch.equal(before[k], after[k]) for k in before if "language_model" in k)
    reloaded = HFModelAdapter.from_pretrained(str(out), device="cpu")
    probe = ShapesTask("image_heavy", 4).samples()
    assert all(np.isclose(p.sum(), 1) for p in reloaded.option_probs(probe))
    card = (out / "README.md").read_text()
    assert "## Before / after (scored by the suite)" in card
    assert "| toy_image_heavy | misleading_text |" in card and "same families" in card
    assert "consistency: 0.1" in card
    # no local path leaves the machine: the base is named by its weights digest instead
    digest = HFModelAdapter.from_pretrained(shapes_checkpoint, device="cpu").provenance[
        "weights_sha256"]
    assert f"weights sha256 (weights, config and processor files): `{digest}`" in card
    training_summary = (out / "training_summary.json").read_text()
    for text in (card, training_summary, (tmp_path / "train_config.yaml").read_text()):
        assert shapes_checkpoint not in text and str(tmp_path) not in text
    assert json.loads(training_summary)["base"]["path"] is None
    evaluation = summary["evaluation"]
    assert set(evaluation["trained"]) == {"toy_image_heavy", "toy_text_heavy", "toy_vqa"}
    assert (tmp_path / "eval" / "compare.md").is_file()
    table = ablation_table([summary, {**summary, "recipe": "other"}])
    assert table.splitlines()[2].startswith("| base |") and "| other |" in table


def test_gradient_accumulation_and_checkpointing_match_one_big_batch(shapes_checkpoint, tmp_path):
    weights = []
    for micro in (8, 4):  # the accumulated run also recomputes activations (checkpointing)
        run_dir = tmp_path / f"micro{micro}"
        train(compose_train(small_overrides(shapes_checkpoint, run_dir, "steps=2",
                                            f"micro_batch_size={micro}",
                                            f"gradient_checkpointing={micro == 4}",
                                            "train=sft_perturbed")))
        weights.append(load_file(str(run_dir / "model" / "model.safetensors")))
    base = load_file(str(Path(shapes_checkpoint) / "model.safetensors"))
    moved = max((weights[0][k] - base[k]).abs().max().item() for k in base)
    gap = max((weights[0][k] - weights[1][k]).abs().max().item() for k in base)
    assert moved > 1e-4 and gap < 1e-5, (moved, gap)


def test_lora_run_saves_merged_full_weights(shapes_checkpoint, tmp_path):
    pytest.importorskip("peft")
    train(compose_train(small_overrides(shapes_checkpoint, tmp_path, "steps=2",
                                        "lora.enabled=true", "lora.r=4", "freeze=[]",
                                        "train=consistency")))
    before = load_file(str(Path(shapes_checkpoint) / "model.safetensors"))
    after = load_file(str(tmp_path / "model" / "model.safetensors"))
    assert before.keys() == after.keys()  # merged: no lora_A / lora_B left
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed and all("language_model" in k and "proj" in k for k in changed)
    HFModelAdapter.from_pretrained(str(tmp_path / "model"), device="cpu")


def _train_command(checkpoint: str, run_dir: Path) -> list[str]:
    return [sys.executable, "-m", "mibench.train",
            *small_overrides(checkpoint, run_dir, "steps=12", "checkpoint_every=3",
                             "keep_checkpoints_when_done=true", "train=study"),
            f"hydra.run.dir={run_dir}", "hydra/job_logging=none", "hydra/hydra_logging=none"]


def test_killed_run_resumes_to_the_same_weights(shapes_checkpoint, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    subprocess.run(_train_command(shapes_checkpoint, whole), check=True, env=env,
                   capture_output=True, timeout=300)
    proc = subprocess.Popen(_train_command(shapes_checkpoint, killed), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not list((killed / "checkpoints").glob("step-*/trainer_state.json")):
        assert proc.poll() is None, "the run ended before its first checkpoint"
        assert time.time() < deadline, "no checkpoint within 240 s"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "model" / "model.safetensors").exists(), "killed too late"
    logged = [json.loads(line)["step"]
              for line in (killed / "train_log.jsonl").read_text().splitlines()]
    resumed = subprocess.run(_train_command(shapes_checkpoint, killed), check=True, env=env,
                             capture_output=True, text=True, timeout=300)
    assert "resuming from" in resumed.stdout
    steps = [json.loads(line)["step"]
             for line in (killed / "train_log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 13)), (logged, steps)  # no step logged twice
    a = load_file(str(whole / "model" / "model.safetensors"))
    b = load_file(str(killed / "model" / "model.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("change, named", [
    ("batch_size=16", "batch_size: 8 -> 16"),
    ("steps=5", "steps: 4 -> 5"),
    ("micro_batch_size=4", "micro_batch_size: 8 -> 4"),
    ("threads=2", "threads: 1 -> 2"),
    ("data.tasks.toy_vqa.n=9", "data.tasks.toy_vqa.n: 8 -> 9"),
    ("data.condition_weights.switched_image=1",
     "data.condition_weights.switched_image: 4 -> 1"),
])
def test_resume_refuses_any_setting_that_changes_the_weights(shapes_checkpoint, tmp_path,
                                                              change, named):
    """A run directory begun under one setting is never continued under another (here the
    first run's fingerprint is recorded by a real run of 0 steps: nothing to train)."""
    from mibench.train import ResumeConfigError

    train(compose_train(small_overrides(shapes_checkpoint, tmp_path, "steps=0")))
    fingerprint = json.loads((tmp_path / "fingerprint.json").read_text())
    fingerprint["config"]["steps"] = 4  # as if the first run had been asked for 4 steps
    (tmp_path / "fingerprint.json").write_text(json.dumps(fingerprint))
    train(compose_train(small_overrides(shapes_checkpoint, tmp_path, "steps=4")))  # same: ok
    with pytest.raises(ResumeConfigError, match="cannot be resumed") as err:
        train(compose_train(small_overrides(shapes_checkpoint, tmp_path, change)))
    assert f"- {named}\n" in str(err.value)


def test_resume_refuses_changed_base_weights(shapes_checkpoint, tmp_path):
    from mibench.train import ResumeConfigError

    base = tmp_path / "base"
    shutil.copytree(shapes_checkpoint, base)
    run_dir = tmp_path / "run"
    train(compose_train(small_overrides(str(base), run_dir, "steps=0")))
    weights = load_file(str(base / "model.safetensors"))
    save_file({k: v + 1e-3 for k, v in weights.items()}, str(base / "model.safetensors"),
              metadata={"format": "pt"})
    with pytest.raises(ResumeConfigError, match="base_model.weights_sha256"):
        train(compose_train(small_overrides(str(base), run_dir, "steps=0")))


def test_divergence_gradients_are_finite_with_mixed_option_counts():
    """A batch mixing 4- and 6-option samples pads the narrow rows with -inf log-probs."""
    logits = torch.randn(2, 10, requires_grad=True)
    samples = [Sample(id=f"s{k}", question="?", options=tuple("abcdef"[:k]), answer=0,
                      category="image_heavy") for k in (4, 6)]
    logp = option_log_probs(logits[:, :6], samples)
    logq = option_log_probs(logits.flip(-1)[:, :6], samples)
    for kind in ("js", "kl"):
        logits.grad = None
        divergence(logp, logq, kind).sum().backward(retain_graph=True)
        assert torch.isfinite(logits.grad).all()
