"""OCR-style text for image-heavy questions: the study's out-of-distribution text perturbation.

Text read off signs, labels, receipts and screens, with the errors an OCR engine makes
(O/0, l/1, rn/m, dropped or doubled letters, broken spacing), added before the question. It
names none of the options: it tests whether text that merely looks like it came from an
image moves the answer. Needs no download; all randomness comes from the rng handed in.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from mibench.records import Sample

from .base import Perturbation
from .text import _join

# Snippets of the kind of text an OCR engine finds in everyday photos.
DEFAULT_SNIPPETS: tuple[str, ...] = (
    "EXIT ONLY", "NO PARKING 8AM-6PM", "OPEN 24 HOURS", "TOTAL 12.49", "SALE 30% OFF",
    "PLATFORM 4", "KEEP LEFT", "BEST BEFORE 04/2026", "Made in Italy", "FRAGILE HANDLE WITH CARE",
    "Room 214", "WET FLOOR", "Ticket No. 00417", "Aisle 7 Dairy", "PUSH", "www.example.com",
    "Tel. 555-0199", "CASH ONLY", "Gate B12", "Net wt. 500 g", "SPEED LIMIT 30",
    "Chapter 3", "Page 112", "Batch 4471-A", "Serial No. XK-2291", "Thank you for shopping",
    "Lot 17", "Floor 3 Offices", "Visitors must sign in", "Est. 1987",
)

# Character confusions typical of OCR output.
CONFUSIONS: dict[str, tuple[str, ...]] = {
    "O": ("0", "Q"), "o": ("0",), "0": ("O",), "l": ("1", "I"), "I": ("1", "l"), "1": ("l",),
    "m": ("rn",), "S": ("5",), "s": ("5",), "B": ("8",), "e": ("c",), "a": ("o",), "g": ("9",),
    "t": ("f",), "E": ("F",), "Z": ("2",),
}


def ocr_noise(text: str, rate: float, rng: np.random.Generator) -> str:
    """Corrupt `text` as OCR would: each character confused, dropped or doubled with `rate`."""
    out: list[str] = []
    for char in text:
        roll = rng.random()
        if roll < rate and char in CONFUSIONS:
            choices = CONFUSIONS[char]
            out.append(choices[int(rng.integers(len(choices)))])
        elif roll < rate * 1.3 and char.isalnum():
            continue  # dropped character
        elif roll < rate * 1.5 and char.isalnum():
            out.append(char * 2)  # doubled character
        elif roll < rate * 1.7 and char == " ":
            out.append("")  # two words run together
        else:
            out.append(char)
    return "".join(out)


class OCRText(Perturbation):
    """Adds a few noisy OCR-style snippets, as if read off the image, before the question."""

    touches = "text"

    def __init__(self, name: str = "ocr_text", snippets: Sequence[str] = DEFAULT_SNIPPETS,
                 n_snippets: int = 3, noise: float = 0.08,
                 template: str = "Text detected in the image: {text}") -> None:
        if not snippets or not 1 <= n_snippets <= len(snippets):
            raise ValueError(f"perturbation {name!r}: need 1..{len(snippets)} snippets, "
                             f"asked for {n_snippets}")
        if not 0 <= noise <= 0.5:
            raise ValueError(f"perturbation {name!r}: noise={noise} must be in [0, 0.5]")
        if "{text}" not in template:
            raise ValueError(f"perturbation {name!r}: template must contain '{{text}}'")
        self.name, self.snippets, self.n_snippets = name, list(snippets), int(n_snippets)
        self.noise, self.template = float(noise), template

    def apply(self, sample: Sample, rng: np.random.Generator) -> Sample:
        picked = rng.choice(len(self.snippets), size=self.n_snippets, replace=False)
        text = " | ".join(ocr_noise(self.snippets[int(i)], self.noise, rng) for i in picked)
        added = self.template.format(text=text)
        return dataclasses.replace(sample, distractor=_join(sample.distractor, added))
