"""The Perturbation contract: a pure, seeded change of one modality of a sample."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import numpy as np

from mibench.records import Modality, Sample


class Perturbation(ABC):
    """Returns a new sample with only `touches` changed; deterministic given the rng.

    The runner hands `apply` an rng derived from (seed, task, condition, sample id) and refuses
    to apply a perturbation to a task whose answer depends on the modality it touches.
    """

    name: str
    version: int = 1
    touches: Modality

    @abstractmethod
    def apply(self, sample: Sample, rng: np.random.Generator) -> Sample:
        """The perturbed sample (a new object; `sample` is left as it was)."""

    def load_data(self) -> None:
        """Load what `apply` needs beyond the sample (e.g. donor images). The runner calls it
        before checking the run's fingerprint, so that `describe()` can name that data."""
        return None

    def describe(self) -> dict:
        """What the results record about this perturbation: every parameter that sets a number."""
        params = {k: v for k, v in vars(self).items() if not k.startswith("_")}
        return {"name": self.name, "version": self.version, "touches": self.touches,
                "class": f"{type(self).__module__}.{type(self).__qualname__}",
                "params": {k: v for k, v in params.items() if _is_plain(v)}}


def _is_plain(value: object) -> bool:
    return isinstance(value, (str, int, float, bool, type(None), list, tuple, dict))


class Attack(ABC):
    """An adversarial condition: it needs the model, so it scores samples itself.

    The threat model (norm, eps, step size, steps, restarts) lives in the constructor and in
    `describe()`. `attack` gets one seed per sample (from seed, task, condition and sample id)
    so a sample's result does not depend on the batch it lands in.
    """

    name: str
    version: int = 1
    touches: Modality

    @abstractmethod
    def attack(self, model: Any, samples: Sequence[Sample], seeds: Sequence[int]
               ) -> list[np.ndarray]:
        """Per sample, the option distribution under the strongest perturbation found."""

    def lures(self, samples: Sequence[Sample], seeds: Sequence[int]) -> list[int | None]:
        """Per sample, the wrong option the attack pushes toward (None: none in particular);
        recorded so that results can say how often the model went there."""
        return [s.meta.get("lure") for s in samples]

    def apply_base(self, samples: Sequence[Sample], seeds: Sequence[int]) -> list[Sample]:
        """The samples as the attack starts from them: with its base perturbation applied,
        if it has one (the default has none). What the audit trail records as shown."""
        return list(samples)

    def score_shown(self, model: Any, samples: Sequence[Sample], seeds: Sequence[int]
                    ) -> tuple[list[np.ndarray], list[int | None], list[Sample]]:
        """`attack`, `lures` and the samples as the model was shown them (the audit trail's)
        together; an attack that perturbs its samples itself (a base perturbation, an image
        it makes) overrides it to do that once for all three."""
        return (self.attack(model, samples, seeds), self.lures(samples, seeds),
                self.apply_base(samples, seeds))

    def describe(self) -> dict:
        return Perturbation.describe(self)  # type: ignore[arg-type]
