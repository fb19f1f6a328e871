"""PGD in the language model's input-embedding space, on one modality's positions (Cai et al.).

The perturbation is added to the sequence the language model reads, after the vision
projector has put the image features into the image-token positions, and only at the
positions of the irrelevant modality:
- `mask="text"`: every non-padding position that is not an image placeholder (question,
  options, instruction and chat-template tokens); for image-heavy tasks;
- `mask="distractor"`: only the tokens of the sample's added text (`Sample.distractor`, so a
  text `base` perturbation such as misleading_text must add it first);
- `mask="image"`: the image-token positions (the projected image features); for text-heavy
  tasks, whose samples have no image of their own: a `base` image perturbation (e.g.
  black_image) gives them one first, and the attack starts from that image's features.

The model gives the sequence and the positions (`DifferentiableAdapter.embed`,
`image_positions`, `text_positions`, `distractor_positions`) and runs each PGD step with the
perturbed sequence in place (`answer_logits(embedded, embeds=x)`): how a family captures and
replays its language model's input is its adapter's business, not the attack's.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mibench.models.base import DifferentiableAdapter, Inputs, option_distributions
from mibench.records import Sample

from .base import Perturbation
from .pgd import pgd
from .pgd_mllm import AttackError, AttackOutcome, MLLMAttack, needs_image, option_evaluation

MASKS = ("text", "distractor", "image")
EPS_SCALES = ("absolute", "rms")


class EmbeddingPGD(MLLMAttack):
    """Masked PGD on input embeddings; ε absolute or relative to the embeddings' RMS.

    eps_scale="rms": per sample, ε and α are multiplied by the RMS of the clean embeddings
    at the masked positions (L∞: RMS of their entries; L2: RMS of their per-token norms), so
    eps=0.1 lets each coordinate (L∞) or token vector (L2) move by 10% of its typical size.
    The L2 ball is per token (each position's perturbation has norm ≤ ε).
    """

    def __init__(self, name: str = "pgd_embed", mask: str = "text", norm: str = "linf",
                 eps: float = 0.1, eps_scale: str = "rms", alpha: float = 0.025,
                 steps: int = 10, restarts: int = 1, update: str = "sign",
                 targeted: str | None = None, random_start: bool = True,
                 base: Perturbation | None = None) -> None:
        super().__init__(name, norm=norm, eps=eps, alpha=alpha, steps=steps, restarts=restarts,
                         update=update, targeted=targeted, random_start=random_start, base=base)
        if mask not in MASKS:
            raise ValueError(f"attack {name!r}: mask={mask!r} is not one of {MASKS}")
        if eps_scale not in EPS_SCALES:
            raise ValueError(f"attack {name!r}: eps_scale={eps_scale!r} is not one of "
                             f"{EPS_SCALES}")
        self.mask, self.eps_scale = mask, eps_scale
        self.touches = "image" if mask == "image" else "text"
        self.check_base()

    def threat_model(self) -> dict:
        unit = ("absolute embedding units" if self.eps_scale == "absolute" else
                "x RMS of the clean embeddings at the masked positions, per sample "
                + ("(entries)" if self.norm == "linf" else "(per-token L2 norms)"))
        return {
            "space": "language-model input embeddings, after image features are placed",
            "positions": {"text": "non-padding, non-image-placeholder tokens",
                          "distractor": "the tokens of the sample's added text",
                          "image": "image-placeholder tokens (projected image features)"
                          }[self.mask],
            "norm": self.norm + (" per token" if self.norm == "l2" else ""),
            "eps": self.eps, "alpha": self.alpha, "units": unit,
            **self.search_description(),
        }

    def search(self, model: DifferentiableAdapter, samples: Sequence[Sample],
               seeds: Sequence[int]) -> AttackOutcome:
        samples = self.prepare(model, samples, seeds)
        if self.mask == "image":
            needs_image(self, samples)
        inputs = model.encode(samples)
        targets = self.targets(samples, seeds)
        with model.frozen():
            embedded = model.embed(inputs)
            positions = self._positions(model, samples, inputs)
            embeds = embedded.embeds
            state_dtype = torch.float64 if embeds.dtype == torch.float64 else torch.float32
            x0 = embeds.to(state_dtype)
            scale = self._scale(x0, positions)

            def objective(x: Tensor):
                logits = model.answer_logits(embedded, embeds=x)
                return option_evaluation(model, logits, samples, targets)

            result = pgd(objective, x0, eps=self.eps * scale, alpha=self.alpha * scale,
                         steps=self.steps, seeds=seeds, norm=self.norm, update=self.update,
                         restarts=self.restarts, random_start=self.random_start,
                         mask=positions[..., None].expand_as(x0),
                         group_dims=(-1,) if self.norm == "l2" else None)
        return AttackOutcome(samples=samples,
                             probs=option_distributions(result.output, samples),
                             x0=x0, x=result.x, mask=positions[..., None].expand_as(x0),
                             eps=self.eps * scale, targets=targets, result=result)

    # -- positions and scale ---------------------------------------------------------------
    def _positions(self, model: DifferentiableAdapter, samples: Sequence[Sample],
                   inputs: Inputs) -> Tensor:
        """(B, T) bool: the sequence positions the attack may move."""
        if self.mask == "image":
            positions = model.image_positions(inputs)
        elif self.mask == "text":
            positions = model.text_positions(inputs)
        else:
            bare = [s.id for s in samples if not s.distractor]
            if bare:
                raise AttackError(f"samples {bare[:5]} have no distractor text to perturb "
                                  "(mask='distractor' needs a text base perturbation, e.g. "
                                  "misleading_text, that adds one)")
            positions = model.distractor_positions(samples, inputs)
        empty = [s.id for s, row in zip(samples, positions) if not row.any()]
        if empty:
            raise AttackError(f"attack {self.name!r} (mask={self.mask!r}) finds no position to "
                              f"perturb in samples {empty[:5]}")
        return positions

    def _scale(self, x0: Tensor, positions: Tensor) -> Tensor:
        """Per-sample unit of ε: 1, or the RMS of the clean embeddings at the positions."""
        if self.eps_scale == "absolute":
            return torch.ones(x0.shape[0], dtype=x0.dtype, device=x0.device)
        token_sq = (x0.double() ** 2).sum(-1) * positions
        mean_sq = token_sq.sum(-1) / positions.sum(-1)
        if self.norm == "linf":
            mean_sq = mean_sq / x0.shape[-1]
        return mean_sq.sqrt().to(x0.dtype)
