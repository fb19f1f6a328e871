"""Perturbations: change exactly one modality of a sample. One module + one YAML each."""

from .base import Perturbation

__all__ = ["Perturbation"]
