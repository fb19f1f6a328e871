"""Model adapters: checkpoint in, option-letter distributions out. One module + one YAML each."""

from .base import DifferentiableAdapter, ModelAdapter

__all__ = ["DifferentiableAdapter", "ModelAdapter"]
