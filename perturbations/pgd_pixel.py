"""PGD on the model's input image, in [0, 1] pixel units: the robustness field's threat model.

Threat model: "the model's resized input image". Processors are not differentiable, so the
attack perturbs the processor's output (`pixel_values`, after resizing, cropping and
normalisation) but measures ε and clips to the valid range in [0, 1] pixel units, by
inverting the per-channel affine map the processor applied:
    pixel_values = (255·r·u − mean) / std,   u ∈ [0, 1]
with r the rescale factor (1 when the processor does not rescale) and mean/std the image
processor's (0/1 when it does not normalise). Layouts:
- (images, C, H, W) (LLaVA, most CLIP/SigLIP towers): one ball per image;
- (images, tiles, C, H, W) (LLaVA-NeXT): one ball over all tiles of an image, each tile
  perturbed on its own; all-zero tiles are the processor's padding and do not move;
- flattened patches (Qwen2-VL, Qwen2.5-VL: (patches, C·t·p·p) with `image_grid_thw`): one
  ball per image over its patches; the t temporal copies of the still frame move together.
Samples without an image (text-heavy) get one from `base` first (e.g. black_image).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from mibench.records import Sample

from .base import Perturbation
from .pgd import pgd
from .pgd_mllm import (
    AttackError,
    AttackOutcome,
    MLLMAttack,
    frozen,
    needs_image,
    option_evaluation,
    option_probs,
)


class PixelPGD(MLLMAttack):
    """L∞ or L2 PGD on image pixels in [0, 1] units, sign steps (L2: normalised gradient)."""

    touches = "image"

    def __init__(self, name: str = "pgd_pixel", norm: str = "linf", eps: float = 8 / 255,
                 alpha: float = 2 / 255, steps: int = 10, restarts: int = 1,
                 update: str = "sign", targeted: str | None = None, random_start: bool = True,
                 base: Perturbation | None = None) -> None:
        super().__init__(name, norm=norm, eps=eps, alpha=alpha, steps=steps, restarts=restarts,
                         update=update, targeted=targeted, random_start=random_start, base=base)
        self.check_base()

    def threat_model(self) -> dict:
        return {
            "space": "the model's resized input image (processor output), in [0, 1] pixel "
                     "units per channel; clipped to [0, 1]",
            "norm": self.norm + " over the whole image (all tiles)",
            "eps": self.eps, "alpha": self.alpha, "units": "[0, 1] pixel units",
            **self.search_description(),
        }

    def run(self, model: Any, samples: Sequence[Sample], seeds: Sequence[int]) -> AttackOutcome:
        samples = self.prepare(model, samples, seeds)
        needs_image(self, samples)
        net = model.model
        inputs = model.encode(samples)
        pv0 = inputs["pixel_values"]
        layout = PixelLayout(model.processor, inputs, len(samples), type(net).__name__)
        # A float64 model is attacked in float64 (its pixels too); otherwise in float32.
        wide = torch.float64 in (pv0.dtype, net.dtype)
        state_dtype = torch.float64 if wide else torch.float32
        pixel_dtype = torch.float64 if wide else pv0.dtype
        base = layout.split(pv0.to(state_dtype))
        gain, offset = (t.to(pv0.device, state_dtype) for t in (layout.gain, layout.offset))
        x0 = base / gain + offset
        mask = layout.valid.to(pv0.device)
        targets = self.targets(samples, seeds)

        def objective(x: Tensor):
            pixels = layout.merge(base + (x - x0) * gain).to(pixel_dtype)
            logits = net(**{**inputs, "pixel_values": pixels}).logits[:, -1, :]
            return option_evaluation(logits, samples, model.letter_ids, targets)

        with frozen(net):
            result = pgd(objective, x0, eps=self.eps, alpha=self.alpha, steps=self.steps,
                         seeds=seeds, norm=self.norm, update=self.update,
                         restarts=self.restarts, random_start=self.random_start, mask=mask,
                         bounds=(0.0, 1.0))
        eps = torch.full((len(samples),), self.eps, dtype=state_dtype)
        return AttackOutcome(samples=samples, probs=option_probs(result.output, samples),
                             x0=x0, x=result.x, mask=mask, eps=eps, targets=targets,
                             result=result)


class PixelLayout:
    """How a processor's pixel_values map to one tensor per sample, in [0, 1] units.

    `split(pixel_values)` gives (samples, ...) with a channel axis, `merge` inverts it
    exactly; `valid` marks the entries that are real pixels (not tile or row padding);
    `gain`/`offset` (per channel, broadcastable) give u = split(pixel_values) / gain + offset,
    with gain = 255·r / std and offset = mean / (255·r).
    Layouts: (images, C, H, W); (images, tiles, C, H, W) with all-zero padding tiles;
    flattened patches (rows, C·t·p·p) with `image_grid_thw` (Qwen2-VL), whose t temporal
    copies of one frame are tied (one image moves, not t frames).
    """

    def __init__(self, processor: Any, inputs: Any, n_samples: int, owner: str) -> None:
        ip = getattr(processor, "image_processor", None)
        if ip is None:
            raise AttackError(f"{owner}: its processor has no image_processor to invert")
        pv = inputs["pixel_values"]
        rescale = float(ip.rescale_factor) if getattr(ip, "do_rescale", True) else 1.0
        normalise = getattr(ip, "do_normalize", True)
        mean = torch.as_tensor(ip.image_mean if normalise else 0.0, dtype=torch.float64)
        std = torch.as_tensor(ip.image_std if normalise else 1.0, dtype=torch.float64)
        channels = max(mean.numel(), std.numel())
        self.rows: list[int] | None = None
        if pv.ndim in (4, 5):
            channel_dim = pv.ndim - 3
            if pv.shape[channel_dim] != channels and channels != 1:
                raise AttackError(f"{owner}: {channels} mean/std values for "
                                  f"{pv.shape[channel_dim]} image channels")
            channels = pv.shape[channel_dim]
            images = pv.shape[0]
            self.valid = torch.ones_like(pv, dtype=torch.bool)
            if pv.ndim == 5:  # tiles: the processor pads with all-zero tiles
                self.valid = (pv != 0).flatten(2).any(-1)[..., None, None, None].expand_as(pv)
        elif pv.ndim == 2 and "image_grid_thw" in inputs:
            channel_dim = 2
            grid = inputs["image_grid_thw"]
            images = grid.shape[0]
            self.rows = grid.prod(-1).tolist()
            self.temporal = int(getattr(ip, "temporal_patch_size", 1) or 1)
            if pv.shape[1] % (channels * self.temporal):
                raise AttackError(f"{owner}: patch width {pv.shape[1]} is not a multiple of "
                                  f"{channels} channels x {self.temporal} frames")
            frames = pv.view(pv.shape[0], channels, self.temporal, -1)
            if not bool((frames == frames[:, :, :1]).all()):
                raise AttackError(f"{owner}: the temporal copies of a still image differ; "
                                  "pixel PGD cannot tie them")
            self.valid = torch.zeros(images, max(self.rows), channels, frames.shape[-1],
                                     dtype=torch.bool, device=pv.device)
            for i, n in enumerate(self.rows):
                self.valid[i, :n] = True
        else:
            raise AttackError(f"{owner}: pixel_values of shape {tuple(pv.shape)} is a layout "
                              "pixel PGD does not know; use embedding-space PGD")
        if images != n_samples:
            raise AttackError(f"{owner}: {images} images for {n_samples} samples; pixel PGD "
                              "needs exactly one image per sample")
        shape = [1] * self.valid.ndim
        shape[channel_dim] = channels
        self.gain = (255.0 * rescale / std.expand(channels)).reshape(shape)
        self.offset = (mean.expand(channels) / (255.0 * rescale)).reshape(shape)
        self.channels = channels

    def split(self, pv: Tensor) -> Tensor:
        if self.rows is None:
            return pv
        frames = pv.view(pv.shape[0], self.channels, self.temporal, -1)[:, :, 0]
        out = frames.new_zeros(len(self.rows), max(self.rows), *frames.shape[1:])
        for i, chunk in enumerate(frames.split(self.rows)):
            out[i, : chunk.shape[0]] = chunk
        return out

    def merge(self, x: Tensor) -> Tensor:
        if self.rows is None:
            return x
        rows = torch.cat([x[i, :n] for i, n in enumerate(self.rows)])
        return rows[:, :, None].expand(-1, -1, self.temporal, -1).reshape(rows.shape[0], -1)
