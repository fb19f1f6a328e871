"""Where a task's rows come from, read so that they always come from the files named.

`datasets` caches what `load_dataset` builds under a key that, for a local folder, ignores
the folder's absolute path and its files' content: two folders with the same base name,
config and file layout (two copies of a `mmlu/all/test-*.parquet` snapshot) share one cache
entry, and the second silently gets the first one's rows. So every local copy here is loaded
with its own `cache_dir`, named by a digest of the files it reads (their relative paths and
sha256). A changed file is a new digest, hence a fresh cache; the same files anywhere on disk
share one. The digest is also what the run records as the task's data (`data_digest`), so a
changed copy is caught on resume. File digests are cached (mibench.digests), so only new or
changed files are read twice. Saved datasets (`save_to_disk`) are opened in place with
`load_from_disk`, which has no cache to go stale; they are digested the same way.

Hub datasets are keyed by `datasets` itself (the repository commit) and recorded by the
dataset's own fingerprint.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mibench.digests import file_sha256
from mibench.errors import MibenchError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
SPLIT_NAMES = {"train", "test", "validation", "valid", "val", "dev", "eval"}
CACHE_DIR_NAME = "mibench-local"


class DatasetLoadError(MibenchError, FileNotFoundError):
    """A task's data is not where its config says; the message names task, path and layout."""


@dataclass(frozen=True)
class Loaded:
    """One split, and the digest of exactly what it was read from."""

    dataset: Any  # datasets.Dataset
    digest: str


def layouts(task: str, path: str, split: str, local: str) -> str:
    """The local layouts the loader reads, in words, for error messages."""
    return (f"data_root=DIR with DIR/{local} holding one of: a save_to_disk directory, "
            f"{split}.parquet, {split}/*.parquet, a snapshot of the hub dataset (hf download "
            f"{path} --repo-type dataset --local-dir DIR/{local}), or an image folder "
            f"{split}/<class>/<image> (or one unsplit folder <class>/<image>)")


def override(task: str, key: str, value: object) -> str:
    return f"task.{key}={value} (grid.tasks.{task}.{key}={value} inside a benchmark)"


# -- hub -------------------------------------------------------------------------------------
def load_hub(path: str, split: str, config_name: str | None, revision: str | None,
             task: str, local: str) -> Loaded:
    """One split from the hub (or the HF cache when offline), recorded by its fingerprint."""
    import datasets

    try:
        loaded = datasets.load_dataset(path, config_name, revision=revision)
    except Exception as err:  # every failure becomes one line naming the task
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False")
        raise DatasetLoadError(
            f"task {task!r}: cannot load the hub dataset {path!r} (config {config_name!r}, "
            f"split {split!r}){' while offline (HF_HUB_OFFLINE=1)' if offline else ''}: "
            f"{type(err).__name__}: {_first_line(err)}. Use a local copy instead: "
            f"{layouts(task, path, split, local)}") from err
    dataset = pick_split(loaded, split, task, f"hub dataset {path!r}")
    return Loaded(dataset, f"datasets:{dataset._fingerprint}")


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else ""


def pick_split(loaded: Any, split: str, task: str, where: str):
    """The split of a DatasetDict, or an error naming the splits there are and the override."""
    import datasets

    if not isinstance(loaded, datasets.DatasetDict):
        return loaded
    if split not in loaded:
        found = list(loaded)
        raise DatasetLoadError(
            f"task {task!r}: {where} has split(s) {found}, not {split!r}; choose one with "
            f"{override(task, 'split', found[0] if len(found) == 1 else '<split>')}")
    return loaded[split]


# -- local copies ----------------------------------------------------------------------------
def load_local(local: Path, path: str, split: str, config_name: str | None, task: str
               ) -> Loaded:
    """One split of a local copy in any of the layouts of `layouts()`."""
    import datasets

    if not local.exists():
        raise DatasetLoadError(f"task {task!r}: no local copy at {local} (data_root/<local>). "
                               f"Expected {layouts(task, path, split, local.name)}; or unset "
                               "data_root to load from the hub.")
    where = str(local)
    if local.is_file():
        if local.suffix != ".parquet":
            raise DatasetLoadError(f"task {task!r}: {local} is a file but not .parquet")
        return _parquet([local], local.parent)
    if (local / "dataset_dict.json").exists():
        files = [local / "dataset_dict.json", *_files(local / split)]
        saved = datasets.load_from_disk(str(local))
        return Loaded(pick_split(saved, split, task, where), files_digest(files, local))
    if (local / "state.json").exists():
        return Loaded(datasets.load_from_disk(str(local)), files_digest(_files(local), local))
    if (local / split / "state.json").exists():
        return Loaded(datasets.load_from_disk(str(local / split)),
                      files_digest(_files(local / split), local))
    if (local / f"{split}.parquet").exists():
        return _parquet([local / f"{split}.parquet"], local)
    if (local / split).is_dir() and any((local / split).glob("*.parquet")):
        return _parquet(sorted((local / split).glob("*.parquet")), local)
    tree = unsplit_image_tree(local)
    if tree is not None:
        log.info("task %s: %s is one unsplit image folder (<class>/<image>); all of it is "
                 "used as split %r", task, tree, split)
        digest = files_digest(_files(tree), local)
        loaded = datasets.load_dataset("imagefolder", data_dir=str(tree),
                                       cache_dir=str(cache_dir(digest)))
        return Loaded(next(iter(loaded.values())), digest)
    # A snapshot of the hub repository (its README's configs say where each split is), or an
    # image folder <split>/<class>/<image>.
    digest = files_digest(_files(local), local)
    try:
        loaded = datasets.load_dataset(str(local), config_name, cache_dir=str(cache_dir(digest)))
    except ValueError as err:
        if "config" not in str(err).lower():
            raise
        raise DatasetLoadError(f"task {task!r}: {local}: {_first_line(err)}; set it with "
                               f"{override(task, 'config_name', '<name>')}") from err
    return Loaded(pick_split(loaded, split, task, where), digest)


def _parquet(files: list[Path], root: Path) -> Loaded:
    import datasets

    digest = files_digest(files, root)
    dataset = datasets.load_dataset("parquet", data_files=[str(f) for f in files],
                                    split="train", cache_dir=str(cache_dir(digest)))
    return Loaded(dataset, digest)


def unsplit_image_tree(local: Path) -> Path | None:
    """`local`, or its one sub-folder (e.g. Caltech's 101_ObjectCategories), when it is a
    folder of class folders of images and nothing else a loader reads (no splits, no README)."""
    if any((local / name).exists() for name in ("README.md", "dataset_infos.json")):
        return None
    if _is_class_tree(local):
        return local
    trees = [d for d in _dirs(local) if d.name.lower() not in SPLIT_NAMES and _is_class_tree(d)]
    return trees[0] if len(trees) == 1 else None


def _is_class_tree(folder: Path) -> bool:
    classes = _dirs(folder)
    if not classes or any(d.name.lower() in SPLIT_NAMES for d in classes):
        return False
    if any(f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES | {".parquet", ".arrow"}
           for f in folder.iterdir()):
        return False
    return all(any(f.suffix.lower() in IMAGE_SUFFIXES for f in d.iterdir() if f.is_file())
               for d in classes)


def _dirs(folder: Path) -> list[Path]:
    return sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))


def _files(root: Path) -> list[Path]:
    """Every file under `root` a loader may read (hidden files and folders, such as the
    `.cache` that `hf download` writes, are not data)."""
    if root.is_file():
        return [root]
    return sorted(p for p in root.rglob("*") if p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(root).parts))


# -- digests ---------------------------------------------------------------------------------
def cache_root() -> Path:
    import datasets

    return Path(datasets.config.HF_DATASETS_CACHE) / CACHE_DIR_NAME


def cache_dir(digest: str) -> Path:
    """Where `datasets` may cache what it builds from the files of this digest."""
    return cache_root() / "builds" / digest.removeprefix("sha256:")[:24]


def files_digest(files: Iterable[Path], root: Path) -> str:
    """sha256 over each file's path relative to `root`, size and sha256, in path order (each
    file's sha256 from mibench.digests, cached by the file's path, size, mtime and inode)."""
    total = hashlib.sha256()
    for f in sorted(Path(f) for f in files):
        rel = f.relative_to(root).as_posix() if f != root else f.name
        total.update(f"{rel}\0{f.stat().st_size}\0{file_sha256(f)}\n".encode())
    return f"sha256:{total.hexdigest()}"
