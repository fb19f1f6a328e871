"""The study's fine-tuning objective, one batch at a time (Cai et al. 2025).

    L = w_clean·CE(clean) + w_pert·CE(perturbed) + w_adv·CE(adversarial) + λ·D(clean, perturbed)

CE is the full-vocabulary cross-entropy of the gold option letter at the answer position (the
token the suite scores); D is Jensen–Shannon or KL between the clean and perturbed option
distributions (softmax over each sample's option letters). The adversarial rows are the
perturbed samples with a δ from the suite's embedding-space PGD (`EmbeddingPGD`, masked to the
irrelevant modality's positions), found with the weights frozen and then added, fixed, to the
embeddings the language model reads while the weights train. All rows go through ONE forward
pass of the (possibly DDP-wrapped) model, so distributed training sees one graph per step.
The model is reached only through its adapter (`DifferentiableAdapter`: encode, positions,
`answer_logits(shift=..., network=...)`, letter logits).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from mibench.models.base import DifferentiableAdapter, option_log_probs
from mibench.perturbations.pgd_embed import EmbeddingPGD
from mibench.records import Sample
from mibench.seeding import stable_seed

from .data import Pair

DIVERGENCES = ("js", "kl")


@dataclass(frozen=True)
class LossWeights:
    """Which terms the objective has; a zero weight skips the term (and its compute)."""

    clean: float = 1.0
    perturbed: float = 1.0
    adversarial: float = 1.0
    consistency: float = 0.01
    divergence: str = "js"

    def __post_init__(self) -> None:
        if self.divergence not in DIVERGENCES:
            raise ValueError(f"train.loss.divergence={self.divergence!r} is not one of "
                             f"{DIVERGENCES}")
        for key in ("clean", "perturbed", "adversarial", "consistency"):
            if getattr(self, key) < 0:
                raise ValueError(f"train.loss.{key}={getattr(self, key)} must be >= 0")
        if self.clean + self.perturbed + self.adversarial + self.consistency == 0:
            raise ValueError("train.loss: every term has weight 0; nothing to train")


@dataclass
class BatchLoss:
    """The weighted total (for backward) and each term's value (for logs)."""

    total: Tensor
    terms: dict[str, float] = field(default_factory=dict)
    rows: int = 0


def divergence(logp: Tensor, logq: Tensor, kind: str = "js") -> Tensor:
    """Per row, JS(p, q) or KL(p ‖ q) in nats; entries with p = q = 0 contribute 0."""
    p, q = logp.exp(), logq.exp()

    def kl(a: Tensor, log_a: Tensor, log_b: Tensor) -> Tensor:
        # mask the logs, not the product: 0 * -inf in an unselected branch of torch.where
        # still sends NaN gradients back (rows with fewer options than the batch's widest)
        present = a > 0
        zero = torch.zeros_like(a)
        return (a * (torch.where(present, log_a, zero) - torch.where(present, log_b, zero))
                ).sum(-1)

    if kind == "kl":
        return kl(p, logp, logq)
    if kind != "js":
        raise ValueError(f"unknown divergence {kind!r}; choose from {DIVERGENCES}")
    m = 0.5 * (p + q)
    logm = torch.log(m.clamp_min(torch.finfo(m.dtype).tiny))
    return 0.5 * kl(p, logp, logm) + 0.5 * kl(q, logq, logm)


def answer_cross_entropy(adapter: DifferentiableAdapter, logits: Tensor,
                         samples: Sequence[Sample]) -> Tensor:
    """Mean full-vocabulary CE of each sample's gold letter token."""
    target = torch.tensor([adapter.option_token_ids(len(s.options))[s.answer] for s in samples],
                          device=logits.device)
    return F.cross_entropy(logits.float(), target)


def letter_log_probs(adapter: DifferentiableAdapter, logits: Tensor, samples: Sequence[Sample]
                     ) -> Tensor:
    """(B, K_max) log-probabilities over each sample's own option letters (-inf beyond)."""
    return option_log_probs(adapter.letter_logits(logits, samples), samples)


def adversarial_deltas(adapter: DifferentiableAdapter, attacks: Mapping[str, EmbeddingPGD],
                       samples: Sequence[Sample], seeds: Sequence[int]
                       ) -> list[tuple[int, Tensor]]:
    """Per sample with an attack for its category: (row in `samples`, δ over its own
    encoding (T_i, H), right-aligned: row i's real tokens are its last positions).

    The suite's EmbeddingPGD runs with the weights frozen (its `frozen` context), so the
    search adds no gradient to them; δ = x_adv - x_clean is exactly 0 off the mask.
    """
    out: list[tuple[int, Tensor]] = []
    for category, attack in attacks.items():
        rows = [i for i, s in enumerate(samples) if s.category == category]
        if not rows:
            continue
        outcome = attack.run(adapter, [samples[i] for i in rows], [seeds[i] for i in rows])
        delta = (outcome.x - outcome.x0).detach()
        out.extend((row, delta[j]) for j, row in enumerate(rows))
    return out


def place_deltas(deltas: Sequence[tuple[int, Tensor]], offset: int, shape: torch.Size,
                 present: Tensor) -> Tensor:
    """One (B, T, H) δ for the combined batch: adversarial row r is batch row offset + r;
    `present` (B, T) marks the real (non-padding) positions.

    Left padding puts every row's real tokens at its end, so δ computed on the attack's own
    (shorter or equal) encoding lands on the same tokens when right-aligned; a δ that would
    touch padding means the alignment broke, and is refused.
    """
    full = torch.zeros(shape, dtype=deltas[0][1].dtype, device=deltas[0][1].device)
    length = shape[1]
    for row, delta in deltas:
        t = delta.shape[0]
        if t > length:
            raise RuntimeError(f"adversarial δ spans {t} positions, the batch only {length}")
        moved = delta.abs().sum(-1) > 0
        if not bool(present[offset + row, length - t:][moved].all()):
            raise RuntimeError(f"adversarial δ of row {row} falls on padding; the attack's "
                               "encoding and the batch's do not align")
        full[offset + row, length - t:] = delta
    return full


def batch_loss(model: torch.nn.Module, adapter: DifferentiableAdapter, pairs: Sequence[Pair],
               weights: LossWeights, attacks: Mapping[str, EmbeddingPGD], seed: int, step: int
               ) -> BatchLoss:
    """The objective on one micro-batch of pairs, from one forward pass of `model`.

    `model` is what is trained: the adapter's network, maybe wrapped (DDP, peft); the
    adapter encodes, and the attack searches on its bare network.
    """
    clean = [p.clean for p in pairs] if weights.clean > 0 or weights.consistency > 0 else []
    twins = [p for p in pairs if p.perturbed is not None]
    perturbed = [p.perturbed for p in twins] if (
        weights.perturbed > 0 or weights.consistency > 0 or weights.adversarial > 0) else []
    adversarial: list[Sample] = []
    deltas: list[tuple[int, Tensor]] = []
    if weights.adversarial > 0 and attacks and perturbed:
        seeds = [stable_seed(seed, "train-adv", step, p.task, p.clean.id) for p in twins]
        found = adversarial_deltas(adapter, attacks, perturbed, seeds)
        order = sorted(row for row, _ in found)
        adversarial = [perturbed[row] for row in order]
        remap = {row: k for k, row in enumerate(order)}
        deltas = [(remap[row], d) for row, d in found]
    rows = clean + perturbed + adversarial
    inputs = adapter.encode(rows)
    delta = None
    if deltas:
        present = adapter.text_positions(inputs) | adapter.image_positions(inputs)
        shape = torch.Size((*present.shape, deltas[0][1].shape[-1]))
        delta = place_deltas(deltas, len(clean) + len(perturbed), shape, present)
    logits = adapter.answer_logits(inputs, shift=delta, network=model)
    n_clean, n_pert = len(clean), len(perturbed)
    total = logits.new_zeros((), dtype=torch.float32)
    terms: dict[str, float] = {}
    if clean and weights.clean > 0:
        ce = answer_cross_entropy(adapter, logits[:n_clean], clean)
        total = total + weights.clean * ce
        terms["loss/sft_clean"] = float(ce.detach())
    if perturbed and weights.perturbed > 0:
        ce = answer_cross_entropy(adapter, logits[n_clean:n_clean + n_pert], perturbed)
        total = total + weights.perturbed * ce
        terms["loss/sft_perturbed"] = float(ce.detach())
    if adversarial:
        ce = answer_cross_entropy(adapter, logits[n_clean + n_pert:], adversarial)
        total = total + weights.adversarial * ce
        terms["loss/adversarial"] = float(ce.detach())
    if perturbed and weights.consistency > 0:
        index = {id(p.clean): i for i, p in enumerate(pairs)}
        clean_rows = torch.tensor([index[id(p.clean)] for p in twins], device=logits.device)
        logp = letter_log_probs(adapter, logits[clean_rows], perturbed)
        logq = letter_log_probs(adapter, logits[n_clean:n_clean + n_pert], perturbed)
        cons = divergence(logp, logq, weights.divergence).mean()
        total = total + weights.consistency * cons
        terms[f"loss/consistency_{weights.divergence}"] = float(cons.detach())
    terms["loss/total"] = float(total.detach())
    return BatchLoss(total=total, terms=terms, rows=len(rows))
