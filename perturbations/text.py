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


FACTS_PROMPT = ("Write two short sentences of general facts about a {option}. "
                "Do not mention pictures or images.")


class GeneratedFacts:
    """Two sentences about an option written by a text-generation model, as the study did
    with an LLM. Greedy decoding, cached per option: the same option always gets the same
    text, whatever the sample or the seed. Loads by hub id or local directory.

        facts: {_target_: mibench.perturbations.text.GeneratedFacts,
                model: Qwen/Qwen2.5-0.5B-Instruct}
    """

    def __init__(self, model: str, revision: str | None = None, prompt: str = FACTS_PROMPT,
                 max_new_tokens: int = 60, device: str = "cpu") -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.model_id, self.revision, self.prompt = model, revision, prompt
        self.max_new_tokens = max_new_tokens
        self._tokenizer = AutoTokenizer.from_pretrained(model, revision=revision)
        self._model = AutoModelForCausalLM.from_pretrained(model, revision=revision).to(device)
        self._model.eval()
        self._written: dict[str, str] = {}

    def _prompt_ids(self, option: str):
        request = self.prompt.format(option=option)
        if self._tokenizer.chat_template:
            return self._tokenizer.apply_chat_template(
                [{"role": "user", "content": request}], add_generation_prompt=True,
                return_tensors="pt", return_dict=True)
        return self._tokenizer(request, return_tensors="pt")

    def __call__(self, option: str, rng: np.random.Generator) -> str:
        if option not in self._written:
            import torch

            inputs = self._prompt_ids(option).to(self._model.device)
            with torch.no_grad():
                out = self._model.generate(**inputs, max_new_tokens=self.max_new_tokens,
                                           do_sample=False)
            text = self._tokenizer.decode(out[0, inputs["input_ids"].shape[1]:],
                                          skip_special_tokens=True)
            sentences = [s.strip() for s in text.replace("\n", " ").split(".") if s.strip()]
            self._written[option] = " ".join(f"{s}." for s in sentences[:2])
        return self._written[option]

    def __repr__(self) -> str:
        return (f"GeneratedFacts(model={self.model_id!r}, revision={self.revision!r}, "
                f"prompt={self.prompt!r}, max_new_tokens={self.max_new_tokens})")


class UnrelatedText(Perturbation):
    """Adds sentences that have nothing to do with the image or the options.

    `n_sentences` are drawn from `sentences` without replacement (no sentence twice) while
    the pool has that many, with replacement beyond; `replace=True` always draws with
    replacement, as the study does (10 uniform draws from its pool of 80).
    """

    touches = "text"

    def __init__(self, name: str = "unrelated_text",
                 sentences: Sequence[str] = DEFAULT_UNRELATED_SENTENCES,
                 n_sentences: int = 1, replace: bool | None = None) -> None:
        if not sentences or n_sentences < 1:
            raise ValueError(f"perturbation {name!r}: need a non-empty pool and "
                             f"n_sentences >= 1, got {len(sentences)} sentences and "
                             f"n_sentences={n_sentences}")
        if replace is False and n_sentences > len(sentences):
            raise ValueError(f"perturbation {name!r}: {n_sentences} sentences without "
                             f"replacement from a pool of {len(sentences)}; set replace: null "
                             "(with replacement beyond the pool) or true")
        self.name, self.sentences, self.n_sentences = name, list(sentences), n_sentences
        self._replace = replace

    @property
    def with_replacement(self) -> bool:
        return self._replace if self._replace is not None else (
            self.n_sentences > len(self.sentences))

    def text(self, rng: np.random.Generator) -> str:
        """The sentences drawn for one sample, joined by spaces."""
        picked = rng.choice(len(self.sentences), size=self.n_sentences,
                            replace=self.with_replacement)
        return " ".join(self.sentences[int(i)] for i in picked)

    def apply(self, sample: Sample, rng: np.random.Generator) -> Sample:
        return dataclasses.replace(sample, distractor=_join(sample.distractor, self.text(rng)))

    def describe(self) -> dict:
        """As any perturbation; a draw with replacement says so (`sampling`). Without, the
        record is the one it always was, so earlier results keep their fingerprint."""
        info = super().describe()
        if self.with_replacement:
            info["params"]["sampling"] = (
                f"{self.n_sentences} of {len(self.sentences)} sentences, with replacement")
        return info


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
