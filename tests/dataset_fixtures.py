"""Tiny copies of the study's datasets in their real column names and types, written offline.

Each writer puts a few rows under `<root>/<task name>` in one of the layouts the generic loader
reads (save_to_disk, parquet, hub snapshot with README configs, image folder), so that a test
loads them through the real task with `data_root=<root>`. Images are small PIL images. The
`ROWS` dicts keep what each writer wrote, for field-by-field checks.
"""

from __future__ import annotations

from pathlib import Path

import datasets
import numpy as np
from PIL import Image


def image(seed: int, size: int = 20) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), "RGB")


# -- image-heavy ---------------------------------------------------------------------------
MINI_IMAGENET_WNIDS = ["n01532829", "n01558993", "n01704323", "n01749939", "n01770081",
                       "n01843383", "n01855672", "n01910747", "n01930112", "n01981276"]
MINI_IMAGENET_LABELS = [0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 4, 5]


def labelled_images(names: list[str], labels: list[int], seed: int) -> datasets.Dataset:
    """image (Image) and label (ClassLabel of `names`) columns, one seeded image per label."""
    features = datasets.Features({"image": datasets.Image(),
                                  "label": datasets.ClassLabel(names=names)})
    return datasets.Dataset.from_dict(
        {"image": [image(seed + i) for i in range(len(labels))], "label": labels},
        features=features)


def write_mini_imagenet(root: Path) -> Path:
    """timm/mini-imagenet: image (Image), label (ClassLabel of WordNet ids); save_to_disk."""
    ds = labelled_images(MINI_IMAGENET_WNIDS, MINI_IMAGENET_LABELS, seed=0)
    path = root / "mini_imagenet"
    datasets.DatasetDict({"test": ds}).save_to_disk(str(path))
    return path


# Folder names as in 101_ObjectCategories (lower-cased like the hub copy), with the clutter
# class and the two face classes the YAML handles.
CALTECH_CLASSES = ["accordion", "airplanes", "anchor", "background_google", "car_side",
                   "faces", "faces_easy", "panda"]
CALTECH_FILES = {"accordion": 2, "airplanes": 2, "anchor": 1, "background_google": 2,
                 "car_side": 1, "faces": 1, "faces_easy": 1, "panda": 2}


def write_class_folders(folder: Path, counts: dict[str, int], seed: int, name: str) -> None:
    """`folder/<class>/<name.format(j)>`: `counts[class]` images each, seeded from `seed` on."""
    for cls, count in counts.items():
        (folder / cls).mkdir(parents=True, exist_ok=True)
        for j in range(count):
            image(seed).save(folder / cls / name.format(j))
            seed += 1


def write_caltech101(root: Path) -> Path:
    """An image folder test/<class>/<image>.png: the loader gives label = ClassLabel(folders)."""
    path = root / "caltech101"
    write_class_folders(path / "test", CALTECH_FILES, 100, "image_{:04d}.png")
    return path


# The original distribution: 101_ObjectCategories/<Class>/image_0001.jpg, original casing, no
# split folders (and an Annotations/ folder of .mat files beside it, which is not data).
CALTECH_ORIGINAL = {"BACKGROUND_Google": 2, "Faces": 1, "Faces_easy": 2, "Leopards": 1,
                    "Motorbikes": 1, "accordion": 2, "car_side": 1, "panda": 1}


def write_caltech_original(root: Path) -> Path:
    """caltech101/101_ObjectCategories/<Class>/image_XXXX.jpg, as the archive unpacks."""
    path = root / "caltech101"
    write_class_folders(path / "101_ObjectCategories", CALTECH_ORIGINAL, 700, "image_{:04d}.jpg")
    for cls in CALTECH_ORIGINAL:
        (path / "Annotations" / cls).mkdir(parents=True, exist_ok=True)
        (path / "Annotations" / cls / "annotation_0000.mat").write_bytes(b"MATLAB")
    return path


CALTECH_TRAIN_ONLY = ["accordion", "airplanes", "anchor", "faces", "faces_easy", "leopards",
                      "motorbikes", "panda"]


def write_caltech_train_only(root: Path) -> Path:
    """flwrlabs/caltech101 as a hub snapshot: a train split only (data/train-*.parquet), the
    lower-cased classes without the clutter class."""
    ds = labelled_images(CALTECH_TRAIN_ONLY, [0, 1, 2, 3, 4, 5, 6, 7, 0, 4], seed=800)
    return write_snapshot(ds, root / "caltech101", "default", "train", "data")


FOOD_NAMES = ["apple_pie", "baby_back_ribs", "baklava", "beef_carpaccio", "beef_tartare",
              "beet_salad", "beignets", "bibimbap"]
FOOD_LABELS = [0, 1, 2, 3, 4, 5, 6, 7, 0, 2]


def write_food101(root: Path) -> Path:
    """ethz/food101: image (Image), label (ClassLabel); one validation.parquet file."""
    ds = labelled_images(FOOD_NAMES, FOOD_LABELS, seed=200)
    path = root / "food101"
    path.mkdir(parents=True, exist_ok=True)
    ds.to_parquet(str(path / "validation.parquet"))
    return path


# -- text-heavy ----------------------------------------------------------------------------
MMLU_ROWS = {
    "question": ["What is 2 + 3?", "Which gas do plants take in?", "Who wrote Hamlet?",
                 "What is the capital of France?", "What is H2O?", "How many legs has a spider?"],
    "subject": ["elementary_mathematics", "high_school_biology", "high_school_world_history",
                "high_school_geography", "high_school_chemistry", "high_school_biology"],
    "choices": [["4", "5", "6", "7"], ["oxygen", "carbon dioxide", "helium", "neon"],
                ["Shakespeare", "Dickens", "Austen", "Joyce"], ["Rome", "Madrid", "Paris", "Bonn"],
                ["salt", "water", "sugar", "air"], ["six", "eight", "ten", "four"]],
    "answer": [1, 1, 0, 2, 1, 1],
}


def write_mmlu(root: Path, rows: dict | None = None) -> Path:
    """cais/mmlu as a hub snapshot: README configs + all/test-*.parquet; answer is ClassLabel."""
    features = datasets.Features({
        "question": datasets.Value("string"), "subject": datasets.Value("string"),
        "choices": datasets.Sequence(datasets.Value("string")),
        "answer": datasets.ClassLabel(names=["A", "B", "C", "D"])})
    ds = datasets.Dataset.from_dict(rows or MMLU_ROWS, features=features)
    return write_snapshot(ds, root / "mmlu", "all", "test", "all")


def write_snapshot(ds: datasets.Dataset, path: Path, config: str, split: str, folder: str
                   ) -> Path:
    """A hub snapshot's layout: `folder/<split>-00000-of-00001.parquet` and a README whose
    front matter declares the config and where its split is."""
    (path / folder).mkdir(parents=True, exist_ok=True)
    ds.to_parquet(str(path / folder / f"{split}-00000-of-00001.parquet"))
    (path / "README.md").write_text(
        f"---\nconfigs:\n- config_name: {config}\n  data_files:\n  - split: {split}\n"
        f"    path: {folder}/{split}-*\n---\n# {path.name} (fixture)\n")
    return path


OBQA_ROWS = {
    "id": ["7-980", "7-584", "8-376", "9-1000"],
    "question_stem": ["The sun is responsible for", "A magnet attracts",
                      "Which is a renewable resource?", "Frogs lay"],
    "choices": [{"text": ["puppies learning new tricks", "plants sprouting", "the moon", "rocks"],
                 "label": ["A", "B", "C", "D"]},
                {"text": ["wood", "iron nails", "glass", "paper"], "label": ["A", "B", "C", "D"]},
                {"text": ["coal", "oil", "wind", "gas"], "label": ["A", "B", "C", "D"]},
                {"text": ["eggs", "seeds", "stones", "leaves"], "label": ["A", "B", "C", "D"]}],
    "answerKey": ["B", "B", "C", "A"],
}


def write_openbookqa(root: Path) -> Path:
    """allenai/openbookqa (main): id, question_stem, choices {text, label}, answerKey;
    one split saved with save_to_disk under openbookqa/test."""
    features = datasets.Features({
        "id": datasets.Value("string"), "question_stem": datasets.Value("string"),
        "choices": {"text": datasets.Sequence(datasets.Value("string")),
                    "label": datasets.Sequence(datasets.Value("string"))},
        "answerKey": datasets.Value("string")})
    ds = datasets.Dataset.from_dict(OBQA_ROWS, features=features)
    path = root / "openbookqa"
    ds.save_to_disk(str(path / "test"))
    return path


ARC_ROWS = {
    "id": ["Mercury_7175875", "MCAS_2000_4_6", "Mercury_SC_409171", "NYSEDREGENTS_2015_4_12"],
    "question": ["Which tool measures mass?", "What makes a shadow?",
                 "Which layer of the Earth is liquid?", "A plant needs"],
    "choices": [{"text": ["balance", "ruler", "thermometer", "clock"],
                 "label": ["A", "B", "C", "D"]},
                {"text": ["light blocked by an object", "sound", "heat"],
                 "label": ["A", "B", "C"]},
                {"text": ["crust", "mantle", "outer core", "inner core", "atmosphere"],
                 "label": ["A", "B", "C", "D", "E"]},
                {"text": ["sunlight", "sand", "plastic", "metal"],
                 "label": ["1", "2", "3", "4"]}],
    "answerKey": ["A", "A", "C", "1"],
}


def write_arc_challenge(root: Path) -> Path:
    """allenai/ai2_arc (ARC-Challenge): id, question, choices {text, label}, answerKey (some
    rows label 1..4); parquet files in arc_challenge/test/."""
    features = datasets.Features({
        "id": datasets.Value("string"), "question": datasets.Value("string"),
        "choices": {"text": datasets.Sequence(datasets.Value("string")),
                    "label": datasets.Sequence(datasets.Value("string"))},
        "answerKey": datasets.Value("string")})
    ds = datasets.Dataset.from_dict(ARC_ROWS, features=features)
    path = root / "arc_challenge" / "test"
    path.mkdir(parents=True, exist_ok=True)
    ds.to_parquet(str(path / "test-00000-of-00001.parquet"))
    return root / "arc_challenge"


# -- VQA -----------------------------------------------------------------------------------
SCIENCEQA_ROWS = {
    "question": ["Which animal is shown?", "What is 1 + 1?", "Which state is highlighted?",
                 "Which material is this?", "Which is a mammal?"],
    "choices": [["cat", "dog"], ["1", "2", "3"], ["Ohio", "Texas", "Utah", "Iowa"],
                ["wood", "glass"], ["shark", "whale", "trout"]],
    "answer": [1, 1, 2, 0, 1],
    "hint": ["Look at the picture.", "", "", "Select the best answer.", ""],
    "has_image": [True, False, True, True, False],
    "task": ["closed choice"] * 5,
    "grade": ["grade2", "grade1", "grade4", "grade3", "grade5"],
    "subject": ["natural science", "language science", "social science", "natural science",
                "natural science"],
    "topic": ["biology", "math", "geography", "physics", "biology"],
    "category": ["Classify animals", "Add", "Identify states", "Materials", "Classify animals"],
    "skill": ["a", "b", "c", "d", "e"],
    "lecture": [""] * 5,
    "solution": [""] * 5,
}


def write_scienceqa(root: Path) -> Path:
    """derek-thomas/ScienceQA: image (Image, null for text-only rows), question, choices,
    answer (int), hint, task, grade, subject, topic, category, skill, lecture, solution;
    test.parquet."""
    rows = {k: v for k, v in SCIENCEQA_ROWS.items() if k != "has_image"}
    rows["image"] = [image(300 + i) if has else None
                     for i, has in enumerate(SCIENCEQA_ROWS["has_image"])]
    features = datasets.Features({
        "image": datasets.Image(), "question": datasets.Value("string"),
        "choices": datasets.Sequence(datasets.Value("string")), "answer": datasets.Value("int8"),
        **{k: datasets.Value("string") for k in ("hint", "task", "grade", "subject", "topic",
                                                 "category", "skill", "lecture", "solution")}})
    ds = datasets.Dataset.from_dict(rows, features=features)
    path = root / "scienceqa"
    path.mkdir(parents=True, exist_ok=True)
    ds.to_parquet(str(path / "test.parquet"))
    return path


MMBENCH_ROWS = {
    "index": [241, 242, 1003, 1500],
    "question": ["What is the color of the car?", "How many people are there?",
                 "Which emotion is shown?", "Is it day or night?"],
    "hint": ["nan", "The photo was taken in a park.", None, "nan"],
    "A": ["red", "one", "happy", "day"],
    "B": ["blue", "two", "sad", "night"],
    "C": ["green", "three", "angry", "nan"],
    "D": ["white", "nan", "calm", None],
    "answer": ["B", "C", "A", "B"],
    "category": ["attribute_recognition", "object_localization", "image_emotion",
                 "image_scene"],
    "source": ["MMBench"] * 4,
    "L2-category": ["a", "b", "c", "d"],
    "comment": ["nan"] * 4,
    "split": ["dev"] * 4,
}


def write_mmbench(root: Path) -> Path:
    """lmms-lab/MMBench (en): index, question, hint, A..D (empty ones "nan" or null), answer
    (letter), category, image (Image), source, L2-category, comment, split; dev.parquet."""
    features = datasets.Features({
        "index": datasets.Value("int64"),
        **{k: datasets.Value("string") for k in MMBENCH_ROWS if k != "index"},
        "image": datasets.Image()})
    rows = {**MMBENCH_ROWS, "image": [image(400 + i) for i in range(4)]}
    ds = datasets.Dataset.from_dict(rows, features=features)
    path = root / "mmbench"
    path.mkdir(parents=True, exist_ok=True)
    ds.to_parquet(str(path / "dev.parquet"))
    return path


SEED_ROWS = {
    "answer": ["A", "C", "B", "D", "B"],
    "choice_a": ["a dog", "one", "red", "left", "sitting"],
    "choice_b": ["a cat", "two", "blue", "right", "running"],
    "choice_c": ["a bird", "three", "green", "top", "jumping"],
    "choice_d": ["a fish", "four", "black", "bottom", "sleeping"],
    "data_id": ["1454426_2591111986", "v_0001.mp4", "2431_123", "4412_9", "v_0002.mp4"],
    "data_type": ["image", "video", "image", "image", "video"],
    "question": ["What animal is in the image?", "How many times does he jump?",
                 "What colour is the umbrella?", "Where is the lamp?", "What is the man doing?"],
    "question_id": ["101669", "201", "57", "88", "202"],
    "question_type_id": [1, 10, 3, 5, 11],
    "segment": [None, [0.0, 3.5], None, None, [1.0, 2.0]],
}


def write_seed_bench(root: Path) -> Path:
    """lmms-lab/SEED-Bench: answer, choice_a..d, data_id, data_type (image/video), question,
    question_id, question_type_id, image (list of images), segment; save_to_disk."""
    features = datasets.Features({
        **{k: datasets.Value("string") for k in ("answer", "choice_a", "choice_b", "choice_c",
                                                 "choice_d", "data_id", "data_type", "question",
                                                 "question_id")},
        "question_type_id": datasets.Value("int16"),
        "image": datasets.Sequence(datasets.Image()),
        "segment": datasets.Sequence(datasets.Value("float64"))})
    rows = {**SEED_ROWS, "image": [[image(500 + i)] if t == "image" else []
                                   for i, t in enumerate(SEED_ROWS["data_type"])]}
    ds = datasets.Dataset.from_dict(rows, features=features)
    path = root / "seed_bench"
    datasets.DatasetDict({"test": ds}).save_to_disk(str(path))
    return path


WRITERS = {
    "mini_imagenet": write_mini_imagenet, "caltech101": write_caltech101,
    "food101": write_food101, "mmlu": write_mmlu, "openbookqa": write_openbookqa,
    "arc_challenge": write_arc_challenge, "scienceqa": write_scienceqa,
    "mmbench": write_mmbench, "seed_bench": write_seed_bench,
}


def write_all(root: Path) -> Path:
    """Every fixture under `root`, laid out as `data_root` expects."""
    for writer in WRITERS.values():
        writer(root)
    return root
