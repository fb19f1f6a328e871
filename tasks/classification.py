"""Image classification as multiple choice, the way the study turned it into image-heavy tasks.

Each image becomes one question (prompts.IMAGE_CLASSIFICATION_QUESTION) whose options are its
true class plus `n_options - 1` distractor classes drawn from the same label set, in an order
shuffled per sample. Draw and shuffle come from `rng_for("options", seed, path, sample id)`:
the same in every run, process and machine, and the same whether the rows come from the hub
or a local copy. Class names are made human-readable: label ids go through the dataset's
ClassLabel names, then through `class_names` (e.g. WordNet ids -> words) and "_" -> " ".
`class_names` and `exclude_labels` match label names case-insensitively, so one config serves
the original folder casing ("Faces_easy", "BACKGROUND_Google") and lower-cased hub copies;
an excluded label a copy does not have is simply not there.

Schemas (hub id / split as configured in conf/task/*.yaml):
- Mini-ImageNet, `timm/mini-imagenet` split `test` (5,000 rows, 50 per class):
  `image` (Image), `label` (ClassLabel, 100 WordNet ids such as "n01532829"; the YAML maps them
  to the first ImageNet lemma, "house finch").
- Caltech-101, `dpdl-benchmark/caltech101` split `test`: `image` (Image), `label` (ClassLabel,
  lower-case folder names "accordion", "car_side", "background_google", "faces_easy", ...;
  the YAML drops the clutter class and maps "faces"/"faces_easy" to one "face"). The same
  config reads the original `101_ObjectCategories/<Class>/image_0001.jpg` folder (unsplit:
  all of it is the split), copies in the original casing, and copies without the clutter
  class (`flwrlabs/caltech101`, which has a `train` split only: `task.split=train`).
- Food-101, `ethz/food101` split `validation` (25,250 rows): `image` (Image), `label`
  (ClassLabel, 101 names such as "apple_pie").
- Any image folder `<split>/<class>/<image>` loads with `label` as a ClassLabel of the folder
  names, so a local copy needs no code.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from mibench.prompts import question_template
from mibench.records import OPTION_LETTERS, Sample
from mibench.seeding import rng_for

from .hf_dataset import DataError, HFDatasetTask, first_image

log = logging.getLogger(__name__)


def humanize(name: str, aliases: Mapping[str, str] | None = None) -> str:
    """A readable class name: an alias if given (keys matched case-insensitively), else
    underscores to spaces."""
    folded = {str(k).casefold(): v for k, v in (aliases or {}).items()}
    if str(name).casefold() in folded:
        return str(folded[str(name).casefold()])
    return " ".join(str(name).replace("_", " ").split())


def mc_options(true_name: str, pool: Sequence[str], n_options: int, *keys: object
               ) -> tuple[tuple[str, ...], int]:
    """The true class plus distractors from `pool`, shuffled; seeded by `keys` only.

    Returns (options, index of the true class). `pool` must not need de-duplication beyond
    the true name, which is removed from it.
    """
    others = sorted({p for p in pool if p != true_name})
    k = n_options - 1
    if k > len(others):
        raise ValueError(f"{n_options} options need {k} distractor classes, only "
                         f"{len(others)} other classes exist")
    rng = rng_for("options", *keys)
    picked = [others[int(i)] for i in rng.choice(len(others), size=k, replace=False)]
    options = [true_name, *picked]
    order = rng.permutation(n_options)
    shuffled = tuple(options[int(i)] for i in order)
    return shuffled, int(list(order).index(0))


class ClassificationTask(HFDatasetTask):
    """An image classification split as image-heavy multiple choice (see module doc)."""

    version = 1

    def __init__(
        self,
        name: str,
        path: str,
        split: str,
        image_column: str = "image",
        label_column: str = "label",
        n_options: int = 6,
        class_names: Mapping[str, str] | None = None,
        exclude_labels: Sequence[str] = (),
        id_column: str | None = None,
        config_name: str | None = None,
        revision: str | None = None,
        local: str | None = None,
        data_dir: str | None = None,
        prompt: str = "image_heavy",
        limit: int | None = None,
        seed: int = 0,
        bad_rows: str = "error",
    ) -> None:
        if not 2 <= n_options <= len(OPTION_LETTERS):
            raise ValueError(f"task {name!r}: n_options={n_options} must be 2..26")
        columns = {"image": image_column, "label": label_column, "id": id_column}
        super().__init__(name=name, category="image_heavy", path=path, split=split,
                         columns={k: v for k, v in columns.items() if v}, config_name=config_name,
                         revision=revision, local=local, data_dir=data_dir, prompt=prompt,
                         stratify_by=label_column, limit=limit, seed=seed, bad_rows=bad_rows)
        self.template = question_template(prompt)
        self.n_options = int(n_options)
        self.class_names = dict(class_names or {})
        self.exclude_labels = list(exclude_labels)
        self._names: list[str] | None = None  # raw label names by label id (ClassLabel)
        self._string_labels: list[str] = []    # the label set when labels are strings
        self._pool: list[str] = []

    def _prepare(self, ds) -> None:
        import datasets

        feature = ds.features[self.columns["label"]]
        if isinstance(feature, datasets.ClassLabel):
            self._names = list(feature.names)
        else:  # string labels: the label set is the values themselves
            self._names = None
            values = list(ds.select_columns([self.columns["label"]])[self.columns["label"]])
            self._string_labels = sorted({str(v) for v in values})
            if values and all(isinstance(v, int) and not isinstance(v, bool) for v in values):
                unnamed = sorted({str(v) for v in values} - {str(k) for k in self.class_names})
                if unnamed:
                    raise DataError(
                        f"task {self.name!r}: {self.source} labels its images with bare "
                        f"numbers (e.g. {unnamed[:3]}) and no class names, so no option can "
                        "name a class. Use a copy whose label column is a ClassLabel or holds "
                        "names, or map every number to a name in the task's class_names.")
        absent = [x for x in self.exclude_labels if x.casefold() not in
                  {n.casefold() for n in self._raw_names()}]
        if absent:
            log.info("task %s: excluded label(s) %s are not in %s (nothing to drop)",
                     self.name, absent, self.source)
        self._pool = self.label_pool()

    def _excluded(self, raw: str) -> bool:
        return raw.casefold() in {x.casefold() for x in self.exclude_labels}

    def _raw_names(self) -> list[str]:
        return self._names if self._names is not None else self._string_labels

    def _raw(self, value: Any) -> str:
        if self._names is not None:
            if not isinstance(value, int) or not 0 <= value < len(self._names):
                raise ValueError(f"label {value!r} is not a class id 0..{len(self._names) - 1}")
            return self._names[value]
        return str(value)

    def label_pool(self) -> list[str]:
        """The human-readable class names distractors are drawn from."""
        return sorted({humanize(n, self.class_names) for n in self._raw_names()
                       if not self._excluded(n)})

    def rows(self, ds) -> list[int]:
        keep = super().rows(ds)
        if not self.exclude_labels:
            return keep
        labels = list(ds.select_columns([self.columns["label"]])[self.columns["label"]])
        return [i for i in keep if not self._excluded(self._raw(labels[i]))]

    def to_sample(self, row: Mapping[str, Any], idx: int) -> Sample:
        sid = self.sample_id(row, idx)
        raw = self._raw(row[self.columns["label"]])
        label = humanize(raw, self.class_names)
        options, answer = mc_options(label, self._pool, self.n_options,
                                     self.seed, self.path, sid)
        image = first_image(row[self.columns["image"]])
        if image is None:
            raise ValueError("has no image")
        return Sample(id=sid, question=self.template.render(""), options=options, answer=answer,
                      category="image_heavy", image=image,
                      meta={"label": label, "label_raw": raw})

    def describe(self) -> dict:
        return {**super().describe(), "n_options": self.n_options,
                "exclude_labels": self.exclude_labels, "class_names": len(self.class_names)}
