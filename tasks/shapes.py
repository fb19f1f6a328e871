"""The shapes world: a synthetic task family that the embedded toy model is trained and tested on.

One 32x32 image shows one shape of 6 kinds in one of 6 colours on a noisy grey background;
facts say which person has which object, and every object is drawn as a shape, so any fact can
be shown as an image. Options are always the full pool in canonical order (a model this small
cannot learn to bind shuffled options to letters; see the README). Every sample comes from
`rng_for(seed, split, kind, index)`, so sample i is the same whatever n is, and the "train"
and "test" splits are separate random streams.
"""

from __future__ import annotations

import re
from typing import Literal

import numpy as np
from PIL import Image, ImageDraw

from mibench.prompts import ANSWER_INSTRUCTION
from mibench.records import OPTION_LETTERS, Sample
from mibench.seeding import rng_for

from .base import Task

IMAGE_SIZE = 32
RADIUS_RANGE = (0.28, 0.42)  # a shape's half-extent as a share of the side
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "cross", "ring")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 70, 220),
    "yellow": (230, 210, 40),
    "purple": (150, 60, 190),
    "cyan": (40, 200, 210),
}
COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)
# Each object is drawn as one shape, in the order of SHAPES.
OBJECTS: tuple[str, ...] = ("ball", "box", "tent", "kite", "sign", "hoop")
OBJECT_SHAPE: dict[str, str] = dict(zip(OBJECTS, SHAPES))
NAMES: tuple[str, ...] = ("Anna", "Max", "Lena", "Tom", "Mia", "Ben", "Sara", "Leo")

KINDS: tuple[str, ...] = ("image_heavy", "text_heavy", "vqa")
Kind = Literal["image_heavy", "text_heavy", "vqa"]
SPLITS: tuple[str, ...] = ("train", "test")

SHAPE_QUESTION = "What shape is in the image?"
COLOUR_QUESTION = "What colour is the shape?"
OWNER_QUESTION = "Whose object is in the image?"

# Captions that agree with the image, used only in training; the study's misleading template
# ("The picture seems to describe a ...") is held out so evaluation text is unseen.
CAPTION_TEMPLATES: tuple[str, ...] = (
    "This is a picture of a {option}.",
    "The image shows a {option}.",
    "Here you can see a {option}.",
    "A {colour} {shape} is in the image.",
    "The image shows a {colour} {shape}.",
)


# -- rendering -----------------------------------------------------------------------------
def render_shape(shape: str, colour: str, rng: np.random.Generator) -> Image.Image:
    """A 32x32 RGB image of one shape on a noisy grey background, placed and sized at random."""
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; choose from {SHAPES}")
    if colour not in COLOURS:
        raise ValueError(f"unknown colour {colour!r}; choose from {COLOUR_NAMES}")
    size = IMAGE_SIZE
    r = rng.uniform(*RADIUS_RANGE) * size
    cx, cy = rng.uniform(r + 1, size - r - 1, size=2)
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
    elif shape == "square":
        h = 0.8 * r
        draw.rectangle((cx - h, cy - h, cx + h, cy + h), fill=255)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - 0.95 * r, cy + 0.8 * r), (cx + 0.95 * r, cy + 0.8 * r)],
                     fill=255)
    elif shape == "diamond":
        draw.polygon([(cx, cy - r), (cx + 0.8 * r, cy), (cx, cy + r), (cx - 0.8 * r, cy)], fill=255)
    elif shape == "cross":
        w = 0.33 * r
        draw.rectangle((cx - r, cy - w, cx + r, cy + w), fill=255)
        draw.rectangle((cx - w, cy - r, cx + w, cy + r), fill=255)
    else:  # ring
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
        s = 0.55 * r
        draw.ellipse((cx - s, cy - s, cx + s, cy + s), fill=0)
    inside = np.asarray(mask, dtype=np.float32)[..., None] / 255.0
    background = np.full((size, size, 3), rng.uniform(90, 160), dtype=np.float32)
    fill = np.asarray(COLOURS[colour], dtype=np.float32) + rng.normal(0, 12, size=3)
    pixels = background * (1 - inside) + fill * inside + rng.normal(0, 6, size=(size, size, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).round().astype(np.uint8), mode="RGB")


def plain_image(kind: str, rng: np.random.Generator | None = None) -> Image.Image:
    """A 32x32 "black", "white" or uniform-"noise" image: the text-heavy controls."""
    if kind == "black":
        return Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), (0, 0, 0))
    if kind == "white":
        return Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), (255, 255, 255))
    if kind == "noise":
        rng = rng if rng is not None else np.random.default_rng(0)
        pixels = rng.integers(0, 256, size=(IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
        return Image.fromarray(pixels, mode="RGB")
    raise ValueError(f"unknown plain image {kind!r}; choose black, white or noise")


# -- facts and questions -------------------------------------------------------------------
def fact_text(name: str, obj: str, colour: str | None) -> str:
    """'Anna has a green box.'; without a colour, 'Anna has a box.'."""
    return f"{name} has a {colour} {obj}." if colour else f"{name} has a {obj}."


def text_question(name: str, obj: str, attribute: str) -> str:
    """The text-heavy question about a fact: its object's colour, or which object it is."""
    if attribute == "colour":
        return f"What colour is {name}'s {obj}?"
    if attribute == "object":
        return f"What does {name} have?"
    raise ValueError(f"unknown text-heavy attribute {attribute!r}; use colour or object")


def caption(shape: str, colour: str, attribute: str, rng: np.random.Generator) -> str:
    """A training caption that agrees with the image (names the asked attribute or both)."""
    template = CAPTION_TEMPLATES[int(rng.integers(len(CAPTION_TEMPLATES)))]
    option = shape if attribute == "shape" else colour
    return template.format(option=option, shape=shape, colour=colour)


def image_heavy_sample(sid: str, rng: np.random.Generator, attribute: str | None = None) -> Sample:
    """A shape or colour question answered from the image alone."""
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    colour = COLOUR_NAMES[int(rng.integers(len(COLOUR_NAMES)))]
    attribute = attribute or ("shape" if rng.random() < 0.5 else "colour")
    image = render_shape(shape, colour, rng)
    if attribute == "shape":
        question, options, answer = SHAPE_QUESTION, SHAPES, SHAPES.index(shape)
    else:
        question, options, answer = COLOUR_QUESTION, COLOUR_NAMES, COLOUR_NAMES.index(colour)
    return Sample(id=sid, question=question, options=options, answer=answer,
                  category="image_heavy", image=image,
                  meta={"attribute": attribute, "shape": shape, "colour": colour})


def text_heavy_sample(sid: str, rng: np.random.Generator, attribute: str | None = None) -> Sample:
    """One fact and a question about it; no image (the text alone answers it)."""
    name = NAMES[int(rng.integers(len(NAMES)))]
    obj = OBJECTS[int(rng.integers(len(OBJECTS)))]
    colour = COLOUR_NAMES[int(rng.integers(len(COLOUR_NAMES)))]
    attribute = attribute or ("colour" if rng.random() < 0.5 else "object")
    question = f"{fact_text(name, obj, colour)} {text_question(name, obj, attribute)}"
    if attribute == "colour":
        options, answer = COLOUR_NAMES, COLOUR_NAMES.index(colour)
    else:
        options, answer = OBJECTS, OBJECTS.index(obj)
    return Sample(id=sid, question=question, options=options, answer=answer,
                  category="text_heavy",
                  meta={"attribute": attribute, "name": name, "object": obj,
                        "shape": OBJECT_SHAPE[obj], "colour": colour})


def vqa_sample(sid: str, rng: np.random.Generator) -> Sample:
    """Two facts and an image of one of the two objects: whose object is it?

    Half the samples give both people the same object in different colours, so the colour
    must be read; the rest give different objects, so the shape tells them apart.
    """
    first, second = rng.choice(len(NAMES), size=2, replace=False)
    names = (NAMES[int(first)], NAMES[int(second)])
    if rng.random() < 0.5:
        obj = OBJECTS[int(rng.integers(len(OBJECTS)))]
        objs = (obj, obj)
        c1, c2 = rng.choice(len(COLOUR_NAMES), size=2, replace=False)
        colours = (COLOUR_NAMES[int(c1)], COLOUR_NAMES[int(c2)])
    else:
        o1, o2 = rng.choice(len(OBJECTS), size=2, replace=False)
        objs = (OBJECTS[int(o1)], OBJECTS[int(o2)])
        colours = tuple(COLOUR_NAMES[int(c)] for c in rng.integers(len(COLOUR_NAMES), size=2))
    owner = int(rng.integers(2))
    image = render_shape(OBJECT_SHAPE[objs[owner]], colours[owner], rng)
    facts = " ".join(fact_text(n, o, c) for n, o, c in zip(names, objs, colours))
    return Sample(id=sid, question=f"{facts} {OWNER_QUESTION}", options=NAMES,
                  answer=NAMES.index(names[owner]), category="vqa", image=image,
                  meta={"attribute": "owner", "names": list(names), "objects": list(objs),
                        "colours": list(colours), "shape": OBJECT_SHAPE[objs[owner]],
                        "colour": colours[owner]})


_MAKERS = {"image_heavy": image_heavy_sample, "text_heavy": text_heavy_sample, "vqa": vqa_sample}


def make_sample(kind: str, index: int, seed: int = 0, split: str = "test") -> Sample:
    """Sample `index` of a kind and split; the same whatever else is generated."""
    if kind not in _MAKERS:
        raise ValueError(f"unknown shapes kind {kind!r}; choose from {KINDS}")
    if split not in SPLITS:
        raise ValueError(f"unknown shapes split {split!r}; choose from {SPLITS}")
    rng = rng_for("shapes", seed, split, kind, index)
    return _MAKERS[kind](f"shapes-{split}-{kind}-{index}", rng)


class ShapesTask(Task):
    """n samples of one kind of the shapes world (image_heavy, text_heavy or vqa)."""

    version = 1

    def __init__(self, kind: Kind, n: int, seed: int = 0, split: str = "test",
                 name: str | None = None) -> None:
        if kind not in KINDS:
            raise ValueError(f"task kind={kind!r} is not one of {KINDS}")
        if split not in SPLITS:
            raise ValueError(f"task split={split!r} is not one of {SPLITS}")
        if n < 1:
            raise ValueError(f"task n={n} must be at least 1")
        self.kind, self.n, self.seed, self.split = kind, int(n), int(seed), split
        self.name = name or f"shapes_{kind}"
        self.category = kind

    def samples(self) -> list[Sample]:
        return [make_sample(self.kind, i, self.seed, self.split) for i in range(self.n)]

    def describe(self) -> dict:
        return {**super().describe(), "kind": self.kind, "n": self.n, "seed": self.seed,
                "split": self.split}


# -- vocabulary ----------------------------------------------------------------------------
def _template_words(template: str) -> str:
    return re.sub(r"\{[^}]*\}", " ", template)


def shapes_vocabulary() -> list[str]:
    """Every word the toy tokenizer needs: world, prompt format, chat template, perturbations."""
    from mibench.models.toy_builder import words_of
    from mibench.perturbations.text import (
        DEFAULT_FACT_TEMPLATES,
        DEFAULT_UNRELATED_SENTENCES,
        STUDY_MISLEADING_TEMPLATE,
    )

    texts = [
        *SHAPES, *COLOUR_NAMES, *OBJECTS, *NAMES,
        SHAPE_QUESTION, COLOUR_QUESTION, OWNER_QUESTION,
        text_question("Anna", "box", "colour"), text_question("Anna", "box", "object"),
        fact_text("Anna", "box", "red"),
        *map(_template_words, CAPTION_TEMPLATES),
        ANSWER_INSTRUCTION, " ".join(OPTION_LETTERS), ". ? : ' ,",
        "USER ASSISTANT Which letter",
        _template_words(STUDY_MISLEADING_TEMPLATE),
        *map(_template_words, DEFAULT_FACT_TEMPLATES),
        *DEFAULT_UNRELATED_SENTENCES,
    ]
    return words_of(texts)
