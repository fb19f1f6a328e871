"""Perturbations: change exactly one modality of a sample. One module + one YAML each."""

from .base import Attack, Perturbation

__all__ = ["Attack", "Perturbation"]
