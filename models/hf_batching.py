"""Batches of encodings: padding always on the left, groups of rows merged into one batch.

The answer is read at each row's last position, so every path that builds a batch (the
processor's own, or rows encoded in groups, e.g. text-only rows beside image rows) must leave
the padding on the left.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import BatchFeature

# Keys with one value per token: padded to the left when encodings are merged. Everything
# else a processor returns (pixel values, grids, sizes, Q-Former ids) belongs to the images.
TOKEN_KEYS = ("input_ids", "attention_mask", "token_type_ids", "mm_token_type_ids")
# Keys with a per-token axis (dim 1) besides the token keys: they move with the tokens when a
# row's padding is moved (Mllama's cross-attention mask, per token, image and tile).
PER_TOKEN_KEYS = ("cross_attention_mask",)


def left_align(encoding: BatchFeature) -> BatchFeature:
    """Move every row's padding to its far left, keeping the order of its real tokens.

    The answer is read at the last position, so padding must never end a row: processors
    pad on the side saved in the tokenizer's config (some hub tokenizers say "right"), and
    InstructBLIP's puts its query tokens before the padding, where a hole would shift the
    relative positions of what follows by however much padding the batch needed.
    """
    mask = encoding.get("attention_mask")
    if mask is None or mask.ndim != 2:
        return encoding
    order = torch.argsort(mask.to(torch.int8), dim=1, stable=True)
    if torch.equal(order, torch.arange(mask.shape[1]).expand_as(order)):
        return encoding
    for key in TOKEN_KEYS + PER_TOKEN_KEYS:
        if key in encoding:
            value = encoding[key]
            index = order.to(value.device).reshape(*order.shape, *[1] * (value.ndim - 2))
            encoding[key] = torch.gather(value, 1, index.expand_as(value))
    return encoding


def merge_left_padded(parts: Sequence[tuple[Sequence[int], BatchFeature]], size: int,
                      pad_id: int) -> BatchFeature:
    """One batch from encodings of disjoint groups of rows (`rows` = the rows' places).

    Token keys are left-padded to a common length; other keys (image tensors) come from
    the only part that has images and keep its order, which is the rows' order.
    """
    length = max(enc["input_ids"].shape[1] for _, enc in parts)
    out: dict[str, torch.Tensor] = {}
    for key in TOKEN_KEYS:
        if not any(key in enc for _, enc in parts):
            continue
        template = next(enc["input_ids"] for _, enc in parts)
        fill = pad_id if key == "input_ids" else 0
        merged = torch.full((size, length), fill, dtype=template.dtype)
        for rows, enc in parts:
            if key in enc:
                merged[list(rows), length - enc[key].shape[1]:] = enc[key]
        out[key] = merged
    for _, enc in parts:
        for key, value in enc.items():
            if key not in TOKEN_KEYS:
                if key in out:
                    raise ValueError(f"two groups of a batch both carry {key!r}")
                out[key] = value
    return BatchFeature(out)
