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

    @abstractmethod
    def samples(self) -> list[Sample]:
        """All samples of the task, deterministic for a given config."""

    def describe(self) -> dict:
        """What the results record about this task."""
        return {"name": self.name, "version": self.version, "category": self.category,
                "class": f"{type(self).__module__}.{type(self).__qualname__}"}
