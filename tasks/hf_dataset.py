"""The generic dataset task: one split of a `datasets` dataset, mapped to Samples by a column map.

A task with a standard multiple-choice schema needs only a YAML (see conf/task/mmlu.yaml):
the hub id and split, and which columns hold the question, the options, the answer, and, where
there are any, the image, a context/hint and a stable id. Row logic beyond that goes in a
subclass that overrides `to_sample(row, idx)` (see tasks/classification.py).

Where the data comes from:
The task's `data_dir` is the global `data_root` (its YAML says `${oc.select:data_root,null}`).
- `data_dir` unset: `datasets.load_dataset(path, config_name, split=split, revision=...)`.
- `data_dir` set: the local copy at `<data_root>/<local>` (`local` defaults to the task
  name), which may be
  - a `Dataset.save_to_disk` / `DatasetDict.save_to_disk` directory,
  - a parquet file, or a directory holding `<split>.parquet` or `<split>/*.parquet`,
  - a snapshot of the hub repository (`hf download <id> --repo-type dataset --local-dir ...`),
  - an image folder `<split>/<class name>/<image>` (classification tasks).

Options the column map understands (`columns:` in the YAML):
- `choices`: a list-of-strings column (MMLU, ScienceQA), or a `{text: [...], label: [...]}`
  column (OpenBookQA, ARC); or `options:` a list of one column per option (MMBench `A`..`D`,
  SEED-Bench `choice_a`..`choice_d`), where empty / null / "nan" cells are dropped.
- `answer`: an int index (or ClassLabel), an option label (`"B"`, ARC's `"3"`) or a letter.
- `image`: a PIL image, a list of images (the first one is used), or null.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mibench.errors import MibenchError
from mibench.prompts import question_template
from mibench.records import OPTION_LETTERS, Category, Sample

from .base import Task
from .sampling import stratified_indices

MISSING_TEXT = {"", "nan", "none", "null"}


class DatasetLoadError(MibenchError, FileNotFoundError):
    """A task's data is not where its config says; the message names task, path and layout."""


def is_missing(value: Any) -> bool:
    """Empty cells as datasets write them: None, NaN, "", "nan" (MMBench), "none"."""
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and value.strip().lower() in MISSING_TEXT


def load_split(path: str, split: str, config_name: str | None = None, revision: str | None = None,
               local: str | Path | None = None, task: str = "?"):
    """One split as a `datasets.Dataset`, from the hub or from a local copy (see module doc)."""
    import datasets

    if local is None:
        return datasets.load_dataset(path, config_name, split=split, revision=revision)
    local = Path(local)
    if not local.exists():
        raise DatasetLoadError(
            f"task {task!r}: no local copy at {local} (data_root/<local>). Put there a "
            f"save_to_disk directory, {split}.parquet, {split}/*.parquet, a snapshot of the hub "
            f"dataset {path!r}, or an image folder {split}/<class>/<image>; or unset data_root "
            "to load from the hub.")
    if local.is_file():
        if local.suffix != ".parquet":
            raise DatasetLoadError(f"task {task!r}: {local} is a file but not .parquet")
        return datasets.load_dataset("parquet", data_files=str(local), split="train")
    if (local / "dataset_dict.json").exists() or (local / "state.json").exists():
        saved = datasets.load_from_disk(str(local))
        if isinstance(saved, datasets.DatasetDict):
            if split not in saved:
                raise DatasetLoadError(f"task {task!r}: {local} has splits {list(saved)}, "
                                       f"not {split!r}")
            return saved[split]
        return saved
    if (local / split / "state.json").exists():
        return datasets.load_from_disk(str(local / split))
    if (local / f"{split}.parquet").exists():
        return datasets.load_dataset("parquet", data_files=str(local / f"{split}.parquet"),
                                     split="train")
    if (local / split).is_dir() and any((local / split).glob("*.parquet")):
        files = sorted(str(p) for p in (local / split).glob("*.parquet"))
        return datasets.load_dataset("parquet", data_files=files, split="train")
    # A hub snapshot (its README's configs say where each split is) or an image folder.
    return datasets.load_dataset(str(local), config_name, split=split)


def first_image(value: Any):
    """The PIL image in a cell (an image, a one-image list as in SEED-Bench, or None), as RGB."""
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
    if value is None:
        return None
    if not hasattr(value, "convert"):
        raise TypeError(f"expected a PIL image, got {type(value).__name__}")
    return value if value.mode == "RGB" else value.convert("RGB")


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
    ) -> None:
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

    # -- loading -----------------------------------------------------------------------------
    @property
    def source(self) -> str:
        """Where the rows come from: the local copy's path or the hub id."""
        return str(Path(self.data_dir) / self.local) if self.data_dir else self.path

    def load(self):
        local = Path(self.data_dir) / self.local if self.data_dir else None
        ds = load_split(self.path, self.split, self.config_name, self.revision, local, self.name)
        needed = [c for c in self._used_columns() if c not in ds.column_names]
        if needed:
            raise KeyError(f"task {self.name!r}: {self.source} split {self.split!r} has no "
                           f"column(s) {needed}; it has {ds.column_names}. Fix the task's "
                           "`columns:` map.")
        return ds

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
            import datasets

            column = self.columns["image"]
            raw = ds.select_columns([column])
            feature = raw.features[column]
            if isinstance(feature, datasets.Image):
                raw = raw.cast_column(column, datasets.Image(decode=False))
            values = list(raw[column])
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
            chosen = ds.select(keep)
            self._samples = [self._checked(row, idx) for row, idx in zip(chosen, keep)]
        return list(self._samples)

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
            return self.to_sample(row, idx)
        except Exception as err:
            raise ValueError(f"task {self.name!r}: row {idx} of {self.source} split "
                             f"{self.split!r} (id {self.sample_id(row, idx)!r}): {err}") from err

    # -- one row -----------------------------------------------------------------------------
    def to_sample(self, row: Mapping[str, Any], idx: int) -> Sample:
        """Map one row through the column map."""
        sid = self.sample_id(row, idx)
        options, labels = self._options(row)
        answer = answer_index(row[self.columns["answer"]], labels)
        context_col = self.columns.get("context")
        context = "" if not context_col or is_missing(row[context_col]) else str(row[context_col])
        question = self.template.render(str(row[self.columns["question"]]).strip(),
                                        context.strip())
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
                    options.append(str(row[column]).strip())
                    labels.append(OPTION_LETTERS[i])
            return options, labels
        choices = row[self.columns["choices"]]
        if isinstance(choices, Mapping):  # {"text": [...], "label": [...]}: OpenBookQA, ARC
            texts, labels = list(choices["text"]), [str(x) for x in choices["label"]]
            if len(texts) != len(labels):
                raise ValueError(f"{len(texts)} choice texts but {len(labels)} labels")
            return [str(t).strip() for t in texts], labels
        texts = [str(t).strip() for t in choices]
        return texts, list(OPTION_LETTERS[: len(texts)])

    def describe(self) -> dict:
        return {**super().describe(), "path": self.path, "config_name": self.config_name,
                "split": self.split, "revision": self.revision, "source": self.source,
                "columns": self.columns, "filters": self.filters,
                "require_image": self.require_image, "limit": self.limit, "seed": self.seed,
                "stratify_by": self.stratify_by, "prompt": self.template.describe()}


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
