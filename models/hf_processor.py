"""Loading a checkpoint's processor, also where only its video processor cannot load.

Qwen2-VL, InternVL, SmolVLM and others ship a video processor that needs torchvision; the
suite never feeds video, so such a processor is loaded without it.
"""

from __future__ import annotations

import inspect
import json
import logging
from pathlib import Path

from transformers import AutoConfig, AutoProcessor, ProcessorMixin

log = logging.getLogger(__name__)


def image_only_processor_class(processor_class: type[ProcessorMixin]) -> type[ProcessorMixin]:
    """`processor_class` without its video processor (which needs torchvision to load).

    The image and text paths of Qwen2-VL, InternVL, SmolVLM, ... never touch the video
    processor; dropping it from `__init__`'s parameters drops it from the processor's
    attributes, so loading, saving and calling work without torchvision.
    """
    # transformers reads the sub-processors to load from `inspect.signature(__init__)` and the
    # settings to pass back (image_seq_length, ...) from `__init__.__code__.co_varnames`, so
    # the new `__init__` must really have the parent's parameters, less `video_processor`.
    params = [p for name, p in inspect.signature(processor_class.__init__).parameters.items()
              if name not in ("self", "video_processor")]
    declared, passed = [], []
    for p in params:
        if p.kind is p.VAR_POSITIONAL:
            declared.append(f"*{p.name}")
            passed.append(f"*{p.name}")
        elif p.kind is p.VAR_KEYWORD:
            declared.append(f"**{p.name}")
            passed.append(f"**{p.name}")
        else:
            has_default = p.default is not p.empty
            declared.append(f"{p.name}=_defaults[{p.name!r}]" if has_default else p.name)
            passed.append(f"{p.name}={p.name}")
    source = (f"def __init__(self, {', '.join(declared)}):\n"
              f"    _parent.__init__(self, {', '.join(passed)}, video_processor=None)\n")
    namespace = {"_parent": processor_class,
                 "_defaults": {p.name: p.default for p in params}}
    exec(source, namespace)  # noqa: S102 - builds a signature, runs no outside text
    # Same name, so a processor saved from it still names the real class in its config.
    return type(processor_class.__name__, (processor_class,),
                {"__init__": namespace["__init__"], "__module__": processor_class.__module__,
                 "__doc__": processor_class.__doc__})


def _processor_class_for(path: str, **load) -> type[ProcessorMixin] | None:
    """The processor class a checkpoint names (processor_config.json, else its model type)."""
    from transformers.models.auto.processing_auto import (
        PROCESSOR_MAPPING_NAMES,
        processor_class_from_name,
    )

    local = Path(path) / "processor_config.json"
    if local.is_file():
        name = json.loads(local.read_text()).get("processor_class")
        if name:
            return processor_class_from_name(name)
    model_type = AutoConfig.from_pretrained(path, **load).model_type
    name = PROCESSOR_MAPPING_NAMES.get(model_type)
    return processor_class_from_name(name) if name else None


def load_processor(path: str, **load) -> ProcessorMixin:
    """`AutoProcessor`, or, where only the video processor fails to load, the same processor
    without it (see `image_only_processor_class`)."""
    try:
        return AutoProcessor.from_pretrained(path, **load)
    except (ImportError, OSError, ValueError) as err:
        processor_class = _processor_class_for(path, **load)
        if processor_class is None or "video_processor" not in processor_class.get_attributes():
            raise
        log.info("loading %s without its video processor (%s)", processor_class.__name__, err)
        return image_only_processor_class(processor_class).from_pretrained(path, **load)
