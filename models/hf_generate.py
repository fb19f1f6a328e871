"""Greedy generation on a local transformers model (scorer=generate): batched, left-padded,
and with answers that do not depend on the batch.

Batched decoding rounds differently from decoding a sample alone (padding and the batch's
shape change the order of float sums: about 1e-5 in the logits of the float32 toy). A choice
between two tokens whose scores are further apart than that is the same in any batch; a
near-tie is not. So every step's margin between the best and the second-best token is
recorded, and a sample whose answer passed through a margin below `tie_margin` is generated
again alone. Every other sample made each choice by a margin far above the rounding, so it
chose what it chooses alone: each answer is the sample's own greedy answer, whatever its
batch, and the batch only saves time where that is certain.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from transformers import (
    BatchFeature,
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
)

from mibench.records import OPTION_LETTERS, Sample

from .generation import LETTER_TOKEN_TRIM, Generation

# Below this margin (in logits) between the best and the second-best token, a batched choice
# is not trusted to be the sample's own: the sample is generated again alone. Far above the
# rounding between batch compositions in each dtype (float32: about 1e-5 on the toy; half
# precisions round at 2^-8 (bfloat16) or 2^-11 (float16) of the logit's size).
TIE_MARGINS = {torch.float64: 1e-9, torch.float32: 1e-3, torch.float16: 0.1,
               torch.bfloat16: 0.5}
TOP_LOGPROBS = 20  # alternatives kept for the first answer token, besides the option letters


class FirstTokenLogprobs(LogitsProcessor):
    """Keeps the first step's log-probabilities (before any repetition penalty): the top k
    tokens and the option letters. Returns the scores unchanged."""

    def __init__(self, k: int, letter_ids: Sequence[int]) -> None:
        self.k, self.letter_ids = k, torch.tensor(list(letter_ids))
        self.top: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.top is None:
            logp = torch.log_softmax(scores.float(), dim=-1)
            values, ids = logp.topk(min(self.k, logp.shape[-1]), dim=-1)
            letters = logp[:, self.letter_ids.to(logp.device)]
            self.top = (values.cpu(), ids.cpu(), letters.cpu())
        return scores


class RepetitionPenalty(LogitsProcessor):
    """transformers' repetition penalty (a token already in the sequence, prompt included,
    has its score divided by `penalty` if positive, multiplied if negative), over each row's
    real tokens only: a row's left padding is no text it repeats, and penalising it would
    make the answer depend on how much padding the batch gave the row. Alone (no padding)
    it is exactly transformers' `RepetitionPenaltyLogitsProcessor`."""

    def __init__(self, penalty: float, first_real: torch.Tensor) -> None:
        if penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {penalty}")
        self.penalty, self.first_real = penalty, first_real

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        real = positions[None, :] >= self.first_real.to(input_ids.device)[:, None]
        seen = torch.zeros(scores.shape, dtype=torch.int32, device=scores.device)
        seen.scatter_add_(1, input_ids.to(scores.device), real.to(torch.int32).to(scores.device))
        penalised = torch.where(scores < 0, scores * self.penalty, scores / self.penalty)
        return torch.where(seen > 0, penalised, scores)


class Margins(LogitsProcessor):
    """Records, at every step, each row's margin between its best and second-best token in
    the scores greedy decoding chooses from (so it must come last). Returns them unchanged."""

    def __init__(self) -> None:
        self.steps: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        top2 = scores.topk(2, dim=-1).values.float()
        self.steps.append(top2[:, 0] - top2[:, 1])
        return scores

    def per_row(self) -> np.ndarray:
        """(rows, steps) margins."""
        return torch.stack(self.steps, dim=1).cpu().numpy()


class StopOnText(StoppingCriteria):
    """Ends a row once its generated text holds one of `stops`."""

    def __init__(self, tokenizer, stops: Sequence[str], start: int) -> None:
        self.tokenizer, self.stops, self.start = tokenizer, tuple(stops), start

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs
                 ) -> torch.BoolTensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.start:], skip_special_tokens=True)
        return torch.tensor([any(s in t for s in self.stops) for t in texts],
                            dtype=torch.bool, device=input_ids.device)


class HFGeneration:
    """`ModelAdapter.generate` for transformers image-text-to-text models.

    Reads `self.model`, `self.tokenizer`, `self.letter_ids`, `self.device` and
    `self._encode_on_host(samples, suffix)`, all set by `HFModelAdapter`. A family whose
    batch needs another network to generate from overrides `generation_network`.
    """

    generation_redos = 0  # samples generated again alone after a near-tie in their batch

    @property
    def tie_margin(self) -> float:
        return TIE_MARGINS.get(self.model.dtype, TIE_MARGINS[torch.bfloat16])

    def logprobs_unavailable(self) -> str | None:
        return None  # the first answer token's log-probabilities come with every answer

    def generation_network(self, inputs: BatchFeature) -> tuple[torch.nn.Module, BatchFeature]:
        """The module whose `generate` answers this batch, and the inputs it takes."""
        return self.model, inputs

    def generate(self, samples: Sequence[Sample], *, max_new_tokens: int,
                 stop: Sequence[str] = (), suffix: str = "", repetition_penalty: float = 1.0
                 ) -> list[Generation]:
        """Greedy answers; samples with and without an image are generated apart (families
        such as InstructBLIP and Mllama answer the two through different networks)."""
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        samples = list(samples)
        out: list[Generation | None] = [None] * len(samples)
        groups = [[i for i, s in enumerate(samples) if s.image is not None],
                  [i for i, s in enumerate(samples) if s.image is None]]
        options = dict(max_new_tokens=max_new_tokens, stop=tuple(stop), suffix=suffix,
                       repetition_penalty=repetition_penalty)
        for rows in groups:
            if not rows:
                continue
            answers, tied = self._generate_batch([samples[i] for i in rows], **options)
            for i, answer, near_tie in zip(rows, answers, tied, strict=True):
                if near_tie and len(rows) > 1:
                    self.generation_redos += 1
                    answer = self._generate_batch([samples[i]], **options)[0][0]
                out[i] = answer
        return out  # type: ignore[return-value]

    @torch.no_grad()
    def _generate_batch(self, samples: list[Sample], *, max_new_tokens: int,
                        stop: tuple[str, ...], suffix: str, repetition_penalty: float
                        ) -> tuple[list[Generation], list[bool]]:
        """One batch's answers, and which passed a margin below `tie_margin` on the way."""
        inputs = self._encode_on_host(samples, suffix).to(self.device)
        network, inputs = self.generation_network(inputs)
        start = inputs["input_ids"].shape[1]
        first = FirstTokenLogprobs(TOP_LOGPROBS, self.letter_ids)
        margins = Margins()
        processors: list[LogitsProcessor] = [first]
        if repetition_penalty != 1.0:  # after the first token's log-probs are kept
            padding = (inputs["attention_mask"].cumsum(dim=1) == 0).sum(dim=1)
            processors.append(RepetitionPenalty(repetition_penalty, padding))
        processors.append(margins)
        criteria = StoppingCriteriaList([StopOnText(self.tokenizer, stop, start)] if stop else [])
        sequences = network.generate(
            **inputs, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
            repetition_penalty=1.0, logits_processor=LogitsProcessorList(processors),
            stopping_criteria=criteria, pad_token_id=self.tokenizer.pad_token_id)
        if sequences.shape[1] >= start and torch.equal(sequences[:, :start].to(
                inputs["input_ids"].device), inputs["input_ids"]):
            sequences = sequences[:, start:]
        eos = _eos_ids(network)
        per_row = margins.per_row()
        answers, tied = [], []
        for row, tokens in enumerate(sequences.tolist()):
            length, finish = _answer_length(tokens, eos, stop, self.tokenizer)
            text = self.tokenizer.decode(tokens[:length], skip_special_tokens=True)
            cut = min((text.find(s) for s in stop if s in text), default=-1)
            text = text[:cut] if cut >= 0 else text
            answers.append(Generation(text, finish, (self._first_token_alternatives(
                first.top, row, samples[row]),)))
            tied.append(bool((per_row[row, :length] < self.tie_margin).any()))
        return answers, tied

    def _first_token_alternatives(self, top: tuple, row: int, sample: Sample) -> dict[str, float]:
        """The first answer token's log-probabilities by text: the sample's option letters
        as the model emits them (the tokens likelihood scores, so `letter_probs` gives
        exactly likelihood's distribution), and the top alternatives that do not read as a
        letter (another form of one, "A" beside " A", would add to it); ids that decode
        alike are merged."""
        values, ids, letters = top
        by_id = {int(i): float(v) for i, v in zip(ids[row], values[row])
                 if self.tokenizer.decode([int(i)]).strip(LETTER_TOKEN_TRIM)
                 not in set(OPTION_LETTERS)}
        for i, v in zip(self.letter_ids[: len(sample.options)], letters[row]):
            by_id[int(i)] = float(v)
        merged: dict[str, float] = {}
        for token_id, logprob in by_id.items():
            text = self.tokenizer.decode([token_id])
            merged[text] = float(np.logaddexp(merged[text], logprob)) if text in merged else logprob
        return merged


def _eos_ids(network: torch.nn.Module) -> set[int]:
    eos = getattr(getattr(network, "generation_config", None), "eos_token_id", None)
    if eos is None:
        return set()
    return {int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])}


def _answer_length(tokens: list[int], eos: set[int], stop: tuple[str, ...], tokenizer
                   ) -> tuple[int, str]:
    """How many of the generated tokens are the answer, and why it ended ("stop": EOS or a
    stop string; "length": max_new_tokens)."""
    end = next((k + 1 for k, token in enumerate(tokens) if token in eos), None)
    tokens = tokens[:end]
    if stop and any(s in tokenizer.decode(tokens, skip_special_tokens=True) for s in stop):
        for k in range(len(tokens)):  # the token that completed the first stop string
            if any(s in tokenizer.decode(tokens[: k + 1], skip_special_tokens=True)
                   for s in stop):
                return k + 1, "stop"
    return (len(tokens), "stop") if end is not None else (len(tokens), "length")
