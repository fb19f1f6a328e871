"""Which weights train and how fast: frozen prefixes, LoRA, and the learning-rate schedule."""

from __future__ import annotations

import math
from typing import Any

import torch


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Linear warm-up, then cosine to 0, linear to 0, or constant."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    if schedule == "linear":
        return max(0.0, 1.0 - progress)
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    raise ValueError(f"optim.schedule={schedule!r} is not one of constant, linear, cosine")


def freeze_modules(model: torch.nn.Module, prefixes: list[str]) -> int:
    """No gradient for parameters under each prefix (e.g. model.vision_tower); returns count."""
    frozen = 0
    for prefix in prefixes:
        hits = [p for n, p in model.named_parameters() if n == prefix or n.startswith(prefix + ".")]
        if not hits:
            names = sorted({n.rsplit(".", 2)[0] for n, _ in model.named_parameters()})[:12]
            raise ValueError(f"freeze: no parameter under {prefix!r} in {type(model).__name__}; "
                             f"parameter prefixes start like {names}")
        for p in hits:
            p.requires_grad_(False)
            frozen += p.numel()
    return frozen


def apply_lora(model: torch.nn.Module, lora: Any) -> torch.nn.Module:
    """peft LoRA on the language model's projections; merged back before saving."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as err:
        raise ImportError("lora.enabled=true needs peft: pip install 'mibench[lora]'") from err
    config = LoraConfig(r=int(lora.r), lora_alpha=int(lora.alpha), lora_dropout=float(lora.dropout),
                        target_modules=lora.target_modules if isinstance(lora.target_modules, str)
                        else list(lora.target_modules), bias="none")
    return get_peft_model(model, config)
