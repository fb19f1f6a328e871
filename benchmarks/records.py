"""The records that flow through the suite: a question going in, a scored answer coming out."""

from __future__ import annotations

import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from PIL import Image

from .errors import MibenchError
from .images import ImageRef

Category = Literal["image_heavy", "text_heavy", "vqa"]
Modality = Literal["text", "image"]
CATEGORIES: tuple[str, ...] = ("image_heavy", "text_heavy", "vqa")
OPTION_LETTERS = string.ascii_uppercase

# The modality a category's answer must come from; perturbing it would change the right answer.
RELEVANT_MODALITIES: dict[str, frozenset[str]] = {
    "image_heavy": frozenset({"image"}),
    "text_heavy": frozenset({"text"}),
    "vqa": frozenset({"text", "image"}),
}


class SampleError(MibenchError, ValueError):
    """A sample that cannot be scored; the message names the sample."""


@dataclass(frozen=True, slots=True)
class Sample:
    """One multiple-choice question, with at most one image.

    `distractor` holds text a perturbation adds, kept apart from `question` so that the
    relevant text stays byte-identical and an attack can find the added span.

    `image` is a PIL image, an `ImageRef` (decoded when its pixels are needed: dataset tasks
    use these so a task never holds all its decoded images), or None. Read pixels with
    `sample.image.convert("RGB")`, which both provide; test "has an image" with
    `sample.image is not None`; a perturbation that leaves the image alone keeps the same
    object, so `perturbed.image is original.image` still says it is untouched.
    """

    id: str
    question: str
    options: tuple[str, ...]
    answer: int
    category: Category
    image: Image.Image | ImageRef | None = None
    distractor: str = ""
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id:
            raise SampleError(f"a sample has an empty or non-text id ({self.id!r})")
        if not isinstance(self.question, str) or not self.question.strip():
            raise SampleError(f"sample {self.id!r}: the question must be non-empty text, got "
                              f"{_shown(self.question)}")
        if not isinstance(self.options, tuple) or not all(
                isinstance(o, str) and o.strip() for o in self.options):
            raise SampleError(f"sample {self.id!r}: options must be a tuple of non-empty "
                              f"strings, got {_shown(self.options)}")
        spaced = [" ".join(o.split()) for o in self.options]  # as a reader sees them
        if len(set(spaced)) != len(spaced):
            repeated = sorted({o for o in spaced if spaced.count(o) > 1})
            raise SampleError(f"sample {self.id!r}: options {list(self.options)} repeat "
                              f"{repeated}; each option must be distinct")
        if self.image is not None and not isinstance(self.image, (Image.Image, ImageRef)):
            raise SampleError(f"sample {self.id!r}: image must be a PIL image, an ImageRef "
                              f"or None, got {type(self.image).__name__}")
        if self.category not in CATEGORIES:
            raise SampleError(f"sample {self.id!r}: unknown category {self.category!r}")
        if not 2 <= len(self.options) <= len(OPTION_LETTERS):
            raise SampleError(
                f"sample {self.id!r}: needs 2..{len(OPTION_LETTERS)} options, "
                f"got {len(self.options)}"
            )
        if not 0 <= self.answer < len(self.options):
            raise SampleError(
                f"sample {self.id!r}: answer index {self.answer} is not among its "
                f"{len(self.options)} options {list(self.options)}"
            )

    @property
    def letters(self) -> tuple[str, ...]:
        return tuple(OPTION_LETTERS[: len(self.options)])


def _shown(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 80 else text[:77] + '...'}"


@dataclass(frozen=True, slots=True)
class Generated:
    """How a generated answer was read (scorer=generate): every response in order (the
    first ask, then each retry), what the parse rests on, and why it found no option.

    `options` is how many options the answer was chosen among: with no probabilities in
    the record it is what tells the chance level. The record's `prediction` is the option
    read, or None.
    """

    responses: tuple[str, ...]
    failure: str | None = None
    matched: str | None = None
    options: int = 0

    def __post_init__(self) -> None:
        if not self.responses:
            raise ValueError("a generated answer holds at least one response")

    @property
    def retries(self) -> int:
        return len(self.responses) - 1

    def to_json(self) -> dict[str, Any]:
        return {"responses": list(self.responses), "retries": self.retries,
                "failure": self.failure, "matched": self.matched, "options": self.options}

    @classmethod
    def from_json(cls, row: Mapping[str, Any]) -> Generated:
        generated = cls(responses=tuple(str(r) for r in row["responses"]),
                        failure=row.get("failure"), matched=row.get("matched"),
                        options=int(row["options"]))
        if "retries" in row and int(row["retries"]) != generated.retries:
            raise ValueError(f"{row['retries']} retries but {len(generated.responses)} "
                             "responses")
        return generated


@dataclass(frozen=True, slots=True)
class Record:
    """The scored answer to one sample under one condition: one line of records.jsonl.

    A likelihood record holds the option probabilities and their argmax. A generated one
    (`generated` set) holds the option read from the response, or None when none could be
    read (then it is wrong), and probabilities only where the backend gave log-probabilities.
    """

    task: str
    condition: str
    sample_id: str
    probs: tuple[float, ...] | None
    prediction: int | None
    gold: int
    lure: int | None = None  # the wrong option a perturbation points to, if it points to one
    # -- generation (scorer=generate); absent from a likelihood record's JSON --
    generated: Generated | None = None

    @property
    def correct(self) -> bool:
        return self.prediction == self.gold

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.task, self.condition, self.sample_id)

    @property
    def option_count(self) -> int:
        """How many options the answer was chosen among (a generated answer may hold no
        probabilities)."""
        return len(self.probs) if self.probs is not None else self.generated.options

    def to_json(self) -> dict[str, Any]:
        row = {
            "task": self.task,
            "condition": self.condition,
            "sample_id": self.sample_id,
            "probs": None if self.probs is None else list(self.probs),
            "prediction": self.prediction,
            "gold": self.gold,
            "correct": self.correct,
            "lure": self.lure,
        }
        if self.generated is not None:
            row["generated"] = self.generated.to_json()
        return row

    @classmethod
    def from_json(cls, row: Mapping[str, Any]) -> Record:
        generated = row.get("generated")
        return cls(
            task=row["task"],
            condition=row["condition"],
            sample_id=row["sample_id"],
            probs=None if row["probs"] is None else tuple(float(p) for p in row["probs"]),
            prediction=None if row["prediction"] is None else int(row["prediction"]),
            gold=int(row["gold"]),
            lure=None if row.get("lure") is None else int(row["lure"]),
            generated=None if generated is None else Generated.from_json(generated),
        )
