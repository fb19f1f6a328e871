"""Content digests of checkpoints, computed once and cached, so results name exact weights.

A run's fingerprint carries the digest of the checkpoint it scored (weights, config,
processor and tokenizer files): swapped weights under the same path are a different run, and
`mibench submit` can check that the weights on disk are still the ones measured.

Cheap by construction:
- a file of a Hugging Face hub cache snapshot is a symlink to `blobs/<name>`, and for LFS
  files (the weights) that name *is* the file's sha256: resolving the link is the digest;
- any other file is hashed once; the result is cached under the mibench cache directory
  (`MIBENCH_CACHE_DIR`, else `$XDG_CACHE_HOME/mibench`, else `~/.cache/mibench`), keyed by the
  file's absolute path, size, mtime and inode, so a changed file is hashed again.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

from .atomic import write_text_atomic

CACHE_ENV = "MIBENCH_CACHE_DIR"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".h5", ".msgpack")
# Everything else a checkpoint is loaded from: config, processor, tokenizer, chat template,
# remote code. Model cards and training notes change no number.
MODEL_SUFFIXES = (".json", ".jinja", ".model", ".txt", ".tiktoken", ".py", ".vocab")
NOT_MODEL_FILES = frozenset({"training_summary.json", "train_meta.json"})
_SHA256 = re.compile(r"[0-9a-f]{64}")


def cache_dir() -> Path:
    """Where mibench keeps what it can recompute (digests); `MIBENCH_CACHE_DIR` moves it."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mibench"


def _blob_sha256(path: Path) -> str | None:
    """The sha256 a hub-cache symlink gives for free: its LFS blob's file name."""
    if not path.is_symlink():
        return None
    target = path.resolve()
    if target.parent.name == "blobs" and _SHA256.fullmatch(target.name):
        return target.name
    return None


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes, from the hub cache's blob name or a cache keyed by the
    file's identity (absolute path, size, mtime_ns, inode)."""
    path = Path(path)
    free = _blob_sha256(path)
    if free:
        return free
    real = path.resolve()
    stat = real.stat()
    identity = {"path": str(real), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
                "inode": stat.st_ino}
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    entry = cache_dir() / "file-sha256" / f"{key}.json"
    try:
        cached = json.loads(entry.read_text())
        if {k: cached.get(k) for k in identity} == identity and _SHA256.fullmatch(
                str(cached.get("sha256"))):
            return cached["sha256"]
    except (OSError, ValueError):
        pass
    digest = hashlib.sha256()
    with real.open("rb") as handle:
        while chunk := handle.read(1 << 22):
            digest.update(chunk)
    identity["sha256"] = digest.hexdigest()
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(entry, json.dumps(identity) + "\n")
    except OSError:
        pass  # a read-only cache costs time, never a wrong digest
    return identity["sha256"]


def checkpoint_files(folder: Path) -> list[Path]:
    """The files a checkpoint folder is loaded from (top level, as transformers reads it)."""
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.name not in NOT_MODEL_FILES
                  and p.suffix in WEIGHT_SUFFIXES + MODEL_SUFFIXES)


def folder_digest(folder: str | Path) -> str | None:
    """sha256 over the checkpoint's files: one `name NUL sha256 LF` line each, by name.
    The same files give the same digest whether in a plain folder or a hub snapshot."""
    files = checkpoint_files(Path(folder))
    if not any(p.suffix in WEIGHT_SUFFIXES for p in files):
        return None
    digest = hashlib.sha256()
    for file in files:
        digest.update(f"{file.name}\0{file_sha256(file)}\n".encode())
    return digest.hexdigest()


def hub_snapshot(repo_id: str, revision: str | None) -> Path | None:
    """The local hub-cache snapshot folder of a checkpoint loaded by hub id, if cached."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    except ValueError:  # not a valid repo id
        return None
    return Path(found).parent if isinstance(found, str) else None


def checkpoint_digest(path: str, revision: str | None = None) -> str | None:
    """Digest of the checkpoint a model was loaded from: a local folder, or the hub cache's
    snapshot of a hub id at `revision` (the loaded commit when known). None if neither."""
    local = Path(path).expanduser()
    if local.is_dir():
        return folder_digest(local)
    snapshot = hub_snapshot(path, revision)
    return folder_digest(snapshot) if snapshot is not None else None
