"""The Task contract: a named, versioned source of multiple-choice samples."""

from __future__ import annotations

from abc import ABC, abstractmethod

from mibench.records import Category, Sample


class Task(ABC):
    """Yields the samples of one dataset split, in a stable order with stable ids.

    `version` changes whenever the samples a task yields change for the same config, so
    results record exactly what was measured.
    """

    name: str
    version: int = 1
    category: Category
    # The condition the others are compared with (drop, flip rate, harm, JS): "clean", or a
    # condition of the run, e.g. the study's random-pixel image for its text-heavy questions.
    reference: str = "clean"

    @abstractmethod
    def samples(self) -> list[Sample]:
        """All samples of the task, deterministic for a given config."""

    def describe(self) -> dict:
        """What the results record about this task."""
        info = {"name": self.name, "version": self.version, "category": self.category,
                "class": f"{type(self).__module__}.{type(self).__qualname__}"}
        if self.reference != "clean":  # recorded only where it is not the default
            info["reference"] = self.reference
        return info
