"""A config read from a file a stranger could write is data: check it before Hydra sees it.

Hydra's `instantiate` imports whatever dotted path a `_target_` names and walks module
attributes on the way (`mibench.<module>.Path.write_text` is a dotted path too), runs
`_args_`, honours `_partial_` / `_recursive_` / `_convert_`, and resolves `${...}`
interpolations and resolvers (`${oc.env:...}`). So a submitted config is rebuilt here into a
new, plain config that holds only:

- `_target_`s the suite ships (`conf/task`, `conf/perturbation`), matched exactly, and at a
  nested key only the plug-ins the shipped YAMLs nest there (or the plug-in kind the class's
  signature asks for there: a Task for `donors`, a Perturbation for an attack's `base`);
- parameters of the target's own signature, each type-checked against its annotation and
  bounded (sample counts, steps, image sizes, string lengths, format-string fields);
- no Hydra special key, no `${`, no unknown key, anywhere.

Every refusal names the key path. Only a config that passes is handed to Hydra.
"""

from __future__ import annotations

import collections.abc
import inspect
import math
import re
import string
import types
import typing
from collections.abc import Callable
from typing import Any

from .errors import MibenchError
from .registry import Registry, plugin_class, registry

# The largest test split the suite ships is Food-101's 25,250 images: a submitted task may ask
# for at most this many samples (the validator rebuilds every one of them).
MAX_TASK_SAMPLES = 30_000
MAX_TEXT = 10_000  # characters in any one string
MAX_ITEMS = 10_000  # entries in any one list or mapping
INTS: dict[str, tuple[int, int]] = {
    "n": (1, MAX_TASK_SAMPLES), "limit": (1, MAX_TASK_SAMPLES), "n_options": (2, 26),
    "steps": (0, 1_000), "restarts": (1, 100), "n_sentences": (0, 100),
    "n_snippets": (0, 100), "batch_size": (1, 1 << 16), "max_new_tokens": (1, 1 << 16),
}
FLOATS: dict[str, tuple[float, float]] = {"eps": (0.0, 1e3), "alpha": (0.0, 1e3),
                                          "noise": (0.0, 1.0), "repetition_penalty": (0.0, 1e3)}
# Lists of ints: (length, smallest item, largest item).
INT_LISTS: dict[str, tuple[int, int, int]] = {"size": (2, 1, 4096), "color": (3, 0, 255)}
SAFE = r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}"
HUB_ID = rf"{SAFE}/{SAFE}"
PATTERNS: dict[str, tuple[str, str]] = {
    "name": (SAFE, "a plain name (letters, digits, _ . -)"),
    "path": (HUB_ID, "a hub id 'owner/name' (local copies come from the validator's data_root)"),
    "local": (SAFE, "a folder name under data_root"),
    "split": (SAFE, "a split name"), "config_name": (SAFE, "a config name"),
    "revision": (r"[A-Za-z0-9_.\-/]{1,128}", "a git revision"),
}
# Format strings and the only fields they may use (no attribute access, no format spec).
TEMPLATE_FIELDS: dict[str, frozenset[str]] = {
    "template": frozenset({"option", "facts", "text"}),
    "templates": frozenset({"option"}),
}
# Paths on the validating machine are the validator's choice, never the submitter's.
MACHINE_PATHS = ("data_dir", "image_dir")
# Plug-ins that a nested key takes beyond what the shipped YAMLs nest there. Deliberately
# none: GeneratedFacts (an LLM writes the misleading facts) would make the validator load
# whatever hub model the submission names, of any size.
EXTRA_NESTED: dict[str, frozenset[str]] = {}
RUN_SCALARS: dict[str, type | tuple[type, ...]] = {
    "seed": int, "batch_size": int, "progress": bool, "data_root": (str, type(None)),
    "out_dir": (str, type(None))}
INTERPOLATION = ("holds an interpolation or resolver (${...}); a submitted config must be fully "
                 "resolved plain data")
KINDS = {bool: "a boolean", int: "an integer", str: "a string", list: "a list",
         dict: "a mapping"}
# what building the plug-ins reads, and the scorer (rebuilt to check what a submission says)
PLUGIN_KEYS = ("grid", "task", "perturbation", "scorer", "seed")


class UntrustedConfigError(MibenchError, ValueError):
    """A config from a file that would run code, or asks for more than the benchmark holds."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("config refused:\n" + "\n".join(f"  - {p}" for p in self.problems))


def _special(key: object) -> bool:
    """Hydra's instantiation keys (`_target_`, `_args_`, `_partial_`, ...) and the like."""
    return isinstance(key, str) and len(key) > 2 and key.startswith("_") and key.endswith("_")


class _Guard:
    """One pass over a config, collecting every refusal."""

    def __init__(self, reg: Registry, data_root: str | None) -> None:
        self.reg, self.data_root = reg, data_root
        self.problems: list[str] = []
        self.refused: set[str] = set()

    def refuse(self, where: str, why: str) -> None:
        if where not in self.refused:  # one reason per key path is enough
            self.refused.add(where)
            self.problems.append(f"{where}: {why}")

    def interpolations(self, node: Any, where: str) -> None:
        """`${...}` anywhere (key or value), before any typed check hides it."""
        if isinstance(node, dict):
            for key, value in node.items():
                at = f"{where}.{key}"
                if isinstance(key, str) and "${" in key:
                    self.refuse(at, INTERPOLATION)
                self.interpolations(value, at)
        elif isinstance(node, list):
            for i, value in enumerate(node):
                self.interpolations(value, f"{where}[{i}]")
        elif isinstance(node, str) and "${" in node:
            self.refuse(where, f"{node[:60]!r} {INTERPOLATION}")

    # -- values whose type the signature does not pin: plain data only ---------------------
    def plain(self, value: Any, where: str, depth: int = 0) -> Any:
        if depth > 16:
            self.refuse(where, "nested deeper than 16 levels")
        elif isinstance(value, dict):
            return self.entries(value, where, lambda item, at: self.plain(item, at, depth + 1))
        elif isinstance(value, list):
            if len(value) > MAX_ITEMS:
                self.refuse(where, f"{len(value)} items; at most {MAX_ITEMS}")
                return None
            return [self.plain(item, f"{where}[{i}]", depth + 1) for i, item in enumerate(value)]
        elif isinstance(value, str):
            return self.text(value, where, None)
        elif isinstance(value, float) and not math.isfinite(value):
            self.refuse(where, f"{value!r} is not a finite number")
        elif isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 1 << 63:
            self.refuse(where, "integer out of range")
        elif value is None or isinstance(value, (bool, int, float)):
            return value
        else:
            self.refuse(where, f"a {type(value).__name__} is not plain config data")
        return None

    def text(self, value: str, where: str, key: str | None) -> str | None:
        before = len(self.problems)
        if len(value) > MAX_TEXT:
            self.refuse(where, f"{len(value)} characters; at most {MAX_TEXT}")
        elif "${" in value:
            self.refuse(where, f"{value[:60]!r} {INTERPOLATION}")
        elif key in PATTERNS and not re.fullmatch(PATTERNS[key][0], value):
            self.refuse(where, f"{value[:60]!r} is not {PATTERNS[key][1]}")
        elif key in TEMPLATE_FIELDS:
            self.template(value, where, TEMPLATE_FIELDS[key])
        return value if len(self.problems) == before else None

    def template(self, value: str, where: str, fields: frozenset[str]) -> None:
        try:
            parts = list(string.Formatter().parse(value))
        except ValueError as err:
            self.refuse(where, f"not a format string ({err})")
            return
        for _, field, spec, conversion in parts:
            if field is None:
                continue
            if field not in fields or spec or conversion:
                shown = "{" + field + ("!" + conversion if conversion else "") + (
                    ":" + spec if spec else "") + "}"
                self.refuse(where, f"format field {shown} is not one of "
                                   f"{', '.join('{' + f + '}' for f in sorted(fields))}")

    # -- values typed by the plug-in's signature -----------------------------------------
    def typed(self, value: Any, hint: Any, where: str, key: str, owner: str) -> Any:
        origin, args = typing.get_origin(hint), typing.get_args(hint)
        if hint is Any:
            return self.plain(value, where)
        if origin in (typing.Union, types.UnionType):
            if value is None:
                if type(None) in args:
                    return None
            return self.first_fit(value, [a for a in args if a is not type(None)], where, key,
                                  owner)
        if origin is typing.Literal:
            if value not in args:
                self.refuse(where, f"{value!r} is not one of {list(args)}")
            return value
        if value is None:
            self.refuse(where, "may not be null")
            return None
        if hint is bool:
            return value if self.isa(value, bool, where) else None
        if hint is int:
            return self.integer(value, where, key)
        if hint is float:
            return self.number(value, where, key)
        if hint is str:
            return self.text(value, where, key) if self.isa(value, str, where) else None
        if origin in (list, tuple, collections.abc.Sequence):
            return self.sequence(value, args[0] if args else Any, where, key, owner)
        if origin in (dict, collections.abc.Mapping):
            return self.mapping(value, args[1] if len(args) == 2 else Any, where, key, owner)
        if origin is collections.abc.Callable or isinstance(hint, type):
            return self.nested(value, hint, where, key, owner)
        self.refuse(where, f"{key} cannot be set from a submitted config")
        return None

    def first_fit(self, value: Any, hints: list, where: str, key: str, owner: str) -> Any:
        attempts = []
        for hint in hints:
            trial = _Guard(self.reg, self.data_root)
            out = trial.typed(value, hint, where, key, owner)
            if not trial.problems:
                return out
            attempts.append(trial.problems)
        self.problems += attempts[0] if attempts else [f"{where}: may not be set"]
        return None

    def isa(self, value: Any, kind: type, where: str) -> bool:
        if isinstance(value, kind) and not (kind is not bool and isinstance(value, bool)):
            return True
        self.refuse(where, f"{str(value)[:60]!r} is not {KINDS.get(kind, kind.__name__)}")
        return False

    def integer(self, value: Any, where: str, key: str) -> int | None:
        if not self.isa(value, int, where):
            return None
        low, high = INTS.get(key, (-(1 << 63), (1 << 63) - 1))
        if not low <= value <= high:
            self.refuse(where, f"{value} is outside [{low}, {high}]")
            return None
        return value

    def number(self, value: Any, where: str, key: str) -> float | None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.refuse(where, f"{value!r} is not a number")
            return None
        low, high = FLOATS.get(key, (-math.inf, math.inf))
        if not (math.isfinite(value) and low <= value <= high):
            self.refuse(where, f"{value!r} is outside [{low}, {high}]")
            return None
        return float(value)

    def sequence(self, value: Any, item: Any, where: str, key: str, owner: str) -> list | None:
        if not self.isa(value, list, where):
            return None
        length, low, high = INT_LISTS.get(key, (None, None, None))
        if length is not None and len(value) != length:
            self.refuse(where, f"{len(value)} items; {key} has {length}")
            return None
        if len(value) > MAX_ITEMS:
            self.refuse(where, f"{len(value)} items; at most {MAX_ITEMS}")
            return None
        out = [self.typed(v, item, f"{where}[{i}]", key, owner) for i, v in enumerate(value)]
        for i, v in enumerate(out):
            if low is not None and isinstance(v, int) and not low <= v <= high:
                self.refuse(f"{where}[{i}]", f"{v} is outside [{low}, {high}]")
        return out

    def mapping(self, value: Any, item: Any, where: str, key: str, owner: str) -> dict | None:
        if not self.isa(value, dict, where):
            return None
        return self.entries(value, where, lambda v, at: self.typed(v, item, at, key, owner))

    def entries(self, value: dict, where: str, check: Callable[[Any, str], Any]) -> dict | None:
        """A mapping of plain string keys (no Hydra key, no `${`), each value checked."""
        if len(value) > MAX_ITEMS:
            self.refuse(where, f"{len(value)} entries; at most {MAX_ITEMS}")
            return None
        out = {}
        for key, item in value.items():
            at = f"{where}.{key}"
            if _special(key):
                self.refuse(at, "Hydra keys (_target_, _args_, _partial_, _recursive_, "
                                "_convert_, ...) are not accepted here")
            elif self.text(key, at, None) is not None:
                out[key] = check(item, at)
        return out

    def nested(self, value: Any, hint: Any, where: str, key: str, owner: str) -> dict | None:
        """A plug-in inside a plug-in: only what the shipped YAMLs nest at this key, or a
        shipped plug-in of the kind the signature asks for (a Task, a Perturbation)."""
        allowed = set(self.reg.nested.get(f"{owner}.{key}", ()))
        allowed |= EXTRA_NESTED.get(f"{owner}.{key}", frozenset())
        if isinstance(hint, type):
            from mibench.tasks.base import Task

            # only the group that can hold the kind asked for is imported (no model stack)
            shipped = (self.reg.task_targets if issubclass(hint, Task)
                       else self.reg.perturbation_targets)
            allowed |= {t for t in shipped if issubclass(plugin_class(t), hint)}
        if not allowed:
            self.refuse(where, f"{key} cannot be set from a submitted config")
            return None
        return self.plugin(value, where, frozenset(allowed), "plug-in at this key")

    # -- plug-ins ---------------------------------------------------------------------------
    def plugin(self, node: Any, where: str, allowed: frozenset[str], kind: str) -> dict | None:
        if not isinstance(node, dict):
            self.refuse(where, f"must be a mapping with a _target_, not {type(node).__name__}")
            return None
        for key in node:
            if _special(key) and key != "_target_":
                self.refuse(f"{where}.{key}", "Hydra instantiation keys (_args_, _partial_, "
                                              "_recursive_, _convert_, ...) are never accepted "
                                              "in a submitted config")
        target = node.get("_target_")
        if target not in allowed:
            self.refuse(f"{where}._target_", f"{str(target)[:120]!r} is not a {kind} the "
                        f"suite ships; allowed: {', '.join(sorted(allowed))}")
            return None
        cls = plugin_class(target)
        signature = inspect.signature(cls)
        hints = typing.get_type_hints(cls.__init__)
        params = {n: p for n, p in signature.parameters.items()
                  if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        out: dict[str, Any] = {"_target_": target}
        for key, value in node.items():
            at = f"{where}.{key}"
            if key == "_target_":
                continue
            if _special(key):
                continue  # refused above
            if key not in params:
                self.refuse(at, f"unknown key: {cls.__name__} takes "
                                f"{', '.join(sorted(params))}")
            elif key in MACHINE_PATHS:
                self.machine_path(key, value, at, out)
            else:
                out[key] = self.typed(value, hints.get(key, Any), at, key, target)
        for name, param in params.items():
            if param.default is inspect.Parameter.empty and name not in node:
                self.refuse(f"{where}.{name}", f"missing (required by {cls.__name__})")
        return out

    def machine_path(self, key: str, value: Any, where: str, out: dict) -> None:
        if key == "data_dir":  # the validator's own data_root, whatever was submitted
            out[key] = self.data_root
        elif value is not None:
            self.refuse(where, "a submitted config cannot name a folder of the validating "
                               "machine; set it to null")


def _check_plugins(guard: _Guard, config: dict) -> dict:
    reg = guard.reg
    out: dict[str, Any] = {}
    grid = config.get("grid")
    if grid is not None:
        if not isinstance(grid, dict):
            guard.refuse("config.grid", "must be a mapping")
            grid = {}
        out["grid"] = {}
        for key in grid:
            if key not in reg.grid_keys:
                guard.refuse(f"config.grid.{key}", f"unknown key; grid takes "
                                                   f"{', '.join(sorted(reg.grid_keys))}")
        name = grid.get("name")
        if name is not None and name not in reg.benchmarks:
            guard.refuse("config.grid.name", f"{str(name)[:60]!r} is not a benchmark of this "
                                             f"suite ({', '.join(sorted(reg.benchmarks))})")
        out["grid"]["name"] = name if name in reg.benchmarks else None
        for group, names, targets, kind in (
                ("tasks", reg.tasks, reg.task_targets, "task"),
                ("conditions", reg.perturbations, reg.perturbation_targets, "perturbation")):
            nodes = grid.get(group) or {}
            if not isinstance(nodes, dict):
                guard.refuse(f"config.grid.{group}", "must be a mapping")
                continue
            out["grid"][group] = {}
            for label, node in nodes.items():
                where = f"config.grid.{group}.{label}"
                if label not in names:
                    guard.refuse(where, f"{str(label)[:60]!r} is not a {kind} of this suite "
                                        f"({', '.join(sorted(names))})")
                    continue
                out["grid"][group][label] = guard.plugin(node, where, targets, kind)
    for key, targets, kind in (("task", guard.reg.task_targets, "task"),
                               ("perturbation", guard.reg.perturbation_targets, "perturbation"),
                               ("scorer", guard.reg.scorers, "scorer")):
        node = config.get(key)
        out[key] = None if node is None else guard.plugin(node, f"config.{key}", targets, kind)
    return out


def _check_data(guard: _Guard, config: dict) -> None:
    """Run keys that build nothing here (model, logger, ...) are still only plain data."""
    for key, value in config.items():
        where = f"config.{key}"
        if key not in guard.reg.run_keys:
            guard.refuse(where, f"unknown key; a run config has "
                                f"{', '.join(sorted(guard.reg.run_keys))}")
        elif key in ("model", "logger"):
            targets = guard.reg.models if key == "model" else guard.reg.loggers
            if not isinstance(value, dict):
                guard.refuse(where, "must be a mapping")
                continue
            if value.get("_target_") not in targets:
                guard.refuse(f"{where}._target_", f"{str(value.get('_target_'))[:120]!r} is "
                             f"not a {key} the suite ships")
            guard.plain({k: v for k, v in value.items() if k != "_target_"}, where)
        elif key in RUN_SCALARS:
            if not isinstance(value, RUN_SCALARS[key]) or (
                    isinstance(value, bool) and RUN_SCALARS[key] is int):
                guard.refuse(where, f"{value!r} has the wrong type")
            elif isinstance(value, int) and not isinstance(value, bool):
                guard.integer(value, where, key)
            else:
                guard.plain(value, where)
        elif key not in ("grid", "task", "perturbation", "scorer"):
            guard.plain(value, where)


def guard_run_config(config: Any, data_root: str | None = None) -> dict:
    """The plug-in part of a run config (grid, task, perturbation, scorer, seed), rebuilt from
    allowlisted, type-checked, bounded values only; raises with every problem otherwise.

    `data_root` is where the validating machine keeps local dataset copies: a task's
    `data_dir` is set to it, whatever the submitted config said.
    """
    if not isinstance(config, dict):
        raise UntrustedConfigError([f"config: must be a mapping, not {type(config).__name__}"])
    guard = _Guard(registry(), data_root)
    guard.interpolations(config, "config")
    _check_data(guard, config)
    out = _check_plugins(guard, config)
    out["seed"] = config.get("seed")
    if guard.problems:
        raise UntrustedConfigError(guard.problems)
    return {k: out.get(k) for k in PLUGIN_KEYS}


def samples_bound(guarded: dict) -> int:
    """Most records a guarded config's benchmark can produce, before building anything:
    for each task, its sample cap x (clean + every condition)."""
    tasks = ({"task": guarded["task"]} if guarded.get("task")
             else (guarded.get("grid") or {}).get("tasks") or {})
    conditions = (1 if guarded.get("perturbation")
                  else len((guarded.get("grid") or {}).get("conditions") or {}))
    per_task = [min(MAX_TASK_SAMPLES, t.get("n") or t.get("limit") or MAX_TASK_SAMPLES)
                for t in tasks.values()]
    return sum(per_task) * (1 + conditions)


def build_guarded(config: Any, build: Callable[[Any], Any], data_root: str | None = None) -> Any:
    """Guard `config`, then hand the guarded copy (an OmegaConf node) to `build`."""
    from omegaconf import OmegaConf

    return build(OmegaConf.create(guard_run_config(config, data_root)))
