"""Misleading images found by optimisation: a picture the source model reads as a wrong option.

Misleading *text* names a wrong option; this is its image-side counterpart for text-heavy
questions (their image is the irrelevant modality). Per sample, an image is synthesised from
a seeded start (perturbations/inversion.py: a natural-image parametrisation, augmentations
and a total-variation penalty, each switchable) so that the source model reads it as a chosen
wrong option (`target`: the sample's `lure`, or a seeded `random` wrong option):
- `objective: answer`: the whole model, given the sample's own prompt with the image,
  answers the target option (cross-entropy of its letter);
- `objective: probe`: the whole model, asked about the image alone (`probe_question`, the
  sample's options), answers the target option: the model *sees* the option in the image;
- `objective: features`: only the vision tower and projector: the mean projected image
  feature is closest (cosine, softmax over the sample's options) to the language model's
  input embedding of the target option's words.

It needs the model, so the runner treats it as an attack, and by default it is one: such an
image is a fair *interference* probe only where an independent `judge` (models/judges.py,
never the source model: refused by weights digest) confirms that it depicts the lure.
`mibench lures RUN` runs that meaning check, splits the samples into semantic and adversarial
ones, and scores the same images on other models (transfer); see benchmarks/lures.py.

Images are saved as PNGs (what is scored is the saved 8-bit image, as any other model would
read it) with a JSON sidecar, in a cache keyed by (source weights digest, seed, target
option, settings): a rerun, or another run of the same settings, optimises nothing again.
Only families whose pixel tensor is one plain (C, H, W) image per sample can be inverted;
the image is made at the model's own input resolution.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from mibench.atomic import write_text_atomic
from mibench.digests import cache_dir
from mibench.models.base import (
    DifferentiableAdapter,
    WhiteBoxError,
    option_log_probs,
)
from mibench.models.judges import Judge, check_independent, judge_from_description
from mibench.prompts import format_prompt
from mibench.records import Sample
from mibench.seeding import rng_for

from .base import Attack
from .inversion import Prior, invert
from .pgd_mllm import AttackError

log = logging.getLogger(__name__)

TARGETS = ("random", "lure")
OBJECTIVES = ("answer", "probe", "features")
KEY_VERSION = 1  # bumped whenever the same key would give another image
FEATURE_TEMPERATURE = 0.1  # cosine similarities / this -> logits over the options
PLACEHOLDER = Image.new("RGB", (64, 64))  # encoded only to learn the pixel layout
CACHE_FOLDER = "inverted_lure"


@dataclass(frozen=True)
class LureImage:
    """One sample's image: its cache key, the target option, the PNG and its sidecar."""

    key: str
    target: int
    image: Image.Image
    sidecar: dict
    optimised: bool


@dataclass
class LureOutcome:
    """A scored batch: the samples with their images, the source model's option
    distributions on them, the target options and the images."""

    samples: list[Sample]
    probs: list[np.ndarray]
    targets: list[int]
    images: list[LureImage]


def default_cache_dir() -> Path:
    """The mibench cache (MIBENCH_CACHE_DIR, else ~/.cache/mibench) / inverted_lure."""
    return cache_dir() / CACHE_FOLDER


def prompt_sha256(sample: Sample) -> str:
    """Digest of what the model reads besides the image: prompt text and options."""
    return hashlib.sha256(format_prompt(sample).encode()).hexdigest()


def target_option(sample: Sample, seed: int, target: str) -> int:
    """The wrong option a sample's image is made to show: its `lure`, or one drawn from the
    sample's seed among its wrong options."""
    if target == "lure":
        lure = sample.meta.get("lure")
        if not isinstance(lure, int) or isinstance(lure, bool) or lure == sample.answer or not (
                0 <= lure < len(sample.options)):
            raise AttackError(f"sample {sample.id!r} names no wrong option as its lure "
                              f"(meta lure={lure!r}); use target: random")
        return lure
    wrong = [k for k in range(len(sample.options)) if k != sample.answer]
    return wrong[int(rng_for(seed, "inverted-lure-target").integers(len(wrong)))]


class LureCache:
    """PNGs and JSON sidecars under `root/<key[:2]>/<key>.{png,json}`."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def paths(self, key: str) -> tuple[Path, Path]:
        folder = self.root / key[:2]
        return folder / f"{key}.png", folder / f"{key}.json"

    def load(self, key: str, expect: dict) -> tuple[Image.Image, dict] | None:
        """The cached image and sidecar if both exist and the sidecar agrees with `expect`
        (option text, prompt digest); None otherwise (then the image is made again)."""
        png, side = self.paths(key)
        if not (png.is_file() and side.is_file()):
            return None
        try:
            sidecar = json.loads(side.read_text())
            with Image.open(png) as opened:
                image = opened.convert("RGB")
        except (OSError, ValueError) as err:
            log.warning("inverted_lure: cached image %s unreadable (%s); making it again",
                        png, err)
            return None
        if any(sidecar.get(k) != v for k, v in expect.items()):
            log.warning("inverted_lure: cached image %s was made for another prompt or option; "
                        "making it again", png)
            return None
        return image, sidecar

    def save(self, key: str, image: Image.Image, sidecar: dict) -> None:
        png, side = self.paths(key)
        png.parent.mkdir(parents=True, exist_ok=True)
        tmp = png.with_name(f".{png.name}.tmp")
        image.save(tmp, format="PNG")
        tmp.replace(png)
        write_text_atomic(side, json.dumps(sidecar, indent=1, sort_keys=True) + "\n")


class InvertedLure(Attack):
    """A synthesised image per text-heavy sample that the source model reads as a wrong option.

    Budget: `steps` Adam steps at learning rate `lr`, parameters at `param_size` (upsampled
    to the model's input side), `copies` augmented views per step. `judge` says afterwards
    which images depict their lure (`mibench lures`); `cache_dir` (default: the mibench cache)
    changes no number and is not recorded.
    """

    touches = "image"
    version = 1

    def __init__(self, name: str = "inverted_lure", target: str = "random",
                 objective: str = "features", probe_question: str = "What is in the image?",
                 steps: int = 48, lr: float = 0.5,
                 parametrization: str = "fourier", param_size: int | None = 16,
                 decorrelate: bool = True, jitter: float = 0.0625, zoom: float = 0.1,
                 flip: bool = True, copies: int = 2, tv_weight: float = 0.1,
                 judge: Judge | None = None, cache_dir: str | None = None) -> None:
        if target not in TARGETS:
            raise ValueError(f"attack {name!r}: target={target!r} is not one of {TARGETS}")
        if objective not in OBJECTIVES:
            raise ValueError(f"attack {name!r}: objective={objective!r} is not one of "
                             f"{OBJECTIVES}")
        if judge is not None and not isinstance(judge, Judge):
            raise TypeError(f"attack {name!r}: judge must be a Judge (models/judges.py), got "
                            f"{type(judge).__name__}")
        self._prior = Prior(steps=int(steps), lr=float(lr), parametrization=parametrization,
                            param_size=None if param_size is None else int(param_size),
                            decorrelate=bool(decorrelate), jitter=float(jitter),
                            zoom=float(zoom), flip=bool(flip), copies=int(copies),
                            tv_weight=float(tv_weight))
        if not probe_question.strip():
            raise ValueError(f"attack {name!r}: probe_question must be non-empty text")
        self.name, self.target, self.objective = name, target, objective
        self.probe_question = probe_question
        for key, value in self._prior.to_json().items():
            setattr(self, key, value)
        self._judge = judge
        self._cache = LureCache(Path(cache_dir).expanduser() if cache_dir
                                else default_cache_dir())
        self._counts = {"optimised": 0, "reused": 0}
        self._checked: set[str | None] = set()

    @classmethod
    def from_description(cls, description: dict, cache_dir: str | None = None,
                         where: str = "the run") -> InvertedLure:
        """The condition a run recorded (its `describe()`, data from a fingerprint): only
        this class's own settings are read, the judge by `judge_from_description`."""
        params = description.get("params") if isinstance(description, dict) else None
        if not isinstance(params, dict) or description.get("class") != (
                f"{cls.__module__}.{cls.__qualname__}"):
            raise AttackError(f"{where}: the condition is not an {cls.__name__}")
        keys = ("name", "target", "objective", "probe_question", *Prior.__dataclass_fields__)
        values = {k: params[k] for k in keys if k in params}
        judge = params.get("judge")
        try:
            return cls(**values, cache_dir=cache_dir, judge=None if judge is None
                       else judge_from_description(judge, where))
        except (TypeError, ValueError) as err:
            raise AttackError(f"{where}: its {cls.__name__} settings cannot be rebuilt: "
                              f"{err}") from err

    # -- what the results record -------------------------------------------------------------
    @property
    def judge(self) -> Judge | None:
        return self._judge

    @property
    def cache(self) -> LureCache:
        return self._cache

    @property
    def cache_counts(self) -> dict[str, int]:
        """Images optimised and images reused from the cache by this object so far."""
        return dict(self._counts)

    def settings(self) -> dict:
        """Everything that shapes an image besides the model, seed and target (cache key)."""
        probe = {"probe_question": self.probe_question} if self.objective == "probe" else {}
        return {"objective": self.objective, **probe, **self._prior.to_json()}

    def threat_model(self) -> dict:
        prior = self._prior
        return {
            "space": "a whole synthesised image given to a text-heavy sample (which has none), "
                     "at the model's input resolution, pixels in [0, 1] (sigmoid), scored as "
                     "the saved 8-bit PNG",
            "norm": "none: unbounded (the image is made, not perturbed)",
            "eps": None, "alpha": prior.lr, "steps": prior.steps, "restarts": 1,
            "update": "Adam on the image parametrisation; the last iterate is kept",
            "objective": {"answer": "minimise CE of the target option's letter, whole model "
                                    "on the sample's prompt",
                          "probe": "minimise CE of the target option's letter, whole model "
                                   f"asked {self.probe_question!r} with the sample's options "
                                   "(the image alone, not the sample's question)",
                          "features": "minimise CE over the sample's options of cosine(mean "
                                      "projected image feature, option word embedding) / "
                                      f"{FEATURE_TEMPERATURE}: vision tower + projector "
                                      "only"}[self.objective],
            "target": {"random": "a wrong option drawn from the sample's seed",
                       "lure": "the sample's lure"}[self.target],
            "prior": {"parametrization": prior.parametrization,
                      "param_size": prior.param_size or "the model's input side",
                      "decorrelate": prior.decorrelate, "copies": prior.copies,
                      "jitter": prior.jitter, "zoom": prior.zoom, "flip": prior.flip,
                      "tv_weight": prior.tv_weight},
            "start": "seeded per sample (normal, std 0.01, in parameter space: a grey image)",
            "interpretation": "a heuristic interference probe only on images the judge "
                              "confirms depict the lure (`mibench lures RUN`); every other "
                              "image is an adversarial attack and is reported as one",
        }

    def describe(self) -> dict:
        info = super().describe()
        info["params"]["judge"] = None if self._judge is None else self._judge.describe()
        info["threat_model"] = self.threat_model()
        return info

    # -- the Attack contract ---------------------------------------------------------------
    def attack(self, model: Any, samples: Sequence[Sample], seeds: Sequence[int]
               ) -> list[np.ndarray]:
        return self.run(model, samples, seeds).probs

    def lures(self, samples: Sequence[Sample], seeds: Sequence[int]) -> list[int | None]:
        return [target_option(s, int(seed), self.target) for s, seed in zip(samples, seeds)]

    def score_shown(self, model: Any, samples: Sequence[Sample], seeds: Sequence[int]
                    ) -> tuple[list[np.ndarray], list[int | None], list[Sample]]:
        outcome = self.run(model, samples, seeds)  # its samples carry the lure images
        return outcome.probs, list(outcome.targets), list(outcome.samples)

    def run(self, model: Any, samples: Sequence[Sample], seeds: Sequence[int]) -> LureOutcome:
        """Each sample's image (cached or made), the samples carrying it, and the source
        model's option distributions on them (one forward pass over the saved PNGs)."""
        from mibench.runner import check_untouched  # the runner's own contract check

        if len(seeds) != len(samples):
            raise ValueError(f"attack {self.name!r}: {len(seeds)} seeds for "
                             f"{len(samples)} samples")
        images = self.images(model, samples, seeds)
        out = []
        for sample, item in zip(samples, images):
            meta = {**sample.meta, "lure": item.target, "inverted_lure": item.key}
            perturbed = dataclasses.replace(sample, image=item.image, meta=meta)
            check_untouched(sample, perturbed, self)  # type: ignore[arg-type]
            out.append(perturbed)
        probs = model.option_probs(out)
        return LureOutcome(samples=out, probs=probs, targets=[i.target for i in images],
                           images=images)

    # -- images ------------------------------------------------------------------------------
    def source_digest(self, model: Any) -> str | None:
        """The source model's weights digest; the judge is checked against it once."""
        digest = model.describe().get("weights_sha256")
        if digest not in self._checked:
            if self._judge is not None:
                check_independent(self._judge, digest, getattr(model, "name", "?"))
            self._checked.add(digest)
        return digest

    def key(self, digest: str, seed: int, target: int) -> str:
        """The cache key: (key version, source weights digest, seed, target option, settings)."""
        blob = json.dumps({"version": KEY_VERSION, "source_sha256": digest, "seed": int(seed),
                           "target": int(target), "settings": self.settings()}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()

    def images(self, model: Any, samples: Sequence[Sample], seeds: Sequence[int]
               ) -> list[LureImage]:
        """Each sample's image from the cache, or optimised (all missing ones in one batch)."""
        missing_image = [s.id for s in samples if s.image is not None]
        if missing_image:
            raise AttackError(f"attack {self.name!r} gives an image to samples that have none "
                              f"(text-heavy); samples {missing_image[:5]} already have one")
        digest = self.source_digest(model)
        if digest is None:
            log.warning("inverted_lure: model %r has no weights digest; its images are made "
                        "every time and not cached", getattr(model, "name", "?"))
        targets = [target_option(s, int(seed), self.target) for s, seed in zip(samples, seeds)]
        found: list[LureImage | None] = []
        for sample, seed, target in zip(samples, seeds, targets):
            hit = None
            if digest is not None:
                key = self.key(digest, seed, target)
                hit = self._cache.load(key, self._expect(sample, target))
            found.append(None if hit is None else LureImage(key, target, hit[0], hit[1], False))
        todo = [i for i, item in enumerate(found) if item is None]
        self._counts["reused"] += len(found) - len(todo)
        if todo:
            made = self._optimise(model, [samples[i] for i in todo], [seeds[i] for i in todo],
                                  [targets[i] for i in todo], digest)
            for i, item in zip(todo, made):
                found[i] = item
            self._counts["optimised"] += len(todo)
        return [item for item in found if item is not None]

    def _expect(self, sample: Sample, target: int) -> dict:
        expect = {"option": sample.options[target], "options": list(sample.options)}
        if self.objective == "answer":  # the image was made for this prompt
            expect["prompt_sha256"] = prompt_sha256(sample)
        return expect

    def _optimise(self, model: Any, samples: list[Sample], seeds: list[int],
                  targets: list[int], digest: str | None) -> list[LureImage]:
        if not isinstance(model, DifferentiableAdapter):
            raise AttackError(f"attack {self.name!r} needs gradients through the model, but "
                              f"{type(model).__name__} can only be queried (it is not a "
                              "DifferentiableAdapter)")
        start = time.perf_counter()
        try:
            with model.frozen():
                result, side = self._invert(model, samples, seeds, targets)
        except WhiteBoxError as err:
            raise AttackError(f"attack {self.name!r} cannot run on model "
                              f"{getattr(model, 'name', '?')!r}: {err}") from err
        seconds = (time.perf_counter() - start) / len(samples)
        pixels = (result.images.double().clamp(0, 1) * 255).round().to(torch.uint8)
        out = []
        for i, (sample, seed, target) in enumerate(zip(samples, seeds, targets)):
            image = Image.fromarray(pixels[i].permute(1, 2, 0).cpu().numpy(), "RGB")
            sidecar = {
                **self._expect(sample, target), "prompt_sha256": prompt_sha256(sample),
                "key_version": KEY_VERSION, "source_sha256": digest, "seed": int(seed),
                "target": int(target), "settings": self.settings(),
                "source_model": getattr(model, "name", None), "side": list(side),
                "param_shape": list(result.param_shape), "steps_done": int(result.loss.shape[0]),
                "loss_first": _at(result.loss, 0, i), "loss_last": _at(result.loss, -1, i),
                "tv_last": _at(result.tv, -1, i), "seconds": seconds, "batch": len(samples),
                "sample": {"id": sample.id, "question": sample.question,
                           "options": list(sample.options), "answer": sample.answer,
                           "category": sample.category, "distractor": sample.distractor},
            }
            key = self.key(digest, seed, target) if digest is not None else ""
            if digest is not None:
                self._cache.save(key, image, sidecar)
            out.append(LureImage(key, target, image, sidecar, True))
        log.info("%s: optimised %d image(s), %.2f s each", self.name, len(samples), seconds)
        return out

    def _invert(self, model: DifferentiableAdapter, samples: list[Sample], seeds: list[int],
                targets: list[int]):
        prior = self._prior
        copies = prior.copies if prior.augments else 1
        asked = ([dataclasses.replace(s, question=self.probe_question, distractor="")
                  for s in samples] if self.objective == "probe" else samples)
        probes = [dataclasses.replace(s, image=PLACEHOLDER) for s in asked] * copies
        inputs = model.encode(probes)
        layout = model.pixel_layout(inputs)
        pixels0 = layout.pixels
        plain = layout.split(pixels0)
        if plain.ndim != 4 or plain.shape[0] != len(probes) or not bool(layout.valid.all()):
            raise WhiteBoxError(f"pixel tensor of shape {tuple(pixels0.shape)} is not one plain "
                                "(channels, height, width) image per sample; an image cannot "
                                "be synthesised for this family")
        wide = torch.float64 in (pixels0.dtype, model.dtype)
        dtype = torch.float64 if wide else torch.float32
        gain, offset = (t.to(pixels0.device, dtype) for t in (layout.gain, layout.offset))
        target = torch.tensor(targets * copies, device=pixels0.device)

        def to_pixels(views: Tensor) -> Tensor:
            return layout.merge((views - offset) * gain).to(torch.float64 if wide
                                                             else pixels0.dtype)

        if self.objective in ("answer", "probe"):
            def loss(views: Tensor) -> Tensor:
                logits = model.answer_logits(inputs, pixels=to_pixels(views))
                logp = option_log_probs(model.letter_logits(logits, probes), probes)
                return -logp.gather(1, target[:, None])[:, 0]
        else:
            words, mask = self._option_embeddings(model, samples)
            words, mask = words.repeat(copies, 1, 1), mask.repeat(copies, 1)

            def loss(views: Tensor) -> Tensor:
                features = model.image_features(inputs, pixels=to_pixels(views)).mean(1)
                sims = torch.cosine_similarity(features[:, None, :], words.to(features), dim=-1)
                logits = (sims / FEATURE_TEMPERATURE).masked_fill(~mask, -torch.inf)
                logp = torch.log_softmax(logits, dim=-1)
                return -logp.gather(1, target[:, None])[:, 0]

        side = tuple(int(d) for d in plain.shape[-2:])
        result = invert(loss, seeds, side, prior, dtype=dtype, device=pixels0.device)
        return result, side

    @torch.no_grad()
    def _option_embeddings(self, model: DifferentiableAdapter, samples: list[Sample]
                           ) -> tuple[Tensor, Tensor]:
        """(B, K_max, H) the language model's mean input embedding of each option's words,
        read where the option sits as a sample's added text; (B, K_max) which are real."""
        probes = [dataclasses.replace(s, image=None, distractor=o)
                  for s in samples for o in s.options]
        inputs = model.encode(probes)
        embeds = model.embed(inputs).embeds
        where = model.distractor_positions(probes, inputs).to(embeds.dtype)
        means = (embeds * where[..., None]).sum(1) / where.sum(1, keepdim=True)
        k_max = max(len(s.options) for s in samples)
        words = means.new_zeros(len(samples), k_max, means.shape[-1])
        mask = torch.zeros(len(samples), k_max, dtype=torch.bool, device=means.device)
        row = 0
        for i, sample in enumerate(samples):
            k = len(sample.options)
            words[i, :k], mask[i, :k] = means[row:row + k], True
            row += k
        return words.float(), mask


def _at(history: Tensor, step: int, i: int) -> float | None:
    return None if history.shape[0] == 0 else float(history[step, i])
