"""The reference study's own evaluation items, read from its released data as its code reads them.

Cai et al. evaluate fixed items: per dataset a `multiple_choice_data_<split>.json` (a JSON
array of objects) that its `read_utils.load_dataset` reads from `data/<dataset>/`, with fixed
options in a fixed order and, for image classification, an LLM-written misleading fact per
item. `StudyDataTask` yields exactly those items, in file order; nothing is re-drawn or
shuffled. The fields read (as the study's eval reads them, at its pinned commit):

- `id` (string; the key of the study's records), `question` (the question alone),
  `multiple_choices` ({"A": text, "B": text, ...}, in display order), and
  `multiple_choices_answer` (the gold key);
- `image`: a file name under the dataset's image folder (Caltech-101, Mini-ImageNet,
  ScienceQA, SEED-Bench) or the image itself in base64 (MMBench-EN);
- `facts` ({wrong option: "The picture seems to describe a ... ."}, image-heavy only): what
  the study's misleading-text condition adds (`meta["facts"]`).

Where the data comes from (`data_dir` is the global `data_root`):
- `data_dir` set: the folder `<data_root>/<local>` (default `study_data`) holding the study's
  data tree as its `run_llava.sh` leaves it (`caltech-101/multiple_choice_data_test.json`,
  ..., or the same under `data/`), or the release's `*.tar.gz` archives as downloaded
  (`hf download <repo> --repo-type dataset --local-dir <data_root>/study_data`);
- unset: the hub dataset `repo` (the code downloads `luisrui/Modality-Interference-in-MLLMs-DATA`,
  which ships tar.gz archives; its README links `luisrui/training_data`): loose files are
  fetched as named, archives whose name matches the dataset's folder (or `archive`) are
  fetched whole.
Archives are unpacked once into the mibench cache, under a folder named by the archive's
sha256, with tarfile's `data` filter (no links out, no absolute paths). The run records a
digest of the JSON and every image it reads (`data_digest`).

`ImagePool` reads a folder of images the same way (the study's switched images: every image
under `VQADatasets/MMVP/images/`), as donor samples for `SwitchedImage`.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import shutil
import tarfile
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mibench.bounded_json import UnreadableJSONError, read_json_file
from mibench.digests import cache_dir, file_sha256
from mibench.images import ImageDataError, ImageRef
from mibench.records import OPTION_LETTERS, Category, Sample

from .base import Task
from .hf_dataset import DataError, text_cell
from .sampling import stratified_indices
from .sources import DatasetLoadError, files_digest, override

log = logging.getLogger(__name__)

STUDY_DATA_REPO = "luisrui/Modality-Interference-in-MLLMs-DATA"
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
# The released JSON files are read whole (MMBench-EN's holds its images in base64).
MAX_JSON_BYTES = 4 << 30
MAX_JSON_DEPTH = 16
# The study's image pool: `RandomImageIterator` globs these (case-insensitive) suffixes.
POOL_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
BASE64 = "base64"


# -- finding the files -------------------------------------------------------------------------
def _archive_stem(path: Path) -> str:
    name = path.name
    for suffix in ARCHIVE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _archives(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file()
                  and p.name.lower().endswith(ARCHIVE_SUFFIXES))


def _holds(archive: Path, wanted: str, named: str | None) -> bool:
    """Whether an archive is the one for `wanted`: the one named, else one whose name is a
    folder of `wanted`'s path ("caltech-101.tar.gz" for "caltech-101/...")."""
    if named:
        return archive.name == named
    parts = {p.casefold() for p in Path(wanted).parts[:-1]}
    return _archive_stem(archive).casefold() in parts


def _extracted(archive: Path) -> Path:
    """The archive unpacked into the mibench cache (once; named by its sha256)."""
    target = cache_dir() / "study-data" / file_sha256(archive)[:24]
    if (target / ".complete").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".unpack-", dir=target.parent))
    try:
        log.info("unpacking %s into %s", archive, target)
        with tarfile.open(archive) as tar:
            tar.extractall(work, filter="data")
        (work / ".complete").write_text(f"{archive.name}\n")
        try:
            os.replace(work, target)
        except OSError:  # another process finished first: theirs is the same archive
            if not (target / ".complete").is_file():
                raise
    except (tarfile.TarError, OSError) as err:
        raise DatasetLoadError(f"cannot unpack {archive}: {err}") from err
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def data_tree(folder: Path, wanted: str, archive: str | None, task: str) -> Path:
    """The folder under which the relative path `wanted` exists: `folder`, `folder/data`
    (run_llava.sh unpacks into ./data), or the unpacked archive that holds it."""
    for root in (folder, folder / "data"):
        if (root / wanted).exists():
            return root
    archives = _archives(folder) if folder.is_dir() else []
    chosen = [a for a in archives if _holds(a, wanted, archive)]
    for found in chosen:
        unpacked = _extracted(found)
        for root in (unpacked, unpacked / "data"):
            if (root / wanted).exists():
                return root
    have = ", ".join(a.name for a in archives) or "none"
    raise DatasetLoadError(
        f"task {task!r}: no {wanted} in {folder} (nor under data/), and no archive there holds "
        f"it (archives: {have}). Put the study's data tree there (as its run_llava.sh "
        f"leaves ./data), or name the archive with {override(task, 'archive', '<file.tar.gz>')}")


def hub_patterns(files: Sequence[str], wanted: Sequence[str], archive: str | None
                 ) -> list[str]:
    """Which files of a hub repository to fetch for `wanted`: the loose files and folders
    (at the top or under data/), else the top-level archives named after their folders."""
    def present(name: str) -> bool:  # a file, or a folder of files
        return name in files or any(f.startswith(name + "/") for f in files)

    prefix = next((p for p in ("", "data/") if present(p + wanted[0])), None)
    if prefix is not None:
        return [x for path in wanted for x in (prefix + path, f"{prefix}{path}/*")]
    return [f for f in files if "/" not in f and any(
        _holds(Path(f), path, archive) for path in wanted)]


def hub_folder(repo: str, revision: str | None, wanted: Sequence[str], archive: str | None,
               task: str) -> Path:
    """A snapshot of the files of hub dataset `repo` that hold `wanted` (loose, or in the
    archives named after their folders); from the local hub cache when offline."""
    from huggingface_hub import HfApi, snapshot_download

    try:
        files = HfApi().list_repo_files(repo, repo_type="dataset", revision=revision)
    except Exception as err:  # offline or unreachable: what the hub cache already holds
        try:
            return Path(snapshot_download(repo, repo_type="dataset", revision=revision,
                                          local_files_only=True))
        except Exception:
            raise DatasetLoadError(
                f"task {task!r}: cannot reach the hub dataset {repo!r} ({type(err).__name__}: "
                f"{str(err).splitlines()[0] if str(err) else ''}) and it is not in the hub "
                f"cache. Download it (hf download {repo} --repo-type dataset --local-dir "
                f"DIR/study_data) and set data_root=DIR") from err
    patterns = hub_patterns(files, wanted, archive)
    if not patterns:
        raise DatasetLoadError(
            f"task {task!r}: the hub dataset {repo!r} has neither {wanted[0]} nor an archive "
            f"named after its folder; its archives: "
            f"{[f for f in files if f.lower().endswith(ARCHIVE_SUFFIXES)]}. Name one with "
            f"{override(task, 'archive', '<file.tar.gz>')}")
    return Path(snapshot_download(repo, repo_type="dataset", revision=revision,
                                  allow_patterns=patterns))


def _relative(name: str, what: str) -> Path:
    """A file name from the data as a relative path that stays below its folder (no
    absolute path, no ".."): the JSON is data, it may not point elsewhere on the machine."""
    path = Path(name)
    if path.is_absolute() or ".." in path.parts or not path.parts:
        raise ValueError(f"{what} {name!r} is not a path inside the data folder")
    return path


class _Source:
    """Where a task's files are: a local folder or a hub dataset, resolved on first use."""

    def __init__(self, task: str, repo: str, revision: str | None, archive: str | None,
                 data_dir: str | None, local: str) -> None:
        self.task, self.repo, self.revision, self.archive = task, repo, revision, archive
        self.local = local
        self.folder = Path(data_dir) / local if data_dir else None

    def __str__(self) -> str:
        return str(self.folder) if self.folder else f"hub dataset {self.repo}"

    def provenance(self) -> str:
        """Where the files came from, without this machine's path: the digest ties results
        to the exact files."""
        return f"data_root/{self.local}" if self.folder else f"hub dataset {self.repo}"

    def root(self, wanted: Sequence[str]) -> Path:
        if self.folder is not None:
            if not self.folder.exists():
                raise DatasetLoadError(
                    f"task {self.task!r}: no local copy at {self.folder} (data_root/<local>); "
                    f"put the study's data tree there, or its archives (hf download {self.repo}"
                    f" --repo-type dataset --local-dir {self.folder}); or unset data_root to "
                    "load from the hub")
            folder = self.folder
        else:
            folder = hub_folder(self.repo, self.revision, wanted, self.archive, self.task)
        return data_tree(folder, wanted[0], self.archive, self.task)


# -- the items ---------------------------------------------------------------------------------
class StudyDataTask(Task):
    """One dataset of the study's released items (see module doc)."""

    version = 1

    def __init__(
        self,
        name: str,
        category: Category,
        file: str,
        images: str | None = None,
        repo: str = STUDY_DATA_REPO,
        revision: str | None = None,
        archive: str | None = None,
        local: str = "study_data",
        data_dir: str | None = None,
        reference: str = "clean",
        limit: int | None = None,
        seed: int = 0,
        bad_rows: str = "error",
    ) -> None:
        if bad_rows not in ("error", "skip"):
            raise ValueError(f"task {name!r}: bad_rows={bad_rows!r} must be error or skip")
        if category != "text_heavy" and not images:
            raise ValueError(f"task {name!r}: a {category} task needs `images` (a folder of "
                             f"the data tree, or {BASE64!r})")
        for key, value in (("file", file), ("images", images)):
            if value not in (None, BASE64):
                _relative(value, f"task {name!r}: {key}")
        self.name, self.category, self.file, self.images = name, category, file, images
        self.reference = reference
        self.limit = None if limit is None else int(limit)
        self.seed, self.bad_rows = int(seed), bad_rows
        self._source = _Source(name, repo, revision, archive,
                               None if data_dir in (None, "") else str(data_dir), local)
        self._samples: list[Sample] | None = None
        self._digest: str | None = None
        self._skipped: list[str] = []

    def samples(self) -> list[Sample]:
        if self._samples is None:
            wanted = [self.file] + ([self.images] if self.images not in (None, BASE64) else [])
            root = self._source.root(wanted)
            path = root / self.file
            try:
                rows = read_json_file(path, MAX_JSON_BYTES, MAX_JSON_DEPTH)
            except UnreadableJSONError as err:
                raise DataError(f"task {self.name!r}: {err}") from err
            if not isinstance(rows, list):
                raise DataError(f"task {self.name!r}: {path} holds a JSON "
                                f"{type(rows).__name__}, not the array of items the study's "
                                "load_dataset reads")
            keep = self._subset(rows)
            samples, read = [], [path]
            self._skipped = []
            for index in keep:
                try:
                    sample = self.to_sample(rows[index], index, root)
                    if isinstance(sample.image, ImageRef):
                        sample.image.check()
                except (ValueError, TypeError, ImageDataError) as err:
                    where = (f"task {self.name!r}: item {index} of {path} (id "
                             f"{_row_id(rows[index])!r})")
                    if self.bad_rows == "error":
                        raise DataError(f"{where}: {err}. To leave malformed items out (the "
                                        f"results list them), set "
                                        f"{override(self.name, 'bad_rows', 'skip')}") from err
                    log.warning("%s: %s (skipped: bad_rows=skip)", where, err)
                    self._skipped.append(str(_row_id(rows[index])))
                    continue
                samples.append(sample)
                if sample.meta.get("image_file"):
                    read.append(root / sample.meta["image_file"])
            if keep and not samples:
                raise DataError(f"task {self.name!r}: every item of {path} is malformed")
            self._digest = files_digest(sorted(set(read)), root)
            self._samples = samples
        return list(self._samples)

    def _subset(self, rows: list) -> list[int]:
        """Every item in file order, or a seeded subset stratified by gold key (`limit`)."""
        strata = [r.get("multiple_choices_answer") if isinstance(r, dict) else None
                  for r in rows]
        keys = [str(_row_id(r)) for r in rows]
        return stratified_indices(strata, keys, self.limit, self.seed)

    def to_sample(self, row: Any, index: int, root: Path) -> Sample:
        """One released item as a Sample: options in the file's order, the gold key's index."""
        if not isinstance(row, Mapping):
            raise ValueError(f"is a {type(row).__name__}, not an object")
        sid = row.get("id")
        if isinstance(sid, bool) or not isinstance(sid, (str, int)) or str(sid) == "":
            raise ValueError(f"has no usable 'id' ({sid!r}); the study keys its records by it")
        choices = row.get("multiple_choices")
        if not isinstance(choices, Mapping) or len(choices) < 2:
            raise ValueError(f"multiple_choices must map at least two option letters to "
                             f"texts, got {choices!r:.80}")
        letters = list(choices)
        if letters != list(OPTION_LETTERS[: len(letters)]):
            raise ValueError(f"option keys {letters} are not A, B, C, ... in order; the "
                             "letters a model sees are the keys, so they must run from A")
        options = tuple(text_cell(choices[k], f"option {k!r}") for k in letters)
        gold = row.get("multiple_choices_answer")
        if gold not in choices:
            raise ValueError(f"multiple_choices_answer {gold!r} is none of {letters}")
        meta: dict[str, Any] = {}
        facts = row.get("facts")
        if facts is not None:
            if not isinstance(facts, Mapping) or not facts or not all(
                    isinstance(k, str) and isinstance(v, str) and v.strip()
                    for k, v in facts.items()):
                raise ValueError(f"facts must map option texts to non-empty texts, got "
                                 f"{facts!r:.80}")
            meta["facts"] = dict(facts)
        image = None
        if self.images:
            image, file = self._image(row.get("image"), root, f"task {self.name!r}: item "
                                      f"{index} (id {str(sid)!r})")
            if file:
                meta["image_file"] = file
        return Sample(id=str(sid), question=text_cell(row.get("question"), "question"),
                      options=options, answer=letters.index(gold), category=self.category,
                      image=image, meta=meta)

    def _image(self, value: Any, root: Path, where: str) -> tuple[ImageRef, str | None]:
        if not isinstance(value, str) or not value.strip():
            kind = "base64 string" if self.images == BASE64 else "file name"
            raise ValueError(f"image must be a {kind}, got {value!r:.60}")
        if self.images == BASE64:
            try:
                data = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError) as err:
                raise ValueError(f"image is not base64 ({err})") from err
            return ImageRef(lambda: data, where), None
        relative = Path(self.images) / _relative(value, "image")
        path = root / relative
        if not path.is_file():
            raise ValueError(f"image file {path} does not exist")
        return ImageRef(lambda: path, where), relative.as_posix()

    def data_digest(self) -> str | None:
        return self._digest

    def describe(self) -> dict:
        return {**super().describe(), "file": self.file, "images": self.images,
                "source": self._source.provenance(), "repo": self._source.repo,
                "revision": self._source.revision, "limit": self.limit, "seed": self.seed,
                "prompt": "the model's prompt style (mibench.prompt_styles)",
                "bad_rows": self.bad_rows, "data_digest": self._digest,
                "skipped_rows": None if self._samples is None else list(self._skipped)}


def _row_id(row: Any) -> Any:
    return row.get("id") if isinstance(row, Mapping) else None


# -- an image pool (the study's switched images) -----------------------------------------------
class ImagePool(Task):
    """Every image under one folder of a data tree, as donor samples for `SwitchedImage`.

    The study draws its switched images from all files under `VQADatasets/MMVP/images/`
    (`RandomImageIterator`: .jpg .jpeg .png .bmp .gif, any case, recursively). Each image
    becomes a sample (id = its path in the folder) whose question and options only carry
    it: the pool is never scored, its label matches no option, so no image is preferred.
    """

    version = 1
    category = "image_heavy"

    def __init__(self, name: str, folder: str, repo: str = STUDY_DATA_REPO,
                 revision: str | None = None, archive: str | None = None,
                 local: str = "study_data", data_dir: str | None = None) -> None:
        _relative(folder, f"task {name!r}: folder")
        self.name, self.folder = name, folder
        self._source = _Source(name, repo, revision, archive,
                               None if data_dir in (None, "") else str(data_dir), local)
        self._samples: list[Sample] | None = None
        self._digest: str | None = None

    def samples(self) -> list[Sample]:
        if self._samples is None:
            base = self._source.root([self.folder]) / self.folder
            files = sorted(p for p in base.rglob("*")
                           if p.is_file() and p.suffix.lower() in POOL_SUFFIXES)
            if not files:
                raise DataError(f"task {self.name!r}: no image ({', '.join(POOL_SUFFIXES)}) "
                                f"under {base}")
            self._digest = files_digest(files, base)
            self._samples = [
                Sample(id=f.relative_to(base).as_posix(), question="(an image of the pool)",
                       options=("(pool image)", "(not scored)"), answer=0,
                       category="image_heavy",
                       image=ImageRef(lambda f=f: f, f"task {self.name!r}: {f}"))
                for f in files]
        return list(self._samples)

    def data_digest(self) -> str | None:
        return self._digest

    def describe(self) -> dict:
        return {**super().describe(), "folder": self.folder, "source": self._source.provenance(),
                "repo": self._source.repo, "revision": self._source.revision,
                "images": None if self._samples is None else len(self._samples),
                "data_digest": self._digest}
