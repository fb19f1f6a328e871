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
    def option_probs(self, samples: Sequence[Sample], prepared: object = None
                     ) -> list[np.ndarray]:
        """Per sample, a probability vector over its options (sums to 1), from one forward pass.

        `prepared` is what `prepare(samples)` returned, when the runner computed it ahead.
        """

    def check_samples(self, task: str, samples: Sequence[Sample]) -> None:
        """Refuse, before anything is scored, a task this model cannot score meaningfully.

        The runner calls it once per task with all of the task's samples; it raises an error
        naming the model, the task and what is missing (e.g. more options than the tokenizer
        has single-token letters), or logs a warning. The default accepts every task.
        """
        return None

    def prepare(self, samples: Sequence[Sample]) -> object:
        """The host-side work for a batch (prompts, tokens, pixels), done ahead of time.

        The runner calls it in a background thread for batch i+1 while batch i is scored, so
        it must not touch the model; the default does nothing and `option_probs` does all.
        """
        return None

    def drop_reused_inputs(self) -> None:
        """Forget what was kept from one batch for the next (a batch plan has ended).

        Whatever an adapter reuses between batches (an image encoding) is valid only within
        one plan, with the same weights; the runner calls this when a plan is done.
        """
        return None

    @abstractmethod
    def prompt_length(self, sample: Sample) -> int:
        """Tokens in the sample's prompt; the runner sorts batches by it."""

    def prompt_lengths(self, samples: Sequence[Sample]) -> list[int]:
        """`prompt_length` of each sample; adapters that can batch the tokenizer override it."""
        return [self.prompt_length(s) for s in samples]

    @abstractmethod
    def describe(self) -> dict:
        """What results record about the model: every input that changes a number."""
