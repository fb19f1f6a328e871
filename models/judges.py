"""Judges: independent image classifiers that say whether a picture depicts an option.

An optimisation-made "misleading image" is only an interference probe if it shows the wrong
option to an observer other than the model it was made on; otherwise it is an adversarial
input. A judge gives, per image, a distribution over a sample's options (plus "none of them"
where it can say so) and a verdict: it sees the lure when the lure is its top choice with at
least `threshold` probability. A judge is never the source model: `check_independent`
refuses, by weights digest, a judge whose files are the source's.

- `ShapesJudge`: a small CNN trained on freshly rendered shapes-world images
  (`scripts/train_shapes_judge.py`), shipped in `models/shapes_judge/`; it knows colours,
  shapes and the objects drawn as shapes, and has a "no shape" class.
- `ClipJudge`: any CLIP checkpoint by hub id or local path, zero-shot over
  "a photo of a {option}." prompts.

Weights load on first use, so building a judge (a submitted config, a digest check) costs
nothing.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from mibench.digests import checkpoint_digest, folder_digest
from mibench.errors import MibenchError

SHAPES_JUDGE_DIR = Path(__file__).parent / "shapes_judge"
NONE = "(none)"  # the extra entry of a judge's distribution that can say "none of these"


class JudgeError(MibenchError, ValueError):
    """A judge that cannot judge these images or options, or is not independent."""


@dataclass(frozen=True)
class Verdict:
    """What a judge says about one image: its distribution over the sample's options (plus
    NONE last where `has_none`), its top choice (an option index, or None for NONE), the
    lure's probability, and whether it sees the lure."""

    probs: tuple[float, ...]
    choice: int | None
    p_lure: float
    sees_lure: bool


class Judge(ABC):
    """An image classifier independent of the model under test."""

    kind: str
    threshold: float

    @property
    @abstractmethod
    def weights_sha256(self) -> str | None:
        """Digest of the judge's checkpoint files (as models' `weights_sha256`)."""

    @abstractmethod
    def option_probs(self, images: Sequence[Image.Image],
                     options: Sequence[Sequence[str]]) -> list[np.ndarray]:
        """Per image, probabilities over its options, plus NONE last where the judge has it."""

    @property
    def has_none(self) -> bool:
        return False

    def verdicts(self, images: Sequence[Image.Image], options: Sequence[Sequence[str]],
                 lures: Sequence[int]) -> list[Verdict]:
        out = []
        for probs, lure in zip(self.option_probs(images, options), lures, strict=True):
            top = int(np.argmax(probs))
            choice = None if self.has_none and top == len(probs) - 1 else top
            out.append(Verdict(tuple(float(p) for p in probs), choice, float(probs[lure]),
                               bool(choice == lure and probs[lure] >= self.threshold)))
        return out

    def describe(self) -> dict:
        return {"kind": self.kind, "threshold": self.threshold,
                "weights_sha256": self.weights_sha256, **self._where()}

    def _where(self) -> dict:
        return {}


def check_independent(judge: Judge, source_digest: str | None, source: str) -> None:
    """Refuse a judge whose checkpoint is the source model's (same weights digest)."""
    mine = judge.weights_sha256
    if mine is not None and mine == source_digest:
        raise JudgeError(f"the judge ({judge.kind}, {judge.describe().get('path')}) has the "
                         f"same weights ({mine[:12]}) as the model the images were made on "
                         f"({source}); a meaning check needs an independent judge: choose "
                         "another judge")


def judge_from_description(description: dict, where: str) -> Judge:
    """A judge rebuilt from its `describe()` (a run's fingerprint: data, so only the judge
    kinds below and their own keys are read), checked against the weights it recorded."""
    kinds = {ShapesJudge.kind: (ShapesJudge, ("path", "threshold", "require_shape")),
             ClipJudge.kind: (ClipJudge, ("path", "revision", "template", "threshold"))}
    kind = description.get("kind") if isinstance(description, dict) else None
    if kind not in kinds:
        raise JudgeError(f"{where}: judge kind {kind!r} is not one of {sorted(kinds)}")
    cls, keys = kinds[kind]
    values = {k: description[k] for k in keys if k in description}
    if any(not isinstance(v, (str, int, float, bool, type(None))) for v in values.values()):
        raise JudgeError(f"{where}: judge settings {values} are not plain values")
    try:
        judge = cls(**values)
    except (TypeError, ValueError) as err:
        raise JudgeError(f"{where}: judge {values} cannot be rebuilt: {err}") from err
    recorded = description.get("weights_sha256")
    if recorded is not None and judge.weights_sha256 != recorded:
        raise JudgeError(f"{where}: the judge's files changed since the run (weights "
                         f"{str(recorded)[:12]} then, {str(judge.weights_sha256)[:12]} now); "
                         "its verdicts would not be the run's")
    return judge


# -- the shapes-world CNN ------------------------------------------------------------------------
class ShapesCNN(nn.Module):
    """Three conv blocks and two heads: shape (the shapes plus "none") and colour."""

    def __init__(self, shapes: int, colours: int, width: int = 16, hidden: int = 64) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(3, w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(2 * w * 16, hidden), nn.ReLU())
        self.shape = nn.Linear(hidden, shapes + 1)  # the last class: no shape
        self.colour = nn.Linear(hidden, colours)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, 3, 32, 32) in [0, 1] -> (shape logits, colour logits)."""
        h = self.features(x * 2 - 1)
        return self.shape(h), self.colour(h)


def images_to_tensor(images: Sequence[Image.Image], side: int) -> torch.Tensor:
    """(B, 3, side, side) float32 in [0, 1]; images of another size are resized (bilinear)."""
    arrays = []
    for image in images:
        rgb = image.convert("RGB")
        if rgb.size != (side, side):
            rgb = rgb.resize((side, side), Image.BILINEAR)
        arrays.append(np.asarray(rgb, dtype=np.float32) / 255.0)
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


class ShapesJudge(Judge):
    """The shipped shapes-world CNN: colours, shapes, and the objects drawn as shapes.

    Colour options score p(a shape is there) x p(colour), or p(colour) alone without
    `require_shape` (then a wash of colour counts as showing it); shape and object options
    score p(shape); NONE scores p(no shape). `path`: a folder with config.json and
    model.safetensors (None: the shipped one).
    """

    kind = "shapes_cnn"

    def __init__(self, path: str | None = None, threshold: float = 0.5,
                 require_shape: bool = True) -> None:
        if not 0 <= threshold <= 1:
            raise ValueError(f"judge threshold={threshold} must lie in [0, 1]")
        self.path, self.threshold, self.require_shape = path, float(threshold), require_shape

    @property
    def folder(self) -> Path:
        return SHAPES_JUDGE_DIR if self.path is None else Path(self.path).expanduser()

    @cached_property
    def weights_sha256(self) -> str | None:
        if not (self.folder / "config.json").is_file():
            raise JudgeError(f"shapes judge: no config.json in {self.folder}; train one with "
                             "scripts/train_shapes_judge.py --out DIR and set judge.path=DIR")
        return folder_digest(self.folder)

    @cached_property
    def config(self) -> dict:
        return json.loads((self.folder / "config.json").read_text())

    @cached_property
    def network(self) -> ShapesCNN:
        from safetensors.torch import load_file

        config = self.config
        net = ShapesCNN(len(config["shapes"]), len(config["colours"]), config["width"],
                        config["hidden"])
        net.load_state_dict(load_file(self.folder / "model.safetensors"))
        return net.eval()

    @property
    def has_none(self) -> bool:
        return True

    def _classes(self, option: str) -> tuple[str, int]:
        config, word = self.config, " ".join(option.lower().split())
        if word in config["colours"]:
            return "colour", config["colours"].index(word)
        shape = config["objects"].get(word, word)
        if shape in config["shapes"]:
            return "shape", config["shapes"].index(shape)
        raise JudgeError(f"shapes judge: option {option!r} is not a colour, shape or object "
                         f"of the shapes world ({', '.join(config['colours'])}; "
                         f"{', '.join(config['shapes'])}; {', '.join(config['objects'])})")

    @torch.no_grad()
    def option_probs(self, images: Sequence[Image.Image],
                     options: Sequence[Sequence[str]]) -> list[np.ndarray]:
        if not images:
            return []
        x = images_to_tensor(images, int(self.config["image_size"]))
        shape_logits, colour_logits = self.network(x)
        p_shape = torch.softmax(shape_logits.double(), -1).numpy()
        p_colour = torch.softmax(colour_logits.double(), -1).numpy()
        out = []
        for i, opts in enumerate(options):
            classes = [self._classes(option) for option in opts]
            none = p_shape[i, -1]
            if not self.require_shape and all(head == "colour" for head, _ in classes):
                none = 0.0  # a colour question: the colour head alone decides
            scores = [(1 - none) * p_colour[i, k] if head == "colour" else p_shape[i, k]
                      for head, k in classes]
            row = np.array([*scores, none])
            out.append(row / row.sum())
        return out

    def _where(self) -> dict:
        return {"path": self.path, "require_shape": self.require_shape}


# -- CLIP zero-shot ------------------------------------------------------------------------------
class ClipJudge(Judge):
    """A CLIP checkpoint (hub id or local folder), zero-shot over `template` prompts."""

    kind = "clip"

    def __init__(self, path: str, revision: str | None = None,
                 template: str = "a photo of a {option}.", threshold: float = 0.5,
                 device: str = "cpu") -> None:
        if "{option}" not in template:
            raise ValueError(f"judge template {template!r} must contain {{option}}")
        if not 0 <= threshold <= 1:
            raise ValueError(f"judge threshold={threshold} must lie in [0, 1]")
        self.path, self.revision, self.template = str(path), revision, template
        self.threshold, self.device = float(threshold), device

    @cached_property
    def weights_sha256(self) -> str | None:
        return checkpoint_digest(self.path, self.revision)

    @cached_property
    def _loaded(self):
        from transformers import AutoProcessor, CLIPModel

        try:
            processor = AutoProcessor.from_pretrained(self.path, revision=self.revision)
            model = CLIPModel.from_pretrained(self.path, revision=self.revision)
        except (OSError, ValueError) as err:
            raise JudgeError(f"CLIP judge {self.path!r} cannot be loaded: {err}") from err
        return model.to(self.device).eval(), processor

    @torch.no_grad()
    def option_probs(self, images: Sequence[Image.Image],
                     options: Sequence[Sequence[str]]) -> list[np.ndarray]:
        model, processor = self._loaded
        out = []
        for image, opts in zip(images, options, strict=True):
            prompts = [self.template.format(option=o) for o in opts]
            inputs = processor(text=prompts, images=[image.convert("RGB")], padding=True,
                               return_tensors="pt").to(self.device)
            logits = model(**inputs).logits_per_image[0].double()
            out.append(torch.softmax(logits, -1).cpu().numpy())
        return out

    def _where(self) -> dict:
        return {"path": self.path, "revision": self.revision, "template": self.template}
