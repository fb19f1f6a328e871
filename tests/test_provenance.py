"""Results are tied to the exact weights: a cached digest of the checkpoint's files, a rerun
after the weights change refused (never the old numbers), `submit` refusing a run whose
weights on disk changed, and no local path in what leaves the machine."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import huggingface_hub.constants
import pytest
from safetensors.torch import load_file, save_file
from test_submission import benchmark_run

from mibench.digests import cache_dir, checkpoint_digest, file_sha256, folder_digest
from mibench.models.hf import HFModelAdapter
from mibench.results.submission import SubmissionError, build_submission, write_submission
from mibench.store import ResumeMismatchError


def change_weights(checkpoint: Path) -> None:
    """Other weights under the same path (what a re-export or a fine-tune in place does)."""
    file = checkpoint / "model.safetensors"
    weights = load_file(str(file))
    save_file({k: v * 0.5 for k, v in weights.items()}, str(file), metadata={"format": "pt"})


@pytest.fixture
def checkpoint(tiny_checkpoint, tmp_path) -> Path:
    """A private copy of the tiny checkpoint, free to be changed."""
    return Path(shutil.copytree(tiny_checkpoint, tmp_path / "ckpt"))


def test_the_tests_never_write_into_the_users_cache():
    assert cache_dir() == Path(os.environ["MIBENCH_CACHE_DIR"])
    assert "mibench-test-cache-" in str(cache_dir())


def test_file_digest_is_cached_by_identity_and_redone_when_the_file_changes(tmp_path):
    file = tmp_path / "weights.bin"
    file.write_bytes(b"a" * 1000)
    first = file_sha256(file)
    assert first == hashlib.sha256(b"a" * 1000).hexdigest()
    entries = list((cache_dir() / "file-sha256").glob("*.json"))
    cached = [json.loads(p.read_text()) for p in entries]
    assert {"path": str(file.resolve()), "sha256": first}.items() <= next(
        c for c in cached if c["path"] == str(file.resolve())).items()
    file.write_bytes(b"b" * 1000)  # same size, new mtime: hashed again, not served stale
    assert file_sha256(file) == hashlib.sha256(b"b" * 1000).hexdigest()


def test_a_hub_snapshot_gives_the_digest_of_its_files_for_free(checkpoint, tmp_path,
                                                               monkeypatch):
    """A fake hub cache laid out as huggingface_hub lays it out: LFS blobs named by their
    sha256, other files by their git blob id, snapshot files as symlinks. Loading by hub id
    records the same digest as the plain folder, without hashing the LFS blobs."""
    repo, commit = tmp_path / "hub" / "models--someone--tiny", "c0ffee" + "0" * 34
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "blobs").mkdir()
    (repo / "snapshots" / commit).mkdir(parents=True)
    lfs = []
    for file in checkpoint.iterdir():
        data = file.read_bytes()
        if file.suffix == ".safetensors":
            name = hashlib.sha256(data).hexdigest()
            lfs.append(name)
        else:
            name = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        (repo / "blobs" / name).write_bytes(data)
        (repo / "snapshots" / commit / file.name).symlink_to(Path("../../blobs") / name)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    shutil.rmtree(cache_dir() / "file-sha256", ignore_errors=True)
    adapter = HFModelAdapter.from_pretrained("someone/tiny", device="cpu")
    assert adapter.provenance["weights_sha256"] == folder_digest(checkpoint)
    assert checkpoint_digest("someone/tiny", commit) == folder_digest(checkpoint)
    hashed = {json.loads(p.read_text())["path"]
              for p in (cache_dir() / "file-sha256").glob("*.json")}
    assert lfs and not any(name in path for name in lfs for path in hashed)


def test_the_digest_covers_weights_config_and_processor_but_not_the_card(checkpoint):
    before = folder_digest(checkpoint)
    (checkpoint / "README.md").write_text("# a model card changes no number\n")
    (checkpoint / "training_summary.json").write_text("{}\n")
    assert folder_digest(checkpoint) == before
    tokenizer = checkpoint / "tokenizer_config.json"
    tokenizer.write_text(tokenizer.read_text().replace("}", ', "x": 1}', 1))
    assert folder_digest(checkpoint) != before


def test_rerun_after_the_weights_changed_is_refused_never_stale(checkpoint, tmp_path):
    out = benchmark_run(str(checkpoint), tmp_path / "run")
    records = (out / "records.jsonl").read_bytes()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["scoring"] == {"batch_size": 32, "processes": 1}  # recorded, not hashed
    assert metrics["model"]["weights_sha256"] == folder_digest(checkpoint)
    recorded = metrics["model"]["weights_sha256"]
    change_weights(checkpoint)
    with pytest.raises(ResumeMismatchError) as err:
        benchmark_run(str(checkpoint), out)
    message = str(err.value)
    assert f"model.weights_sha256: \"{recorded}\" -> \"{folder_digest(checkpoint)}\"" in message
    assert "The checkpoint's files changed" in message and "new output directory" in message
    assert (out / "records.jsonl").read_bytes() == records  # nothing mixed in
    fresh = benchmark_run(str(checkpoint), tmp_path / "fresh")  # a new directory: new numbers
    assert (fresh / "records.jsonl").read_bytes() != records


def test_batch_size_is_recorded_but_changes_neither_numbers_nor_the_fingerprint(checkpoint,
                                                                                tmp_path):
    out = benchmark_run(str(checkpoint), tmp_path / "run")
    again = benchmark_run(str(checkpoint), out, "batch_size=4")  # resumes: same fingerprint
    assert json.loads((again / "metrics.json").read_text())["scoring"]["batch_size"] == 4


def test_submit_refuses_a_run_whose_weights_changed_on_disk(checkpoint, tmp_path):
    out = benchmark_run(str(checkpoint), tmp_path / "run")
    build_submission(out)  # fine while the weights are the ones measured
    change_weights(checkpoint)
    with pytest.raises(SubmissionError) as err:
        build_submission(out)
    assert "changed since the run scored them" in str(err.value)
    assert "these records are of the old weights" in str(err.value)
    shutil.rmtree(checkpoint)
    with pytest.raises(SubmissionError, match="is gone, so its weights cannot be checked"):
        build_submission(out)


def test_a_submission_names_no_local_path(checkpoint, tmp_path):
    out = benchmark_run(str(checkpoint), tmp_path / "run")
    document, rows = build_submission(out)
    text = (write_submission(document, rows, tmp_path / "sub")).read_text()
    assert str(checkpoint) not in text and str(tmp_path) not in text
    assert document["model"]["path"] is None and document["model"]["info"]["path"] is None
    assert document["model"]["weights_sha256"] == folder_digest(checkpoint)
    assert document["model"]["info"]["weights_sha256"] == folder_digest(checkpoint)
    assert document["config"]["out_dir"] is None
