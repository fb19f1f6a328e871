"""UI screenshots for text-heavy questions: the study's out-of-distribution image perturbation.

By default a synthetic screenshot drawn with PIL: a window with a title bar, a sidebar, a
toolbar of buttons, lines of text, form fields and a chart, its layout and colours drawn from
the rng (no download). With `image_dir`, a real image is drawn instead from the files of that
folder (sorted, so the same seed picks the same file on every machine): point it at a folder
of real screenshots to match the study's setting.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from mibench.records import Sample

from .base import Perturbation

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}
WORDS = ("File", "Edit", "View", "Settings", "Search", "Inbox", "Profile", "Save", "Cancel",
         "Open", "Share", "Help", "Home", "Reports", "Upload", "Account", "Messages", "Export")

THEMES: tuple[dict[str, tuple[int, int, int]], ...] = (
    {"bg": (246, 246, 248), "bar": (52, 58, 70), "side": (228, 230, 236), "ink": (30, 30, 30),
     "accent": (40, 110, 220)},
    {"bg": (30, 32, 38), "bar": (18, 18, 22), "side": (42, 45, 54), "ink": (220, 220, 225),
     "accent": (90, 190, 120)},
    {"bg": (255, 255, 255), "bar": (0, 120, 212), "side": (243, 242, 241), "ink": (50, 49, 48),
     "accent": (216, 59, 1)},
)


def draw_screenshot(rng: np.random.Generator, size: Sequence[int] = (336, 336)) -> Image.Image:
    """A synthetic application window; every choice comes from `rng`."""
    width, height = int(size[0]), int(size[1])
    theme = THEMES[int(rng.integers(len(THEMES)))]
    image = Image.new("RGB", (width, height), theme["bg"])
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    bar = max(12, height // 14)
    draw.rectangle((0, 0, width, bar), fill=theme["bar"])
    for i, colour in enumerate(((237, 106, 94), (245, 191, 79), (98, 197, 84))):
        x = 6 + i * (bar - 2)
        draw.ellipse((x, 3, x + bar - 8, bar - 5), fill=colour)
    draw.text((width // 3, 2), _words(rng, 2), fill=(235, 235, 235), font=font)
    side = int(width * rng.uniform(0.18, 0.3))
    draw.rectangle((0, bar, side, height), fill=theme["side"])
    for i in range(int(rng.integers(4, 9))):
        y = bar + 8 + i * 18
        if y + 12 > height:
            break
        if i == int(rng.integers(4)):
            draw.rectangle((2, y - 2, side - 2, y + 12), fill=theme["accent"])
        draw.text((8, y), _words(rng, 1), fill=theme["ink"], font=font)
    x0, y = side + 10, bar + 8
    for _ in range(int(rng.integers(2, 5))):  # toolbar buttons
        w = int(rng.integers(40, 70))
        if x0 + w > width - 4:
            break
        draw.rounded_rectangle((x0, y, x0 + w, y + 16), radius=4, fill=theme["accent"])
        draw.text((x0 + 5, y + 2), _words(rng, 1), fill=(255, 255, 255), font=font)
        x0 += w + 6
    y += 26
    while y < height - 20:
        kind = rng.random()
        if kind < 0.5:  # a line of text
            draw.text((side + 10, y), _words(rng, int(rng.integers(3, 7))), fill=theme["ink"],
                      font=font)
            y += 14
        elif kind < 0.75:  # a form field with a label
            draw.text((side + 10, y), _words(rng, 1) + ":", fill=theme["ink"], font=font)
            draw.rectangle((side + 70, y - 2, width - 12, y + 12), outline=theme["ink"])
            y += 20
        else:  # a small bar chart
            h = int(rng.integers(24, 48))
            if y + h > height - 4:
                break
            n = int(rng.integers(4, 9))
            step = max(4, (width - side - 24) // n)
            for j in range(n):
                top = y + h - int(rng.integers(4, h))
                draw.rectangle((side + 12 + j * step, top, side + 8 + (j + 1) * step - 4, y + h),
                               fill=theme["accent"])
            y += h + 8
    return image


def _words(rng: np.random.Generator, n: int) -> str:
    return " ".join(WORDS[int(i)] for i in rng.integers(len(WORDS), size=n))


class UIScreenshot(Perturbation):
    """An image of a user interface: drawn, or drawn from the files of `image_dir`."""

    touches = "image"

    def __init__(self, name: str = "ui_screenshot", size: Sequence[int] = (336, 336),
                 image_dir: str | None = None) -> None:
        self.name, self.size = name, [int(s) for s in size]
        self.image_dir = None if image_dir in (None, "") else str(image_dir)
        self._files: list[Path] | None = None

    def _folder(self) -> list[Path]:
        if self._files is None:
            folder = Path(self.image_dir)
            if not folder.is_dir():
                raise FileNotFoundError(f"perturbation {self.name!r}: image_dir {folder} is not "
                                        "a directory")
            files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise FileNotFoundError(f"perturbation {self.name!r}: no images "
                                        f"({', '.join(sorted(IMAGE_SUFFIXES))}) under {folder}")
            self._files = files
        return self._files

    def apply(self, sample: Sample, rng: np.random.Generator) -> Sample:
        if self.image_dir is None:
            return dataclasses.replace(sample, image=draw_screenshot(rng, self.size))
        files = self._folder()
        path = files[int(rng.integers(len(files)))]
        with Image.open(path) as opened:
            image = opened.convert("RGB")
        return dataclasses.replace(sample, image=image,
                                   meta={**sample.meta, "screenshot": path.name})
