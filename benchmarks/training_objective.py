"""The study's fine-tuning objective, one batch at a time (Cai et al. 2025).

    L = w_clean·CE(clean) + w_pert·CE(perturbed) + w_adv·CE(adversarial) + λ·D(clean, perturbed)

CE is the full-vocabulary cross-entropy of the gold option letter at the answer position (the
token the suite scores); D is Jensen–Shannon or KL between the clean and perturbed option
distributions (softmax over each sample's option letters). The adversarial rows are the
perturbed samples with a δ from the suite's embedding-space PGD (`EmbeddingPGD`, masked to the
irrelevant modality's positions), found with the weights frozen and then added, fixed, to the
embeddings the language model reads while the weights train. All rows go through ONE forward
pass of the (possibly DDP-wrapped) model, so distributed training sees one graph per step.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from mibench.perturbations.pgd_embed import EmbeddingPGD
from mibench.records import Sample

from .seeding import stable_seed
from .training_data import Pair

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


def letter_log_probs(logits: Tensor, samples: Sequence[Sample], letter_ids: Sequence[int]
                     ) -> Tensor:
    """(B, K_max) log-probabilities over each sample's own option letters (-inf beyond)."""
    k_max = max(len(s.options) for s in samples)
    ids = torch.tensor(list(letter_ids[:k_max]), device=logits.device)
    counts = torch.tensor([len(s.options) for s in samples], device=logits.device)
    valid = torch.arange(k_max, device=logits.device)[None, :] < counts[:, None]
    return torch.log_softmax(logits[:, ids].float().masked_fill(~valid, -torch.inf), dim=-1)


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


def answer_cross_entropy(logits: Tensor, samples: Sequence[Sample], letter_ids: Sequence[int]
                         ) -> Tensor:
    """Mean full-vocabulary CE of each sample's gold letter token."""
    target = torch.tensor([letter_ids[s.answer] for s in samples], device=logits.device)
    return F.cross_entropy(logits.float(), target)


@contextmanager
def added_to_embeddings(decoder: torch.nn.Module, delta: Tensor | None) -> Iterator[None]:
    """Adds `delta` (B, T, H) to the embeddings the language model is called with."""
    if delta is None:
        yield
        return

    def hook(module, args, kwargs):
        embeds = kwargs.get("inputs_embeds")
        if embeds is None:
            raise RuntimeError(f"{type(module).__name__} was not called with inputs_embeds; "
                               "the adversarial term cannot place its perturbation")
        if embeds.shape != delta.shape:
            raise RuntimeError(f"adversarial δ has shape {tuple(delta.shape)}, the language "
                               f"model's input embeddings {tuple(embeds.shape)}")
        kwargs["inputs_embeds"] = embeds + delta.to(embeds.dtype)
        return args, kwargs

    handle = decoder.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def adversarial_deltas(adapter, attacks: Mapping[str, EmbeddingPGD],
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
                 attention: Tensor) -> Tensor:
    """One (B, T, H) δ for the combined batch: adversarial row r is batch row offset + r.

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
        if not bool(attention[offset + row, length - t:][moved].all()):
            raise RuntimeError(f"adversarial δ of row {row} falls on padding; the attack's "
                               "encoding and the batch's do not align")
        full[offset + row, length - t:] = delta
    return full


def batch_loss(model: torch.nn.Module, adapter, pairs: Sequence[Pair], weights: LossWeights,
               attacks: Mapping[str, EmbeddingPGD], seed: int, step: int) -> BatchLoss:
    """The objective on one micro-batch of pairs, from one forward pass of `model`.

    `model` is what is trained (maybe DDP-wrapped); `adapter` encodes with the same
    processor and its `.model` is the bare module the attack reads.
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
        hidden = deltas[0][1].shape[-1]
        shape = torch.Size((len(rows), inputs["input_ids"].shape[1], hidden))
        delta = place_deltas(deltas, len(clean) + len(perturbed), shape,
                             inputs["attention_mask"].bool())
    decoder = adapter.model.get_decoder()
    with added_to_embeddings(decoder, delta):
        logits = model(**inputs).logits[:, -1, :]
    letter_ids = adapter.letter_ids
    n_clean, n_pert = len(clean), len(perturbed)
    total = logits.new_zeros((), dtype=torch.float32)
    terms: dict[str, float] = {}
    if clean and weights.clean > 0:
        ce = answer_cross_entropy(logits[:n_clean], clean, letter_ids)
        total = total + weights.clean * ce
        terms["loss/sft_clean"] = float(ce.detach())
    if perturbed and weights.perturbed > 0:
        ce = answer_cross_entropy(logits[n_clean:n_clean + n_pert], perturbed, letter_ids)
        total = total + weights.perturbed * ce
        terms["loss/sft_perturbed"] = float(ce.detach())
    if adversarial:
        ce = answer_cross_entropy(logits[n_clean + n_pert:], adversarial, letter_ids)
        total = total + weights.adversarial * ce
        terms["loss/adversarial"] = float(ce.detach())
    if perturbed and weights.consistency > 0:
        index = {id(p.clean): i for i, p in enumerate(pairs)}
        clean_rows = torch.tensor([index[id(p.clean)] for p in twins], device=logits.device)
        logp = letter_log_probs(logits[clean_rows], perturbed, letter_ids)
        logq = letter_log_probs(logits[n_clean:n_clean + n_pert], perturbed, letter_ids)
        cons = divergence(logp, logq, weights.divergence).mean()
        total = total + weights.consistency * cons
        terms[f"loss/consistency_{weights.divergence}"] = float(cons.detach())
    terms["loss/total"] = float(total.detach())
    return BatchLoss(total=total, terms=terms, rows=len(rows))
