"""Images given to text-heavy questions: noise, blank canvases, or another sample's image."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
from PIL import Image

from mibench.records import Sample
from mibench.tasks.base import Task

from .base import Perturbation


class RandomPixels(Perturbation):
    """An image of uniform random pixels."""

    touches = "image"

    def __init__(self, name: str = "random_pixels", size: Sequence[int] = (224, 224)) -> None:
        self.name, self.size = name, list(size)

    def apply(self, sample: Sample, rng: np.random.Generator) -> Sample:
        width, height = self.size
        pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
        return dataclasses.replace(sample, image=Image.fromarray(pixels, "RGB"))


class BlankImage(Perturbation):
    """A canvas of one colour (the study's full-black and full-white images)."""

    touches = "image"

    def __init__(self, name: str, color: Sequence[int] = (0, 0, 0),
                 size: Sequence[int] = (224, 224)) -> None:
        if len(color) != 3 or not all(0 <= c <= 255 for c in color):
            raise ValueError(f"perturbation {name!r}: color must be 3 values in 0..255")
        self.name, self.color, self.size = name, list(color), list(size)

    def apply(self, sample: Sample, rng: np.random.Generator) -> Sample:
        canvas = Image.new("RGB", tuple(self.size), tuple(self.color))
        return dataclasses.replace(sample, image=canvas)


class SwitchedImage(Perturbation):
    """A real image taken from another sample (a donor task's samples).

    With `prefer_lure`, the donor is drawn among images whose label names one of the
    recipient's wrong options (a switched image that points to a wrong answer, recorded as
    the `lure`); where no such donor exists, any donor is drawn.
    """

    touches = "image"

    def __init__(self, donors: Task, name: str = "switched_image",
                 prefer_lure: bool = True) -> None:
        self.name, self.prefer_lure, self._donor_task = name, prefer_lure, donors
        self._pool: list[Sample] | None = None
        self._by_label: dict[str, list[int]] = {}

    def describe(self) -> dict:
        """As any perturbation, plus the donor task's description (its data digest once the
        donors are loaded: `load_data()`)."""
        info = super().describe()
        info["params"]["donors_task"] = self._donor_task.describe()
        return info

    def load_data(self) -> None:
        self._donors()

    def _donors(self) -> list[Sample]:
        if self._pool is None:
            pool = [s for s in self._donor_task.samples() if s.image is not None]
            if not pool:
                raise ValueError(f"perturbation {self.name!r}: donor task "
                                 f"{self._donor_task.name!r} has no sample with an image")
            self._pool = pool
            for i, donor in enumerate(pool):
                self._by_label.setdefault(_label(donor), []).append(i)
        return self._pool

    def apply(self, sample: Sample, rng: np.random.Generator) -> Sample:
        pool = self._donors()
        lures = [i for i, option in enumerate(sample.options)
                 if i != sample.answer and _norm(option) in self._by_label]
        if self.prefer_lure and lures:
            lure = lures[int(rng.integers(len(lures)))]
            candidates = self._by_label[_norm(sample.options[lure])]
            donor = pool[candidates[int(rng.integers(len(candidates)))]]
            meta = {**sample.meta, "lure": lure, "donor": donor.id}
        else:
            donor = pool[int(rng.integers(len(pool)))]
            meta = {**sample.meta, "donor": donor.id}
        return dataclasses.replace(sample, image=donor.image, meta=meta)


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def _label(sample: Sample) -> str:
    return _norm(sample.options[sample.answer])
