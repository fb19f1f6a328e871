"""Shared fixtures: tiny real objects (a random tiny LLaVA saved to disk, in-memory tasks)."""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_SILENT", "true")
# The suite's own cache (digests), never the user's: set before mibench is imported.
os.environ["MIBENCH_CACHE_DIR"] = tempfile.mkdtemp(prefix="mibench-test-cache-")
atexit.register(shutil.rmtree, os.environ["MIBENCH_CACHE_DIR"], ignore_errors=True)
# The tests never write into the user's Hugging Face caches: a throwaway HF_HOME per session,
# set before `datasets` is imported (it reads these once, at import).
assert "datasets" not in sys.modules, "datasets was imported before tests/conftest.py"
_HF_HOME = tempfile.mkdtemp(prefix="mibench-tests-hf-")
os.environ["HF_HOME"] = _HF_HOME
os.environ["HF_DATASETS_CACHE"] = os.path.join(_HF_HOME, "datasets")
atexit.register(shutil.rmtree, _HF_HOME, ignore_errors=True)

from families_builders import FAMILIES, Family, load, missing_requirement  # noqa: E402

# The reference study's released code, as fixture files in its layout (mibench.study_release
# reads it from here; tests never download it). Stimuli read from it are unverified
# (grid.study_release.verify=false) wherever a test uses them.
sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "scripts"))
from study_fixtures import write_release  # noqa: E402

STUDY_CODE = tempfile.mkdtemp(prefix="mibench-study-code-")
atexit.register(shutil.rmtree, STUDY_CODE, ignore_errors=True)
write_release(Path(STUDY_CODE))
os.environ["MIBENCH_STUDY_CODE"] = STUDY_CODE

from mibench.cli import asset_path  # noqa: E402
from mibench.models import toy_builder  # noqa: E402
from mibench.models.hf import HFModelAdapter  # noqa: E402
from mibench.models.local_server import LocalServer, ServerStartError, served  # noqa: E402
from mibench.prompts import ANSWER_INSTRUCTION  # noqa: E402
from mibench.records import OPTION_LETTERS, Sample  # noqa: E402
from mibench.tasks.base import Task  # noqa: E402
from mibench.tasks.shapes import shapes_vocabulary  # noqa: E402

# The tests' own words, and the toy tasks' (runs of the tiny checkpoint on them are checked
# for unknown words like any other run).
WORDS = sorted(set(toy_builder.words_of(
    ["USER: ASSISTANT:", ANSWER_INSTRUCTION, " ".join(OPTION_LETTERS),
     "what shape is in the image ? what colour is it ? which letter ? x y",
     "square circle triangle red green blue anna has a box ."]
)) | set(shapes_vocabulary()))


class ListTask(Task):
    """A task over a fixed list of samples."""

    def __init__(self, name: str, category: str, samples: list[Sample]) -> None:
        self.name, self.category, self._samples = name, category, samples

    def samples(self) -> list[Sample]:
        return list(self._samples)


def make_image(seed: int, size: int = 32) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), "RGB")


def image_heavy_samples(n: int) -> list[Sample]:
    shapes = ("square", "circle", "triangle")
    return [Sample(id=f"ih-{i}", question="what shape is in the image ?" + " ?" * (i % 4),
                   options=shapes[: 2 + i % 2], answer=i % 2, category="image_heavy",
                   image=make_image(i)) for i in range(n)]


def text_heavy_samples(n: int) -> list[Sample]:
    colours = ("red", "green", "blue")
    return [Sample(id=f"th-{i}", question="anna has a box ." * (1 + i % 3) + " what colour ?",
                   options=colours, answer=i % 3, category="text_heavy") for i in range(n)]


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: one thread is fastest, and far faster on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> str:
    """A random tiny LLaVA with a real processor, saved like a hub checkpoint."""
    path = tmp_path_factory.mktemp("tiny-llava")
    processor = toy_builder.build_processor(WORDS)
    model = toy_builder.build_model(processor, seed=0)
    processor.save_pretrained(path)
    model.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def tiny_adapter(tiny_checkpoint) -> HFModelAdapter:
    return HFModelAdapter.from_pretrained(tiny_checkpoint, name="tiny", device="cpu")


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request, tmp_path_factory) -> tuple[Family, HFModelAdapter]:
    """Each model family's tiny checkpoint, loaded afresh for each test module (a module may
    change its weights); skipped where the family's requirements are missing."""
    reason = missing_requirement(request.param)
    if reason:
        pytest.skip(reason)
    return load(request.param, tmp_path_factory.mktemp(f"family-{request.param}"))


@pytest.fixture(scope="session")
def toy_server(tmp_path_factory) -> LocalServer:
    """`transformers serve` with the embedded toy checkpoint on 127.0.0.1, for the session;
    skipped (with the server's log) only if it cannot start here."""
    log = tmp_path_factory.mktemp("toy-server") / "server.log"
    try:
        with served(asset_path("toy_llava"), log) as server:
            yield server
    except (ServerStartError, ImportError) as exc:
        pytest.skip(f"transformers serve could not start: {exc}")
