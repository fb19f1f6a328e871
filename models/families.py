"""Which adapter a checkpoint's family needs, by the `model_type` in its config.json.

`model=hf` loads any checkpoint through the generic `HFModelAdapter`; the families listed here
need their own subclass (no chat template, a processor that refuses text-only prompts, rows
that leak across a batch), and the generic loader hands them over instead of failing later.
The model type is only a key into this table: nothing named in a checkpoint is imported.
"""

from __future__ import annotations

import importlib
import logging

log = logging.getLogger(__name__)

# model_type -> "module.Class" of the adapter its checkpoints need (a family's YAML names
# the same class in its `_target_`).
FAMILY_ADAPTERS: dict[str, str] = {
    "instructblip": "mibench.models.instructblip.InstructBlipAdapter",
    "paligemma": "mibench.models.paligemma.PaliGemmaAdapter",
    "smolvlm": "mibench.models.smolvlm.SmolVLMAdapter",
    "mllama": "mibench.models.mllama.MllamaAdapter",
}


def model_type_of(path: str, revision: str | None = None) -> str | None:
    """The `model_type` of a checkpoint's config.json, or None where it cannot be read.

    Only the JSON is read (no config class is built, no remote code runs); a checkpoint
    that cannot be reached is reported by the loading that follows, not here.
    """
    from transformers import PretrainedConfig

    try:
        config, _ = PretrainedConfig.get_config_dict(path, revision=revision)
    except (OSError, ValueError) as err:
        log.debug("no config.json read from %s: %s", path, err)
        return None
    model_type = config.get("model_type")
    return model_type if isinstance(model_type, str) else None


def family_adapter(model_type: str | None) -> type | None:
    """The adapter class the family needs, or None where the generic adapter serves it."""
    target = FAMILY_ADAPTERS.get(model_type or "")
    if target is None:
        return None
    module, _, name = target.rpartition(".")
    return getattr(importlib.import_module(module), name)
