"""What the MLLM attacks share: the threat model, the option objective, the capability check.

An attack here drives a `DifferentiableAdapter` (models.base) and nothing else of the model:
it encodes the batch once, runs the PGD core (`mibench.perturbations.pgd`) on one modality's
input through the adapter's `answer_logits`, and returns each sample's option distribution
at the strongest point found. The objective is the cross-entropy of the option letters at the
answer position: untargeted, the correct option's CE is maximised (success: the decided answer
is wrong); targeted, the target option's CE is minimised (success: the target is decided).
A model that can only be queried (a plain `ModelAdapter`) is refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mibench.errors import MibenchError
from mibench.models.base import DifferentiableAdapter, WhiteBoxError, option_log_probs
from mibench.records import Sample

from .base import Attack, Perturbation
from .pgd import Evaluation, PGDResult, check_threat_model

TARGETS = (None, "lure", "random")


class AttackError(MibenchError, RuntimeError):
    """An attack cannot run on this model or sample; the message says which and why."""


@dataclass
class AttackOutcome:
    """Everything an attack did to a batch, for tests and inspection.

    `x0`/`x` are the clean and adversarial points in the attack's own space (embeddings, or
    pixels in [0, 1] units), `mask` the entries allowed to move, `eps` the per-sample radius
    actually used (absolute units), `targets` the target option per sample (None: untargeted).
    """

    samples: list[Sample]
    probs: list[np.ndarray]
    x0: Tensor
    x: Tensor
    mask: Tensor
    eps: Tensor
    targets: list[int] | None
    result: PGDResult

    @property
    def lures(self) -> list[int | None]:
        """The wrong option each sample was pushed toward (see `MLLMAttack.lures`)."""
        return lures_of(self.samples, self.targets)


class MLLMAttack(Attack):
    """Shared constructor, checks and objective of the PGD attacks on an MLLM."""

    version = 1

    def __init__(self, name: str, *, norm: str, eps: float, alpha: float, steps: int,
                 restarts: int, update: str, targeted: str | None, random_start: bool,
                 base: Perturbation | None) -> None:
        check_threat_model(norm, update, eps, alpha, steps, restarts, where=f"attack {name!r}")
        if targeted not in TARGETS:
            raise ValueError(f"attack {name!r}: targeted={targeted!r} is not one of {TARGETS}")
        if base is not None and not isinstance(base, Perturbation):
            raise TypeError(f"attack {name!r}: base must be a Perturbation, got "
                            f"{type(base).__name__}")
        self.name, self.norm, self.eps, self.alpha = name, norm, float(eps), float(alpha)
        self.steps, self.restarts, self.update = int(steps), int(restarts), update
        self.targeted, self.random_start = targeted, bool(random_start)
        self._base = base

    def check_base(self) -> None:
        """The base perturbation must touch the modality the attack touches."""
        if self._base is not None and self._base.touches != self.touches:
            raise ValueError(f"attack {self.name!r} touches the {self.touches}, but its base "
                             f"{self._base.name!r} touches the {self._base.touches}")

    # -- what the results record ---------------------------------------------------------
    def threat_model(self) -> dict:
        """The attack's threat model in words and numbers (goes into describe())."""
        raise NotImplementedError

    def search_description(self) -> dict:
        """The part of the threat model both attack spaces share: how the search runs."""
        return {
            "steps": self.steps, "restarts": self.restarts,
            "update": {"sign": "sign of the gradient (L2: gradient / its L2 norm)",
                       "grad": "raw gradient, delta <- proj(delta + alpha * grad)"}[self.update],
            "random_start": "uniform in the ball" if self.random_start else "none",
            "objective": ("maximise CE of the correct option letter" if self.targeted is None
                          else f"minimise CE of a target wrong option ({self.targeted})"),
            "selection": "per sample, best iterate over steps and restarts, ranked by "
                         "(answer fooled, objective)",
            "base": None if self._base is None else self._base.name,
        }

    def describe(self) -> dict:
        info = super().describe()
        info["params"]["base"] = None if self._base is None else self._base.describe()
        info["threat_model"] = self.threat_model()
        return info

    # -- the Attack contract ---------------------------------------------------------------
    def attack(self, model: Any, samples: Sequence[Sample], seeds: Sequence[int]
               ) -> list[np.ndarray]:
        return self.run(model, samples, seeds).probs

    def score_shown(self, model: Any, samples: Sequence[Sample], seeds: Sequence[int]
                    ) -> tuple[list[np.ndarray], list[int | None], list[Sample]]:
        outcome = self.run(model, samples, seeds)  # its samples carry the base perturbation
        return outcome.probs, outcome.lures, list(outcome.samples)

    def run(self, model: DifferentiableAdapter, samples: Sequence[Sample], seeds: Sequence[int]
            ) -> AttackOutcome:
        """The attack on a batch; what the model cannot do for it is refused by name."""
        try:
            return self.search(model, samples, seeds)
        except WhiteBoxError as err:
            raise AttackError(f"attack {self.name!r} cannot run on model "
                              f"{getattr(model, 'name', '?')!r}: {err}") from err

    def search(self, model: DifferentiableAdapter, samples: Sequence[Sample],
               seeds: Sequence[int]) -> AttackOutcome:
        """Each attack's own search (its space, positions and objective)."""
        raise NotImplementedError

    # -- shared steps ----------------------------------------------------------------------
    def prepare(self, model: Any, samples: Sequence[Sample], seeds: Sequence[int]
                ) -> list[Sample]:
        """Check the model and seeds; apply the base perturbation (seeded per sample)."""
        if not isinstance(model, DifferentiableAdapter):
            raise AttackError(f"attack {self.name!r} needs gradients through the model, but "
                              f"{type(model).__name__} can only be queried (it is not a "
                              "DifferentiableAdapter); run heuristic conditions on it instead")
        if len(seeds) != len(samples):
            raise ValueError(f"attack {self.name!r}: {len(seeds)} seeds for "
                             f"{len(samples)} samples")
        return self.apply_base(samples, seeds)

    def apply_base(self, samples: Sequence[Sample], seeds: Sequence[int]) -> list[Sample]:
        """The samples with the base perturbation applied (seeded per sample), if any."""
        if self._base is None:
            return list(samples)
        from mibench.runner import check_untouched  # the runner's own contract check

        out = []
        for sample, seed in zip(samples, seeds):
            try:
                perturbed = self._base.apply(sample, np.random.default_rng(int(seed)))
            except Exception as err:
                raise AttackError(f"attack {self.name!r}: its base {self._base.name!r} failed "
                                  f"on sample {sample.id!r}: {err}") from err
            check_untouched(sample, perturbed, self._base)
            out.append(perturbed)
        return out

    def lures(self, samples: Sequence[Sample], seeds: Sequence[int]) -> list[int | None]:
        """The wrong option each sample is pushed toward: the target of a targeted attack,
        else the option its base perturbation names (e.g. a misleading caption), if any."""
        prepared = self.apply_base(samples, seeds)
        return lures_of(prepared, self.targets(prepared, seeds))

    def targets(self, samples: Sequence[Sample], seeds: Sequence[int]) -> list[int] | None:
        """The wrong option each sample is pushed toward, or None when untargeted.

        "lure": the sample's `meta['lure']` (set e.g. by a misleading-text base), else a
        seeded random wrong option; "random": always a seeded random wrong option.
        """
        if self.targeted is None:
            return None
        out = []
        for sample, seed in zip(samples, seeds):
            lure = sample.meta.get("lure") if self.targeted == "lure" else None
            if lure is None:
                wrong = [i for i in range(len(sample.options)) if i != sample.answer]
                rng = np.random.default_rng(int(seed) ^ 0x5EED)
                lure = wrong[int(rng.integers(len(wrong)))]
            if not 0 <= int(lure) < len(sample.options) or int(lure) == sample.answer:
                raise AttackError(f"attack {self.name!r}: sample {sample.id!r} has lure "
                                  f"{lure}, not a wrong option among {len(sample.options)}")
            out.append(int(lure))
        return out


def lures_of(samples: Sequence[Sample], targets: Sequence[int] | None) -> list[int | None]:
    """The targets of a targeted attack, else the option each (base-perturbed) sample names."""
    return list(targets) if targets is not None else [s.meta.get("lure") for s in samples]


def option_evaluation(model: DifferentiableAdapter, logits: Tensor, samples: Sequence[Sample],
                      targets: Sequence[int] | None) -> Evaluation:
    """The attack objective from answer logits (B, vocab), through the model's letter logits.

    The loss is computed in float32 (float64 for a float64 model); `output` keeps the float32
    letter logits, from which the final probabilities are computed as every record is
    (`option_distributions`), so ε = 0 gives the clean probabilities exactly.
    """
    letters = model.letter_logits(logits, samples)
    logp = option_log_probs(letters, samples)
    decided = logp.argmax(dim=-1)
    gold = torch.tensor([s.answer for s in samples], device=logits.device)
    if targets is None:
        value = -logp.gather(1, gold[:, None])[:, 0]
        success = decided != gold
    else:
        target = torch.tensor(list(targets), device=logits.device)
        value = logp.gather(1, target[:, None])[:, 0]
        success = decided == target
    return Evaluation(value=value, success=success, output=letters.float())


def needs_image(attack: MLLMAttack, samples: Sequence[Sample]) -> None:
    """An attack on the image needs one per sample: name those without and what to do."""
    missing = [s.id for s in samples if s.image is None]
    if missing:
        raise AttackError(
            f"attack {attack.name!r} perturbs the image, but samples {missing[:5]} have none; "
            "give the attack a base image (e.g. base: black_image in its config)")
