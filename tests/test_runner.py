import dataclasses
import json
import re

import numpy as np
import pytest
from conftest import ListTask, image_heavy_samples, text_heavy_samples

from mibench.perturbations.base import Perturbation
from mibench.perturbations.image import BlankImage
from mibench.perturbations.text import MisleadingText, UnrelatedText
from mibench.runner import run_benchmark
from mibench.store import ResumeMismatchError


def grid():
    tasks = {"ih": ListTask("ih", "image_heavy", image_heavy_samples(7)),
             "th": ListTask("th", "text_heavy", text_heavy_samples(6))}
    conditions = {"misleading_text": MisleadingText(),
                  "unrelated_text": UnrelatedText(),
                  "black_image": BlankImage("black_image", size=(32, 32))}
    return tasks, conditions


def read_records(out_dir):
    """Merged records, or the shards a failed run left behind."""
    files = [out_dir / "records.jsonl", *sorted((out_dir / "shards").glob("*.jsonl"))]
    rows = [json.loads(line) for f in files if f.exists() for line in f.read_text().splitlines()]
    return {(r["task"], r["condition"], r["sample_id"]): r for r in rows}


def test_each_condition_runs_only_where_its_modality_is_irrelevant(tiny_adapter, tmp_path):
    tasks, conditions = grid()
    result = run_benchmark(tiny_adapter, tasks, conditions, tmp_path, batch_size=4,
                           progress=False)
    assert result.conditions == {"ih": ["clean", "misleading_text", "unrelated_text"],
                                 "th": ["clean", "black_image"]}
    assert len(read_records(tmp_path)) == 7 * 3 + 6 * 2


def test_records_do_not_depend_on_batch_size(tiny_adapter, tmp_path):
    tasks, conditions = grid()
    runs = {}
    for batch_size in (1, 3, 16):
        out = tmp_path / f"bs{batch_size}"
        run_benchmark(tiny_adapter, tasks, conditions, out, batch_size=batch_size,
                      progress=False)
        runs[batch_size] = read_records(out)
    for key, ref in runs[1].items():
        for batch_size in (3, 16):
            other = runs[batch_size][key]
            np.testing.assert_allclose(other["probs"], ref["probs"], atol=1e-4)
            assert other["prediction"] == ref["prediction"]


def test_rerun_resumes_without_recomputing(tiny_adapter, tmp_path):
    tasks, conditions = grid()
    first = run_benchmark(tiny_adapter, tasks, conditions, tmp_path, seed=1, progress=False,
                          fingerprint={"seed": 1})
    merged = tmp_path / "records.jsonl"
    lines = merged.read_text().splitlines()
    # as a crash leaves it: no merged file, a shard with 10 records and a line cut short
    merged.unlink()
    (tmp_path / "shards" / "rank-0.jsonl").write_text("\n".join(lines[:10]) + "\n" + lines[10][:15])
    second = run_benchmark(tiny_adapter, tasks, conditions, tmp_path, seed=1, progress=False,
                           fingerprint={"seed": 1})
    assert second.metrics == first.metrics
    assert merged.read_text().splitlines() == lines
    assert not list((tmp_path / "shards").glob("*.jsonl"))
    with pytest.raises(ResumeMismatchError, match="changed: seed"):
        run_benchmark(tiny_adapter, tasks, conditions, tmp_path, seed=2, progress=False,
                      fingerprint={"seed": 2})


class TouchesQuestion(Perturbation):
    """Claims to touch the image but rewrites the question: the runner must refuse it."""

    name, touches = "cheat", "image"

    def apply(self, sample, rng):
        return dataclasses.replace(sample, question="changed", image=None)


class Explodes(Perturbation):
    name, touches = "explodes", "image"

    def apply(self, sample, rng):
        raise OSError("corrupt image file")


@pytest.mark.parametrize("perturbation, message", [
    (TouchesQuestion(), r"'cheat' \(touches image\) changed its text of sample 'th-0'"),
    (Explodes(), r"'explodes' failed on sample 'th-0' of task 'th': corrupt image file"),
])
def test_broken_perturbations_name_the_sample_and_keep_clean_records(
        tiny_adapter, tmp_path, perturbation, message):
    tasks = {"th": ListTask("th", "text_heavy", text_heavy_samples(3))}
    result = run_benchmark(tiny_adapter, tasks, {perturbation.name: perturbation}, tmp_path,
                           progress=False)
    (failure,) = result.failures
    assert (failure.task, failure.condition) == ("th", perturbation.name)
    assert re.search(message, failure.error)
    assert len(read_records(tmp_path)) == 3  # the clean condition was kept
    assert list(result.metrics["th"]) == ["clean"]


class ExplodesOnText(Perturbation):
    name, touches = "explodes_on_text", "text"

    def apply(self, sample, rng):
        raise ValueError("no facts for this label")


def test_a_failing_text_perturbation_keeps_the_conditions_scored_with_clean(tiny_adapter,
                                                                             tmp_path):
    """Text-only conditions are scored with clean, batch by batch; one that fails to build
    is reported by name while clean and the other conditions are scored and stored."""
    tasks = {"ih": ListTask("ih", "image_heavy", image_heavy_samples(3))}
    conditions = {"unrelated_text": UnrelatedText(), "explodes_on_text": ExplodesOnText()}
    result = run_benchmark(tiny_adapter, tasks, conditions, tmp_path, progress=False)
    (failure,) = result.failures
    assert failure.condition == "explodes_on_text"
    assert "'explodes_on_text' failed on sample 'ih-0'" in failure.error
    stored = {key[1] for key in read_records(tmp_path)}
    assert stored == {"clean", "unrelated_text"}
    assert list(result.metrics["ih"]) == ["clean", "unrelated_text"]


def test_perturbation_that_no_task_allows_is_refused(tiny_adapter, tmp_path):
    tasks = {"ih": ListTask("ih", "image_heavy", image_heavy_samples(2))}
    with pytest.raises(ValueError, match="touches the image modality, which every task"):
        run_benchmark(tiny_adapter, tasks, {"black_image": BlankImage("black_image")},
                      tmp_path, progress=False)


def test_text_conditions_reuse_the_image_encoding_of_clean(tiny_adapter, tmp_path):
    """Clean and the conditions that change only text share a batch plan and are scored
    batch by batch, so each batch's images are encoded once."""
    tasks, conditions = grid()
    del conditions["black_image"]
    before = tiny_adapter.image_feature_reuses
    run_benchmark(tiny_adapter, {"ih": tasks["ih"]}, conditions, tmp_path, batch_size=3,
                  progress=False)
    batches = 3  # 7 samples in batches of 3
    assert tiny_adapter.image_feature_reuses - before == batches * len(conditions)
    assert tiny_adapter._image_features is None  # not kept past the plan (weights may change)


def test_a_directory_begun_under_another_batch_plan_is_refused(tiny_adapter, tmp_path):
    tasks, conditions = grid()
    (tmp_path / "fingerprint.json").write_text(json.dumps({"seed": 1}))  # no plan version
    with pytest.raises(ResumeMismatchError, match="batch_plan"):
        run_benchmark(tiny_adapter, tasks, conditions, tmp_path, seed=1, progress=False,
                      fingerprint={"seed": 1})
