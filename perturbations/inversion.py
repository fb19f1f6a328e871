"""Image inversion: synthesise an image that a differentiable objective scores well, under a
natural-image prior. Pure tensor functions that know nothing about models (as pgd.py).

The prior follows feature visualisation (Olah et al., 2017) and CLIP inversion (Kazemi et
al., 2024), each part switchable:
- parametrisation: `pixel` (one logit per pixel) or `fourier` (a spectrum scaled by 1/f, so
  low frequencies move first), at `param_size` and upsampled (bilinear) to the output side:
  a low resolution is itself a prior; colours optionally `decorrelate`d (a fixed 3x3 map of
  natural images' colour correlations); a sigmoid keeps every pixel in (0, 1);
- augmentation: each step scores `copies` views of the image, each randomly shifted by up to
  `jitter` of the side, zoomed by up to ±`zoom` and mirrored (`flip`), so that the image must
  work from any of them (an adversarial pattern tied to exact pixel positions does not);
- a total-variation penalty, `tv_weight` times `total_variation` (see there).

Everything is per sample: its start and its augmentations come from its own seed, the loss
is a sum of per-sample terms and Adam's update is per element, so a sample's image does not
depend on the others in its batch (up to float rounding of batched kernels).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from mibench.seeding import stable_seed

PARAMETRIZATIONS = ("pixel", "fourier")
INIT_STD = 0.01
# The square root of natural images' RGB colour correlation (from ImageNet, as published with
# Lucid's feature visualisation), columns scaled to unit norm at most: channels decorrelated
# by it are mixed back into RGB before the sigmoid.
_COLOUR_SQRT = torch.tensor([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]],
                            dtype=torch.float64)
COLOUR_MIX = _COLOUR_SQRT / torch.linalg.vector_norm(_COLOUR_SQRT, dim=0).max()

Loss = Callable[[Tensor], Tensor]
"""views (V, 3, H, W) in [0, 1] -> per-view loss (V,), to be minimised."""


@dataclass(frozen=True)
class Prior:
    """The natural-image prior and the budget of one inversion."""

    steps: int = 48
    lr: float = 0.5
    parametrization: str = "fourier"
    param_size: int | None = 16
    decorrelate: bool = True
    jitter: float = 0.0625
    zoom: float = 0.1
    flip: bool = True
    copies: int = 2
    tv_weight: float = 0.1

    def __post_init__(self) -> None:
        problems = []
        if self.parametrization not in PARAMETRIZATIONS:
            problems.append(f"parametrization={self.parametrization!r} is not one of "
                            f"{PARAMETRIZATIONS}")
        if self.steps < 0 or self.copies < 1:
            problems.append(f"need steps >= 0 and copies >= 1, got {self.steps}, {self.copies}")
        if self.param_size is not None and self.param_size < 2:
            problems.append(f"param_size={self.param_size} must be >= 2 (or null: full size)")
        if self.lr <= 0 or self.tv_weight < 0:
            problems.append(f"need lr > 0 and tv_weight >= 0, got {self.lr}, {self.tv_weight}")
        if not (0 <= self.jitter < 1 and 0 <= self.zoom < 1):
            problems.append(f"jitter={self.jitter} and zoom={self.zoom} must lie in [0, 1)")
        if problems:
            raise ValueError("inversion prior: " + "; ".join(problems))

    @property
    def augments(self) -> bool:
        return self.copies > 1 or self.jitter > 0 or self.zoom > 0 or self.flip

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Inversion:
    """The images found (B, 3, H, W) in [0, 1], their start, the parameters' shape, and per
    step the mean objective over views and the TV penalty, per sample (steps, B)."""

    images: Tensor
    start: Tensor
    param_shape: tuple[int, ...]
    loss: Tensor
    tv: Tensor


def total_variation(x: Tensor) -> Tensor:
    """Per image (B,): the mean absolute difference between vertically adjacent pixels plus
    the mean between horizontally adjacent ones, over channels (anisotropic TV, [0, 2]).

    E.g. one channel [[0, 1], [0, 1]]: vertical differences 0, 0; horizontal 1, 1 -> 1.0.
    """
    vertical = (x[..., 1:, :] - x[..., :-1, :]).abs().flatten(1).mean(1)
    horizontal = (x[..., :, 1:] - x[..., :, :-1]).abs().flatten(1).mean(1)
    return vertical + horizontal


def _generator(seed: int, *keys: object) -> torch.Generator:
    return torch.Generator().manual_seed(stable_seed(int(seed), *keys) % (1 << 63))


class Parametrization:
    """Maps a parameter tensor (B, ...) to images (B, 3, H, W) in (0, 1)."""

    def __init__(self, prior: Prior, side: tuple[int, int]) -> None:
        self.prior, self.side = prior, side
        size = prior.param_size
        self.grid = side if size is None else (min(size, side[0]), min(size, side[1]))
        if prior.parametrization == "fourier":
            h, w = self.grid
            fy = torch.fft.fftfreq(h, dtype=torch.float64)[:, None]
            fx = torch.fft.rfftfreq(w, dtype=torch.float64)[None, :]
            frequency = torch.sqrt(fx * fx + fy * fy)
            self.scale = 1.0 / torch.clamp(frequency, min=1.0 / max(h, w))
            self.shape: tuple[int, ...] = (3, h, w // 2 + 1, 2)
        else:
            self.shape = (3, *self.grid)

    def init(self, seeds: Sequence[int], dtype: torch.dtype, device: torch.device) -> Tensor:
        """Each sample's start drawn from its own seed (CPU, float64), whatever the batch."""
        rows = [torch.randn(self.shape, generator=_generator(s, "inversion-start"),
                            dtype=torch.float64) * INIT_STD for s in seeds]
        return torch.stack(rows).to(device=device, dtype=dtype)

    def __call__(self, params: Tensor) -> Tensor:
        if self.prior.parametrization == "fourier":
            h, w = self.grid
            spectrum = torch.view_as_complex(params.contiguous())
            spectrum = spectrum * self.scale.to(params.device, params.dtype)
            x = torch.fft.irfft2(spectrum, s=(h, w), norm="ortho") / 4.0
        else:
            x = params
        if tuple(x.shape[-2:]) != self.side:
            x = F.interpolate(x, size=self.side, mode="bilinear", align_corners=False)
        if self.prior.decorrelate:
            x = torch.einsum("ij,bjhw->bihw", COLOUR_MIX.to(x.device, x.dtype), x)
        return torch.sigmoid(x)


def augment(x: Tensor, seeds: Sequence[int], step: int, prior: Prior) -> Tensor:
    """`copies` views of each image, copy-major (V = copies x B): shifted by up to
    ±jitter of the side, zoomed by a factor in [1 - zoom, 1 + zoom], mirrored with
    probability 1/2 where `flip`; reflection at the border. Each view's draw comes from
    (sample seed, step, copy) alone."""
    if not prior.augments:
        return x
    thetas = []
    for copy in range(prior.copies):
        for seed in seeds:
            u = torch.rand(4, generator=_generator(seed, "inversion-augment", step, copy),
                           dtype=torch.float64)
            shift = (u[:2] * 2 - 1) * 2 * prior.jitter  # affine_grid spans [-1, 1]: 2 sides
            scale = 1 + (u[2] * 2 - 1) * prior.zoom
            mirror = -1.0 if prior.flip and u[3] < 0.5 else 1.0
            thetas.append(torch.tensor([[scale * mirror, 0.0, shift[0]],
                                        [0.0, scale, shift[1]]], dtype=torch.float64))
    theta = torch.stack(thetas).to(x.device, x.dtype)
    views = x.repeat(prior.copies, 1, 1, 1)
    grid = F.affine_grid(theta, list(views.shape), align_corners=False)
    return F.grid_sample(views, grid, mode="bilinear", padding_mode="reflection",
                         align_corners=False)


def invert(loss: Loss, seeds: Sequence[int], side: tuple[int, int], prior: Prior, *,
           dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"
           ) -> Inversion:
    """Minimise, per sample, mean over views of `loss` + tv_weight * TV(image), with Adam,
    for exactly `prior.steps` steps (each one forward and one backward pass over all views);
    the last iterate is returned."""
    param = Parametrization(prior, side)
    params = param.init(seeds, dtype, torch.device(device)).requires_grad_(True)
    optimiser = torch.optim.Adam([params], lr=prior.lr)
    batch = len(seeds)
    losses = torch.zeros(prior.steps, batch, dtype=torch.float64)
    tvs = torch.zeros(prior.steps, batch, dtype=torch.float64)
    with torch.no_grad():
        start = param(params).detach()
    for step in range(prior.steps):
        x = param(params)
        views = augment(x, seeds, step, prior)
        per_view = loss(views).view(-1, batch)  # (copies, B)
        if per_view.shape[0] != (prior.copies if prior.augments else 1):
            raise ValueError(f"inversion: the loss gave {per_view.numel()} values for "
                             f"{views.shape[0]} views")
        objective = per_view.mean(0)
        tv = total_variation(x)
        optimiser.zero_grad()
        (objective + prior.tv_weight * tv).sum().backward()
        optimiser.step()
        losses[step], tvs[step] = objective.detach().double().cpu(), tv.detach().double().cpu()
    with torch.no_grad():
        images = param(params).detach()
    return Inversion(images=images, start=start, param_shape=tuple(param.shape), loss=losses,
                     tv=tvs)
