"""The reference study's text perturbations, with the texts it released (Cai et al. 2025).

Both put their text inside the study's question block (mibench.prompt_styles, style `study`)
the way its eval does (modules/utils/aug_utils.py, `text_aug_for_ImageHeavy`):

- unrelated text: `question = add_text + question`, no separator; `add_text` is 10
  sentences drawn uniformly with replacement from the pool its
  `generate_unrelated_distraction_prompts` defines (80 sentences, 20 of them false facts),
  joined by spaces, with a final "." if it lacks one. The pool and the count are read from
  the released code at the pinned commit (mibench.study_release), never copied here.
- misleading text: `question = fact + ' ' + question`, the fact being the item's own released
  `facts` entry (an LLM-written "The picture seems to describe a <wrong option>. <two
  sentences>"), read with the item (tasks/study_data.py). The option it names is the lure.

The study draws afresh on every call and sets no seed; here each sample's draw comes from the
runner's rng for (seed, task, condition, sample id), so it is the same on every run.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from mibench.errors import MibenchError
from mibench.prompt_styles import DISTRACTOR_JOIN
from mibench.records import Sample
from mibench.study_release import StudyRelease, UnrelatedPool

from .base import Perturbation
from .text import UnrelatedText, _join

ENDINGS = (".", "?", "!")


class MissingFactsError(MibenchError, ValueError):
    """A sample without the released `facts` the study's misleading text needs."""


class StudyUnrelatedText(UnrelatedText):
    """The study's unrelated sentences, drawn as its code draws them (see module doc).

    `n_sentences` null: as many as the released code draws (10). The pool is loaded on
    first use (or by `load_data`), so building the perturbation reads nothing.
    """

    def __init__(self, name: str = "study_unrelated_text",
                 release: Mapping[str, Any] | None = None,
                 n_sentences: int | None = None) -> None:
        if n_sentences is not None and n_sentences < 1:
            raise ValueError(f"perturbation {name!r}: n_sentences={n_sentences} must be >= 1")
        self.name, self._replace = name, True
        self._release = StudyRelease.from_config(release)
        self._asked = n_sentences
        self._pool: UnrelatedPool | None = None

    def load_data(self) -> None:
        if self._pool is None:
            self._pool = self._release.unrelated_pool()

    @property
    def sentences(self) -> list[str]:  # type: ignore[override]
        self.load_data()
        return list(self._pool.sentences)

    @property
    def n_sentences(self) -> int:  # type: ignore[override]
        self.load_data()
        return self._asked or self._pool.draws

    def text(self, rng: np.random.Generator) -> str:
        self.load_data()
        picked = rng.choice(len(self._pool.sentences), size=self.n_sentences, replace=True)
        paragraph = self._pool.separator.join(self._pool.sentences[int(i)] for i in picked)
        return paragraph if paragraph.endswith(ENDINGS) else paragraph + "."

    def apply(self, sample: Sample, rng: np.random.Generator) -> Sample:
        perturbed = super().apply(sample, rng)
        return dataclasses.replace(perturbed, meta={**sample.meta, DISTRACTOR_JOIN: ""})

    def describe(self) -> dict:
        info = Perturbation.describe(self)
        info["params"].update(
            n_sentences=self._asked, release=self._release.describe(),
            pool=None if self._pool is None else self._pool.describe(),
            sampling=("with replacement, as many as the released code draws"
                      if self._asked is None else f"{self._asked}, with replacement"))
        return info


class StudyMisleadingText(Perturbation):
    """The item's released misleading fact before its question (see module doc)."""

    touches = "text"

    def __init__(self, name: str = "study_misleading_text") -> None:
        self.name = name

    def apply(self, sample: Sample, rng: np.random.Generator) -> Sample:
        facts = sample.meta.get("facts")
        if not isinstance(facts, Mapping) or not facts:
            raise MissingFactsError(
                f"sample {sample.id!r} has no released `facts`; the study's misleading text "
                "is the item's own fact (the `facts` field of its multiple_choice_data JSON)")
        named = list(facts)  # the study: np.random.choice over the values, in file order
        option = named[int(rng.integers(len(named)))]
        fact = str(facts[option]).strip()
        meta = {**sample.meta, DISTRACTOR_JOIN: " "}
        wrong = [i for i, text in enumerate(sample.options)
                 if i != sample.answer and _norm(text) == _norm(option)]
        if wrong:
            meta["lure"] = wrong[0]
        return dataclasses.replace(sample, distractor=_join(sample.distractor, fact), meta=meta)


def _norm(text: str) -> str:
    return " ".join(str(text).strip().strip("'").casefold().split())
