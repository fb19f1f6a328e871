"""The study's datasets through the real loaders, on fixtures written in their real schemas.

No network: every task reads its fixture from `data_root`; nothing calls load_dataset on a hub id.
"""

import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import datasets
import numpy as np
import pytest
from conftest import ListTask, image_heavy_samples
from dataset_fixtures import (
    ARC_ROWS,
    CALTECH_FILES,
    CALTECH_ORIGINAL,
    FOOD_LABELS,
    FOOD_NAMES,
    MINI_IMAGENET_LABELS,
    MINI_IMAGENET_WNIDS,
    MMBENCH_ROWS,
    MMLU_ROWS,
    OBQA_ROWS,
    SCIENCEQA_ROWS,
    SEED_ROWS,
    WRITERS,
    image,
    write_all,
    write_caltech_original,
    write_caltech_train_only,
    write_mmlu,
    write_scienceqa,
)
from hydra import compose, initialize_config_module
from hydra.utils import instantiate
from omegaconf import OmegaConf

import mibench.conf
from mibench.cli import run
from mibench.prompts import (
    IMAGE_CLASSIFICATION_QUESTION,
    chat_messages,
    format_prompt,
    question_template,
)
from mibench.records import Sample
from mibench.results.tables import load_runs, render_tables
from mibench.runner import run_benchmark
from mibench.store import ResumeMismatchError
from mibench.tasks.classification import mc_options
from mibench.tasks.hf_dataset import DataError, DatasetLoadError
from mibench.tasks.sampling import allocate, stratified_indices

TASK_CONF = Path(mibench.conf.__file__).parent / "task"
STUDY_TASKS = ["mini_imagenet", "caltech101", "food101", "mmlu", "openbookqa", "arc_challenge",
               "scienceqa", "mmbench", "seed_bench"]


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    return write_all(tmp_path_factory.mktemp("data_root"))


def task(name: str, data_root: Path, **overrides):
    cfg = OmegaConf.load(TASK_CONF / f"{name}.yaml")
    cfg.data_dir = str(data_root)
    for key, value in overrides.items():
        cfg[key] = value
    return instantiate(cfg)


def pixels(img) -> np.ndarray:
    return np.asarray(img.convert("RGB"))


# -- prompts -------------------------------------------------------------------------------
def test_default_prompt_is_byte_identical():
    sample = Sample(id="x", question="What shape?", options=("circle", "square"), answer=0,
                    category="image_heavy", distractor="A fact.")
    expected = ("A fact.\nWhat shape?\nA. circle\nB. square\n"
                "Answer with the option's letter from the given choices directly.")
    assert format_prompt(sample) == expected
    assert chat_messages(sample) == [{"role": "user", "content": [
        {"type": "text", "text": expected}]}]


def test_question_templates():
    assert question_template("vqa").render("Q?", "Hint.") == "Context: Hint.\nQ?"
    assert question_template("vqa").render("Q?") == "Q?"
    assert question_template("image_heavy").render("") == IMAGE_CLASSIFICATION_QUESTION
    with pytest.raises(ValueError, match="unknown prompt template 'nope'"):
        question_template("nope")


@pytest.mark.parametrize("name", STUDY_TASKS)
def test_every_study_task_records_its_prompt(name, data_root):
    described = task(name, data_root).describe()
    assert described["name"] == name
    assert described["prompt"]["instruction"].startswith("Answer with the option's letter")
    assert described["source"] == f"data_root/{name}"  # no path of this machine in results
    assert str(data_root) not in json.dumps(described, default=str)


# -- text-heavy ----------------------------------------------------------------------------
def test_mmlu_rows_map_field_by_field(data_root):
    samples = task("mmlu", data_root).samples()
    assert len(samples) == len(MMLU_ROWS["question"])
    for i, s in enumerate(samples):
        assert s.id == f"test:{i}"
        assert s.category == "text_heavy" and s.image is None
        assert s.question == MMLU_ROWS["question"][i]
        assert s.options == tuple(MMLU_ROWS["choices"][i])
        assert s.answer == MMLU_ROWS["answer"][i]
        assert s.meta["subject"] == MMLU_ROWS["subject"][i]


def test_openbookqa_answer_key_names_a_choice_label(data_root):
    samples = task("openbookqa", data_root).samples()
    assert [s.id for s in samples] == OBQA_ROWS["id"]
    for s, stem, choices, key in zip(samples, OBQA_ROWS["question_stem"], OBQA_ROWS["choices"],
                                     OBQA_ROWS["answerKey"]):
        assert s.question == stem
        assert s.options == tuple(choices["text"])
        assert s.options[s.answer] == choices["text"][choices["label"].index(key)]


def test_arc_challenge_numeric_labels_and_uneven_option_counts(data_root):
    samples = task("arc_challenge", data_root).samples()
    assert [len(s.options) for s in samples] == [4, 3, 5, 4]
    assert [s.answer for s in samples] == [0, 0, 2, 0]
    assert samples[3].options[samples[3].answer] == "sunlight"  # answerKey "1"
    assert [s.question for s in samples] == ARC_ROWS["question"]


# -- VQA -----------------------------------------------------------------------------------
def test_scienceqa_keeps_image_questions_and_labels_the_hint(data_root):
    samples = task("scienceqa", data_root).samples()
    with_image = [i for i, has in enumerate(SCIENCEQA_ROWS["has_image"]) if has]
    assert [s.id for s in samples] == [f"test:{i}" for i in with_image]
    for s, i in zip(samples, with_image):
        hint, question = SCIENCEQA_ROWS["hint"][i], SCIENCEQA_ROWS["question"][i]
        assert s.question == (f"Context: {hint}\n{question}" if hint else question)
        assert s.options == tuple(SCIENCEQA_ROWS["choices"][i])
        assert s.answer == SCIENCEQA_ROWS["answer"][i]
        assert s.category == "vqa"
        assert np.array_equal(pixels(s.image), pixels(image(300 + i)))


def test_mmbench_drops_empty_options_and_nan_hints(data_root):
    samples = task("mmbench", data_root).samples()
    assert [s.id for s in samples] == [str(i) for i in MMBENCH_ROWS["index"]]
    assert [len(s.options) for s in samples] == [4, 3, 4, 2]
    assert samples[0].question == MMBENCH_ROWS["question"][0]  # hint "nan"
    assert samples[1].question == ("Context: The photo was taken in a park.\n"
                                   "How many people are there?")
    assert samples[2].question == MMBENCH_ROWS["question"][2]  # hint null
    for i, s in enumerate(samples):
        assert s.options[s.answer] == MMBENCH_ROWS[MMBENCH_ROWS["answer"][i]][i]
    assert np.array_equal(pixels(samples[3].image), pixels(image(403)))


def test_seed_bench_keeps_image_questions(data_root):
    samples = task("seed_bench", data_root).samples()
    kept = [i for i, t in enumerate(SEED_ROWS["data_type"]) if t == "image"]
    assert [s.id for s in samples] == [SEED_ROWS["question_id"][i] for i in kept]
    for s, i in zip(samples, kept):
        assert s.question == SEED_ROWS["question"][i]
        assert s.options == tuple(SEED_ROWS[f"choice_{c}"][i] for c in "abcd")
        assert "ABCD"[s.answer] == SEED_ROWS["answer"][i]
        assert np.array_equal(pixels(s.image), pixels(image(500 + i)))


# -- image-heavy ---------------------------------------------------------------------------
def check_classification(samples, true_labels, n_options=6):
    for s, label in zip(samples, true_labels):
        assert s.category == "image_heavy"
        assert s.question == IMAGE_CLASSIFICATION_QUESTION
        assert len(s.options) == n_options == len(set(s.options))
        assert s.options[s.answer] == label == s.meta["label"]


def test_mini_imagenet_maps_wordnet_ids_to_names(data_root):
    t = task("mini_imagenet", data_root)
    samples = t.samples()
    names = OmegaConf.load(TASK_CONF / "mini_imagenet.yaml").class_names
    labels = [names[MINI_IMAGENET_WNIDS[j]] for j in MINI_IMAGENET_LABELS]
    check_classification(samples, labels)
    assert labels[:2] == ["house finch", "robin"]
    pool = {names[w] for w in MINI_IMAGENET_WNIDS}
    assert all(set(s.options) <= pool for s in samples)
    assert len({s.answer for s in samples}) > 1  # the true class moves around
    for i, s in enumerate(samples):
        assert s.id == f"test:{i}"
        assert np.array_equal(pixels(s.image), pixels(image(i)))


def test_caltech_image_folder_drops_clutter_and_merges_faces(data_root):
    samples = task("caltech101", data_root).samples()
    expected = []
    alias = {"airplanes": "airplane", "car_side": "car", "faces": "face", "faces_easy": "face"}
    for cls in sorted(CALTECH_FILES):  # image folders list classes alphabetically
        if cls != "background_google":
            expected += [alias.get(cls, cls)] * CALTECH_FILES[cls]
    check_classification(samples, expected)
    assert all("background google" not in s.options for s in samples)
    assert {o for s in samples for o in s.options} == set(expected)


def test_food101_parquet_and_readable_names(data_root):
    samples = task("food101", data_root).samples()
    labels = [FOOD_NAMES[j].replace("_", " ") for j in FOOD_LABELS]
    check_classification(samples, labels)
    assert [s.id for s in samples] == [f"validation:{i}" for i in range(len(FOOD_LABELS))]


def test_options_are_seeded_per_sample_and_stable(data_root):
    first = task("mini_imagenet", data_root).samples()
    again = task("mini_imagenet", data_root).samples()
    assert [(s.options, s.answer) for s in first] == [(s.options, s.answer) for s in again]
    other = task("mini_imagenet", data_root, seed=1).samples()
    assert [s.options for s in first] != [s.options for s in other]
    # a function of the keys only: the order of the label set does not matter
    pool = ["a", "b", "c", "d", "e", "f", "g"]
    assert mc_options("c", pool, 4, 0, "x") == mc_options("c", pool[::-1], 4, 0, "x")
    k = 3
    assert len(task("mini_imagenet", data_root, n_options=k + 1).samples()[0].options) == k + 1
    with pytest.raises(ValueError, match="only 9 other classes"):
        task("mini_imagenet", data_root, n_options=11).samples()


# -- limit ---------------------------------------------------------------------------------
def test_allocate_is_proportional_and_exact():
    assert allocate([6, 3, 1], 5) == [3, 2, 0]
    assert sum(allocate([7, 5, 3, 2], 9)) == 9
    assert allocate([2, 2], 10) == [2, 2]


def test_stratified_indices_ignore_row_order():
    keys = [f"id{i}" for i in range(40)]
    strata = [i % 4 for i in range(40)]
    chosen = {keys[i] for i in stratified_indices(strata, keys, 12, seed=3)}
    order = list(reversed(range(40)))
    again = {keys[order[i]] for i in stratified_indices([strata[j] for j in order],
                                                        [keys[j] for j in order], 12, seed=3)}
    assert chosen == again and len(chosen) == 12
    assert Counter(int(k[2:]) % 4 for k in chosen) == {0: 3, 1: 3, 2: 3, 3: 3}
    assert stratified_indices(strata, keys, None) == list(range(40))


def test_limit_subsamples_by_class(data_root):
    full = task("mini_imagenet", data_root).samples()
    small = task("mini_imagenet", data_root, limit=6).samples()
    assert len(small) == 6 and {s.id for s in small} <= {s.id for s in full}
    by_id = {s.id: s for s in full}
    assert all(s.options == by_id[s.id].options for s in small)  # same questions as full run
    counts = Counter(s.meta["label"] for s in small)
    total = Counter(s.meta["label"] for s in full)
    for label, n in total.items():
        assert int(6 * n / 12) <= counts.get(label, 0) <= int(6 * n / 12) + 1
    assert [s.id for s in task("mini_imagenet", data_root, limit=6).samples()] == [
        s.id for s in small]
    # text tasks stratify by the answer column
    mmlu = task("mmlu", data_root, limit=3).samples()
    assert Counter(s.answer for s in mmlu) == {1: 2, 0: 1}  # answers 1 x4, 0 x1, 2 x1


# -- errors --------------------------------------------------------------------------------
def test_missing_local_copy_names_task_and_path(tmp_path):
    with pytest.raises(DatasetLoadError, match=r"task 'mmlu': no local copy at .*mmlu"):
        task("mmlu", tmp_path).samples()


def test_wrong_column_names_the_column(data_root):
    with pytest.raises(DataError, match="no column\\(s\\) \\['question_text'\\]"):
        task("mmlu", data_root, columns={"question": "question_text", "choices": "choices",
                                         "answer": "answer"}).samples()


def test_bad_answer_names_the_row(data_root):
    with pytest.raises(ValueError, match=r"task 'mmlu': row 0 .*\(id 'test:0'\)"):
        task("mmlu", data_root, columns={"question": "question", "choices": "choices",
                                         "answer": "subject"}).samples()


# -- the cai2025 grid end to end -----------------------------------------------------------
def run_on_tiny_model(checkpoint: str, data_root: Path, out: Path, *overrides: str) -> dict:
    """`mibench <overrides>` on the tiny random LLaVA, reading `data_root`."""
    with initialize_config_module("mibench.conf", version_base="1.3"):
        cfg = compose("config", overrides=[
            *overrides, "model=hf", f"model.path={checkpoint}", "model.name=tiny",
            "model.dtype=float32", "model.device=cpu", f"data_root={data_root}",
            f"out_dir={out}", "progress=false", "batch_size=4",
            # the tiny checkpoint knows the toy's words, not the fixtures': warn, do not refuse
            "model.unknown_words_refuse=1"])
    return run(cfg)


def test_cai2025_grid_runs_end_to_end_and_renders(tiny_checkpoint, data_root, tmp_path):
    out = tmp_path / "run"
    document = run_on_tiny_model(tiny_checkpoint, data_root, out, "benchmark=cai2025")
    results = document["results"]
    assert list(results) == STUDY_TASKS
    image_heavy = {"clean", "unrelated_text", "misleading_text"}
    text_heavy = {"clean", "random_pixels", "black_image", "white_image", "switched_image"}
    for name in ("mini_imagenet", "caltech101", "food101"):
        assert set(results[name]) == image_heavy
    for name in ("mmlu", "openbookqa", "arc_challenge"):
        assert set(results[name]) == text_heavy
    for name in ("scienceqa", "mmbench", "seed_bench"):
        assert set(results[name]) == {"clean"}
    assert results["mmlu"]["clean"]["accuracy"]["n"] == len(MMLU_ROWS["question"])
    assert document["conditions"]["switched_image"]["params"]["donors_task"]["name"] == \
        "caltech101"
    records = [json.loads(x) for x in (out / "records.jsonl").read_text().splitlines()]
    donors = {r["sample_id"] for r in records if r["condition"] == "switched_image"}
    assert donors  # scored
    # the study-layout table parses back to the numbers in metrics.json
    text = render_tables(load_runs([out]))
    rows = [line for line in text.splitlines() if line.startswith("| tiny |")]
    headers = [line for line in text.splitlines() if line.startswith("| model |")]
    assert len(rows) == len(headers) == 3
    for header, row in zip(headers, rows):
        names = [c.strip() for c in header.strip("|").split("|")][1:]
        cells = [c.strip() for c in row.strip("|").split("|")][1:]
        for name, cell in zip(names, cells):
            task_name, condition = name.split(" / ")
            acc = results[task_name][condition]["accuracy"]
            value, low, high = map(float, re.fullmatch(
                r"([\d.]+) \[([\d.]+), ([\d.]+)\]", cell).groups())
            assert value == pytest.approx(100 * acc["value"], abs=0.051)
            assert low == pytest.approx(100 * acc["low"], abs=0.051)
            assert high == pytest.approx(100 * acc["high"], abs=0.051)


# -- local copies are read from the files named ---------------------------------------------
def mmlu_rows(tag: str, n: int) -> dict:
    return {"question": [f"{tag} question {i}?" for i in range(n)], "subject": ["x"] * n,
            "choices": [[f"{tag} a{i}", "b", "c", "d"] for i in range(n)], "answer": [0] * n}


def test_two_local_copies_with_the_same_layout_load_their_own_rows(tmp_path):
    """`datasets` caches a local folder under its base name, config and file layout only: two
    MMLU snapshots (p1/mmlu, p2/mmlu) used to share one cache entry and the second was read
    as the first one's rows."""
    write_mmlu(tmp_path / "p1", mmlu_rows("p1", 3))
    write_mmlu(tmp_path / "p2", mmlu_rows("p2", 4))
    first = task("mmlu", tmp_path / "p1").samples()
    second = task("mmlu", tmp_path / "p2").samples()
    assert [s.question for s in first] == mmlu_rows("p1", 3)["question"]
    assert [s.question for s in second] == mmlu_rows("p2", 4)["question"]
    # the same folder rewritten in place (same names, same layout) is read again
    write_mmlu(tmp_path / "p1", mmlu_rows("p1-new", 3))
    again = task("mmlu", tmp_path / "p1")
    assert [s.question for s in again.samples()] == mmlu_rows("p1-new", 3)["question"]
    assert again.data_digest() != task_digest("mmlu", tmp_path / "p2")


def task_digest(name: str, root: Path) -> str:
    t = task(name, root)
    t.samples()
    return t.data_digest()


def test_the_tests_never_write_into_the_users_hugging_face_cache():
    import datasets

    home = Path(os.environ["HF_HOME"])
    assert home.name.startswith("mibench-tests-hf-")
    assert Path(datasets.config.HF_DATASETS_CACHE).is_relative_to(home)
    assert not Path(datasets.config.HF_DATASETS_CACHE).is_relative_to(Path.home() / ".cache")


def one_cell(data_root: Path, out: Path, tiny_checkpoint: str) -> dict:
    return run_on_tiny_model(tiny_checkpoint, data_root, out, "task=mmlu",
                             "perturbation=black_image")


def test_a_rerun_after_the_data_changed_is_refused_never_stale(tiny_checkpoint, tmp_path):
    root, out = tmp_path / "data", tmp_path / "run"
    write_mmlu(root, mmlu_rows("v1", 4))
    document = one_cell(root, out, tiny_checkpoint)
    digest = document["tasks"]["mmlu"]["data_digest"]
    assert digest.startswith("sha256:")
    stored = json.loads((out / "fingerprint.json").read_text())
    assert stored["tasks"]["mmlu"]["data_digest"] == digest
    again = one_cell(root, out, tiny_checkpoint)["results"]  # the same data resumes
    assert json.dumps(again, sort_keys=True) == json.dumps(document["results"], sort_keys=True)
    write_mmlu(root, mmlu_rows("v2", 4))  # same files, new rows
    with pytest.raises(ResumeMismatchError) as err:
        one_cell(root, out, tiny_checkpoint)
    assert re.search(r"The data of task 'mmlu' changed \(data digest sha256:\w+ -> sha256:\w+\)",
                     str(err.value))
    assert f"tasks.mmlu.data_digest: \"{digest}\" -> " in str(err.value)


def test_metrics_count_only_the_ids_the_task_has_now(tiny_adapter, tmp_path):
    samples = image_heavy_samples(6)
    run_benchmark(tiny_adapter, {"ih": ListTask("ih", "image_heavy", samples)}, {}, tmp_path,
                  progress=False)
    fewer = run_benchmark(tiny_adapter, {"ih": ListTask("ih", "image_heavy", samples[:4])}, {},
                          tmp_path, progress=False)
    assert fewer.metrics["ih"]["clean"]["accuracy"].n == 4  # not the 6 stored records


# -- dataset copies as users bring them ------------------------------------------------------
def test_caltech_original_distribution_with_its_original_casing(tmp_path):
    write_caltech_original(tmp_path)
    t = task("caltech101", tmp_path)
    samples = t.samples()
    expected = {"Faces": "face", "Faces_easy": "face", "Leopards": "leopard",
                "Motorbikes": "motorbike", "car_side": "car"}
    labels = [expected.get(c, c) for c in sorted(CALTECH_ORIGINAL)
              for _ in range(CALTECH_ORIGINAL[c]) if c != "BACKGROUND_Google"]
    assert sorted(s.meta["label"] for s in samples) == sorted(labels)
    assert all("BACKGROUND Google" not in s.options for s in samples)
    check_classification(samples, [s.meta["label"] for s in samples])
    # excluding the clutter class by its original name keeps every readable alias
    by_original = task("caltech101", tmp_path, exclude_labels=["BACKGROUND_Google"]).samples()
    assert [(s.options, s.answer) for s in by_original] == [(s.options, s.answer)
                                                              for s in samples]
    assert "Faces easy" not in {o for s in by_original for o in s.options}
    assert t.data_digest().startswith("sha256:")


def test_a_copy_with_a_train_split_only_names_the_splits_and_the_override(tmp_path):
    write_caltech_train_only(tmp_path)
    with pytest.raises(DatasetLoadError, match=r"task 'caltech101': .*caltech101 has split\(s\) "
                       r"\['train'\], not 'test'; choose one with task.split=train "
                       r"\(grid.tasks.caltech101.split=train inside a benchmark\)"):
        task("caltech101", tmp_path).samples()
    samples = task("caltech101", tmp_path, split="train").samples()  # no clutter class: fine
    assert len(samples) == 10 and {"face", "leopard"} <= {s.meta["label"] for s in samples}


def test_a_copy_labelled_with_bare_numbers_is_refused(tmp_path):
    """GATE-engine/mini_imagenet labels images 0..63 with no names: no option could say what
    the class is."""
    ds = datasets.Dataset.from_dict({"image": [image(i) for i in range(3)], "label": [0, 1, 2]},
                                    features=datasets.Features({"image": datasets.Image(),
                                                                "label": datasets.Value("int64")}))
    (tmp_path / "mini_imagenet").mkdir()
    ds.to_parquet(str(tmp_path / "mini_imagenet" / "test.parquet"))
    with pytest.raises(DataError, match=r"labels its images with bare numbers .*class_names"):
        task("mini_imagenet", tmp_path).samples()


def test_a_snapshot_with_several_configs_needs_config_name_settable_without_plus(tmp_path):
    write_scienceqa(tmp_path)
    path = tmp_path / "scienceqa"
    (path / "images").mkdir()
    (path / "test.parquet").rename(path / "images" / "test-00000-of-00001.parquet")
    (path / "text").mkdir()
    (path / "README.md").write_text(
        "---\nconfigs:\n- config_name: images\n  data_files:\n  - split: test\n"
        "    path: images/test-*\n- config_name: other\n  data_files:\n  - split: test\n"
        "    path: images/test-*\n---\n")
    with pytest.raises(DatasetLoadError, match=r"task 'scienceqa': .*task.config_name="):
        task("scienceqa", tmp_path).samples()
    with initialize_config_module("mibench.conf", version_base="1.3"):
        cfg = compose("config", overrides=["task=scienceqa", "task.config_name=images",
                                           f"data_root={tmp_path}"])
    assert len(instantiate(cfg.task).samples()) == sum(SCIENCEQA_ROWS["has_image"])


@pytest.mark.parametrize("name", STUDY_TASKS)
def test_every_study_task_declares_config_name(name):
    assert "config_name" in OmegaConf.load(TASK_CONF / f"{name}.yaml")


def test_mini_imagenet_class_names_are_unambiguous_options():
    names = list(OmegaConf.load(TASK_CONF / "mini_imagenet.yaml").class_names.values())
    assert len(names) == len(set(names)) == 100
    for vague in ("file", "slot", "upright", "organ", "tank", "ear", "reel", "boxer"):
        assert vague not in names
    assert {"file cabinet", "slot machine", "upright piano"} <= set(names)


def test_offline_hub_errors_are_one_line_naming_task_hub_id_and_layouts():
    t = task("mmlu", Path("unused"), data_dir=None)
    with pytest.raises(DatasetLoadError) as err:
        t.samples()
    message = str(err.value)
    assert "\n" not in message
    assert "task 'mmlu': cannot load the hub dataset 'cais/mmlu'" in message
    assert "data_root=DIR with DIR/mmlu holding one of" in message


# -- a failing task is reported, the rest is written ----------------------------------------
def test_a_grid_reports_a_failed_task_and_writes_every_other(tiny_checkpoint, tmp_path):
    """The study's grid without its Caltech-101 copy: caltech101 fails, so do the
    switched_image conditions whose donors come from it; everything else is scored."""
    root = tmp_path / "data"
    for name, writer in WRITERS.items():
        if name != "caltech101":
            writer(root)
    out = tmp_path / "run"
    document = run_on_tiny_model(tiny_checkpoint, root, out, "benchmark=cai2025")
    failed = {(f["task"], f["condition"]) for f in document["failed"]}
    assert failed == {("caltech101", None), ("mmlu", "switched_image"),
                      ("openbookqa", "switched_image"), ("arc_challenge", "switched_image")}
    assert all("no local copy at" in f["error"] for f in document["failed"])
    assert [t for t in STUDY_TASKS if t != "caltech101"] == list(document["results"])
    assert set(document["results"]["mmlu"]) == {"clean", "random_pixels", "black_image",
                                                 "white_image"}
    written = json.loads((out / "metrics.json").read_text())
    assert written["failed"] == document["failed"]
    table = (out / "table.md").read_text()
    assert "| caltech101 | all | - | FAILED |" in table
    assert "| mmlu | switched_image | - | FAILED |" in table


def test_the_command_exits_non_zero_when_a_task_failed(tiny_checkpoint, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(
        [sys.executable, "-m", "mibench.cli", "task=caltech101", "perturbation=misleading_text",
         "model=hf",
         f"model.path={tiny_checkpoint}", "model.dtype=float32", "model.device=cpu",
         f"data_root={tmp_path / 'empty'}", f"hydra.run.dir={tmp_path / 'run'}",
         "progress=false"], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 1, out.stderr[-2000:]
    assert "| caltech101 | all | - | FAILED |" in out.stdout
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["failed"][0]["task"] == "caltech101" and metrics["results"] == {}
