"""How a batch's answers are read off the model: the `scorer=` plug-ins.

`likelihood` (the default) reads the probability of each option letter at the answer
position from one forward pass and answers with the most likely. `generate` lets the model
answer greedily, reads the option from the text with a parser, and asks again as a retry
profile says (the reference study's way: `scorer=study`). Each plug-in hands the runner a
`Scorer` (the seam it calls once per batch), which returns one `Scored` per sample; the
runner turns those into records without knowing which plug-in made them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from mibench.models.base import ModelAdapter
from mibench.models.generation import Generation, letter_probs
from mibench.perturbations.base import Attack

from .answer_parsing import Answer, answer_parser, answer_with_retries, retry_profile
from .errors import MibenchError
from .records import Generated, Sample
from .seeding import stable_seed


class ScorerError(MibenchError, ValueError):
    """A scorer that cannot score what it was given (an attack by generation, say)."""


@dataclass(frozen=True, slots=True)
class Scored:
    """One sample's scored answer; the runner adds task, condition, sample id and gold.

    `prediction` is the option chosen, None where a generated answer names none; `probs`
    the option distribution, None where the backend gave no probabilities.
    """

    probs: tuple[float, ...] | None
    prediction: int | None
    lure: int | None = None
    generated: Generated | None = None


@dataclass(frozen=True)
class Scorer:
    """How a condition scores a batch: one `Scored` per sample, in order.

    `prepare` is the host-side part, run for the next batch in a background thread while
    `score` runs on this one; its result is passed to `score`.
    """

    score: Callable[[Sequence[Sample], object], list[Scored]]
    prepare: Callable[[Sequence[Sample]], object] = lambda chunk: None


def from_probs(probs: Sequence[np.ndarray], lures: Sequence[int | None]) -> list[Scored]:
    """Likelihood answers: the distribution, its most likely option, the lure if any."""
    return [Scored(tuple(float(x) for x in p), int(p.argmax()),
                   None if lure is None else int(lure))
            for p, lure in zip(probs, lures, strict=True)]


class AnswerScorer(ABC):
    """One way of reading answers off a model (a `scorer=` config's `_target_`)."""

    name: ClassVar[str]

    @abstractmethod
    def for_model(self, model: ModelAdapter) -> Scorer:
        """Scores clean samples and those of model-free perturbations."""

    def for_attack(self, attack: Attack, model: ModelAdapter, seed: int, task: str) -> Scorer:
        """Scores a batch under an attack; a scorer that cannot refuses, naming both."""
        raise ScorerError(f"scorer {self.describe()['name']!r} cannot score attack "
                          f"{attack.name!r}: attacks are scored by option likelihood "
                          "(scorer=likelihood)")

    def omitted(self, model: ModelAdapter) -> dict[str, str]:
        """Metrics this scorer cannot give for this model, each with the reason."""
        return {}

    @abstractmethod
    def describe(self) -> dict:
        """Every setting that changes a number (part of a run's fingerprint)."""


class LikelihoodScorer(AnswerScorer):
    """The option letters' probabilities at the answer position, from one forward pass."""

    name = "likelihood"

    def for_model(self, model: ModelAdapter) -> Scorer:
        """The model's own option probabilities; the lure is the one the sample names."""
        return Scorer(prepare=model.prepare,
                      score=lambda chunk, prepared: from_probs(
                          model.option_probs(chunk, prepared),
                          [s.meta.get("lure") for s in chunk]))

    def for_attack(self, attack: Attack, model: ModelAdapter, seed: int, task: str) -> Scorer:
        """Each sample attacked with a seed of its own id; probabilities and lures from one
        application of the attack's base perturbation."""
        def score(chunk: Sequence[Sample], prepared: object) -> list[Scored]:
            seeds = [stable_seed(seed, task, attack.name, s.id) for s in chunk]
            return from_probs(*attack.score(model, chunk, seeds))
        return Scorer(score=score)

    def describe(self) -> dict:
        return {"name": self.name, "class": f"{type(self).__module__}.{type(self).__qualname__}"}


class GenerateScorer(AnswerScorer):
    """Greedy generation, then a parser reads the option; unread answers are asked again.

    `parser` names one of `answer_parsing.PARSERS` (`parser_options` its settings), `retry`
    one of `RETRY_PROFILES`. The record keeps every response, the option read (or none and
    why) and, where the backend gives them, the first answer token's option probabilities
    (the answer that was read: the last ask's).
    """

    name = "generate"

    def __init__(self, parser: str = "letter", parser_options: Mapping[str, str] | None = None,
                 retry: str = "none", max_new_tokens: int = 10,
                 stop: Sequence[str] | None = None, repetition_penalty: float = 1.0,
                 name: str = "generate") -> None:
        if max_new_tokens < 1:
            raise ScorerError(f"scorer.max_new_tokens must be >= 1, got {max_new_tokens}")
        if repetition_penalty <= 0:
            raise ScorerError(f"scorer.repetition_penalty must be > 0 (1.0: none), got "
                              f"{repetition_penalty}")
        self.parser = answer_parser(parser, **dict(parser_options or {}))
        self.profile = retry_profile(retry)
        self.max_new_tokens, self.repetition_penalty = max_new_tokens, repetition_penalty
        self.stop = tuple(stop or ())
        self.label = name

    def for_model(self, model: ModelAdapter) -> Scorer:
        def score(chunk: Sequence[Sample], prepared: object) -> list[Scored]:
            last: dict[int, Generation] = {}  # each sample's latest generation, by object

            def ask(samples: Sequence[Sample], suffix: str) -> list[str]:
                out = model.generate(samples, max_new_tokens=self.max_new_tokens,
                                     stop=self.stop, suffix=suffix,
                                     repetition_penalty=self.repetition_penalty)
                for sample, generation in zip(samples, out, strict=True):
                    last[id(sample)] = generation
                return [g.text for g in out]

            answers = answer_with_retries(ask, chunk, self.parser, self.profile)
            return [self._scored(s, a, last[id(s)]) for s, a in zip(chunk, answers)]
        return Scorer(score=score)

    @staticmethod
    def _scored(sample: Sample, answer: Answer, generation: Generation) -> Scored:
        first = generation.top_logprobs[0] if generation.top_logprobs else None
        probs = None if not first else tuple(float(p) for p in letter_probs(first,
                                                                           sample.letters))
        return Scored(probs, answer.option, sample.meta.get("lure"),
                      Generated(answer.responses, answer.failure, answer.matched,
                                len(sample.options)))

    def omitted(self, model: ModelAdapter) -> dict[str, str]:
        reason = model.logprobs_unavailable()
        if reason is None:
            return {}
        return {"js_divergence": f"left out: the answers were generated without "
                                 f"log-probabilities, so the records hold no option "
                                 f"distributions ({reason})"}

    def describe(self) -> dict:
        return {"name": self.label, "class": f"{type(self).__module__}.{type(self).__qualname__}",
                "decoding": "greedy", "max_new_tokens": self.max_new_tokens,
                "stop": list(self.stop), "repetition_penalty": self.repetition_penalty,
                "parser": self.parser.describe(),
                "retry": self.profile.describe()}



def scorer_of(document: Mapping) -> dict:
    """The scorer a metrics.json or submission records; option likelihood where it records
    none (made before scorers were configurable, when likelihood was the only one)."""
    return document.get("scorer") or LikelihoodScorer().describe()
