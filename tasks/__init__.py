"""Tasks: where samples come from. One module (optional) + one YAML in conf/task per task."""

from .base import Task

__all__ = ["Task"]
