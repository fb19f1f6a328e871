"""Model adapters: checkpoint in, option-letter distributions out. One module + one YAML each."""

from .base import ModelAdapter

__all__ = ["ModelAdapter"]
