"""The audit trail: each record says what its sample was shown as; `mibench show` opens it."""

import dataclasses
import gzip
import json

import numpy as np
import pytest
from conftest import ListTask, image_heavy_samples, text_heavy_samples
from hydra import compose, initialize_config_module
from PIL import Image

from mibench.audit import MAX_META_ITEMS, MAX_META_TEXT, plain_meta, prompt_digest
from mibench.cli import run
from mibench.perturbations.image import SwitchedImage
from mibench.perturbations.pgd_embed import EmbeddingPGD
from mibench.perturbations.text import MisleadingText, UnrelatedText
from mibench.records import Audit, Record
from mibench.results.submission import submit_main
from mibench.results.submission_io import schema_problems
from mibench.runner import run_benchmark
from mibench.seeding import rng_for
from mibench.show import show_main

pytestmark = pytest.mark.usefixtures("one_thread")


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_record_without_an_audit_keeps_its_old_bytes_and_one_with_it_round_trips():
    plain = Record("t", "clean", "s1", (0.25, 0.75), 1, 1, lure=0)
    assert list(plain.to_json()) == ["task", "condition", "sample_id", "probs", "prediction",
                                     "gold", "correct", "lure"]
    audited = dataclasses.replace(plain, audit=Audit("ab" * 32, "a caption", {"subject": "x"}))
    assert audited.to_json()["audit"] == {"prompt": "ab" * 32, "distractor": "a caption",
                                          "meta": {"subject": "x"}}
    assert Record.from_json(json.loads(json.dumps(audited.to_json()))) == audited
    assert Record.from_json(plain.to_json()).audit is None


def test_metadata_is_kept_plain_and_bounded():
    meta = {"subject": "anatomy", "grade": 7, "ok": True, "none": None, "score": float("nan"),
            "names": ["Anna", "Max"], "nested": {"b": 1, "a": [2]}, "long": "x" * 1000,
            "many": list(range(100)), 5: "five"}
    kept = plain_meta(meta)
    assert kept["subject"] == "anatomy" and kept["grade"] == 7 and kept["ok"] is True
    assert kept["none"] is None and kept["score"] == "nan"  # records are strict JSON
    assert kept["names"] == ["Anna", "Max"]
    assert kept["nested"] == '{"a": [2], "b": 1}'
    assert len(kept["long"]) == MAX_META_TEXT and kept["long"].endswith("…")
    assert kept["many"] == list(range(MAX_META_ITEMS))
    assert kept["5"] == "five"
    json.dumps(kept, allow_nan=False)
    huge = plain_meta({f"k{i}": ["y" * 300] * 16 for i in range(32)})
    assert 0 < len(huge) < 32 and len(json.dumps(huge)) <= 8192


def audited_grid():
    """Image-heavy samples with metadata, under both text conditions; text-heavy samples
    under a switched image from donors."""
    ih = [dataclasses.replace(s, meta={"attribute": "shape" if i % 2 else "colour"})
          for i, s in enumerate(image_heavy_samples(6))]
    donors = ListTask("donors", "image_heavy", image_heavy_samples(4))
    tasks = {"ih": ListTask("ih", "image_heavy", ih),
             "th": ListTask("th", "text_heavy", text_heavy_samples(5))}
    conditions = {"misleading_text": MisleadingText(), "unrelated_text": UnrelatedText(),
                  "switched_image": SwitchedImage(donors)}
    return tasks, conditions


def test_records_name_the_prompt_added_text_and_metadata_the_model_was_shown(
        tiny_adapter, tmp_path):
    tasks, conditions = audited_grid()
    run_benchmark(tiny_adapter, tasks, conditions, tmp_path, batch_size=4, seed=3,
                  progress=False)
    records = [Record.from_json(r) for r in read_jsonl(tmp_path / "records.jsonl")]
    prompt_lines = read_jsonl(tmp_path / "prompts.jsonl")
    prompts = {row["prompt"]: row["text"] for row in prompt_lines}
    assert [row["prompt"] for row in prompt_lines] == sorted(prompts)  # each once, sorted
    assert not list((tmp_path / "shards").glob("*.jsonl"))
    assert len(records) == 6 * 3 + 5 * 2 and all(r.audit is not None for r in records)
    samples = {(t, s.id): s for t, task in tasks.items() for s in task.samples()}
    for record in records:
        sample = samples[(record.task, record.sample_id)]
        if record.condition != "clean":
            sample = conditions[record.condition].apply(
                sample, rng_for(3, record.task, record.condition, sample.id))
        text = tiny_adapter.render(sample)
        assert record.audit.prompt == prompt_digest(text) and prompts[record.audit.prompt] == text
        assert record.audit.distractor == sample.distractor
        assert record.audit.meta == plain_meta(sample.meta)
    by_key = {(r.task, r.condition, r.sample_id): r for r in records}
    caption = by_key[("ih", "misleading_text", "ih-1")].audit
    assert caption.distractor.startswith("The picture seems to describe a ")
    assert caption.distractor in prompts[caption.prompt]
    assert caption.meta["attribute"] == "shape" and "lure" in caption.meta
    assert by_key[("ih", "clean", "ih-1")].audit.distractor == ""
    donor_ids = {s.id for s in image_heavy_samples(4)}
    assert all(by_key[("th", "switched_image", f"th-{i}")].audit.meta["donor"] in donor_ids
               for i in range(5))
    assert "donor" not in by_key[("th", "clean", "th-0")].audit.meta


def test_a_crashed_run_resumes_to_the_same_prompts_file(tiny_adapter, tmp_path):
    tasks, conditions = audited_grid()
    run_benchmark(tiny_adapter, tasks, conditions, tmp_path, batch_size=4, progress=False)
    records, prompts = tmp_path / "records.jsonl", tmp_path / "prompts.jsonl"
    whole = records.read_bytes(), prompts.read_bytes()
    # as a crash leaves it: shards only, holding 9 records and their prompts (written
    # first), then a prompt line cut short
    lines = records.read_text().splitlines()[:9]
    texts = {json.loads(t)["prompt"]: t for t in prompts.read_text().splitlines()}
    named = list(dict.fromkeys(json.loads(line)["audit"]["prompt"] for line in lines))
    other = next(d for d in texts if d not in named)
    records.unlink()
    prompts.unlink()
    (tmp_path / "shards" / "rank-0.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "shards" / "prompts-rank-0.jsonl").write_text(
        "".join(texts[d] + "\n" for d in named) + texts[other][:30])
    run_benchmark(tiny_adapter, tasks, conditions, tmp_path, batch_size=4, progress=False)
    assert (records.read_bytes(), prompts.read_bytes()) == whole


def test_an_attack_records_what_its_base_showed(tiny_adapter, tmp_path):
    task = ListTask("ih", "image_heavy", image_heavy_samples(3))
    attack = EmbeddingPGD(name="pgd_caption", mask="distractor", eps=0.1, alpha=0.05, steps=1,
                          base=MisleadingText())
    run_benchmark(tiny_adapter, {"ih": task}, {"pgd_caption": attack}, tmp_path, batch_size=2,
                  progress=False)
    prompts = {r["prompt"]: r["text"] for r in read_jsonl(tmp_path / "prompts.jsonl")}
    attacked = [Record.from_json(r) for r in read_jsonl(tmp_path / "records.jsonl")
                if r["condition"] == "pgd_caption"]
    assert len(attacked) == 3
    for record in attacked:
        assert record.audit.distractor.startswith("The picture seems to describe a ")
        assert record.audit.distractor in prompts[record.audit.prompt]
        assert record.audit.meta["lure"] == record.lure


@pytest.mark.parametrize("audit, problem", [
    ({"prompt": "0" * 64, "distractor": "", "meta": {}, "extra": 1}, "Additional properties"),
    ({"prompt": "not a digest", "distractor": "", "meta": {}}, "does not match"),
    ({"prompt": "0" * 64, "distractor": "", "meta": {"k": {"deep": 1}}}, "is not valid"),
    ({"prompt": "0" * 64, "distractor": "", "meta": {"k": "x" * 201}}, "is not valid"),
    ({"prompt": "0" * 64, "distractor": "x" * 2001, "meta": {}}, "is too long"),
])
def test_the_submission_schema_bounds_a_record_audit(audit, problem):
    row = {"task": "t", "condition": "clean", "sample_id": "s", "probs": [0.5, 0.5],
           "prediction": 0, "gold": 0, "correct": True, "lure": None}
    assert schema_problems(row, "record") == []
    good = {**row, "audit": {"prompt": "0" * 64, "distractor": "a caption",
                             "meta": {"subject": "x", "grade": 3, "names": ["a", 1, None]}}}
    assert schema_problems(good, "record") == []
    problems = schema_problems({**row, "audit": audit}, "record")
    assert problems and problem in problems[0]


def compose_cfg(overrides):
    with initialize_config_module("mibench.conf", version_base="1.3"):
        return compose("config", overrides=overrides)


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    """A small run of the embedded toy: image-heavy under misleading text."""
    out = tmp_path_factory.mktemp("toy-run")
    run(compose_cfg(["task=toy_image_heavy", "task.n=8", "perturbation=misleading_text",
                     f"out_dir={out}", "progress=false"]))
    return out


def test_a_run_with_audits_is_a_valid_submission(toy_run, tmp_path, capsys):
    assert submit_main([str(toy_run), "--out", str(tmp_path)]) == 0, capsys.readouterr().err
    with gzip.open(tmp_path / "records.jsonl.gz", "rt") as f:
        rows = [json.loads(line) for line in f]
    assert len(rows) == 16 and all(len(r["audit"]["prompt"]) == 64 for r in rows)


def test_show_prints_a_sample_under_every_condition_and_saves_its_image(toy_run, tmp_path,
                                                                        capsys):
    sample_id = "shapes-test-image_heavy-1"
    assert show_main([str(toy_run), sample_id, "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"sample '{sample_id}' of task 'toy_image_heavy' (image_heavy)" in out
    assert out.index("== clean ==") < out.index("== misleading_text ==")
    assert "What shape is in the image?" in out or "What colour is the shape?" in out
    assert "added text: 'The picture seems to describe a " in out
    assert "lure" in out and "answer:" in out and "WARNING" not in out
    records = {(r["condition"], r["sample_id"]): r for r in read_jsonl(toy_run / "records.jsonl")}
    for condition in ("clean", "misleading_text"):
        probs = records[(condition, sample_id)]["probs"]
        assert f"{max(probs):6.3f}" in out
        png = tmp_path / f"toy_image_heavy__{condition}__{sample_id}.png"
        assert f"image: {png} (the sample's own image, 32x32)" in out
    from mibench.tasks.shapes import make_sample

    shown = np.asarray(Image.open(tmp_path / f"toy_image_heavy__clean__{sample_id}.png"))
    assert np.array_equal(shown, np.asarray(make_sample("image_heavy", 1).image))


def test_show_of_a_switched_image_names_the_donor_and_saves_its_image(tmp_path, capsys):
    out_dir = tmp_path / "run"
    run(compose_cfg(["task=toy_text_heavy", "task.n=3", "perturbation=switched_image",
                     "perturbation.donors.n=20", f"out_dir={out_dir}", "progress=false"]))
    records = {r["condition"]: r for r in read_jsonl(out_dir / "records.jsonl")
               if r["sample_id"] == "shapes-test-text_heavy-0"}
    donor = records["switched_image"]["audit"]["meta"]["donor"]
    assert show_main([str(out_dir), "shapes-test-text_heavy-0", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"switched: the image of sample {donor!r}" in out and "image: none" in out
    from mibench.tasks.shapes import make_sample

    index = int(donor.rsplit("-", 1)[1])  # the donors: the shapes world under seed 1
    png = tmp_path / "toy_text_heavy__switched_image__shapes-test-text_heavy-0.png"
    assert np.array_equal(np.asarray(Image.open(png)),
                          np.asarray(make_sample("image_heavy", index, seed=1).image))


def test_show_names_what_exists_when_the_sample_does_not(toy_run, capsys):
    assert show_main([str(toy_run), "shapes-test-image_heavy-99"]) == 1
    err = capsys.readouterr().err
    assert "no sample 'shapes-test-image_heavy-99' in this run (8 ids, e.g." in err


def test_show_names_where_a_dataset_image_was_read(tmp_path):
    """A dataset's image (an ImageRef) is named by its file or row; a switched one also by
    its donor."""
    from mibench.images import ImageRef
    from mibench.records import Sample
    from mibench.show import _image_source

    png = tmp_path / "cat.png"
    Image.new("RGB", (4, 4)).save(png)
    ref = ImageRef(fetch=lambda: png, where="task 'x': row 5 of cats.parquet")
    own = Sample(id="s", question="What is it?", options=("cat", "dog"), answer=0,
                 category="image_heavy", image=ref)
    donated = dataclasses.replace(own, image=ImageRef(fetch=lambda: png, where="row 9"),
                                  meta={"donor": "t"})
    assert _image_source(own, own) == "the sample's own image, from task 'x': row 5 of cats.parquet"
    assert _image_source(own, donated) == "switched: the image of sample 't', from row 9"
    assert _image_source(own, dataclasses.replace(own, image=None)) == "no image"


def test_show_of_a_generated_answer_prints_the_responses_and_what_was_read():
    """scorer=generate: the responses, no distribution where none was given, and an answer
    that names no option said as such."""
    from mibench.records import Generated
    from mibench.show import Shown, format_shown

    audit = Audit(prompt=prompt_digest("Q?"), meta={"attribute": "shape"})
    read = Record(task="t", condition="clean", sample_id="s", probs=None, prediction=1, gold=1,
                  audit=audit, generated=Generated(("B",), matched="B", options=3))
    unread = dataclasses.replace(read, condition="misleading_text", prediction=None,
                                 generated=Generated(("um", "no idea"), failure="no_letter",
                                                     options=3))
    out = format_shown([Shown(read), Shown(unread)], {audit.prompt: "Q?"})
    assert "response 1: 'B'" in out and "answer: B (correct)" in out
    assert "response 2: 'no idea'" in out and "answer: none read (no_letter; wrong)" in out
    assert out.count("options: no distribution (generated without log-probabilities)") == 2
