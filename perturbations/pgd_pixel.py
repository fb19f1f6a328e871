"""PGD on the model's input image, in [0, 1] pixel units: the robustness field's threat model.

Threat model: "the model's resized input image". Processors are not differentiable, so the
attack perturbs the processor's output but measures ε and clips to the valid range in [0, 1]
pixel units: the model's `pixel_layout` says how its pixel tensor splits into one image per
sample and maps to [0, 1] units (models/pixels.py: plain, tiled and patch-flattened layouts;
a family with another layout gives its adapter its own). One ball per image, over all its
tiles or patches; padding tiles do not move. Samples without an image (text-heavy) get one
from `base` first (e.g. black_image).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mibench.models.base import DifferentiableAdapter, option_distributions
from mibench.records import Sample

from .base import Perturbation
from .pgd import pgd
from .pgd_mllm import AttackOutcome, MLLMAttack, needs_image, option_evaluation


class PixelPGD(MLLMAttack):
    """L∞ or L2 PGD on image pixels in [0, 1] units, sign steps (L2: normalised gradient)."""

    touches = "image"

    def __init__(self, name: str = "pgd_pixel", norm: str = "linf", eps: float = 8 / 255,
                 alpha: float = 2 / 255, steps: int = 10, restarts: int = 1,
                 update: str = "sign", targeted: str | None = None, random_start: bool = True,
                 base: Perturbation | None = None) -> None:
        super().__init__(name, norm=norm, eps=eps, alpha=alpha, steps=steps, restarts=restarts,
                         update=update, targeted=targeted, random_start=random_start, base=base)
        self.check_base()

    def threat_model(self) -> dict:
        return {
            "space": "the model's resized input image (processor output), in [0, 1] pixel "
                     "units per channel; clipped to [0, 1]",
            "norm": self.norm + " over the whole image (all tiles)",
            "eps": self.eps, "alpha": self.alpha, "units": "[0, 1] pixel units",
            **self.search_description(),
        }

    def search(self, model: DifferentiableAdapter, samples: Sequence[Sample],
               seeds: Sequence[int]) -> AttackOutcome:
        samples = self.prepare(model, samples, seeds)
        needs_image(self, samples)
        inputs = model.encode(samples)
        layout = model.pixel_layout(inputs)
        pv0 = layout.pixels
        # A float64 model is attacked in float64 (its pixels too); otherwise in float32.
        wide = torch.float64 in (pv0.dtype, model.dtype)
        state_dtype = torch.float64 if wide else torch.float32
        pixel_dtype = torch.float64 if wide else pv0.dtype
        base = layout.split(pv0.to(state_dtype))
        gain, offset = (t.to(pv0.device, state_dtype) for t in (layout.gain, layout.offset))
        x0 = base / gain + offset
        mask = layout.valid.to(pv0.device)
        targets = self.targets(samples, seeds)

        def objective(x: Tensor):
            pixels = layout.merge(base + (x - x0) * gain).to(pixel_dtype)
            logits = model.answer_logits(inputs, pixels=pixels)
            return option_evaluation(model, logits, samples, targets)

        with model.frozen():
            result = pgd(objective, x0, eps=self.eps, alpha=self.alpha, steps=self.steps,
                         seeds=seeds, norm=self.norm, update=self.update,
                         restarts=self.restarts, random_start=self.random_start, mask=mask,
                         bounds=(0.0, 1.0))
        eps = torch.full((len(samples),), self.eps, dtype=state_dtype)
        return AttackOutcome(samples=samples,
                             probs=option_distributions(result.output, samples),
                             x0=x0, x=result.x, mask=mask, eps=eps, targets=targets,
                             result=result)
