"""What a shared result may say about where a model came from: its hub id, its name and the
digest of its files, never a local path (a path names a machine, not a model)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.\-]{0,95}")


def hub_id(path: Any) -> str | None:
    """`path` if it names a hub repository ('owner/name'), None if it is a local folder."""
    if not isinstance(path, str) or path.startswith(("/", ".", "~")):
        return None
    if Path(path).expanduser().exists():
        return None
    return path if _HUB_ID.fullmatch(path) else None


def public_model(info: dict) -> dict:
    """A model's describe() as it may leave the machine: `path` is its hub id or null."""
    return {**info, "path": hub_id(info.get("path"))}


def public_config(config: dict) -> dict:
    """A run's resolved config without the paths of the machine that ran it: the model's
    local path, the output directory and the local data folders become null (a validator
    uses its own `data_root`)."""
    out = dict(config)
    if isinstance(out.get("model"), dict):
        out["model"] = public_model(out["model"])
    for key in ("out_dir", "data_root"):
        if key in out:
            out[key] = None
    return _without_data_dirs(out)


def _without_data_dirs(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: None if k in ("data_dir", "image_dir") else _without_data_dirs(v)
                for k, v in node.items()}
    if isinstance(node, list):
        return [_without_data_dirs(v) for v in node]
    return node


def shown_path(path: str | Path) -> str:
    """A path as a model card or summary may show it: relative to the working directory, or
    (outside it) only its last parts."""
    path = Path(path)
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(Path("...", *path.parts[-3:])) if path.is_absolute() else str(path)


def public_override(override: str) -> str:
    """A command-line override with a local path value shown as its folder name only."""
    key, sep, value = override.partition("=")
    if sep and value.startswith(("/", "~")):
        return f"{key}=<local:{Path(value).name}>"
    return override
