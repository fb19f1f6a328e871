"""`benchmark=cai2025_official`: the reference study's protocol, checked piece by piece.

Offline throughout: the study's released code is the conftest's fixture copy (its layout, our
texts; `MIBENCH_STUDY_CODE`), its data a fixture tree in its JSON schema
(scripts/study_fixtures.py). Where the real pinned code is at hand (a clone named by
`MIBENCH_STUDY_CODE_PINNED`), the texts read from it are checked against their digests too.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import ListTask, image_heavy_samples, make_image, text_heavy_samples
from families_builders import load as load_family
from hydra import compose, initialize_config_module
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image
from study_fixtures import (
    DATASETS,
    FIXTURE_DRAWS,
    FIXTURE_PLAIN_FORMAT,
    FIXTURE_SENTENCES,
    FIXTURE_SETTINGS,
    FIXTURE_SUFFIX,
    FIXTURE_SYSTEM,
    MMVP_FOLDER,
    write_data,
    write_pool,
)

import mibench.conf
from mibench import study_release
from mibench.answer_parsing import RETRY_PROFILES, retry_profile
from mibench.cli import run
from mibench.config_guard import guard_run_config
from mibench.models.hf import HFModelAdapter
from mibench.perturbations.image import BlankImage, RandomPixels, SwitchedImage
from mibench.perturbations.study import (
    MissingFactsError,
    StudyMisleadingText,
    StudyUnrelatedText,
)
from mibench.perturbations.text import DEFAULT_UNRELATED_SENTENCES, UnrelatedText
from mibench.prompt_styles import (
    DISTRACTOR_JOIN,
    PromptStyle,
    PromptStyleError,
    StudyPrompt,
    prompt_style,
)
from mibench.prompts import ANSWER_INSTRUCTION, chat_messages, format_prompt
from mibench.records import Sample
from mibench.report import format_table
from mibench.results.tables import main as tables_main
from mibench.results.tables import render_study_tables
from mibench.runner import run_benchmark
from mibench.seeding import rng_for
from mibench.study_release import (
    PINNED_SHA256,
    PROMPT_MODULE,
    STUDY_COMMIT,
    ReleaseError,
    StudyRelease,
    sha256_text,
)
from mibench.study_report import Outcome, compare, format_comparison, study_accuracies
from mibench.tasks.hf_dataset import DataError, DatasetLoadError
from mibench.tasks.study_data import hub_patterns

CONF = Path(mibench.conf.__file__).parent
ROOT = Path(__file__).resolve().parents[1]
UNVERIFIED = {"verify": False}
OFFICIAL_TASKS = ["study_mini_imagenet", "study_caltech101", "study_mmlu", "study_openbookqa",
                  "study_scienceqa", "study_seed_bench", "study_mmbench"]
# What the released code holds at STUDY_COMMIT (each computed from the pinned files):
# sha256 of qa_image_prompt's text, of the 80 sentences joined by "\n", of the retry suffix.
RELEASED_SYSTEM_SHA256 = "484865b585c596f2d9bad5c46e2de830acab23cbc6e049140d6117f590e2886f"
RELEASED_POOL_SHA256 = "da768227dfcebe3d8a3dfafcefdb46d4a85a1d226e48ca6897d1f80e0d656d31"
RELEASED_SUFFIX_SHA256 = "f600658ae5a2b06132904fcee311d4cd595b62c8ba946ebce7b4666a68bc17f4"
# and of blip_visual_format, its prompt format for InstructBLIP (no chat template)
RELEASED_PLAIN_FORMAT_SHA256 = (
    "5aff8760fb88bb0645915284890bcc516692410bd7c534d1b28b16596a3289ce")


@pytest.fixture(scope="module")
def study_root(tmp_path_factory) -> Path:
    """A data_root whose study_data holds the study's data tree (fixture items)."""
    root = tmp_path_factory.mktemp("study-root")
    write_data(root / "study_data")
    return root


def task(name: str, data_root: Path, **overrides):
    cfg = OmegaConf.load(CONF / "task" / f"{name}.yaml")
    cfg.data_dir = str(data_root)
    for key, value in overrides.items():
        cfg[key] = value
    return instantiate(cfg)


def rows_of(data_root: Path, file: str) -> list[dict]:
    return json.loads((data_root / "study_data" / file).read_text())


# -- the released code -------------------------------------------------------------------------
def test_texts_are_read_out_of_the_release_layout():
    release = StudyRelease(verify=False)
    pool = release.unrelated_pool()
    assert pool.sentences == tuple(s for group in FIXTURE_SENTENCES for s in group)
    assert pool.draws == FIXTURE_DRAWS and pool.separator == " "
    assert release.system_prompt() == FIXTURE_SYSTEM
    assert release.retry_suffix() == FIXTURE_SUFFIX
    settings = release.inference_settings()
    assert len(settings) == 7 and all(s == FIXTURE_SETTINGS for s in settings.values())
    described = release.describe()
    assert described["verified"] is False and described["commit"] == STUDY_COMMIT
    assert set(described["files"]) >= {"modules/prompt/__init__.py",
                                       "modules/prompt/text_interfere.py"}


def test_a_copy_that_is_not_the_pinned_file_is_refused():
    with pytest.raises(ReleaseError) as err:
        StudyRelease().system_prompt()
    text = str(err.value)
    assert "modules/prompt/__init__.py" in text and PINNED_SHA256[STUDY_COMMIT][
        "modules/prompt/__init__.py"] in text and "checkout" in text
    with pytest.raises(ReleaseError, match="no sha256 is pinned .* release.verify=false"):
        StudyRelease(commit="0" * 40).system_prompt()


def test_files_are_downloaded_once_and_the_cached_copy_is_checked(tmp_path, monkeypatch):
    code = Path(os.environ["MIBENCH_STUDY_CODE"])
    monkeypatch.delenv("MIBENCH_STUDY_CODE")
    monkeypatch.setenv("MIBENCH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(study_release, "RAW_URL", f"file://{code}/{{path}}")
    release = StudyRelease(commit="fixture", verify=False)
    assert release.system_prompt() == FIXTURE_SYSTEM
    cached = release.cached("modules/prompt/__init__.py")
    assert cached.is_file() and str(tmp_path / "cache") in str(cached)
    monkeypatch.setattr(study_release, "RAW_URL", "file:///nowhere/{path}")
    assert StudyRelease(commit="fixture", verify=False).system_prompt() == FIXTURE_SYSTEM
    # a cache entry under the pinned commit that is not the pinned file is refused by name
    pinned = StudyRelease().cached("modules/prompt/__init__.py")
    pinned.parent.mkdir(parents=True)
    pinned.write_text(cached.read_text())
    with pytest.raises(ReleaseError, match=re.escape(str(pinned))):
        StudyRelease().system_prompt()
    with pytest.raises(ReleaseError, match="without network, clone"):
        StudyRelease(commit="elsewhere", verify=False).system_prompt()


@pytest.mark.skipif(not os.environ.get("MIBENCH_STUDY_CODE_PINNED"),
                    reason="set MIBENCH_STUDY_CODE_PINNED to a clone of the study's repository "
                           f"at {STUDY_COMMIT} to check the texts read from the real files")
def test_the_real_release_gives_the_texts_the_protocol_pins(monkeypatch):
    monkeypatch.setenv("MIBENCH_STUDY_CODE", os.environ["MIBENCH_STUDY_CODE_PINNED"])
    release = StudyRelease()  # verified against the pinned sha256 of every file read
    pool = release.unrelated_pool()
    assert (len(pool.sentences), pool.draws) == (80, 10)
    assert pool.describe()["sha256"] == RELEASED_POOL_SHA256
    assert sha256_text(release.system_prompt()) == RELEASED_SYSTEM_SHA256
    assert release.retry_suffix() == RETRY_PROFILES["study"].suffix
    assert sha256_text(release.string(PROMPT_MODULE, "blip_visual_format")) == (
        RELEASED_PLAIN_FORMAT_SHA256)
    assert prompt_style({"style": "study", "plain_format": "blip_visual_format"}).plain_format
    for settings in release.inference_settings().values():
        assert (settings["max_new_tokens"], settings["repetition_penalty"],
                settings["temperature"], settings["retry_thres"]) == (10, 1.2, 0.0, 2)


@pytest.mark.skipif(not os.environ.get("MIBENCH_STUDY_CODE_PINNED"),
                    reason="set MIBENCH_STUDY_CODE_PINNED to a clone of the study's repository "
                           f"at {STUDY_COMMIT} to check the benchmark against its real files")
def test_the_benchmark_resolves_to_the_real_releases_values(tmp_path, monkeypatch):
    """Each value of `benchmark=cai2025_official` that the released code sets, read from that
    code (verified against the pinned digests) rather than from a comment."""
    monkeypatch.setenv("MIBENCH_STUDY_CODE", os.environ["MIBENCH_STUDY_CODE_PINNED"])
    release = StudyRelease()
    resolved = OmegaConf.to_container(compose_official(tmp_path), resolve=True)
    style = prompt_style(resolved["model"]["prompt"])
    assert style.system == release.system_prompt("qa_image_prompt")
    assert style.plain_format == release.string(PROMPT_MODULE, "blip_visual_format")
    unrelated = instantiate(resolved["grid"]["conditions"]["unrelated_text"])
    assert unrelated.n_sentences == release.unrelated_pool().draws
    assert unrelated.sentences == list(release.unrelated_pool().sentences)
    check_scorer_against(resolved["scorer"], release)


# -- prompt styles -----------------------------------------------------------------------------
def study_sample(**changes) -> Sample:
    base = Sample(id="s1", question="What shape is in the image?",
                  options=("circle", "square"), answer=0, category="image_heavy",
                  image=make_image(0, 8))
    return dataclasses.replace(base, **changes)


def test_the_default_style_is_the_suite_prompt_byte_for_byte():
    style = prompt_style(None)
    for sample in [study_sample(), study_sample(image=None, distractor="A fact.")]:
        assert style.user_text(sample) == format_prompt(sample)
        assert style.messages(sample) == chat_messages(sample)
        assert style.user_text(sample, "\nAgain.") == format_prompt(sample) + "\nAgain."
    assert style.describe() == {"instruction": ANSWER_INSTRUCTION}
    assert prompt_style("default") is style and prompt_style({"style": "default"}) is style
    with pytest.raises(PromptStyleError, match="unknown prompt style 'nope'.*default.*study"):
        prompt_style("nope")
    with pytest.raises(PromptStyleError, match="unexpected keyword"):
        prompt_style({"style": "study", "colour": "red"})


def test_the_study_style_writes_the_released_layout():
    style = prompt_style({"style": "study", "release": UNVERIFIED})
    assert isinstance(style, StudyPrompt) and style.system == FIXTURE_SYSTEM
    plain = study_sample()
    assert style.user_text(plain) == ("Question:\nWhat shape is in the image?\nOption:\n"
                                      "A: circle\nB: square\n")
    glued = study_sample(distractor="Ten sentences.", meta={DISTRACTOR_JOIN: ""})
    assert style.user_text(glued, "\nRetry.") == (
        "Question:\nTen sentences.What shape is in the image?\nOption:\nA: circle\n"
        "B: square\n\nRetry.")
    spaced = study_sample(distractor="A fact.", meta={DISTRACTOR_JOIN: " "})
    text = style.user_text(spaced)
    start, end = style.distractor_span(spaced)
    assert text[start:end] == "A fact." and text[end:end + 6] == " What "
    turns = style.messages(spaced)
    assert turns[0] == {"role": "system", "content": [{"type": "text", "text": FIXTURE_SYSTEM}]}
    assert turns[1]["content"][0] == {"type": "image"}  # image first, as the study's messages
    assert turns[1]["content"][1]["text"] == text
    assert style.plain_text(spaced) == f"{FIXTURE_SYSTEM}\n{text}"
    assert style.plain_prompt(spaced, "{bos}{prompt}\nAnswer:", "<s>") == (
        f"<s>{FIXTURE_SYSTEM}\n{text}\nAnswer:")  # no format of its own: the model's
    assert style.describe()["system_sha256"] == sha256_text(FIXTURE_SYSTEM)
    # its format for a model without a chat template replaces the model's
    blip = prompt_style({"style": "study", "release": UNVERIFIED,
                         "plain_format": "blip_visual_format"})
    assert blip.plain_prompt(spaced, "{prompt}\nAnswer:", "<s>", "\nRetry.") == (
        FIXTURE_PLAIN_FORMAT.format(system_prompt=FIXTURE_SYSTEM,
                                    user_input=text + "\nRetry."))
    assert blip.describe()["plain_format"] == "blip_visual_format"
    with pytest.raises(PromptStyleError, match=r"qa_prompt of the release has the fields \[\]"):
        prompt_style({"style": "study", "release": UNVERIFIED, "plain_format": "qa_prompt"})


@pytest.mark.parametrize("name", ["llava", "qwen2_5_vl", "instructblip"])
def test_the_study_prompt_through_each_familys_template(name, tmp_path, one_thread):
    """local.py's chat(): the system turn and the user's turn, image first, through the
    model's own chat template; the study's plain format where there is none (InstructBLIP)."""
    _, adapter = load_family(name, tmp_path)
    adapter.prompt = prompt_style({"style": "study", "release": UNVERIFIED,
                                   "plain_format": "blip_visual_format"})
    sample = study_sample(distractor="Anna has a red ball.", meta={DISTRACTOR_JOIN: ""})
    user = adapter.prompt.user_text(sample)
    rendered = adapter.render(sample)
    want = {
        # llava-hf's template: the system text, a space, then "USER: <image>\n...", " "
        "llava": f"{FIXTURE_SYSTEM} USER: <image>\n{user} ASSISTANT:",
        # Qwen's: the study's system turn replaces "You are a helpful assistant."
        "qwen2_5_vl": (f"<|im_start|>system\n{FIXTURE_SYSTEM}<|im_end|>\n<|im_start|>user\n"
                       f"<|vision_start|><|image_pad|><|vision_end|>{user}<|im_end|>\n"
                       "<|im_start|>assistant\n"),
        "instructblip": FIXTURE_PLAIN_FORMAT.format(system_prompt=FIXTURE_SYSTEM,
                                                    user_input=user)}[name]
    assert rendered == want
    inputs = adapter.encode([sample])  # and the processor takes it
    where = adapter.distractor_positions([sample], inputs)[0]
    assert adapter.tokenizer.decode(inputs["input_ids"][0][where]).replace(" ", "") == (
        "Annahasaredball.")


def test_the_adapter_renders_through_its_style(tiny_checkpoint, one_thread):
    study = HFModelAdapter.from_pretrained(tiny_checkpoint, name="tiny", device="cpu",
                                           prompt={"style": "study", "release": UNVERIFIED})
    default = HFModelAdapter.from_pretrained(tiny_checkpoint, name="tiny", device="cpu")
    sample = study_sample(distractor="Anna has a red ball.", meta={DISTRACTOR_JOIN: " "})
    rendered = study.render(sample)
    user = study.prompt.user_text(sample)
    assert FIXTURE_SYSTEM in rendered and user in rendered
    assert rendered.index(FIXTURE_SYSTEM) < rendered.index("<image>") < rendered.index(user)
    assert rendered.endswith("ASSISTANT:")
    assert study.render(sample, "\nRetry.").count("\nRetry.") == 1
    assert default.render(sample) == default.apply_chat_template(chat_messages(sample))
    assert study.describe()["prompt"]["system_sha256"] == sha256_text(FIXTURE_SYSTEM)
    assert "prompt" not in default.describe()
    # the distractor's tokens are found inside the study's question block
    inputs = study.encode([sample])
    where = study.distractor_positions([sample], inputs)[0]
    words = study.tokenizer.decode(inputs["input_ids"][0][where])
    assert words.split() == "Anna has a red ball .".split()
    # without a chat template the system prompt comes first, on its own line
    plain = HFModelAdapter(study.model, study.processor, "plain",
                           prompt_format="{prompt}\nAnswer:", prompt=study.prompt)
    assert plain.render(sample) == f"{FIXTURE_SYSTEM}\n{user}\nAnswer:"


# -- the released items ------------------------------------------------------------------------
@pytest.mark.parametrize("name", OFFICIAL_TASKS)
def test_released_items_map_field_by_field(name, study_root):
    t = task(name, study_root)
    rows = rows_of(study_root, t.file)
    samples = t.samples()
    assert [s.id for s in samples] == [r["id"] for r in rows]
    for sample, row in zip(samples, rows):
        assert sample.question == row["question"]
        assert sample.options == tuple(row["multiple_choices"].values())
        assert sample.letters[sample.answer] == row["multiple_choices_answer"]
        assert sample.category == t.category
        assert sample.meta.get("facts") == row.get("facts")
        if t.images is None:
            assert sample.image is None
        else:
            if t.images == "base64":
                import base64
                import io
                want = Image.open(io.BytesIO(base64.b64decode(row["image"])))
            else:
                want = Image.open(study_root / "study_data" / t.images / row["image"])
            assert np.array_equal(np.asarray(sample.image.convert("RGB")),
                                  np.asarray(want.convert("RGB")))
    described = t.describe()
    assert described["data_digest"].startswith("sha256:") and described["file"] == t.file
    assert described["source"] == "data_root/study_data"  # never this machine's path
    expected_reference = "random_pixels" if t.category == "text_heavy" else "clean"
    assert t.reference == expected_reference
    assert described.get("reference", "clean") == expected_reference


def test_archives_as_released_give_the_same_items_and_digest(study_root, tmp_path):
    write_data(tmp_path / "study_data", archives=True)
    assert sorted(p.name for p in (tmp_path / "study_data").iterdir()) == sorted(
        f"{d[0]}.tar.gz" for d in DATASETS)
    for name in ("study_caltech101", "study_mmlu", "study_scienceqa"):
        loose, packed = task(name, study_root), task(name, tmp_path)
        assert [(s.id, s.options, s.answer) for s in packed.samples()] == [
            (s.id, s.options, s.answer) for s in loose.samples()]
        assert packed.data_digest() == loose.data_digest()


def bad_copy(root: Path, change) -> Path:
    """A copy of the Caltech-101 items with one item changed by `change(rows)`."""
    write_data(root / "study_data", items=4)
    path = root / "study_data" / "caltech-101" / "multiple_choice_data_test.json"
    rows = json.loads(path.read_text())
    change(rows)
    path.write_text(json.dumps(rows))
    return root


MALFORMED = {
    "keys out of order": (lambda r: r[1].update(multiple_choices={"B": "x", "A": "y"}),
                          "item 1 .*caltech-101-1.*not A, B, C"),
    "gold not a key": (lambda r: r[1].update(multiple_choices_answer="Z"),
                       "item 1 .*multiple_choices_answer 'Z' is none of"),
    "no id": (lambda r: r[2].pop("id"), "item 2 .*no usable 'id'"),
    "image outside": (lambda r: r[0].update(image="../../secret.png"),
                      "item 0 .*not a path inside the data folder"),
    "image missing": (lambda r: r[0].update(image="nope.png"), "item 0 .*does not exist"),
    "repeated option": (lambda r: r[3]["multiple_choices"].update(B="circle", A="circle"),
                        "item 3 .*repeat"),
    "empty facts": (lambda r: r[0].update(facts={}), "item 0 .*facts must map"),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_a_malformed_item_is_named(case, tmp_path):
    change, message = MALFORMED[case]
    root = bad_copy(tmp_path, change)
    with pytest.raises(DataError, match=message):
        task("study_caltech101", root).samples()
    skipping = task("study_caltech101", root, bad_rows="skip")
    assert len(skipping.samples()) == 3
    assert len(skipping.describe()["skipped_rows"]) == 1


def test_not_an_array_and_missing_copies_say_what_to_do(tmp_path):
    root = bad_copy(tmp_path, lambda r: None)
    path = root / "study_data" / "caltech-101" / "multiple_choice_data_test.json"
    path.write_text(json.dumps({"items": []}))
    with pytest.raises(DataError, match="JSON dict, not the array of items"):
        task("study_caltech101", root).samples()
    with pytest.raises(DatasetLoadError, match="no local copy at .*study_data.*hf download"):
        task("study_mmlu", tmp_path / "elsewhere").samples()
    (tmp_path / "empty" / "study_data").mkdir(parents=True)
    with pytest.raises(DatasetLoadError, match=r"no MMLU/multiple_choice_data_test.json .*"
                                               r"archives: none.*archive="):
        task("study_mmlu", tmp_path / "empty").samples()
    hub = task("study_mmlu", tmp_path, data_dir=None, repo="luisrui/training_data")
    with pytest.raises(DatasetLoadError, match="cannot reach the hub dataset "
                                               "'luisrui/training_data'.*hf download"):
        hub.samples()


def test_what_is_fetched_from_a_hub_release():
    loose = ["README.md", "caltech-101/multiple_choice_data_test.json",
             "caltech-101/images/0001.jpg", "VQADatasets/MMVP/images/1.jpg"]
    assert hub_patterns(loose, ["caltech-101/multiple_choice_data_test.json",
                                "caltech-101/images"], None) == [
        "caltech-101/multiple_choice_data_test.json",
        "caltech-101/multiple_choice_data_test.json/*", "caltech-101/images",
        "caltech-101/images/*"]
    assert hub_patterns(["data/" + f for f in loose], ["VQADatasets/MMVP/images"], None) == [
        "data/VQADatasets/MMVP/images", "data/VQADatasets/MMVP/images/*"]
    packed = ["caltech-101.tar.gz", "MMLU.tar.gz", "VQADatasets.tar.gz",
              "LLaVA-Instruct-665K.tar.gz.part_aa", "README.md"]
    assert hub_patterns(packed, ["caltech-101/multiple_choice_data_test.json"], None) == [
        "caltech-101.tar.gz"]
    assert hub_patterns(packed, ["VQADatasets/MMVP/images"], None) == ["VQADatasets.tar.gz"]
    assert hub_patterns(packed, ["OpenBookQA/multiple_choice_data_test.json"], None) == []
    assert hub_patterns(packed, ["OpenBookQA/x.json"], "MMLU.tar.gz") == ["MMLU.tar.gz"]


def test_limit_keeps_a_stratified_subset_in_file_order(study_root):
    full = task("study_openbookqa", study_root).samples()
    part = task("study_openbookqa", study_root, limit=5).samples()
    chosen = {s.id for s in part}
    assert len(part) == 5 and [s.id for s in part] == [s.id for s in full if s.id in chosen]
    assert [s.id for s in task("study_openbookqa", study_root, limit=5).samples()] == [
        s.id for s in part]


# -- the study's perturbations -----------------------------------------------------------------
def test_study_unrelated_text_draws_with_replacement_from_the_release():
    pool = [s for group in FIXTURE_SENTENCES for s in group]
    perturbation = StudyUnrelatedText(release=UNVERIFIED, n_sentences=12)
    sample = study_sample()
    out = perturbation.apply(sample, rng_for(0, "x"))
    assert out.meta[DISTRACTOR_JOIN] == "" and out.question == sample.question
    drawn = re.findall(r"[^.]+\.", out.distractor)
    assert len(drawn) == 12 and all(s.strip() in pool for s in drawn)
    assert len({s.strip() for s in drawn}) < 12  # 12 from 5: some drawn twice
    assert perturbation.apply(sample, rng_for(0, "x")).distractor == out.distractor
    assert StudyUnrelatedText(release=UNVERIFIED).n_sentences == FIXTURE_DRAWS
    params = perturbation.describe()["params"]
    assert params["pool"]["sentences"] == len(pool) and params["release"]["verified"] is False
    assert params["sampling"] == "12, with replacement"


def test_the_default_unrelated_text_draws_beyond_its_pool_with_replacement():
    sample = study_sample()
    one = UnrelatedText()
    rng_a, rng_b = rng_for(3, "y"), rng_for(3, "y")
    picked = rng_b.choice(len(DEFAULT_UNRELATED_SENTENCES), size=1, replace=False)
    assert one.apply(sample, rng_a).distractor == DEFAULT_UNRELATED_SENTENCES[int(picked[0])]
    assert "sampling" not in one.describe()["params"]  # its record as before: no repeats
    ten = UnrelatedText(n_sentences=10)
    assert len(re.findall(r"\.", ten.apply(sample, rng_for(0)).distractor)) == 10
    assert ten.describe()["params"]["sampling"] == "10 of 8 sentences, with replacement"
    with pytest.raises(ValueError, match="10 sentences without replacement from a pool of 8"):
        UnrelatedText(n_sentences=10, replace=False)


def test_study_misleading_text_is_the_items_released_fact():
    fact = "The picture seems to describe a square. Squares have four sides."
    sample = study_sample(meta={"facts": {"square": fact}})
    out = StudyMisleadingText().apply(sample, rng_for(0))
    assert out.distractor == fact and out.meta["lure"] == 1 and out.meta[DISTRACTOR_JOIN] == " "
    other = StudyMisleadingText().apply(study_sample(meta={"facts": {"cube": fact}}), rng_for(0))
    assert "lure" not in other.meta  # a fact naming no option points to none
    with pytest.raises(MissingFactsError, match="sample 's1' has no released `facts`"):
        StudyMisleadingText().apply(study_sample(), rng_for(0))


def test_study_images_are_336_canvases_and_random_pool_pictures(tmp_path):
    def load(name):
        return instantiate(OmegaConf.load(CONF / "perturbation" / f"{name}.yaml"))
    sample = text_heavy_samples(1)[0]
    noise = load("study_random_pixels").apply(sample, rng_for(0))
    pixels = np.asarray(noise.image)
    assert isinstance(load("study_random_pixels"), RandomPixels)
    assert pixels.shape == (336, 336, 3) and pixels.min() == 0 and pixels.max() == 255
    for name, value in (("study_black_image", 0), ("study_white_image", 255)):
        assert isinstance(load(name), BlankImage)
        image = np.asarray(load(name).apply(sample, rng_for(0)).image)
        assert image.shape == (336, 336, 3) and (image == value).all()
    write_pool(tmp_path / "study_data", n=6)
    cfg = OmegaConf.load(CONF / "perturbation" / "study_switched_image.yaml")
    cfg.donors.data_dir = str(tmp_path)
    switched = instantiate(cfg)
    assert isinstance(switched, SwitchedImage) and switched.prefer_lure is False
    donors = switched._donor_task.samples()
    assert sorted(d.id for d in donors) == sorted(
        p.relative_to(tmp_path / "study_data" / MMVP_FOLDER).as_posix()
        for p in (tmp_path / "study_data" / MMVP_FOLDER).rglob("*.*"))
    outs = [switched.apply(s, rng_for(0, s.id)) for s in text_heavy_samples(12)]
    assert all("lure" not in o.meta for o in outs)
    assert len({o.meta["donor"] for o in outs}) > 1


# -- the reference condition -------------------------------------------------------------------
def test_changes_are_measured_against_the_tasks_reference(tiny_adapter, tmp_path, one_thread):
    samples = text_heavy_samples(8)
    grid = {"random_pixels": RandomPixels(size=[16, 16]),
            "black_image": BlankImage("black_image", size=[16, 16])}
    tasks = {"th": ListTask("th", "text_heavy", samples)}
    tasks["th"].reference = "random_pixels"
    result = run_benchmark(tiny_adapter, tasks, grid, tmp_path / "a", batch_size=4,
                           progress=False)
    metrics = result.metrics["th"]
    assert set(metrics["random_pixels"]) == {"accuracy"} and set(metrics["clean"]) == {
        "accuracy"}
    records = [json.loads(x) for x in (tmp_path / "a" / "records.jsonl").read_text().splitlines()]
    by = {(r["condition"], r["sample_id"]): r for r in records}
    ids = [s.id for s in samples]
    want = np.mean([by[("random_pixels", i)]["correct"] - by[("black_image", i)]["correct"]
                    for i in ids])
    flips = np.mean([by[("random_pixels", i)]["prediction"] != by[("black_image", i)][
        "prediction"] for i in ids])
    assert metrics["black_image"]["drop"].value == pytest.approx(want)
    assert metrics["black_image"]["flip_rate"].value == pytest.approx(flips)
    assert result.fingerprint["tasks"]["th"]["reference"] == "random_pixels"
    table = format_table({"th": {k: {m: e.to_json() for m, e in v.items()}
                                 for k, v in metrics.items()}},
                         references={"th": "random_pixels"})
    assert "| th | random_pixels (reference) |" in table and "(against random_pixels)" in table
    # without the reference in the run: accuracies only, and the reason is a failure
    alone = run_benchmark(tiny_adapter, tasks, {"black_image": grid["black_image"]},
                          tmp_path / "b", batch_size=4, progress=False)
    assert set(alone.metrics["th"]["black_image"]) == {"accuracy"}
    assert [(f.task, f.condition) for f in alone.failures] == [("th", "random_pixels")]
    assert "was not scored in this run" in alone.failures[0].error


# -- the benchmark -----------------------------------------------------------------------------
def compose_official(tmp_path: Path, *overrides: str):
    """`benchmark=cai2025_official` as the command line composes it."""
    with initialize_config_module("mibench.conf", version_base="1.3"):
        return compose("config", overrides=["benchmark=cai2025_official",
                                            f"out_dir={tmp_path / 'out'}", *overrides])


def test_the_resolved_config_is_the_released_protocol(tmp_path):
    """Every element of the official grid against the study's released code (its values are
    in the comments; the sha256 pins are of its files at the pinned commit)."""
    cfg = compose_official(tmp_path)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    grid = resolved["grid"]
    assert grid["name"] == "cai2025_official"
    assert grid["study_release"] == {"repo": "luisrui/Modality-Interference-in-MLLMs",
                                     "commit": STUDY_COMMIT, "verify": True}
    # texts are read from files pinned by sha256 (the study's prompt module and pool)
    pins = PINNED_SHA256[STUDY_COMMIT]
    assert pins["modules/prompt/__init__.py"] == (
        "89669cbadb2e4fb53a2c38a794339ae12f38e4b74a47b9826c2c6deb0f685568")
    assert pins["modules/prompt/text_interfere.py"] == (
        "a25403808f351ceb44e4eeebdf43de007b9eca60daba6dbda8b89a97a4b9a5a3")
    # src/predict.py passes qa_image_prompt as the system prompt for every family and mode
    # local.py's InstructBLIP (no chat template) formats with blip_visual_format
    assert resolved["model"]["prompt"] == {"style": "study", "system": "qa_image_prompt",
                                           "plain_format": "blip_visual_format",
                                           "release": grid["study_release"]}
    tasks = grid["tasks"]
    assert list(tasks) == OFFICIAL_TASKS
    # read_utils.load_dataset's files (task='test'); SEED-Bench and MMBench have no suffix
    assert {t["name"]: t["file"] for t in tasks.values()} == {
        "study_mini_imagenet": "mini-imagenet/multiple_choice_data_test.json",
        "study_caltech101": "caltech-101/multiple_choice_data_test.json",
        "study_mmlu": "MMLU/multiple_choice_data_test.json",
        "study_openbookqa": "OpenBookQA/multiple_choice_data_test.json",
        "study_scienceqa": "VQADatasets/ScienceQA/multiple_choice_data_test.json",
        "study_seed_bench": "SEED-Bench-Img/multiple_choice_data.json",
        "study_mmbench": "MMBench-EN/multiple_choice_data.json"}
    assert all(t["repo"] == "luisrui/Modality-Interference-in-MLLMs-DATA" and t["limit"] is None
               for t in tasks.values())
    # the clean reference: random pixels for text-heavy (Fig. 1 "Random Pixels (Clean)")
    assert {n: t["reference"] for n, t in tasks.items()} == {
        n: "random_pixels" if t["category"] == "text_heavy" else "clean"
        for n, t in tasks.items()}
    conditions = grid["conditions"]
    assert {n: c["name"] for n, c in conditions.items()} == {n: n for n in conditions}
    # text_interfere.py: [combine_distractions() for _ in range(10)], random.choice each
    unrelated = conditions["unrelated_text"]
    assert unrelated["_target_"].endswith("StudyUnrelatedText")
    assert unrelated["n_sentences"] == 10 and unrelated["release"] == grid["study_release"]
    assert conditions["misleading_text"]["_target_"].endswith("StudyMisleadingText")
    # aug_utils.py image_aug_for_TextHeavy: 336x336 random / black / white canvases
    assert conditions["random_pixels"]["size"] == [336, 336]
    assert conditions["black_image"] == {**conditions["black_image"], "size": [336, 336],
                                         "color": [0, 0, 0]}
    assert conditions["white_image"] == {**conditions["white_image"], "size": [336, 336],
                                         "color": [255, 255, 255]}
    # RandomImageIterator("data/VQADatasets/MMVP/images/"): random pool images, no lure
    switched = conditions["switched_image"]
    assert switched["prefer_lure"] is False
    assert switched["donors"]["folder"] == "VQADatasets/MMVP/images"
    assert switched["donors"]["_target_"] == "mibench.tasks.study_data.ImagePool"
    # a submission of this run passes the guard with its plug-ins unchanged
    guarded = guard_run_config({k: v for k, v in resolved.items() if k != "hydra"})
    assert guarded["grid"]["conditions"] == grid["conditions"]
    assert {n: {k: v for k, v in t.items() if k != "data_dir"}
            for n, t in guarded["grid"]["tasks"].items()} == {
        n: {k: v for k, v in t.items() if k != "data_dir"} for n, t in tasks.items()}


def test_the_scorer_is_the_released_generation_protocol(tmp_path):
    """configs/model_inference/*/args_*.yaml: max_new_tokens 10, repetition_penalty 1.2,
    temperature 0 (local.py: do_sample False, greedy), retry_thres 2 (two asks: one retry);
    read_utils' extract_final_choice; model_utils' retry suffix (sha256 of the literal in the
    pinned file)."""
    from mibench.answer_parsing import StudyParser

    scorer = instantiate(compose_official(tmp_path).scorer)
    described = scorer.describe()
    assert (described["name"], described["decoding"], described["max_new_tokens"],
            described["repetition_penalty"], described["stop"]) == (
        "study", "greedy", 10, 1.2, [])
    # A-Z on image-heavy sets, A-D elsewhere, either case, whatever the item's options
    assert isinstance(scorer.parser, StudyParser) and scorer.parser.span == "study"
    assert scorer.profile.retries == 1
    assert hashlib.sha256(scorer.profile.suffix.encode()).hexdigest() == RELEASED_SUFFIX_SHA256


def check_scorer_against(scorer: dict, release: StudyRelease) -> None:
    """The scorer config against every zero-shot inference config of the release."""
    profile = retry_profile(scorer["retry"])
    assert profile.suffix == release.retry_suffix()
    for path, settings in release.inference_settings().items():
        assert settings["temperature"] == 0.0, path  # local.py: do_sample False, greedy
        assert scorer["max_new_tokens"] == settings["max_new_tokens"], path
        assert scorer["repetition_penalty"] == settings["repetition_penalty"], path
        assert 1 + profile.retries == settings["retry_thres"], path  # asks in all


def official_run(tmp_path: Path, checkpoint: str, root: Path, *extra: str):
    out = tmp_path / "run"
    cfg = compose_official(
        tmp_path, "model=hf", f"model.path={checkpoint}", "model.name=tiny",
        "model.dtype=float32", "model.device=cpu", f"data_root={root}", f"out_dir={out}",
        "progress=false", "batch_size=4", "model.unknown_words_refuse=1",
        "grid.study_release.verify=false", *extra)
    return run(cfg), out


def check_official_document(document: dict, out: Path) -> None:
    results = document["results"]
    assert list(results) == OFFICIAL_TASKS
    for name in ("study_mini_imagenet", "study_caltech101"):
        assert set(results[name]) == {"clean", "unrelated_text", "misleading_text"}
        assert results[name]["misleading_text"]["lure_rate"]["n"] == 12
    for name in ("study_mmlu", "study_openbookqa"):
        assert set(results[name]) == {"clean", "random_pixels", "black_image", "white_image",
                                      "switched_image"}
        assert document["tasks"][name]["reference"] == "random_pixels"
        assert "drop" not in results[name]["random_pixels"]
    for name in ("study_scienceqa", "study_seed_bench", "study_mmbench"):
        assert set(results[name]) == {"clean"}
    assert document["failed"] == []
    prompt = document["model"]["prompt"]
    assert prompt["system_sha256"] == sha256_text(FIXTURE_SYSTEM)
    assert prompt["release"]["verified"] is False
    unrelated = document["conditions"]["unrelated_text"]["params"]
    assert unrelated["n_sentences"] == 10 and unrelated["pool"]["sentences"] == 5
    assert document["conditions"]["random_pixels"]["params"]["size"] == [336, 336]
    donors = document["conditions"]["switched_image"]["params"]["donors_task"]
    assert donors["images"] == 5 and donors["data_digest"].startswith("sha256:")
    assert {t["source"] for t in document["tasks"].values()} | {donors["source"]} == {
        "data_root/study_data"}
    table = (out / "table.md").read_text()
    assert "| study_mmlu | random_pixels (reference) |" in table


def test_the_official_grid_runs_end_to_end_offline(tiny_checkpoint, study_root, tmp_path,
                                                   one_thread, capsys):
    """Items, prompts, stimuli, reference and the study's scoring (generation, its parser and
    retry) of the official grid on the tiny checkpoint, from release-format fixtures."""
    document, out = official_run(tmp_path, tiny_checkpoint, study_root)
    check_official_document(document, out)
    assert document["scorer"]["name"] == "study"
    records = [json.loads(x) for x in (out / "records.jsonl").read_text().splitlines()]
    assert len(records) == 2 * 12 * 3 + 2 * 12 * 5 + 3 * 12
    assert all(r["generated"]["responses"] for r in records)
    # accuracy over all samples and over the parsed ones, as the study reports both
    for conditions in document["results"].values():
        for metrics in conditions.values():
            assert {"accuracy", "accuracy_parsed", "parse_failure_rate"} <= set(metrics)
    # the study's layout tables and figure of this run
    text = render_study_tables(load_runs_of(out))
    assert "| Random Pixels (Clean) |" in text and "| No Image |" in text
    # and its own two accuracies, from the records and the items the run read
    from mibench.study_report import main as report_main

    assert report_main([str(out), "--json", str(tmp_path / "c.json")]) == 0
    rows = json.loads((tmp_path / "c.json").read_text())["study_accuracies"]
    assert len(rows) == 2 * 3 + 2 * 5 + 3 and rows[0]["reported"] == 12
    by = {(r["task"], r["condition"]): r for r in rows}
    for task_name, conditions in document["results"].items():
        for condition, metrics in conditions.items():
            assert by[(task_name, condition)]["all_report_accuracy"] == pytest.approx(
                metrics["accuracy"]["value"])
    assert "The study's two accuracies" in capsys.readouterr().out


def test_the_command_line_chooses_another_scorer(tmp_path):
    """The benchmark sets the study's scorer; `scorer=` on the command line still wins."""
    assert compose_official(tmp_path).scorer.name == "study"
    assert compose_official(tmp_path, "scorer=likelihood").scorer._target_.endswith(
        "LikelihoodScorer")


def load_runs_of(*dirs: Path):
    from mibench.results.tables import load_runs

    return load_runs(list(dirs))


def test_the_reproduction_script_dry_run(tmp_path):
    out = subprocess.run(["bash", str(ROOT / "scripts" / "reproduce_cai2025.sh"), "--dry-run",
                          "--out", str(tmp_path / "run")], capture_output=True, text=True,
                         timeout=1800, env={**os.environ, "MIBENCH_STUDY_CODE": ""})
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "dry run: the toy model on fixtures" in out.stdout
    assert "| study_openbookqa | switched_image |" in out.stdout
    assert "of 13 within tolerance" in out.stdout
    assert (tmp_path / "run" / "metrics.json").is_file()


# -- tables and the comparison with the published figures -------------------------------------
def synthetic_document(model: str, shift: float) -> dict:
    acc = {"value": 0.5, "low": 0.4, "high": 0.6, "n": 100, "method": "wilson"}
    results = {"study_openbookqa": {c: {"accuracy": {**acc, "value": v + shift}} for c, v in (
        ("clean", 0.6), ("random_pixels", 0.62), ("black_image", 0.625),
        ("switched_image", 0.564))},
        "study_mini_imagenet": {c: {"accuracy": {**acc, "value": v + shift}} for c, v in (
            ("clean", 0.95), ("unrelated_text", 0.93), ("misleading_text", 0.435))}}
    tasks = {"study_openbookqa": {"category": "text_heavy", "reference": "random_pixels"},
             "study_mini_imagenet": {"category": "image_heavy"}}
    return {"model": {"name": model}, "tasks": tasks, "results": results}


def test_study_layout_tables_and_figure(tmp_path, capsys):
    dirs = []
    for k, model in enumerate(["llava-7b", "llava-13b", "qwen-7b"]):
        folder = tmp_path / model
        folder.mkdir()
        (folder / "metrics.json").write_text(json.dumps(synthetic_document(model, 0.01 * k)))
        dirs.append(str(folder))
    out = tmp_path / "tables"
    assert tables_main([*dirs, "--layout", "study", "--out", str(out), "--conditions",
                        "clean", "misleading_text", "random_pixels", "switched_image"]) == 0
    text = (out / "tables_study_accuracy.md").read_text()
    assert "| condition | llava-7b | llava-13b | qwen-7b |" in text
    assert ("| Random Pixels (Clean) | 62.0 [40.0, 60.0] | 63.0 [40.0, 60.0] | "
            "64.0 [40.0, 60.0] |") in text
    assert "| No Interference (Clean) | 95.0" in text and "Irrelevant Text" not in text
    assert "| No Image | 60.0" in text and "Black Canvas" not in text
    with Image.open(out / "radar_study_accuracy.png") as png:
        assert png.format == "PNG" and png.size[0] > png.size[1]  # two panels side by side
        assert len(png.convert("RGB").getcolors(1_000_000)) > 10
    assert "radar plot in" in capsys.readouterr().out


def test_comparison_with_the_published_figures():
    rows = compare(synthetic_document("x", 0.0)["results"])
    by = {(r.published.task, r.published.condition): r for r in rows}
    switch = by[("study_openbookqa", "switched_image")]
    assert switch.published.value == 56.4 and switch.ours == pytest.approx(56.4)
    assert switch.within is True and switch.published.tolerance == 3.0
    assert by[("study_openbookqa", "black_image")].published.tolerance == 2.0
    assert by[("study_mmlu", "white_image")].ours is None
    text = format_comparison(rows)
    assert "docs/index.html L390-419" in text and "VQA overall 63.8" in text
    assert re.search(r"\d+ of \d+ within tolerance \(7 not in this run\)", text)


def test_the_studys_two_accuracies_follow_its_evaluator():
    outcomes = [
        Outcome(True, "B", "dog", "text_heavy"),           # read, right
        Outcome(False, "I think it's B", "dog", "image_heavy"),  # "I" read: answered, wrong
        Outcome(False, "It is a dog", "dog", "text_heavy"),  # "a" read as A: answered, wrong
        Outcome(False, "dog", "dog", "text_heavy"),         # gold text inside: answered, wrong
        Outcome(False, "dog", "dog", "vqa"),                # VQA: no text check
        Outcome(False, "xyz", "'xyz'", "text_heavy"),       # its quote stripping keeps "'xyz"
        Outcome(False, "", "dog", "text_heavy"),
    ]
    got = study_accuracies(outcomes)
    assert got["reported"] == 7 and got["correct"] == 1 and got["ignored"] == 3
    assert got["all_report_accuracy"] == pytest.approx(1 / 7)
    assert got["ignore_accuracy"] == pytest.approx(1 / 4)


def generated_run(root: Path, out: Path, responses: list[str], predictions: list) -> Path:
    """A run directory as a generated cai2025_official run writes it: study_openbookqa's
    first items under one condition, answered with `responses`."""
    from mibench.records import Generated, Record

    config = OmegaConf.to_container(OmegaConf.load(CONF / "task" / "study_openbookqa.yaml"))
    config["data_dir"] = str(root)
    t = instantiate(config)
    samples = t.samples()[:len(responses)]
    out.mkdir()
    (out / "metrics.json").write_text(json.dumps({
        "config": {"grid": {"tasks": {t.name: config}}},
        "tasks": {t.name: t.describe()}, "results": {}}))
    records = [Record(t.name, "switched_image", s.id, None,
                      None if p is None else s.answer + p, s.answer,
                      generated=Generated((r,), None if p is not None else "no_letter", None,
                                          len(s.options)))
               for s, r, p in zip(samples, responses, predictions, strict=True)]
    (out / "records.jsonl").write_text("".join(json.dumps(r.to_json()) + "\n" for r in records))
    return out


def test_the_report_gives_the_studys_accuracies_of_a_generated_run(study_root, tmp_path,
                                                                   capsys):
    from mibench.study_report import main as report_main

    first, _, gold = task("study_openbookqa", study_root).samples()[:3]
    gold_text = gold.options[gold.answer]
    assert not re.search(r"\b[A-Da-d]\b", gold_text)
    # read and right; nothing read; nothing read but the gold text inside (the study counts
    # it answered, and wrong); "E" (not a letter its text-heavy rule reads)
    run = generated_run(study_root, tmp_path / "run", [
        first.letters[first.answer], "none of them", f"Then {gold_text}", "E"],
        [0, None, None, None])
    assert report_main([str(run), "--json", str(tmp_path / "c.json")]) == 0
    printed = capsys.readouterr().out
    assert "| study_openbookqa | switched_image | 25.0 | 50.0 | 1 | 4 | 2 |" in printed
    saved = json.loads((tmp_path / "c.json").read_text())
    assert saved["study_accuracies"] == [{
        "task": "study_openbookqa", "condition": "switched_image", "all_report_accuracy": 0.25,
        "ignore_accuracy": 0.5, "correct": 1, "reported": 4, "ignored": 2}]
    # the items must be those the run scored
    document = json.loads((run / "metrics.json").read_text())
    document["tasks"]["study_openbookqa"]["data_digest"] = "sha256:" + "0" * 64
    (run / "metrics.json").write_text(json.dumps(document))
    assert report_main([str(run)]) == 2
    assert "are not those the run scored" in capsys.readouterr().err


def test_image_heavy_samples_keep_their_facts_through_the_default_prompt():
    """The study's perturbations under the suite's prompt: the text on its own line."""
    sample = dataclasses.replace(image_heavy_samples(1)[0],
                                 meta={"facts": {"circle": "The picture seems to describe a "
                                                           "circle."}})
    out = StudyMisleadingText().apply(sample, rng_for(0))
    assert PromptStyle().user_text(out).startswith("The picture seems to describe a circle.\n")
