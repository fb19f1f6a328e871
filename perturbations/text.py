"""Text added to image-heavy questions: unrelated facts, or a caption naming a wrong option."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

from mibench.records import Sample

from .base import Perturbation

# The study's misleading caption; `{facts}` is two sentences about the wrong option.
STUDY_MISLEADING_TEMPLATE = "The picture seems to describe a {option}. {facts}"

# Model-free stand-in for the study's LLM-written facts about the wrong option.
DEFAULT_FACT_TEMPLATES: tuple[str, ...] = (
    "Many people have seen a {option} before. It is easy to recognise a {option}.",
    "Everyone knows what a {option} looks like. There is a {option} in many pictures.",
    "Children learn early what a {option} is. You can find a {option} in many places.",
)

# Science and history facts with no bearing on any image-classification answer.
DEFAULT_UNRELATED_SENTENCES: tuple[str, ...] = (
    "Water boils at one hundred degrees at sea level.",
    "Light from the sun takes about eight minutes to reach the earth.",
    "The roman empire was divided into two parts in the year three hundred and ninety five.",
    "Plants make sugar from water and air using the energy of light.",
    "The first printed books in europe were made about six hundred years ago.",
    "Sound travels faster in water than in air.",
    "The moon moves around the earth about once every month.",
    "Many old cities were built next to a river.",
)

FactWriter = Callable[[str, np.random.Generator], str]
"""Writes sentences about an option; the hook for a generator model (the study used an LLM)."""


@dataclasses.dataclass
class TemplateFacts:
    """Two sentences about an option from fixed templates: needs no extra model."""

    templates: Sequence[str] = DEFAULT_FACT_TEMPLATES

    def __call__(self, option: str, rng: np.random.Generator) -> str:
        return self.templates[int(rng.integers(len(self.templates)))].format(option=option)


class UnrelatedText(Perturbation):
    """Adds sentences that have nothing to do with the image or the options."""

    touches = "text"

    def __init__(self, name: str = "unrelated_text",
                 sentences: Sequence[str] = DEFAULT_UNRELATED_SENTENCES,
                 n_sentences: int = 1) -> None:
        if not sentences or not 1 <= n_sentences <= len(sentences):
            raise ValueError(f"perturbation {name!r}: need 1..{len(sentences)} sentences, "
                             f"asked for {n_sentences}")
        self.name, self.sentences, self.n_sentences = name, list(sentences), n_sentences

    def apply(self, sample: Sample, rng: np.random.Generator) -> Sample:
        picked = rng.choice(len(self.sentences), size=self.n_sentences, replace=False)
        text = " ".join(self.sentences[int(i)] for i in picked)
        return dataclasses.replace(sample, distractor=_join(sample.distractor, text))


class MisleadingText(Perturbation):
    """Adds a caption that names a wrong option, plus sentences about that option.

    The wrong option is recorded as the sample's `lure`, so results can tell how often the
    model followed the text rather than merely changed its mind.
    """

    touches = "text"

    def __init__(self, name: str = "misleading_text",
                 template: str = STUDY_MISLEADING_TEMPLATE,
                 facts: FactWriter | None = None) -> None:
        if "{option}" not in template:
            raise ValueError(f"perturbation {name!r}: template must contain '{{option}}'")
        self.name, self.template = name, template
        self._facts = facts if facts is not None else TemplateFacts()

    def apply(self, sample: Sample, rng: np.random.Generator) -> Sample:
        wrong = [i for i in range(len(sample.options)) if i != sample.answer]
        lure = wrong[int(rng.integers(len(wrong)))]
        option = sample.options[lure]
        facts = self._facts(option, rng) if "{facts}" in self.template else ""
        text = self.template.format(option=option, facts=facts).strip()
        return dataclasses.replace(sample, distractor=_join(sample.distractor, text),
                                   meta={**sample.meta, "lure": lure})

    def describe(self) -> dict:
        info = super().describe()
        info["params"]["facts"] = repr(self._facts)
        return info


def _join(existing: str, added: str) -> str:
    return f"{existing} {added}" if existing else added
