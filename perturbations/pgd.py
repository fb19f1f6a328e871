"""Projected gradient ascent on any differentiable per-sample objective: the attacks' core.

A pure tensor function, `pgd(objective, x0, ...)`, that knows nothing about models: the MLLM
attacks (`pgd_embed`, `pgd_pixel`) are thin wrappers that turn their inputs into `x0` and the
option cross-entropy into `objective`. Everything is per sample: ε and α may differ by sample,
each sample's random start comes from its own seed and only from its own masked entries, so a
sample's result does not depend on the batch it is in (nor on the batch's padding).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from mibench.seeding import stable_seed

Norm = Literal["linf", "l2"]
Update = Literal["sign", "grad"]
NORMS: tuple[str, ...] = ("linf", "l2")
UPDATES: tuple[str, ...] = ("sign", "grad")

Objective = Callable[[Tensor], "Evaluation"]
"""x (B, ...) -> the per-sample objective to maximise, with success flags and outputs."""


@dataclass(frozen=True)
class Evaluation:
    """What an objective says about a batch of points.

    `value` (B,) is maximised; `success` (B,) bool, where given, ranks before `value` when the
    best point is chosen (a point that fools the model beats a higher loss that does not);
    `output` (B, ...) is anything to keep from the best point (e.g. the option logits).
    """

    value: Tensor
    success: Tensor | None = None
    output: Tensor | None = None


@dataclass(frozen=True)
class PGDResult:
    """The best point found per sample over all restarts and iterates, and the trajectory.

    `history[r, k, i]` is the objective of sample i at iterate k (0 = random start) of
    restart r; `final` holds each restart's last iterate (restarts, B, ...).
    """

    x: Tensor
    value: Tensor
    success: Tensor
    output: Tensor | None
    history: Tensor
    final: Tensor


def check_threat_model(norm: str, update: str, eps: float, alpha: float, steps: int,
                       restarts: int, where: str = "pgd") -> None:
    """Refuse a threat model that cannot be run, naming the bad parameter."""
    if norm not in NORMS:
        raise ValueError(f"{where}: norm={norm!r} is not one of {NORMS}")
    if update not in UPDATES:
        raise ValueError(f"{where}: update={update!r} is not one of {UPDATES}")
    if eps < 0 or alpha < 0:
        raise ValueError(f"{where}: eps and alpha must be >= 0, got eps={eps}, alpha={alpha}")
    if steps < 0 or restarts < 1:
        raise ValueError(f"{where}: need steps >= 0 and restarts >= 1, got steps={steps}, "
                         f"restarts={restarts}")


def pgd(
    objective: Objective,
    x0: Tensor,
    *,
    eps: float | Tensor,
    alpha: float | Tensor,
    steps: int,
    seeds: Sequence[int],
    norm: Norm = "linf",
    update: Update = "sign",
    restarts: int = 1,
    random_start: bool = True,
    mask: Tensor | None = None,
    bounds: tuple[float | Tensor, float | Tensor] | None = None,
    group_dims: Sequence[int] | None = None,
) -> PGDResult:
    """Maximise `objective` over x in the ε-ball around x0 (and inside `bounds`).

    eps, alpha: floats or per-sample tensors (B,). norm: "linf" (per entry) or "l2" (over
    `group_dims` of each sample: all non-batch dims by default, or e.g. (-1,) for one ball
    per token). update: "sign" (L∞: α·sign(g); L2: α·g/‖g‖) or "grad" (the raw gradient α·g,
    as in Cai et al.). Only entries where `mask` is true move; the others stay bit-identical
    to x0. Random start: uniform in the ball, drawn per (sample seed, restart) over the
    sample's masked entries only. The best point per sample over all iterates and restarts
    is kept, ranked by (success, value), and scored once more without autograd.
    """
    check_threat_model(norm, update, 0.0, 0.0, steps, restarts)
    batch = x0.shape[0]
    if len(seeds) != batch:
        raise ValueError(f"pgd: got {len(seeds)} seeds for a batch of {batch}")
    x0 = x0.detach()
    mask = (torch.ones_like(x0, dtype=torch.bool) if mask is None
            else mask.to(x0.device).expand_as(x0).bool())
    dims = tuple(range(1, x0.ndim)) if group_dims is None else tuple(
        d % x0.ndim for d in group_dims)
    if 0 in dims:
        raise ValueError("pgd: group_dims may not include the batch dimension")
    eps_t, alpha_t = _per_sample(eps, x0), _per_sample(alpha, x0)
    lo, hi = _box(bounds, x0)

    def project(delta: Tensor) -> Tensor:
        if norm == "linf":
            delta = torch.maximum(torch.minimum(delta, eps_t), -eps_t)
        else:
            length = torch.linalg.vector_norm(delta, dim=dims, keepdim=True)
            delta = delta * torch.clamp(eps_t / length.clamp_min(1e-30), max=1.0)
        return delta

    def place(delta: Tensor) -> Tensor:
        # Masked entries move inside the box; the rest is x0 itself, not x0 + 0.
        return torch.where(mask, torch.minimum(torch.maximum(x0 + delta, lo), hi), x0)

    def step(grad: Tensor) -> Tensor:
        if update == "grad":
            return alpha_t * grad
        if norm == "linf":
            return alpha_t * grad.sign()
        length = torch.linalg.vector_norm(grad, dim=dims, keepdim=True)
        return alpha_t * grad / length.clamp_min(1e-30)

    best_x = x0.clone()
    best_value = torch.full((batch,), -torch.inf, dtype=torch.float64, device=x0.device)
    best_success = torch.zeros(batch, dtype=torch.bool, device=x0.device)
    best_output: Tensor | None = None
    history = torch.empty(restarts, steps + 1, batch, dtype=torch.float64)
    finals = []
    for restart in range(restarts):
        delta = (_random_start(x0, mask, dims, norm, seeds, restart) * eps_t
                 if random_start else torch.zeros_like(x0))
        x = place(delta)
        for k in range(steps + 1):
            last = k == steps
            x = x.detach().requires_grad_(not last)
            with torch.set_grad_enabled(not last):
                ev = objective(x)
            value = ev.value.detach().double()
            success = (torch.zeros_like(best_success) if ev.success is None
                       else ev.success.detach().bool())
            history[restart, k] = value.cpu()
            better = (success & ~best_success) | ((success == best_success) & (value > best_value))
            best_value = torch.where(better, value, best_value)
            best_success = best_success | success
            best_x = torch.where(_rows(better, x0), x.detach(), best_x)
            if ev.output is not None:
                out = ev.output.detach()
                best_output = out.clone() if best_output is None else torch.where(
                    _rows(better, out), out, best_output)
            if last:
                break
            (grad,) = torch.autograd.grad(ev.value.sum(), x)
            grad = torch.where(mask, grad, torch.zeros_like(grad))
            delta = project((x.detach() - x0) + step(grad))
            x = place(delta)
        finals.append(x.detach())
    # Score the chosen points once more outside autograd: the reported outputs are those of
    # a plain forward pass at the returned x (so ε = 0 gives the clean outputs exactly).
    with torch.no_grad():
        ev = objective(best_x)
    best_value = ev.value.detach().double()
    if ev.success is not None:
        best_success = ev.success.detach().bool()
    best_output = None if ev.output is None else ev.output.detach()
    return PGDResult(x=best_x, value=best_value, success=best_success, output=best_output,
                     history=history, final=torch.stack(finals))


def _rows(flags: Tensor, like: Tensor) -> Tensor:
    return flags.view(-1, *([1] * (like.ndim - 1)))


def _per_sample(value: float | Tensor, x0: Tensor) -> Tensor:
    t = torch.as_tensor(value, dtype=x0.dtype, device=x0.device)
    if t.ndim == 0:
        t = t.expand(x0.shape[0])
    if t.shape != (x0.shape[0],):
        raise ValueError(f"pgd: eps/alpha must be a float or one value per sample, got "
                         f"shape {tuple(t.shape)} for a batch of {x0.shape[0]}")
    return _rows(t, x0)


def _box(bounds, x0: Tensor) -> tuple[Tensor, Tensor]:
    """The valid range, widened where x0 itself lies outside it (float rounding), so that
    x0 is always a feasible point and ε = 0 gives x0 back exactly."""
    if bounds is None:
        inf = torch.full_like(x0, torch.inf)
        return -inf, inf
    lo, hi = (torch.as_tensor(b, dtype=x0.dtype, device=x0.device).expand_as(x0)
              for b in bounds)
    return torch.minimum(lo, x0), torch.maximum(hi, x0)


def _random_start(x0: Tensor, mask: Tensor, dims: tuple[int, ...], norm: str,
                  seeds: Sequence[int], restart: int) -> Tensor:
    """A point uniform in the unit ball, per sample, drawn only over its masked entries.

    Draws are made on the CPU in float64 from a generator seeded by (sample seed, restart),
    in the order of the masked entries, so they do not depend on the device, on padding, or
    on the other samples of the batch.
    """
    out = torch.zeros_like(x0)
    for i, seed in enumerate(seeds):
        where = mask[i]
        n = int(where.sum())
        if n == 0:
            continue
        gen = torch.Generator().manual_seed(stable_seed(int(seed), "pgd-start", restart))
        if norm == "linf":
            values = torch.rand(n, generator=gen, dtype=torch.float64) * 2 - 1
            out[i][where] = values.to(x0.dtype).to(x0.device)
            continue
        # L2: a Gaussian direction per group, radius U^(1/d) (uniform in the d-ball).
        noise = torch.zeros(where.shape, dtype=torch.float64)
        noise[where.cpu()] = torch.randn(n, generator=gen, dtype=torch.float64)
        sub_dims = tuple(d - 1 for d in dims)
        length = torch.linalg.vector_norm(noise, dim=sub_dims, keepdim=True)
        count = where.cpu().sum(dim=sub_dims, keepdim=True).double()
        groups = count > 0
        radius = torch.zeros_like(length)
        radius[groups] = torch.rand(int(groups.sum()), generator=gen, dtype=torch.float64) ** (
            1.0 / count[groups])
        unit = noise * (radius / length.clamp_min(1e-30))
        out[i] = unit.to(x0.dtype).to(x0.device)
    return out
