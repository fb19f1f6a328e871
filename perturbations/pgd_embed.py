"""PGD in the language model's input-embedding space, on one modality's positions (Cai et al.).

The perturbation is added to the sequence the language model reads, after the vision
projector has put the image features into the image-token positions, and only at the
positions of the irrelevant modality:
- `mask="text"`: every non-padding position that is not an image placeholder (question,
  options, instruction and chat-template tokens); for image-heavy tasks;
- `mask="distractor"`: only the tokens of the sample's added text (`Sample.distractor`, so a
  text `base` perturbation such as misleading_text must add it first);
- `mask="image"`: the image-token positions (the projected image features); for text-heavy
  tasks, whose samples have no image of their own: a `base` image perturbation (e.g.
  black_image) gives them one first, and the attack starts from that image's features.

Generic over placeholder-token families: the clean sequence is captured where the model hands
it to its language model (a forward pre-hook on `get_decoder()`), so the family's own
feature extraction, placeholder expansion and position ids (e.g. Qwen2-VL's M-RoPE) are used
as they are; each PGD step replays that call with the perturbed embeddings, without pixels
where the family allows it (the vision tower then runs once per batch, not once per step).
The first batch checks that the replay at δ = 0 reproduces the clean logits, and refuses the
model, naming its class, when it does not.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor

from mibench.prompts import format_prompt
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

MASKS = ("text", "distractor", "image")
EPS_SCALES = ("absolute", "rms")


class EmbeddingPGD(MLLMAttack):
    """Masked PGD on input embeddings; ε absolute or relative to the embeddings' RMS.

    eps_scale="rms": per sample, ε and α are multiplied by the RMS of the clean embeddings
    at the masked positions (L∞: RMS of their entries; L2: RMS of their per-token norms), so
    eps=0.1 lets each coordinate (L∞) or token vector (L2) move by 10% of its typical size.
    The L2 ball is per token (each position's perturbation has norm ≤ ε).
    """

    def __init__(self, name: str = "pgd_embed", mask: str = "text", norm: str = "linf",
                 eps: float = 0.1, eps_scale: str = "rms", alpha: float = 0.025,
                 steps: int = 10, restarts: int = 1, update: str = "sign",
                 targeted: str | None = None, random_start: bool = True,
                 base: Perturbation | None = None) -> None:
        super().__init__(name, norm=norm, eps=eps, alpha=alpha, steps=steps, restarts=restarts,
                         update=update, targeted=targeted, random_start=random_start, base=base)
        if mask not in MASKS:
            raise ValueError(f"attack {name!r}: mask={mask!r} is not one of {MASKS}")
        if eps_scale not in EPS_SCALES:
            raise ValueError(f"attack {name!r}: eps_scale={eps_scale!r} is not one of "
                             f"{EPS_SCALES}")
        self.mask, self.eps_scale = mask, eps_scale
        self.touches = "image" if mask == "image" else "text"
        self._replay_inputs: dict[int, str] = {}  # per model: "text" or "all" (see below)
        self.check_base()

    def threat_model(self) -> dict:
        unit = ("absolute embedding units" if self.eps_scale == "absolute" else
                "x RMS of the clean embeddings at the masked positions, per sample "
                + ("(entries)" if self.norm == "linf" else "(per-token L2 norms)"))
        return {
            "space": "language-model input embeddings, after image features are placed",
            "positions": {"text": "non-padding, non-image-placeholder tokens",
                          "distractor": "the tokens of the sample's added text",
                          "image": "image-placeholder tokens (projected image features)"
                          }[self.mask],
            "norm": self.norm + (" per token" if self.norm == "l2" else ""),
            "eps": self.eps, "alpha": self.alpha, "units": unit,
            **self.search_description(),
        }

    def run(self, model: Any, samples: Sequence[Sample], seeds: Sequence[int]) -> AttackOutcome:
        samples = self.prepare(model, samples, seeds)
        if self.mask == "image":
            needs_image(self, samples)
        net = model.model
        decoder = _decoder(net)
        inputs = model.encode(samples)
        step_inputs = {k: v for k, v in inputs.items() if not k.startswith("pixel_values")}
        targets = self.targets(samples, seeds)
        with frozen(net):
            captured: dict[str, Tensor | None] = {}
            with _pre_hook(decoder, _capture(captured, type(net).__name__)), torch.no_grad():
                clean = net(**inputs).logits[:, -1, :]
            embeds = captured["inputs_embeds"]
            positions = self._positions(model, samples, inputs)
            state_dtype = torch.float64 if embeds.dtype == torch.float64 else torch.float32
            x0 = embeds.to(state_dtype)
            scale = self._scale(x0, positions)
            replay = _Replay(captured)
            if id(net) not in self._replay_inputs:
                self._replay_inputs[id(net)] = self._choose_replay(
                    net, decoder, replay, inputs, x0, clean)
            if self._replay_inputs[id(net)] == "all":
                step_inputs = dict(inputs)

            def objective(x: Tensor):
                replay.embeds = x
                with _pre_hook(decoder, replay):
                    logits = net(**step_inputs).logits[:, -1, :]
                return option_evaluation(logits, samples, model.letter_ids, targets)

            result = pgd(objective, x0, eps=self.eps * scale, alpha=self.alpha * scale,
                         steps=self.steps, seeds=seeds, norm=self.norm, update=self.update,
                         restarts=self.restarts, random_start=self.random_start,
                         mask=positions[..., None].expand_as(x0),
                         group_dims=(-1,) if self.norm == "l2" else None)
        return AttackOutcome(samples=samples, probs=option_probs(result.output, samples),
                             x0=x0, x=result.x, mask=positions[..., None].expand_as(x0),
                             eps=self.eps * scale, targets=targets, result=result)

    # -- positions and scale ---------------------------------------------------------------
    def _positions(self, model: Any, samples: Sequence[Sample], inputs) -> Tensor:
        """(B, T) bool: the sequence positions the attack may move."""
        input_ids, attention = inputs["input_ids"], inputs["attention_mask"].bool()
        image = input_ids == image_token_id(model.model)
        if self.mask == "image":
            positions = image
        elif self.mask == "text":
            positions = attention & ~image
        else:
            positions = torch.zeros_like(attention)
            for i, sample in enumerate(samples):
                positions[i] = distractor_positions(model, sample, input_ids[i], attention[i])
        empty = [s.id for s, row in zip(samples, positions) if not row.any()]
        if empty:
            raise AttackError(f"attack {self.name!r} (mask={self.mask!r}) finds no position to "
                              f"perturb in samples {empty[:5]}")
        return positions

    def _scale(self, x0: Tensor, positions: Tensor) -> Tensor:
        """Per-sample unit of ε: 1, or the RMS of the clean embeddings at the positions."""
        if self.eps_scale == "absolute":
            return torch.ones(x0.shape[0], dtype=x0.dtype, device=x0.device)
        token_sq = (x0.double() ** 2).sum(-1) * positions
        mean_sq = token_sq.sum(-1) / positions.sum(-1)
        if self.norm == "linf":
            mean_sq = mean_sq / x0.shape[-1]
        return mean_sq.sqrt().to(x0.dtype)

    def _choose_replay(self, net, decoder, replay: _Replay, inputs, x0: Tensor,
                       clean: Tensor) -> str:
        """Which inputs a step passes besides the replayed embeddings: "text" (no pixels, so
        the vision tower does not run at every step) where that reproduces the clean logits,
        else "all" (e.g. InstructBLIP, whose query tokens need the pixels); else refuse."""
        failures = []
        for mode in ("text", "all"):
            step_inputs = {k: v for k, v in inputs.items()
                           if mode == "all" or not k.startswith("pixel_values")}
            replay.embeds = x0
            try:
                with _pre_hook(decoder, replay), torch.no_grad():
                    again = net(**step_inputs).logits[:, -1, :]
            except Exception as err:
                failures.append(f"{mode}: {type(err).__name__}: {err}")
                continue
            gap = float((again.float() - clean.float()).abs().max())
            if gap <= 1e-4 * max(1.0, float(clean.abs().max())):
                return mode
            failures.append(f"{mode}: logits differ by {gap:.3g}")
        raise AttackError(
            f"attack {self.name!r}: {type(net).__name__} does not reproduce its clean logits "
            "when its language model is replayed with the captured input embeddings "
            f"({'; '.join(failures)}); embedding-space PGD does not support this family yet")


def image_token_id(net: torch.nn.Module) -> int:
    """The placeholder token id the processor expands and the model fills with features."""
    config = net.config
    for key in ("image_token_id", "image_token_index"):
        value = getattr(config, key, None)
        if value is not None:
            return int(value)
    raise AttackError(f"{type(net).__name__}: its config has no image_token_id or "
                      "image_token_index; embedding-space PGD needs a placeholder-token family")


def distractor_positions(model: Any, sample: Sample, input_ids: Tensor, attention: Tensor
                         ) -> Tensor:
    """(T,) bool: the positions of the sample's distractor tokens in its encoded row.

    The rendered prompt is tokenized with offsets (image placeholder not yet expanded) and
    the distractor's tokens are located by character span; they follow the image in the
    prompt, so their distance from the end of the row is the same after expansion. The ids
    found there are checked against the tokens, so a misplaced span cannot pass silently.
    """
    if not sample.distractor:
        raise AttackError(f"sample {sample.id!r} has no distractor text to perturb "
                          "(mask='distractor' needs a text base perturbation, e.g. "
                          "misleading_text, that adds one)")
    rendered = model.render(sample)
    start = rendered.find(format_prompt(sample))
    if start < 0:
        raise AttackError(f"sample {sample.id!r}: the chat template changed the prompt text; "
                          "cannot locate its distractor")
    end = start + len(sample.distractor)
    tokenizer = model.tokenizer
    bos = tokenizer.bos_token
    enc = tokenizer(rendered, add_special_tokens=not (bos and rendered.startswith(bos)),
                    return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    inside = [k for k, (a, b) in enumerate(offsets) if b > a and a >= start and b <= end]
    if not inside:
        raise AttackError(f"sample {sample.id!r}: no token falls inside its distractor")
    row = torch.zeros_like(attention)
    length = input_ids.shape[0]
    where = [length - (len(ids) - k) for k in inside]
    found = input_ids[where].tolist()
    expected = [ids[k] for k in inside]
    if found != expected or not bool(attention[where].all()):
        raise AttackError(f"sample {sample.id!r}: distractor tokens {expected} not found at "
                          f"the expected positions (found {found})")
    row[where] = True
    return row


# -- replaying the language model's input --------------------------------------------------
def _decoder(net: torch.nn.Module) -> torch.nn.Module:
    try:
        return net.get_decoder()
    except Exception as err:
        raise AttackError(f"{type(net).__name__}: no language model found by get_decoder(); "
                          "embedding-space PGD needs one") from err


@contextmanager
def _pre_hook(module: torch.nn.Module, hook) -> Iterator[None]:
    handle = module.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def _capture(store: dict, owner: str):
    def hook(module, args, kwargs):
        embeds = kwargs.get("inputs_embeds")
        if embeds is None:
            raise AttackError(f"{owner}: its language model was not called with "
                              "inputs_embeds; embedding-space PGD cannot place a perturbation")
        if "inputs_embeds" in store:
            raise AttackError(f"{owner}: its language model ran twice in one forward pass")
        store["inputs_embeds"] = embeds.detach().clone()
        store["position_ids"] = kwargs.get("position_ids")
    return hook


class _Replay:
    """Pre-hook that hands the language model the current embeddings and the clean
    position ids (whatever the family computed from the full inputs)."""

    def __init__(self, captured: dict) -> None:
        self.dtype = captured["inputs_embeds"].dtype
        self.position_ids = captured.get("position_ids")
        self.embeds: Tensor | None = None

    def __call__(self, module, args, kwargs):
        kwargs["inputs_embeds"] = self.embeds.to(self.dtype)
        if self.position_ids is not None:
            kwargs["position_ids"] = self.position_ids
        return args, kwargs
