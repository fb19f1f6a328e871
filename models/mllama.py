"""Mllama (Llama 3.2 Vision): the image reaches the text through cross-attention layers.

A text-only prompt alone skips those layers; in a batch with an image it goes through them
with its cross-attention masked out, which is not the same computation (3.9e-4 apart on a
real checkpoint). So a batch mixing the two is scored as two forward passes, one per group,
inside the adapter: every sample gets the numbers it gets alone, whatever its batch, and the
runner's batch plan is unchanged.
"""

from __future__ import annotations

import torch
from transformers import BatchFeature, MllamaForConditionalGeneration

from .base import Inputs, WhiteBoxError
from .hf import HFModelAdapter
from .hf_batching import PER_TOKEN_KEYS, TOKEN_KEYS

# What a text-only forward is given: the tokens alone (no pixels, no cross-attention mask).
TEXT_KEYS = TOKEN_KEYS


def rows_of(inputs: BatchFeature, rows: torch.Tensor, keys: tuple[str, ...] | None = None
            ) -> BatchFeature:
    """The inputs of some rows (all keys, or `keys`), without the columns that are padding
    in every one of them (left padding: a common prefix)."""
    mask = inputs["attention_mask"][rows]
    first = int(mask.any(0).int().argmax())  # first column some row attends to
    out = {}
    for key, value in inputs.items():
        if keys is not None and key not in keys:
            continue
        value = value[rows]
        if key in TOKEN_KEYS + PER_TOKEN_KEYS:
            value = value[:, first:]
        out[key] = value
    return BatchFeature(out)


class MllamaAdapter(HFModelAdapter):
    """Mllama: image and text-only samples of one batch scored in separate forward passes."""

    model_class = MllamaForConditionalGeneration
    # Its forward takes no image-encoder output to reuse (only the projected cross-attention
    # states), so every batch encodes its images.
    reuses_image_features = False

    def answer_logits(self, inputs: Inputs, **options) -> torch.Tensor:
        """A batch mixing image and text-only rows runs as two passes (replaced pixels or
        embeddings, or a shift, need a batch of one kind)."""
        cross = inputs.get("cross_attention_mask")
        if cross is None:
            return super().answer_logits(inputs, **options)
        has_image = cross.flatten(1).any(1)
        if bool(has_image.all()):
            return super().answer_logits(inputs, **options)
        if any(options.get(k) is not None for k in ("pixels", "embeds", "shift")):
            raise WhiteBoxError(f"model {self.name!r}: a batch mixing image and text-only "
                                "samples runs as two passes; replaced pixels or embeddings, or "
                                "a shift, need a batch of one kind")
        network = options.get("network")
        image_rows = has_image.nonzero()[:, 0]
        text_rows = (~has_image).nonzero()[:, 0]
        logits = torch.cat([
            super().answer_logits(rows_of(inputs, image_rows), network=network),
            super().answer_logits(rows_of(inputs, text_rows, TEXT_KEYS), network=network)])
        order = torch.cat([image_rows, text_rows]).argsort()  # back to the batch's order
        return logits[order.to(logits.device)]
