"""The generic dataset task: one split of a `datasets` dataset, mapped to Samples by a column map.

A task with a standard multiple-choice schema needs only a YAML (see conf/task/mmlu.yaml):
the hub id and split, and which columns hold the question, the options, the answer, and, where
there are any, the image, a context/hint and a stable id. Row logic beyond that goes in a
subclass that overrides `to_sample(row, idx)` (see tasks/classification.py).

Where the data comes from:
The task's `data_dir` is the global `data_root` (its YAML says `${oc.select:data_root,null}`).
- `data_dir` unset: `datasets.load_dataset(path, config_name, revision=...)`, then `split`.
- `data_dir` set: the local copy at `<data_root>/<local>` (`local` defaults to the task
  name), which may be
  - a `Dataset.save_to_disk` / `DatasetDict.save_to_disk` directory,
  - a parquet file, or a directory holding `<split>.parquet` or `<split>/*.parquet`,
  - a snapshot of the hub repository (`hf download <id> --repo-type dataset --local-dir ...`),
  - an image folder `<split>/<class name>/<image>`, or one unsplit folder of class folders
    such as Caltech's `101_ObjectCategories/<Class>/image_0001.jpg` (classification tasks).
  Local copies are always read from the files named (see tasks/sources.py), and the run
  records a digest of them (`data_digest` in describe()), so changed data is never mistaken
  for the data a run directory was scored on.
A split the data does not have is an error naming the splits it has and the override.

Options the column map understands (`columns:` in the YAML):
- `choices`: a list-of-strings column (MMLU, ScienceQA), or a `{text: [...], label: [...]}`
  column (OpenBookQA, ARC); or `options:` a list of one column per option (MMBench `A`..`D`,
  SEED-Bench `choice_a`..`choice_d`), where empty / null / "nan" cells are dropped.
- `answer`: an int index (or ClassLabel), an option label (`"B"`, ARC's `"3"`) or a letter.
- `image`: an Image column, a list of images (the first one is used), or null. Images are
  decoded only when scored (`mibench.images.ImageRef`), so a task never holds them all.

Every row is checked as it becomes a sample, and a bad one is a `DataError` naming the task,
the source, the row and the sample id: a question must be non-empty text (not null, bytes or
blank), options a list of non-empty, distinct strings (a string "4567" is not four options),
and an image one that decodes (see mibench.images for modes and the size limit). With
`bad_rows: skip` such rows are left out instead, each logged, and their ids recorded in
describe()'s `skipped_rows` (MMLU's test split has a few rows whose options repeat).
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from mibench.errors import MibenchError
from mibench.images import ImageDataError, ImageRef, to_rgb
from mibench.prompts import question_template
from mibench.records import OPTION_LETTERS, Category, Sample

from .base import Task
from .sampling import stratified_indices
from .sources import DatasetLoadError, Loaded, load_hub, load_local, override

log = logging.getLogger(__name__)

__all__ = ["DataError", "DatasetLoadError", "HFDatasetTask", "answer_index", "first_image"]

MISSING_TEXT = {"", "nan", "none", "null"}
BAD_ROWS = ("error", "skip")


class DataError(MibenchError, ValueError):
    """A row or column a task cannot turn into a sample; the message names where it is."""


def is_missing(value: Any) -> bool:
    """Empty cells as datasets write them: None, NaN, "", "nan" (MMBench), "none"."""
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and value.strip().lower() in MISSING_TEXT


def first_image(value: Any) -> Image.Image | ImageRef | None:
    """The image in a cell (an image, a one-image list as in SEED-Bench, or None): an
    ImageRef as it is, a PIL image as RGB (mibench.images.to_rgb)."""
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
    if value is None or isinstance(value, ImageRef):
        return value
    if not isinstance(value, Image.Image):
        raise TypeError(f"expected an image, got {type(value).__name__}")
    return to_rgb(value)


def text_cell(value: Any, what: str) -> str:
    """A cell that must hold text: null, bytes, other types and blank text are refused."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        raise ValueError(f"{what} is null")
    if isinstance(value, (bytes, bytearray)):
        shown = f"{bytes(value[:20])!r}{'...' if len(value) > 20 else ''}"
        raise ValueError(f"{what} is bytes ({shown}), not text; decode the column to strings "
                         "first")
    if not isinstance(value, str):
        raise ValueError(f"{what} is {type(value).__name__} {value!r}, not text")
    if not value.strip():
        raise ValueError(f"{what} is empty")
    return value.strip()


def text_list(value: Any, what: str) -> list[str]:
    """A cell that must hold a list of texts (a string is not a list of its characters)."""
    if isinstance(value, (str, bytes, bytearray, Mapping)) or not isinstance(
            value, (list, tuple)):
        raise ValueError(f"{what} must be a list of strings, got {type(value).__name__} "
                         f"{value!r:.80}")
    return [text_cell(v, f"{what}[{i}]") for i, v in enumerate(value)]


class HFDatasetTask(Task):
    """One split of a dataset, mapped to Samples through a column map (see module doc)."""

    version = 1

    def __init__(
        self,
        name: str,
        category: Category,
        path: str,
        split: str,
        columns: Mapping[str, Any],
        config_name: str | None = None,
        revision: str | None = None,
        local: str | None = None,
        data_dir: str | None = None,
        prompt: str | None = None,
        filters: Mapping[str, Any] | None = None,
        require_image: bool = False,
        meta_columns: Sequence[str] = (),
        stratify_by: str | None = None,
        limit: int | None = None,
        seed: int = 0,
        bad_rows: str = "error",
    ) -> None:
        if bad_rows not in BAD_ROWS:
            raise ValueError(f"task {name!r}: bad_rows={bad_rows!r} must be one of {BAD_ROWS}")
        self.bad_rows = bad_rows
        self.name, self.category, self.path, self.split = name, category, path, split
        self.config_name, self.revision = config_name, revision
        self.local = local or name
        self.data_dir = None if data_dir in (None, "") else str(data_dir)
        self.columns = dict(columns)
        self.template = question_template(prompt or category)
        self.filters = dict(filters or {})
        self.require_image = bool(require_image)
        self.meta_columns = list(meta_columns)
        self.stratify_by = stratify_by or self.columns.get("answer")
        self.limit = None if limit is None else int(limit)
        self.seed = int(seed)
        self._samples: list[Sample] | None = None
        self._loaded: Loaded | None = None
        self._skipped: list[str] = []  # ids of the malformed rows left out (bad_rows=skip)
        self._first_bad = ""

    # -- loading -----------------------------------------------------------------------------
    @property
    def source(self) -> str:
        """Where the rows come from: the local copy's path or the hub id."""
        return str(Path(self.data_dir) / self.local) if self.data_dir else self.path

    def load(self):
        """The split as a `datasets.Dataset` (loaded once per task object)."""
        if self._loaded is None:
            if self.data_dir:
                loaded = load_local(Path(self.data_dir) / self.local, self.path, self.split,
                                    self.config_name, self.name)
            else:
                loaded = load_hub(self.path, self.split, self.config_name, self.revision,
                                  self.name, self.local)
            ds = loaded.dataset
            needed = [c for c in self._used_columns() if c not in ds.column_names]
            if needed:
                raise DataError(f"task {self.name!r}: {self.source} split {self.split!r} has "
                                f"no column(s) {needed}; it has {ds.column_names}. Fix the "
                                "task's `columns:` map.")
            self._loaded = loaded
        return self._loaded.dataset

    def data_digest(self) -> str | None:
        """What the rows were read from: a sha256 over a local copy's files, or the hub
        dataset's fingerprint; None until the data is loaded."""
        return None if self._loaded is None else self._loaded.digest

    def _used_columns(self) -> list[str]:
        used = [v for k, v in self.columns.items() if k != "options" and isinstance(v, str)]
        used += list(self.columns.get("options") or [])
        return used + list(self.filters) + self.meta_columns

    def rows(self, ds) -> list[int]:
        """Row indices to keep: those passing the filters (and having an image if required)."""
        keep = range(len(ds))
        for column, wanted in self.filters.items():
            allowed = set(wanted) if isinstance(wanted, (list, tuple)) else {wanted}
            values = list(ds.select_columns([column])[column])
            keep = [i for i in keep if values[i] in allowed]
        if self.require_image:
            column = self.columns["image"]
            values = list(undecoded(ds, column)[column])
            keep = [i for i in keep if not _empty_image(values[i])]
        return list(keep)

    def sample_id(self, row: Mapping[str, Any] | None, idx: int) -> str:
        """The dataset's own id where it has one, else f"{split}:{row index}"."""
        column = self.columns.get("id")
        if column and row is not None and not is_missing(row[column]):
            return str(row[column])
        return f"{self.split}:{idx}"

    def samples(self) -> list[Sample]:
        if self._samples is None:
            ds = self.load()
            self._prepare(ds)
            keep = self.rows(ds)
            if self.limit is not None and keep:
                keep = self._subsample(ds, keep)
            samples = list(self._build(ds, keep))
            if keep and not samples:  # not a few bad rows: the copy does not fit the config
                raise DataError(f"every row of {self.source} split {self.split!r} is "
                                f"malformed; the first: {self._first_bad}")
            self._samples = samples
        return list(self._samples)

    def _build(self, ds, keep: list[int]) -> Iterator[Sample]:
        """The kept rows as samples; each image becomes an ImageRef into the dataset, checked
        by its header here and decoded only when the sample is scored."""
        column = self.columns.get("image")
        chosen = ds.select(keep)
        cells = None
        if column:
            cells = undecoded(ds, column)
            chosen = chosen.remove_columns([column])  # rows without decoding their images
        self._skipped, self._first_bad = [], ""
        for row, idx in zip(chosen, keep):
            try:
                if cells is not None:
                    where = (f"task {self.name!r}: row {idx} of {self.source} split "
                             f"{self.split!r} (id {self.sample_id(row, idx)!r})")
                    row = {**row, column: image_ref(cells, column, idx, where)}
                yield self._checked(row, idx)
            except (DataError, ImageDataError) as err:
                if self.bad_rows == "error":
                    raise type(err)(f"{err}. To leave malformed rows out (the results list "
                                    f"them), set {override(self.name, 'bad_rows', 'skip')}"
                                    ) from err
                self._first_bad = self._first_bad or str(err)
                self._skipped.append(self.sample_id(row, idx))
                log.warning("%s (skipped: bad_rows=skip)", err)

    def _prepare(self, ds) -> None:
        """Hook for what a subclass needs from the whole split (e.g. the label names)."""

    def _subsample(self, ds, keep: list[int]) -> list[int]:
        """Seeded stratified subset of the kept rows, by the answer / label column."""
        column = self.stratify_by
        strata = list(ds.select_columns([column])[column]) if column else [0] * len(ds)
        id_col = self.columns.get("id")
        ids = list(ds.select_columns([id_col])[id_col]) if id_col else None
        keys = [str(ids[i]) if ids is not None and not is_missing(ids[i])
                else f"{self.split}:{i}" for i in keep]
        chosen = stratified_indices([strata[i] for i in keep], keys, self.limit, self.seed)
        return [keep[j] for j in chosen]

    def _checked(self, row: Mapping[str, Any], idx: int) -> Sample:
        try:
            sample = self.to_sample(row, idx)
            if isinstance(sample.image, ImageRef):
                sample.image.check()
            return sample
        except ImageDataError:
            raise  # it names the row already
        except Exception as err:
            raise DataError(f"task {self.name!r}: row {idx} of {self.source} split "
                            f"{self.split!r} (id {self.sample_id(row, idx)!r}): {err}") from err

    # -- one row -----------------------------------------------------------------------------
    def to_sample(self, row: Mapping[str, Any], idx: int) -> Sample:
        """Map one row through the column map."""
        sid = self.sample_id(row, idx)
        options, labels = self._options(row)
        answer = answer_index(row[self.columns["answer"]], labels)
        context_col = self.columns.get("context")
        context = ("" if not context_col or is_missing(row[context_col])
                   else text_cell(row[context_col], f"context column {context_col!r}"))
        question_col = self.columns["question"]
        question = self.template.render(
            text_cell(row[question_col], f"question column {question_col!r}"), context)
        image_col = self.columns.get("image")
        image = first_image(row[image_col]) if image_col else None
        meta = {c: _plain(row[c]) for c in self.meta_columns}
        return Sample(id=sid, question=question, options=tuple(options), answer=answer,
                      category=self.category, image=image, meta=meta)

    def _options(self, row: Mapping[str, Any]) -> tuple[list[str], list[str]]:
        """Option texts and their labels (the labels an answer column may name)."""
        if self.columns.get("options"):
            options, labels = [], []
            for i, column in enumerate(self.columns["options"]):
                if not is_missing(row[column]):
                    options.append(text_cell(row[column], f"option column {column!r}"))
                    labels.append(OPTION_LETTERS[i])
            return options, labels
        column = self.columns["choices"]
        choices = row[column]
        if isinstance(choices, Mapping):  # {"text": [...], "label": [...]}: OpenBookQA, ARC
            if set(choices) < {"text", "label"}:
                raise ValueError(f"choices column {column!r} is a mapping without text and "
                                 f"label lists: {sorted(choices)}")
            texts = text_list(choices["text"], f"choices column {column!r} text")
            labels = text_list(choices["label"], f"choices column {column!r} label")
            if len(texts) != len(labels):
                raise ValueError(f"{len(texts)} choice texts but {len(labels)} labels")
            return texts, labels
        texts = text_list(choices, f"choices column {column!r}")
        return texts, list(OPTION_LETTERS[: len(texts)])

    def describe(self) -> dict:
        return {**super().describe(), "path": self.path, "config_name": self.config_name,
                "split": self.split, "revision": self.revision,
                # where the rows came from, without this machine's path: the digest ties
                # results to the exact files
                "source": f"data_root/{self.local}" if self.data_dir else self.path,
                "columns": self.columns, "filters": self.filters,
                "require_image": self.require_image, "limit": self.limit, "seed": self.seed,
                "stratify_by": self.stratify_by, "prompt": self.template.describe(),
                "bad_rows": self.bad_rows, "data_digest": self.data_digest(),
                "skipped_rows": None if self._samples is None else list(self._skipped)}


def answer_index(value: Any, labels: Sequence[str]) -> int:
    """The option index an answer cell names: an int, an option label, or a letter."""
    if isinstance(value, bool) or value is None:
        raise ValueError(f"answer {value!r} is not an option index or label")
    if isinstance(value, int):
        index = value
    else:
        text = str(value).strip()
        if text in labels:
            return labels.index(text)
        if len(text) == 1 and text.upper() in OPTION_LETTERS:
            letter = text.upper()
            if letter in labels:
                return labels.index(letter)
            index = OPTION_LETTERS.index(letter)
        else:
            raise ValueError(f"answer {value!r} is none of the option labels {list(labels)}")
    if not 0 <= index < len(labels):
        raise ValueError(f"answer {value!r} is out of range for {len(labels)} options")
    return index


def undecoded(ds, column: str):
    """The image column alone, its images left encoded ({"bytes", "path"} cells)."""
    feature = no_decode(ds.features[column])
    return ds.select_columns([column]).cast_column(column, feature)


def no_decode(feature: Any) -> Any:
    """The feature with every Image in it set to decode=False (lists of images included)."""
    import datasets

    if isinstance(feature, datasets.Image):
        return datasets.Image(decode=False)
    if hasattr(feature, "feature"):  # List / Sequence / LargeList of images
        feature = copy.deepcopy(feature)
        feature.feature = no_decode(feature.feature)
    return feature


class _Cell:
    """Reads one encoded image from a dataset on demand (the dataset is memory-mapped, so
    holding it costs nothing per sample)."""

    __slots__ = ("cells", "column", "index")

    def __init__(self, cells, column: str, index: int) -> None:
        self.cells, self.column, self.index = cells, column, index

    def __call__(self) -> Any:
        value = self.cells[self.index][self.column]
        return value[0] if isinstance(value, (list, tuple)) else value


def image_ref(cells, column: str, index: int, where: str) -> ImageRef | None:
    """An ImageRef for row `index` of an undecoded image column, None for an empty cell."""
    value = cells[index][column]
    if _empty_image(value):
        return None
    if isinstance(value, (list, tuple)):
        value = value[0]
    if not isinstance(value, Mapping):  # a column of image paths or bytes, not an Image
        raise DataError(f"{where}: image column {column!r} holds {type(value).__name__}, "
                        "not an image")
    return ImageRef(_Cell(cells, column, index), where)


def _empty_image(value: Any) -> bool:
    if isinstance(value, (list, tuple)):
        return not value or all(_empty_image(v) for v in value)
    if isinstance(value, Mapping):
        return value.get("bytes") is None and not value.get("path")
    return value is None


def _plain(value: Any) -> Any:
    """A JSON-able meta value (drop images and other objects)."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return str(value)
