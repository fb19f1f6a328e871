"""How a Sample is shown to a model: the user's text, a system prompt, the chat messages.

A model adapter renders every prompt through one `PromptStyle` (its `prompt` setting):

- `default`: the suite's own layout (mibench.prompts.format_prompt): distractor line,
  question, "A. option" lines, the answer instruction; no system prompt.
- `study`: the reference study's layout, as its released eval builds it
  (modules/utils/aug_utils.py, modules/models/local.py): the system prompt `qa_image_prompt`
  of its prompt module, read from the released code at the pinned commit
  (mibench.study_release), and the user text
  "Question:\\n{distractor}{join}{question}\\nOption:\\nA: x\\nB: y\\n", image first. Added
  text sits inside the question block, joined as the perturbation that added it says
  (`Sample.meta["distractor_join"]`: "" for the study's unrelated sentences, " " for its
  misleading facts).

A config selects a style by name (`model.prompt: study`, or a mapping `{style: study,
system: qa_image_prompt, release: {...}}`); nothing branches on a benchmark's name. Every
method takes the retry `suffix` a generating scorer appends to the user's text.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from typing import Any

from .errors import MibenchError
from .prompts import ANSWER_INSTRUCTION, format_prompt
from .records import Sample
from .study_release import PROMPT_MODULE, StudyRelease, sha256_text

# What a perturbation puts between its added text and the question (study style only).
DISTRACTOR_JOIN = "distractor_join"
# The fields of the study's prompt formats (`prompt_format.format(system_prompt=...,
# user_input=...)` in its modules/models/local.py).
PLAIN_FIELDS = ("system_prompt", "user_input")


class PromptStyleError(MibenchError, ValueError):
    """An unknown prompt style, or a style's setting that cannot work."""


class PromptStyle:
    """The suite's default layout (see module doc): what every adapter uses unless told."""

    name = "default"
    system: str | None = None

    def user_text(self, sample: Sample, suffix: str = "") -> str:
        """The user's turn as text (options, instruction and any retry suffix included)."""
        return format_prompt(sample) + suffix

    def distractor_span(self, sample: Sample) -> tuple[int, int]:
        """Where `sample.distractor` sits in `user_text(sample)` (start, end)."""
        return 0, len(sample.distractor)

    def plain_text(self, sample: Sample, suffix: str = "") -> str:
        """The whole prompt for a model without a chat template (its `prompt_format`'s
        `{prompt}`): the system prompt, if any, on a line before the user's text, as every
        fallback format of the study's prompt module writes it."""
        text = self.user_text(sample, suffix)
        return f"{self.system}\n{text}" if self.system else text

    def plain_prompt(self, sample: Sample, prompt_format: str, bos: str, suffix: str = ""
                     ) -> str:
        """The whole prompt of a model without a chat template: its `prompt_format` around
        `plain_text` (`{prompt}`, `{bos}`: its BOS token)."""
        return prompt_format.format(prompt=self.plain_text(sample, suffix), bos=bos)

    def messages(self, sample: Sample, suffix: str = "") -> list[dict]:
        """A chat in the processor chat-template format: a system turn if the style has
        one, then the user's turn with the image first."""
        content: list[dict] = []
        if sample.image is not None:
            content.append({"type": "image"})
        content.append({"type": "text", "text": self.user_text(sample, suffix)})
        turns = [{"role": "user", "content": content}]
        if self.system:
            turns.insert(0, {"role": "system",
                             "content": [{"type": "text", "text": self.system}]})
        return turns

    def describe(self) -> dict:
        """What results record about the prompt (the default's record is unchanged since
        the suite began: its instruction)."""
        return {"instruction": ANSWER_INSTRUCTION}


class StudyPrompt(PromptStyle):
    """The reference study's system prompt and user layout (see module doc)."""

    name = "study"

    def __init__(self, system: str = "qa_image_prompt", release: Any = None,
                 plain_format: str | None = None) -> None:
        self.release = StudyRelease.from_config(release)
        self.system_name = system
        self.system = self.release.system_prompt(system)
        # The study's own format for a model without a chat template, by its name in the
        # prompt module (its InstructBLIP: `blip_visual_format`); None: the model's own.
        self.plain_format_name = plain_format
        self.plain_format = None
        if plain_format is not None:
            self.plain_format = self.release.string(PROMPT_MODULE, plain_format)
            fields = {f for _, f, _, _ in string.Formatter().parse(self.plain_format)
                      if f is not None}
            if fields != set(PLAIN_FIELDS):
                raise PromptStyleError(
                    f"prompt style study: {plain_format} of the release has the fields "
                    f"{sorted(fields)}, not {list(PLAIN_FIELDS)}; name a prompt format of "
                    "its prompt module, or none (the model's prompt_format)")

    def user_text(self, sample: Sample, suffix: str = "") -> str:
        question = sample.question
        if sample.distractor:
            question = sample.distractor + sample.meta.get(DISTRACTOR_JOIN, " ") + question
        options = "".join(f"{letter}: {option}\n"
                          for letter, option in zip(sample.letters, sample.options))
        return f"Question:\n{question}\nOption:\n{options}{suffix}"

    def plain_prompt(self, sample: Sample, prompt_format: str, bos: str, suffix: str = ""
                     ) -> str:
        """The study's format where it names one (see __init__): it replaces the model's,
        as the study's `prompt_format` did; the tokenizer adds BOS."""
        if self.plain_format is None:
            return super().plain_prompt(sample, prompt_format, bos, suffix)
        return self.plain_format.format(system_prompt=self.system,
                                        user_input=self.user_text(sample, suffix))

    def distractor_span(self, sample: Sample) -> tuple[int, int]:
        start = len("Question:\n")
        return start, start + len(sample.distractor)

    def describe(self) -> dict:
        return {"style": self.name, "system": self.system_name,
                "system_sha256": sha256_text(self.system),
                "layout": "Question:\\n{distractor}{join}{question}\\nOption:\\n{letter}: "
                          "{option}\\n...", "plain_format": self.plain_format_name,
                "release": self.release.describe()}


STYLES: dict[str, type[PromptStyle]] = {"default": PromptStyle, "study": StudyPrompt}
DEFAULT_STYLE = PromptStyle()


def prompt_style(spec: str | Mapping[str, Any] | PromptStyle | None) -> PromptStyle:
    """A style from a config value: a name, a mapping {style: name, ...settings}, or None
    (the default)."""
    if spec is None:
        return DEFAULT_STYLE
    if isinstance(spec, PromptStyle):
        return spec
    settings: dict[str, Any] = {}
    if isinstance(spec, Mapping):
        settings = {str(k): v for k, v in spec.items()}
        name = settings.pop("style", "default")
    else:
        name = spec
    if name not in STYLES:
        raise PromptStyleError(f"unknown prompt style {name!r}; choose from {sorted(STYLES)}")
    if name == "default" and not settings:
        return DEFAULT_STYLE
    try:
        return STYLES[name](**settings)
    except TypeError as err:
        raise PromptStyleError(f"prompt style {name!r}: {err}") from err
