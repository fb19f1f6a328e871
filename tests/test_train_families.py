"""The study's training objective on every model family (tiny random checkpoints): one
optimizer step on a batch lowers that batch's loss, with every term switched on."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import image_heavy_samples, make_image, text_heavy_samples

from mibench.perturbations.image import BlankImage
from mibench.perturbations.pgd_embed import EmbeddingPGD
from mibench.perturbations.pgd_mllm import AttackError
from mibench.perturbations.text import MisleadingText
from mibench.seeding import rng_for
from mibench.training.data import Pair
from mibench.training.objective import LossWeights, batch_loss


def study_pairs(sizes) -> list[Pair]:
    """Image-heavy samples with misleading twins, text-heavy ones with black-image twins."""
    misleading, black = MisleadingText(), BlankImage("black_image", size=sizes[0])
    ih = [dataclasses.replace(s, image=make_image(i).resize(sizes[i % len(sizes)]))
          for i, s in enumerate(image_heavy_samples(2))]
    th = text_heavy_samples(2)
    return ([Pair("ih", s, misleading.apply(s, rng_for(0, s.id)), "misleading_text") for s in ih]
            + [Pair("th", s, black.apply(s, rng_for(0, s.id)), "black_image") for s in th])


def test_one_step_of_the_study_objective_lowers_the_loss(family):
    fam, adapter = family
    pairs = study_pairs(fam.sizes)
    study = {"eps": 1e-3, "alpha": 0.1, "steps": 2, "update": "grad", "eps_scale": "absolute"}
    attacks = {"image_heavy": EmbeddingPGD(mask="text", **study),
               "text_heavy": EmbeddingPGD(mask="image", **study)}
    weights = LossWeights(clean=1.0, perturbed=1.0, adversarial=1.0, consistency=0.1)
    terms = {"loss/sft_clean", "loss/sft_perturbed", "loss/adversarial", "loss/consistency_js"}
    if "EmbeddingPGD" in fam.refused_attacks:  # refused by name; the other terms still train
        with pytest.raises(AttackError, match=type(adapter.model).__name__):
            batch_loss(adapter.model, adapter, pairs, weights, attacks, seed=0, step=0)
        weights, attacks = dataclasses.replace(weights, adversarial=0.0), {}
        terms.remove("loss/adversarial")
    model = adapter.model
    params = [p for p in model.parameters() if p.requires_grad]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD(params, lr=1e-2)
    try:
        first = batch_loss(model, adapter, pairs, weights, attacks, seed=0, step=0)
        assert terms <= set(first.terms)
        first.total.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            second = batch_loss(model, adapter, pairs, weights, attacks, seed=0, step=0)
        assert second.terms["loss/total"] < first.terms["loss/total"]
    finally:  # leave the shared tiny checkpoint's weights as they were
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(before[name])
