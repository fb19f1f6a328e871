"""Model adapters: checkpoint in, option-letter distributions out. One module + one YAML each.

The contract classes load lazily: `mibench models` reads YAMLs through `models.catalog`, and
importing the package must not pull torch in for that.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .base import DifferentiableAdapter, ModelAdapter

__all__ = ["DifferentiableAdapter", "ModelAdapter"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import base
        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
