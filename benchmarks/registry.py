"""What the suite ships, read from its own YAMLs: the names and `_target_`s of its plug-ins.

The YAML is the registry (a plug-in is one module + one YAML). Anything built from a file a
stranger could write (a submission's config, an accepted submission on the leaderboard) is
checked against this: the exact `_target_`s of `conf/task` and `conf/perturbation` (and the
plug-ins those YAMLs nest), the task, condition and benchmark names, the run config's keys.
These YAMLs are the package's own files, so reading them is reading code we already run.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import yaml

CONFIG = "config.yaml"


@dataclass(frozen=True)
class Benchmark:
    """A shipped benchmark: its `grid.name` and the task and condition names it composes."""

    name: str
    tasks: tuple[str, ...]
    conditions: tuple[str, ...]


@dataclass(frozen=True)
class Registry:
    """The names and targets of the shipped YAMLs, per Hydra group."""

    tasks: dict[str, str]  # task name (file stem) -> _target_
    perturbations: dict[str, str]  # condition name (file stem) -> _target_
    nested: dict[str, frozenset[str]]  # "<owner target>.<key>" -> targets nested there
    models: frozenset[str]  # _target_s of conf/model
    loggers: frozenset[str]  # _target_s of conf/logger
    scorers: frozenset[str]  # _target_s of conf/scorer
    benchmarks: dict[str, Benchmark]  # grid.name -> definition
    run_keys: frozenset[str]  # top-level keys of a resolved `mibench` config
    grid_keys: frozenset[str]  # keys of `grid` (name, tasks, conditions, ...)

    @property
    def task_targets(self) -> frozenset[str]:
        return frozenset(self.tasks.values())

    @property
    def perturbation_targets(self) -> frozenset[str]:
        return frozenset(self.perturbations.values())


def _yamls(group: str) -> Iterator[tuple[str, Any]]:
    folder = resources.files("mibench.conf").joinpath(group)
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".yaml"):
            yield entry.name[: -len(".yaml")], _with_bases(yaml.safe_load(entry.read_text()) or {})


def _with_bases(document: dict) -> dict:
    """A group YAML with the bases its defaults list places here (`/model_base/X@_here_`)
    merged under its own keys, as Hydra composes it (bases hold flat keys)."""
    merged: dict = {}
    for entry in document.get("defaults") or []:
        if isinstance(entry, str) and entry.endswith("@_here_"):
            base = entry.removesuffix("@_here_").strip("/")
            merged.update(yaml.safe_load(
                resources.files("mibench.conf").joinpath(f"{base}.yaml").read_text()) or {})
    return {**merged, **{k: v for k, v in document.items() if k != "defaults"}}


def _nested_targets(node: Any, owner: str | None, into: dict[str, set[str]]) -> None:
    """Record, for every mapping with a `_target_` inside another, where it sits."""
    if isinstance(node, dict):
        target = node.get("_target_") if isinstance(node.get("_target_"), str) else None
        for key, value in node.items():
            if isinstance(value, dict) and isinstance(value.get("_target_"), str) and (
                    target or owner):
                into.setdefault(f"{target or owner}.{key}", set()).add(value["_target_"])
            _nested_targets(value, target or owner, into)
    elif isinstance(node, list):
        for value in node:
            _nested_targets(value, owner, into)


def _benchmark(stem: str, document: dict) -> Benchmark:
    """Task and condition names from the defaults list (`/task@grid.tasks.NAME: file`)."""
    tasks, conditions = [], []
    for entry in document.get("defaults") or []:
        if not isinstance(entry, dict):
            continue
        for key in entry:
            package = str(key).split("@", 1)[1] if "@" in str(key) else ""
            if package.startswith("grid.tasks."):
                tasks.append(package.rsplit(".", 1)[1])
            elif package.startswith("grid.conditions."):
                conditions.append(package.rsplit(".", 1)[1])
    name = (document.get("grid") or {}).get("name") or stem
    return Benchmark(str(name), tuple(tasks), tuple(conditions))


@cache
def registry() -> Registry:
    """The registry of this installed suite (read once per process)."""
    nested: dict[str, set[str]] = {}
    groups: dict[str, dict[str, str]] = {}
    for group in ("task", "perturbation", "model", "logger", "scorer"):
        groups[group] = {}
        for stem, document in _yamls(group):
            groups[group][stem] = document["_target_"]
            _nested_targets(document, None, nested)
    benchmarks = {}
    grid_keys = {"name", "tasks", "conditions"}
    for stem, document in _yamls("benchmark"):
        definition = _benchmark(stem, document)
        benchmarks[definition.name] = definition
        grid_keys |= set(document.get("grid") or {})
    config = yaml.safe_load(resources.files("mibench.conf").joinpath(CONFIG).read_text())
    groups_named = set()
    for entry in config.get("defaults") or []:
        if isinstance(entry, dict):
            groups_named |= {str(k).split("@")[0].strip("/") for k in entry}
    run_keys = (set(config) - {"defaults", "hydra"}) | groups_named | {"grid"}
    run_keys.discard("benchmark")  # a `@package _global_` group: it sets `grid`
    return Registry(
        tasks=groups["task"], perturbations=groups["perturbation"],
        nested={k: frozenset(v) for k, v in nested.items()},
        models=frozenset(groups["model"].values()),
        loggers=frozenset(groups["logger"].values()),
        scorers=frozenset(groups["scorer"].values()),
        benchmarks=benchmarks, run_keys=frozenset(run_keys), grid_keys=frozenset(grid_keys))


def plugin_class(target: str) -> type:
    """The class an allowlisted `_target_` names. Only call this with a registry target: the
    name is resolved as `module.Class` from the suite's own modules, never walked further."""
    module, _, name = target.rpartition(".")
    if not module.startswith("mibench."):
        raise ValueError(f"{target!r} is not one of the suite's own plug-ins")
    cls = getattr(importlib.import_module(module), name)
    if not isinstance(cls, type):
        raise ValueError(f"{target!r} is not a class")
    return cls
