"""The white-box half of the transformers adapter: one forward pass with the pixels or the
language model's input embeddings replaced, the modalities' positions, the pixel layout.

Generic over placeholder-token families: the language model's input sequence is captured
where the model hands it to its language model (a forward pre-hook on `get_decoder()`), so
the family's own feature extraction, placeholder expansion and position ids (e.g. Qwen2-VL's
M-RoPE) are used as they are. A pass with other embeddings replays that call, without pixels
where the family allows it (the vision tower then runs once per batch, not once per step):
the first `embed` of an adapter checks that replaying the clean sequence reproduces the clean
logits, with and without pixels, and refuses the family, naming it, when neither does.
A family that differs overrides these methods in its own module (models/<family>.py).
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from mibench.records import Sample

from .base import DifferentiableAdapter, Embedded, Inputs, PixelLayout, WhiteBoxError
from .pixels import ProcessorPixelLayout

REPLAY_MODES = ("text", "all")  # a replayed pass gets the token inputs only, or all inputs


@dataclass(frozen=True)
class Replay:
    """What a replayed pass needs besides the embeddings: which inputs to pass (`mode`), the
    clean pass's position ids (whatever the family computed from the full inputs) and dtype."""

    mode: str | None
    position_ids: Tensor | None
    dtype: torch.dtype


class HFWhiteBox(DifferentiableAdapter):
    """`DifferentiableAdapter` for transformers image-text-to-text models.

    Reads `self.model` (its `get_decoder()` and config), `self.processor`'s image processor,
    `self.tokenizer`, `self.render(sample)` and `self.prompt` (its prompt style), all set by
    `HFModelAdapter`.
    """

    pixel_key = "pixel_values"  # the batch's key the pixels are under
    _replay_mode: str | None = None  # found by the adapter's first `embed`

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    # -- the forward pass ----------------------------------------------------------------
    def answer_logits(self, inputs: Inputs, *, pixels: Tensor | None = None,
                      embeds: Tensor | None = None, shift: Tensor | None = None,
                      network: torch.nn.Module | None = None) -> Tensor:
        net = self.model if network is None else network
        batch = dict(inputs)
        if pixels is not None:
            if embeds is not None:
                raise WhiteBoxError("answer_logits: give pixels or embeds, not both")
            batch[self.pixel_key] = pixels
        hooks = []
        if embeds is not None:
            replay = inputs.replay if isinstance(inputs, Embedded) else None
            if not isinstance(replay, Replay) or replay.mode is None:
                raise WhiteBoxError("answer_logits(embeds=...) needs the batch that embed() "
                                    "returned, which knows how to feed embeddings back in")
            if replay.mode == "text":
                batch = {k: v for k, v in batch.items() if not k.startswith("pixel_values")}
            hooks.append(_replacing(embeds, replay))
        if shift is not None:
            hooks.append(_shifting(shift))
        with _pre_hooks(self._decoder() if hooks else None, hooks):
            logits = net(**batch).logits[:, -1, :]
        return logits if logits.dtype == torch.float64 else logits.float()

    def embed(self, inputs: Inputs) -> Embedded:
        owner = type(self.model).__name__
        store: dict[str, Tensor | None] = {}
        with _pre_hooks(self._decoder(), [_capturing(store, owner)]), torch.no_grad():
            logits = self.answer_logits(inputs)
        if "inputs_embeds" not in store:
            raise WhiteBoxError(f"{owner}: its language model did not run on this batch; "
                                "nothing to capture")
        embeds = store["inputs_embeds"]
        replay = Replay(self._replay_mode, store["position_ids"], embeds.dtype)
        embedded = Embedded(inputs, embeds, logits, replay)
        if self._replay_mode is None:
            self._replay_mode = self._choose_replay(embedded)
            embedded = dataclasses.replace(
                embedded, replay=dataclasses.replace(replay, mode=self._replay_mode))
        return embedded

    def hidden_states(self, inputs: Inputs, *, layer: int) -> Tensor:
        """The decoder is asked for its hidden states (`output_hidden_states`) in a clean
        pass; transformers reports the last one after the final norm."""
        owner = type(self.model).__name__
        store: dict[str, tuple] = {}
        decoder = self._decoder()
        with _pre_hooks(decoder, [_asking_states]), _keeping_states(decoder, store, owner), \
                torch.no_grad():
            self.answer_logits(inputs)
        states = store.get("hidden_states")
        if not states:
            raise WhiteBoxError(f"{owner}: its language model returned no hidden states")
        count = len(states) - 1
        if not -count - 1 <= layer <= count:
            raise WhiteBoxError(f"{owner}: no layer {layer}; its language model has {count} "
                                f"layers (0 = its input sequence ... {count} = its output; "
                                "negative counts from the end)")
        chosen = states[layer]
        return chosen if chosen.dtype == torch.float64 else chosen.float()

    def _choose_replay(self, embedded: Embedded) -> str:
        """"text" (no pixels, so the vision tower does not run at every step) where replaying
        the clean sequence reproduces the clean logits, else "all" (e.g. InstructBLIP, whose
        query tokens need the pixels); else the family is refused."""
        clean, failures = embedded.logits, []
        for mode in REPLAY_MODES:
            trial = dataclasses.replace(embedded,
                                        replay=dataclasses.replace(embedded.replay, mode=mode))
            try:
                with torch.no_grad():
                    again = self.answer_logits(trial, embeds=embedded.embeds)
            except Exception as err:
                failures.append(f"{mode}: {type(err).__name__}: {err}")
                continue
            gap = float((again.float() - clean.float()).abs().max())
            if gap <= 1e-4 * max(1.0, float(clean.abs().max())):
                return mode
            failures.append(f"{mode}: logits differ by {gap:.3g}")
        raise WhiteBoxError(
            f"{type(self.model).__name__} does not reproduce its clean logits when its "
            f"language model is replayed with the captured input embeddings "
            f"({'; '.join(failures)}); its adapter needs its own embed/answer_logits")

    def _decoder(self) -> torch.nn.Module:
        try:
            return self.model.get_decoder()
        except Exception as err:
            raise WhiteBoxError(f"{type(self.model).__name__}: no language model found by "
                                "get_decoder(); its embeddings cannot be reached") from err

    # -- where things are in the sequence ------------------------------------------------
    @property
    def image_token_id(self) -> int:
        """The placeholder token id the processor expands and the model fills with features."""
        config = self.model.config
        for key in ("image_token_id", "image_token_index"):
            value = getattr(config, key, None)
            if value is not None:
                return int(value)
        raise WhiteBoxError(f"{type(self.model).__name__}: its config has no image_token_id or "
                            "image_token_index; image positions need a placeholder-token family")

    def image_positions(self, inputs: Inputs) -> Tensor:
        return inputs["input_ids"] == self.image_token_id

    def text_positions(self, inputs: Inputs) -> Tensor:
        return inputs["attention_mask"].bool() & ~self.image_positions(inputs)

    def distractor_positions(self, samples: Sequence[Sample], inputs: Inputs) -> Tensor:
        """The rendered prompt is tokenized with offsets (image placeholder not yet expanded)
        and the distractor's tokens are located by character span; they follow the image in
        the prompt, so their distance from the end of the row is the same after expansion.
        The ids found there are checked against the tokens, so a misplaced span cannot pass."""
        input_ids, attention = inputs["input_ids"], inputs["attention_mask"].bool()
        positions = torch.zeros_like(attention)
        for i, sample in enumerate(samples):
            positions[i] = self._distractor_row(sample, input_ids[i], attention[i])
        return positions

    def _distractor_row(self, sample: Sample, input_ids: Tensor, attention: Tensor) -> Tensor:
        if not sample.distractor:
            raise WhiteBoxError(f"sample {sample.id!r} has no distractor text")
        rendered = self.render(sample)
        found = rendered.find(self.prompt.user_text(sample))
        if found < 0:
            raise WhiteBoxError(f"sample {sample.id!r}: the chat template changed the prompt "
                                "text; cannot locate its distractor")
        start, end = (found + k for k in self.prompt.distractor_span(sample))
        bos = self.tokenizer.bos_token
        enc = self.tokenizer(rendered, add_special_tokens=not (bos and rendered.startswith(bos)),
                             return_offsets_mapping=True)
        ids, offsets = enc["input_ids"], enc["offset_mapping"]
        inside = [k for k, (a, b) in enumerate(offsets) if b > a and a >= start and b <= end]
        if not inside:
            raise WhiteBoxError(f"sample {sample.id!r}: no token falls inside its distractor")
        row = torch.zeros_like(attention)
        length = input_ids.shape[0]
        where = [length - (len(ids) - k) for k in inside]
        found = input_ids[where].tolist()
        expected = [ids[k] for k in inside]
        if found != expected or not bool(attention[where].all()):
            raise WhiteBoxError(f"sample {sample.id!r}: distractor tokens {expected} not found "
                                f"at the expected positions (found {found})")
        row[where] = True
        return row

    def save_pretrained(self, directory: str | Path, network: torch.nn.Module,
                        state_dict: dict | None = None) -> None:
        network.save_pretrained(directory, state_dict=state_dict)
        self.processor.save_pretrained(directory)

    def image_features(self, inputs: Inputs, *, pixels: Tensor | None = None) -> Tensor:
        """The model's own `get_image_features` (vision tower, feature selection, projector)
        on the batch's image inputs; one (N, H) block per image, stacked."""
        owner = type(self.model).__name__
        encoder = getattr(self.model, "get_image_features", None)
        if encoder is None:
            raise WhiteBoxError(f"{owner} has no get_image_features; its image features "
                                "cannot be reached apart from the language model")
        batch = dict(inputs)
        if pixels is not None:
            batch[self.pixel_key] = pixels
        if self.pixel_key not in batch:
            raise WhiteBoxError(f"{owner}: the batch has no {self.pixel_key!r}; is there an "
                                "image?")
        wanted = inspect.signature(encoder).parameters
        out = encoder(**{k: v for k, v in batch.items() if k in wanted}, return_dict=True)
        features = getattr(out, "pooler_output", out)
        if isinstance(features, (list, tuple)):
            if len({tuple(f.shape) for f in features}) != 1:
                raise WhiteBoxError(f"{owner}: its images give different numbers of features; "
                                    "they cannot be stacked one row per sample")
            features = torch.stack(list(features))
        if features.ndim != 3 or features.shape[0] != inputs["input_ids"].shape[0]:
            raise WhiteBoxError(f"{owner}: image features of shape {tuple(features.shape)} "
                                f"for {inputs['input_ids'].shape[0]} samples; need one "
                                "(N, H) block per sample")
        return features if features.dtype == torch.float64 else features.float()

    def pixel_layout(self, inputs: Inputs) -> PixelLayout:
        return ProcessorPixelLayout(getattr(self.processor, "image_processor", None), inputs,
                                    inputs["input_ids"].shape[0], type(self.model).__name__,
                                    key=self.pixel_key)


# -- forward pre-hooks on the language model ----------------------------------------------------
@contextmanager
def _pre_hooks(module: torch.nn.Module | None, hooks: Sequence) -> Iterator[None]:
    with ExitStack() as stack:
        for hook in hooks:
            handle = module.register_forward_pre_hook(hook, with_kwargs=True)
            stack.callback(handle.remove)
        yield


def _capturing(store: dict, owner: str):
    def hook(module, args, kwargs):
        embeds = kwargs.get("inputs_embeds")
        if embeds is None:
            raise WhiteBoxError(f"{owner}: its language model was not called with "
                                "inputs_embeds; its input sequence cannot be captured")
        if "inputs_embeds" in store:
            raise WhiteBoxError(f"{owner}: its language model ran twice in one forward pass")
        store["inputs_embeds"] = embeds.detach().clone()
        store["position_ids"] = kwargs.get("position_ids")
    return hook


def _asking_states(module, args, kwargs):
    kwargs["output_hidden_states"] = True
    return args, kwargs


@contextmanager
def _keeping_states(module: torch.nn.Module, store: dict, owner: str) -> Iterator[None]:
    """The module's `hidden_states` output, kept in `store` (one call per pass)."""
    def hook(module, args, kwargs, output):
        if "hidden_states" in store:
            raise WhiteBoxError(f"{owner}: its language model ran twice in one forward pass; "
                                "its hidden states are not one batch's")
        store["hidden_states"] = tuple(getattr(output, "hidden_states", None) or ())
    handle = module.register_forward_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def _replacing(embeds: Tensor, replay: Replay):
    """The language model gets `embeds` and the clean pass's position ids."""
    def hook(module, args, kwargs):
        kwargs["inputs_embeds"] = embeds.to(replay.dtype)
        if replay.position_ids is not None:
            kwargs["position_ids"] = replay.position_ids
        return args, kwargs
    return hook


def _shifting(shift: Tensor):
    """`shift` is added to the embeddings the language model is called with."""
    def hook(module, args, kwargs):
        embeds = kwargs.get("inputs_embeds")
        if embeds is None:
            raise WhiteBoxError(f"{type(module).__name__} was not called with inputs_embeds; "
                                "a shift cannot be placed")
        if embeds.shape != shift.shape:
            raise WhiteBoxError(f"a shift of shape {tuple(shift.shape)} for input embeddings "
                                f"of shape {tuple(embeds.shape)}")
        kwargs["inputs_embeds"] = embeds + shift.to(embeds.dtype)
        return args, kwargs
    return hook
