"""The pixel layouts of transformers image processors, in [0, 1] pixel units.

Processors are not differentiable, so a pixel-space attack perturbs their output
(`pixel_values`, after resizing, cropping and normalisation) and measures it in [0, 1] units
by inverting the per-channel affine map the processor applied:
    pixel_values = (255·r·u − mean) / std,   u ∈ [0, 1]
with r the rescale factor (1 when the processor does not rescale) and mean/std the image
processor's (0/1 when it does not normalise). Layouts:
- (images, C, H, W) (LLaVA, most CLIP/SigLIP towers): one image per sample;
- (images, tiles, C, H, W) (LLaVA-NeXT, Idefics3): all tiles of an image together; all-zero
  tiles are the processor's padding and are not valid pixels;
- flattened patches (Qwen2-VL, Qwen2.5-VL: (patches, C·t·p·p) with `image_grid_thw`): an
  image's patches together; the t temporal copies of the still frame are tied.
A family with another layout gives its adapter its own `PixelLayout` (models.base).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from .base import PixelLayout, WhiteBoxError


class ProcessorPixelLayout(PixelLayout):
    """The layouts above, read from the batch and the processor's image settings.

    gain = 255·r / std and offset = mean / (255·r), per channel, so that
    u = split(pixel_values) / gain + offset.
    """

    def __init__(self, image_processor: Any, inputs: Mapping[str, Any], n_samples: int,
                 owner: str, key: str = "pixel_values") -> None:
        ip = image_processor
        if ip is None:
            raise WhiteBoxError(f"{owner}: its processor has no image_processor to invert")
        if key not in inputs:
            raise WhiteBoxError(f"{owner}: the batch has no {key!r}; is there an image?")
        pv = self.pixels = inputs[key]
        rescale = float(ip.rescale_factor) if getattr(ip, "do_rescale", True) else 1.0
        normalise = getattr(ip, "do_normalize", True)
        mean = torch.as_tensor(ip.image_mean if normalise else 0.0, dtype=torch.float64)
        std = torch.as_tensor(ip.image_std if normalise else 1.0, dtype=torch.float64)
        channels = max(mean.numel(), std.numel())
        self.rows: list[int] | None = None
        if pv.ndim in (4, 5):
            channel_dim = pv.ndim - 3
            if pv.shape[channel_dim] != channels and channels != 1:
                raise WhiteBoxError(f"{owner}: {channels} mean/std values for "
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
                raise WhiteBoxError(f"{owner}: patch width {pv.shape[1]} is not a multiple of "
                                    f"{channels} channels x {self.temporal} frames")
            frames = pv.view(pv.shape[0], channels, self.temporal, -1)
            if not bool((frames == frames[:, :, :1]).all()):
                raise WhiteBoxError(f"{owner}: the temporal copies of a still image differ; "
                                    "they cannot be tied")
            self.valid = torch.zeros(images, max(self.rows), channels, frames.shape[-1],
                                     dtype=torch.bool, device=pv.device)
            for i, n in enumerate(self.rows):
                self.valid[i, :n] = True
        else:
            raise WhiteBoxError(f"{owner}: pixel_values of shape {tuple(pv.shape)} is a layout "
                                "this adapter does not know; its family needs its own "
                                "pixel_layout (or use embedding-space PGD)")
        if images != n_samples:
            raise WhiteBoxError(f"{owner}: {images} images for {n_samples} samples; pixel "
                                "space needs exactly one image per sample")
        shape = [1] * self.valid.ndim
        shape[channel_dim] = channels
        self.gain = (255.0 * rescale / std.expand(channels)).reshape(shape)
        self.offset = (mean.expand(channels) / (255.0 * rescale)).reshape(shape)
        self.channels = channels

    def split(self, pixels: Tensor) -> Tensor:
        if self.rows is None:
            return pixels
        frames = pixels.view(pixels.shape[0], self.channels, self.temporal, -1)[:, :, 0]
        out = frames.new_zeros(len(self.rows), max(self.rows), *frames.shape[1:])
        for i, chunk in enumerate(frames.split(self.rows)):
            out[i, : chunk.shape[0]] = chunk
        return out

    def merge(self, x: Tensor) -> Tensor:
        if self.rows is None:
            return x
        rows = torch.cat([x[i, :n] for i, n in enumerate(self.rows)])
        return rows[:, :, None].expand(-1, -1, self.temporal, -1).reshape(rows.shape[0], -1)
