"""Reading the chosen option out of a generated answer, and asking again when it cannot be read.

A parser turns a response into one of the sample's option indices, or into None with the
reason (a code from `FAILURES`); `PARSERS` maps the names a config uses to the classes.
A `RetryProfile` says how often to ask again, and with what text appended, when a parser
finds no answer; `answer_with_retries` drives it over any generate function.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

from .errors import MibenchError
from .records import OPTION_LETTERS, Sample

# Why a parse found no option: the codes records and metrics use.
FAILURES: dict[str, str] = {
    "empty": "the response is empty",
    "no_letter": "no standalone option letter in the response",
    "not_an_option": "the letter read is not one of the sample's options",
    "no_option_text": "the response names no option's text",
    "several_options": "the response names more than one option's text",
}


class AnswerParsingError(MibenchError, ValueError):
    """An unknown parser or retry profile, or a profile that cannot work."""


@dataclass(frozen=True, slots=True)
class Parse:
    """What a parser read: the option index, or None with a `FAILURES` code.

    `matched` is the text the decision rests on (the letter, the option's words);
    `retry` says whether asking again may help: a parser that read an answer outside the
    options (the study's rule can) has an answer, just not a valid one.
    """

    option: int | None
    failure: str | None = None
    matched: str | None = None
    retry: bool = False

    def __post_init__(self) -> None:
        if (self.option is None) == (self.failure is None):
            raise ValueError("a Parse has either an option or a failure, not both or neither")
        if self.failure is not None and self.failure not in FAILURES:
            raise ValueError(f"unknown parse failure {self.failure!r}; one of {list(FAILURES)}")


def failed(failure: str, matched: str | None = None, retry: bool = True) -> Parse:
    return Parse(None, failure, matched, retry)


class AnswerParser(ABC):
    """One rule that reads a sample's option from a response."""

    name: ClassVar[str]

    @abstractmethod
    def parse(self, text: str, sample: Sample) -> Parse:
        """The option `text` chooses among `sample.options`, or why none."""

    def describe(self) -> dict:
        return {"name": self.name, "class": f"{type(self).__module__}.{type(self).__qualname__}"}


class LetterParser(AnswerParser):
    """The first standalone option letter of the sample's own options.

    Only capitals count, and only when no letter, digit or underscore touches them, nor an
    apostrophe or hyphen joining a word ("B's", "T-shirt"): "(B)", "B.", "Answer: B",
    "**B**" and "F F F" all read as the letter. "A" and "I" followed by a lower-case word
    ("A cat sits", "I think") are read as prose, not as an option; a model that answers
    "A is correct" is therefore not read as A (models almost always mark the letter).
    """

    name = "letter"
    PROSE_WORDS = frozenset("AI")

    def parse(self, text: str, sample: Sample) -> Parse:
        if not text.strip():
            return failed("empty")
        letters = "".join(sample.letters)
        pattern = rf"(?<!\w)(?<!\w['’-])([{letters}])(?!\w)(?!['’-]\w)"
        for match in re.finditer(pattern, text):
            letter = match.group(1)
            if letter in self.PROSE_WORDS and re.match(r"[ \t]+[a-z]", text[match.end():]):
                continue
            return Parse(OPTION_LETTERS.index(letter), matched=letter)
        return failed("no_letter")


class StudyParser(AnswerParser):
    """The reference study's rule: the first standalone letter, either case, upper-cased.

    Reimplemented from `extract_final_choice` in `modules/utils/read_utils.py` of
    luisrui/Modality-Interference-in-MLLMs (called by `model_predict_and_extract` in
    `modules/utils/model_utils.py`): a single letter between regex word boundaries (`\\b`,
    Unicode word characters), A-Z or a-z on the classification datasets (Caltech-101,
    mini-ImageNet: our image-heavy category), A-D or a-d on all others. Lower case counts,
    so the article in "it is a cat" reads as A. A letter beyond the sample's options is
    the study's answer too (scored wrong, never asked again): here it is `not_an_option`
    with `retry=False`.

    `span="options"` keeps the case handling but reads the sample's own letters, for tasks
    with more than four options outside image classification (the toy's six).
    """

    name = "study"

    def __init__(self, span: Literal["study", "options"] = "study") -> None:
        if span not in ("study", "options"):
            raise AnswerParsingError(f"study parser: span must be 'study' or 'options', "
                                     f"got {span!r}")
        self.span = span

    def describe(self) -> dict:
        return {**super().describe(), "span": self.span}

    def letters(self, sample: Sample) -> str:
        if self.span == "options":
            return "".join(sample.letters)
        return OPTION_LETTERS if sample.category == "image_heavy" else OPTION_LETTERS[:4]

    def parse(self, text: str, sample: Sample) -> Parse:
        if not text.strip():
            return failed("empty")
        letters = self.letters(sample)
        match = re.search(rf"\b([{letters}{letters.lower()}])\b", text)
        if match is None:
            return failed("no_letter")
        letter = match.group(1).upper()
        if letter not in sample.letters:
            return failed("not_an_option", letter, retry=False)
        return Parse(OPTION_LETTERS.index(letter), matched=letter)


def normalise(text: str) -> str:
    """Case-folded words separated by single spaces, with a space at either end."""
    return " " + " ".join(re.sub(r"[\W_]+", " ", text.casefold()).split()) + " "


class OptionTextParser(AnswerParser):
    """The one option whose content the response names ("It is a triangle." -> triangle).

    Words are compared case-folded with punctuation dropped, whole words only. Longer
    options are matched first and their words taken out, so "dark red" does not also count
    as "red"; a response naming two options is `several_options`.
    """

    name = "option_text"

    def parse(self, text: str, sample: Sample) -> Parse:
        if not text.strip():
            return failed("empty")
        remaining = normalise(text)
        phrases = [(normalise(option), i) for i, option in enumerate(sample.options)]
        found: list[int] = []
        for phrase, i in sorted(phrases, key=lambda p: (-len(p[0]), p[1])):
            if phrase.strip() and phrase in remaining:
                found.append(i)
                remaining = remaining.replace(phrase, " | ")
        if not found:
            return failed("no_option_text")
        if len(found) > 1:
            names = ", ".join(sample.options[i] for i in sorted(found))
            return failed("several_options", names)
        return Parse(found[0], matched=sample.options[found[0]])


PARSERS: dict[str, type[AnswerParser]] = {
    parser.name: parser for parser in (LetterParser, StudyParser, OptionTextParser)}


def answer_parser(name: str, **options: object) -> AnswerParser:
    """The parser registered under `name`; the error lists the names there are."""
    if name not in PARSERS:
        raise AnswerParsingError(f"unknown answer parser {name!r}; choose from {sorted(PARSERS)}")
    return PARSERS[name](**options)


# -- asking again --------------------------------------------------------------------------
# The study appends this to the question of every sample it could not parse and generates
# again (`model_predict_and_extract`, modules/utils/model_utils.py); the text is its own.
STUDY_RETRY_SUFFIX = ("\nPlease directly choose the option with option number. "
                      "No further explanation.")


@dataclass(frozen=True, slots=True)
class RetryProfile:
    """How often to ask again after an unreadable answer, and what to append to the prompt.

    The study appends its suffix once more on every retry (it extends the prompt in place),
    so retry k carries the suffix k times.
    """

    suffix: str = ""
    retries: int = 0
    name: str = "custom"

    def __post_init__(self) -> None:
        if self.retries < 0:
            raise AnswerParsingError(f"retry profile {self.name!r}: retries must be >= 0, "
                                     f"got {self.retries}")
        if self.retries and not self.suffix:
            raise AnswerParsingError(
                f"retry profile {self.name!r}: {self.retries} retries without a suffix would "
                "send the same greedy request again; give a suffix or set retries to 0")

    def suffix_for(self, attempt: int) -> str:
        """The text appended to the prompt on attempt `attempt` (0: the first ask)."""
        return self.suffix * attempt

    def describe(self) -> dict:
        return {"name": self.name, "suffix": self.suffix, "retries": self.retries}


RETRY_PROFILES: dict[str, RetryProfile] = {
    "none": RetryProfile(name="none"),
    # Every configs/model_inference/*/args_*.yaml of the study sets retry_thres: 2, i.e.
    # two asks in all: the question, then once with the suffix.
    "study": RetryProfile(STUDY_RETRY_SUFFIX, retries=1, name="study"),
}


def retry_profile(name: str) -> RetryProfile:
    if name not in RETRY_PROFILES:
        raise AnswerParsingError(f"unknown retry profile {name!r}; "
                                 f"choose from {sorted(RETRY_PROFILES)}")
    return RETRY_PROFILES[name]


@dataclass(frozen=True, slots=True)
class Answer:
    """One sample's generated answer: every response in order, and what the last one chose."""

    responses: tuple[str, ...]
    option: int | None
    failure: str | None
    matched: str | None

    @property
    def text(self) -> str:
        return self.responses[-1]

    @property
    def retries(self) -> int:
        return len(self.responses) - 1


# (samples, suffix) -> one response text per sample, in order
GenerateFn = Callable[[Sequence[Sample], str], Sequence[str]]


def answer_with_retries(generate: GenerateFn, samples: Sequence[Sample], parser: AnswerParser,
                        profile: RetryProfile = RETRY_PROFILES["none"]) -> list[Answer]:
    """Generate for all samples, then again (with the profile's suffix) for those unread.

    A sample's answer depends only on its own responses, so it is the same whatever
    batch it is asked in, as long as `generate` is.
    """
    responses: list[list[str]] = [[] for _ in samples]
    parses: list[Parse | None] = [None] * len(samples)
    pending = list(range(len(samples)))
    for attempt in range(profile.retries + 1):
        if not pending:
            break
        texts = generate([samples[i] for i in pending], profile.suffix_for(attempt))
        if len(texts) != len(pending):
            raise RuntimeError(f"generate returned {len(texts)} responses for "
                               f"{len(pending)} samples")
        for i, text in zip(pending, texts):
            responses[i].append(text)
            parses[i] = parser.parse(text, samples[i])
        pending = [i for i in pending if parses[i].retry]
    return [Answer(tuple(r), p.option, p.failure, p.matched) for r, p in zip(responses, parses)]
