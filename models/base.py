"""The model-adapter contract, in two parts.

`ModelAdapter` is what every backend offers, a local checkpoint or a served API: a batch of
samples in, each sample's option distribution out. `DifferentiableAdapter` adds what attacks,
the mitigation trainer and diagnostics need from a network whose gradients the suite follows:
encode a batch, one forward pass with its pixels or its language model's input embeddings
replaced (or shifted), where each modality sits in the sequence, the family's pixel layout,
and the letter logits. Nothing outside `models/` reaches past this contract, so a family that
differs (another image layout, another way to feed embeddings) changes only its own adapter.

Letter logits become option distributions in exactly one place for each form:
`option_log_probs` (a batch tensor with gradients: attack objectives, training losses) and
`option_distributions` (one float64 vector per sample: every stored record).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mibench.errors import MibenchError
from mibench.records import Sample

from .generation import Generation

Inputs = Mapping[str, Any]
"""A batch as `DifferentiableAdapter.encode` returns it: the network's inputs on its device."""


class WhiteBoxError(MibenchError, RuntimeError):
    """A white-box operation this model or batch cannot support; the message says which."""


class GenerationUnsupportedError(MibenchError, RuntimeError):
    """`generate` asked of a backend (or a batch) that cannot generate answers."""


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

    def generate(self, samples: Sequence[Sample], *, max_new_tokens: int,
                 stop: Sequence[str] = (), suffix: str = "", repetition_penalty: float = 1.0
                 ) -> list[Generation]:
        """Each sample's greedy answer (scorer=generate), in the samples' order.

        `suffix` is appended to the user text (a retry's request), `stop` ends an answer at
        the first of these strings (which the text then excludes), `repetition_penalty`
        is transformers' (1.0: none). The text of a sample must not depend on its batch.
        A backend that gives log-probabilities puts the first answer token's top
        alternatives, the option letters among them, in `Generation.top_logprobs[0]`.
        """
        raise GenerationUnsupportedError(
            f"model {self.name!r} ({type(self).__name__}) cannot generate answers; score it "
            "with scorer=likelihood")

    def logprobs_unavailable(self) -> str | None:
        """Why `generate` returns no log-probabilities with its answers; None where it does."""
        return f"{type(self).__name__} returns no log-probabilities with generated answers"

    def fetch_report(self) -> dict:
        """How this process fetched its answers, for the run's provenance (never its
        fingerprint: it changes no number). A served model reports its requests, cache hits,
        retries by cause and the model ids the server answered as; a local one nothing."""
        return {}

    def bind_run_dir(self, run_dir: str | Path) -> None:
        """Where the run that uses this model writes; told before anything is described or
        scored. A backend that keeps files per run (a response cache) may keep them there;
        the default keeps nothing."""
        return None


@dataclass(frozen=True, eq=False)
class Embedded(Mapping[str, Any]):
    """A batch together with the sequence its language model reads, from one clean pass.

    It reads as the batch's inputs (a Mapping), so whatever takes `encode`'s output takes it.
    `embeds` (B, T, H) is the language model's input sequence with the image features in
    place; `logits` the clean answer logits of the same pass; `replay` is the adapter's own
    state for feeding other embeddings back in (e.g. position ids), opaque to callers.
    """

    inputs: Inputs
    embeds: Tensor
    logits: Tensor
    replay: Any = None

    def __getitem__(self, key: str) -> Any:
        return self.inputs[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.inputs)

    def __len__(self) -> int:
        return len(self.inputs)


class PixelLayout(ABC):
    """How a batch's pixel tensor maps to one tensor per sample in [0, 1] pixel units.

    `split(pixels)` gives (samples, ...) with a channel axis and `merge` inverts it exactly;
    u = split(pixels) / gain + offset is the image in [0, 1] units (gain, offset per channel,
    broadcastable); `valid` (shaped like split's output) marks the real pixels, not padding.
    `pixels` is the batch's tensor as the network takes it (`answer_logits(pixels=...)`).
    """

    pixels: Tensor
    valid: Tensor
    gain: Tensor
    offset: Tensor

    @abstractmethod
    def split(self, pixels: Tensor) -> Tensor:
        """The network's pixel tensor as (samples, ...), one image per sample."""

    @abstractmethod
    def merge(self, x: Tensor) -> Tensor:
        """`split`'s inverse: back to the tensor the network takes."""


class DifferentiableAdapter(ModelAdapter):
    """A model the suite can differentiate through: what attacks, training and diagnostics use.

    A backend that can only be queried (a served model) implements `ModelAdapter` alone and
    every attack refuses it. Sequence positions index `encode`'s output (left-padded rows).
    """

    model: torch.nn.Module
    """The network with the weights: training trains it, attacks freeze it."""

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the network computes in."""
        return next(self.model.parameters()).dtype

    @abstractmethod
    def encode(self, samples: Sequence[Sample]) -> Inputs:
        """The batch's network inputs on the network's device (prompts as for scoring)."""

    @abstractmethod
    def answer_logits(self, inputs: Inputs, *, pixels: Tensor | None = None,
                      embeds: Tensor | None = None, shift: Tensor | None = None,
                      network: torch.nn.Module | None = None) -> Tensor:
        """Logits over the vocabulary at the answer position (B, V), from one forward pass.

        In float32 (float64 for a float64 network). `pixels` replaces the batch's pixel tensor
        (its `pixel_layout().pixels`); `embeds` (B, T, H) replaces the language model's input
        sequence (then `inputs` must be the `Embedded` from `embed`); `shift` (B, T, H) is
        added to that sequence, gradients flowing to both; `network` is run instead of
        `self.model`: the same weights wrapped for training (DDP, peft).
        """

    @abstractmethod
    def embed(self, inputs: Inputs) -> Embedded:
        """The batch with its language model's input sequence, captured from a clean pass
        (no gradients); `answer_logits(embedded, embeds=embedded.embeds)` gives that pass's
        logits again."""

    @abstractmethod
    def image_positions(self, inputs: Inputs) -> Tensor:
        """(B, T) bool: the positions that hold image features."""

    @abstractmethod
    def text_positions(self, inputs: Inputs) -> Tensor:
        """(B, T) bool: every other real (non-padding) position: prompt and template tokens."""

    @abstractmethod
    def distractor_positions(self, samples: Sequence[Sample], inputs: Inputs) -> Tensor:
        """(B, T) bool: the tokens of each sample's added text (`Sample.distractor`)."""

    @abstractmethod
    def pixel_layout(self, inputs: Inputs) -> PixelLayout:
        """The family's pixel layout for this batch (one image per sample)."""

    @abstractmethod
    def option_token_ids(self, count: int) -> tuple[int, ...]:
        """The vocabulary ids of the first `count` option letters, as the model emits them."""

    @abstractmethod
    def save_pretrained(self, directory: str | Path, network: torch.nn.Module,
                        state_dict: dict | None = None) -> None:
        """Write `network` (trained weights of this adapter's family; `state_dict` if given,
        e.g. gathered from shards) and whatever else loading needs, so the suite scores it
        by path."""

    def letter_logits(self, logits: Tensor, samples: Sequence[Sample]) -> Tensor:
        """(B, K_max) logits of the option letters, K_max = the batch's most options; float32
        (float64 for float64 logits). Entries past a sample's own options are meaningless."""
        k_max = max(len(s.options) for s in samples)
        ids = torch.tensor(self.option_token_ids(k_max), device=logits.device)
        letters = logits[:, ids]
        return letters if letters.dtype == torch.float64 else letters.float()

    @contextmanager
    def frozen(self) -> Iterator[None]:
        """The weights without gradients and the network in eval mode, restored afterwards;
        gradients stay enabled for the inputs (nothing is copied, no weight changes)."""
        flags = [(p, p.requires_grad) for p in self.model.parameters()]
        training = self.model.training
        for p, _ in flags:
            p.requires_grad_(False)
        self.model.eval()
        try:
            with torch.enable_grad():
                yield
        finally:
            for p, flag in flags:
                p.requires_grad_(flag)
            self.model.train(training)


def _option_mask(letters: Tensor, samples: Sequence[Sample]) -> Tensor:
    counts = torch.tensor([len(s.options) for s in samples], device=letters.device)
    return torch.arange(letters.shape[1], device=letters.device)[None, :] < counts[:, None]


def option_log_probs(letters: Tensor, samples: Sequence[Sample]) -> Tensor:
    """(B, K_max) log-probabilities over each sample's own options (-inf past them), in the
    letters' dtype: what objectives and losses differentiate."""
    return torch.log_softmax(letters.masked_fill(~_option_mask(letters, samples), -torch.inf),
                             dim=-1)


def option_distributions(letters: Tensor, samples: Sequence[Sample]) -> list[np.ndarray]:
    """Per sample, the softmax over its own options in float64: what every record stores.

    From the float32 letter logits whatever the network's dtype, as every stored record so
    far (a float64 network's logits are rounded to float32 first).
    """
    return [torch.softmax(row[: len(s.options)].float().double(), dim=-1).cpu().numpy()
            for row, s in zip(letters.detach(), samples)]
