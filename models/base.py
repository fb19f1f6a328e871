"""The model-adapter contract: a batch of samples in, each sample's option distribution out."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np

from mibench.records import Sample


class ModelAdapter(ABC):
    """Scores multiple-choice samples by the likelihood of their option letters.

    `option_probs` must give each sample the same distribution whatever batch it is in
    (to ~1e-4): padding, masks and batch composition may not leak into the numbers.
    """

    name: str

    @abstractmethod
    def option_probs(self, samples: Sequence[Sample]) -> list[np.ndarray]:
        """Per sample, a probability vector over its options (sums to 1), from one forward pass."""

    @abstractmethod
    def prompt_length(self, sample: Sample) -> int:
        """Tokens in the sample's prompt; the runner sorts batches by it."""

    @abstractmethod
    def describe(self) -> dict:
        """What results record about the model: every input that changes a number."""
