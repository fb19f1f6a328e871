"""The records that flow through the suite: a question going in, a scored answer coming out."""

from __future__ import annotations

import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from PIL import Image

from .errors import MibenchError

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
    """

    id: str
    question: str
    options: tuple[str, ...]
    answer: int
    category: Category
    image: Image.Image | None = None
    distractor: str = ""
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.id:
            raise SampleError("a sample has an empty id")
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

    @property
    def relevant_modalities(self) -> frozenset[str]:
        return RELEVANT_MODALITIES[self.category]


@dataclass(frozen=True, slots=True)
class Record:
    """The scored answer to one sample under one condition: one line of records.jsonl."""

    task: str
    condition: str
    sample_id: str
    probs: tuple[float, ...]
    prediction: int
    gold: int
    lure: int | None = None  # the wrong option a perturbation points to, if it points to one

    @property
    def correct(self) -> bool:
        return self.prediction == self.gold

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.task, self.condition, self.sample_id)

    def to_json(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "condition": self.condition,
            "sample_id": self.sample_id,
            "probs": list(self.probs),
            "prediction": self.prediction,
            "gold": self.gold,
            "correct": self.correct,
            "lure": self.lure,
        }

    @classmethod
    def from_json(cls, row: Mapping[str, Any]) -> Record:
        return cls(
            task=row["task"],
            condition=row["condition"],
            sample_id=row["sample_id"],
            probs=tuple(float(p) for p in row["probs"]),
            prediction=int(row["prediction"]),
            gold=int(row["gold"]),
            lure=None if row.get("lure") is None else int(row["lure"]),
        )
