"""Malformed data gets a clear error naming the dataset, row and id; odd image modes are
converted by scaling, never clipping; images are decoded only when used.

Every case goes through a study task's real loader (its YAML, data_root, datasets, PIL):
nothing here mocks the loader.
"""

import io
import re
from pathlib import Path

import datasets
import numpy as np
import pytest
from bad_data import CASES, MMBENCH_IDS, Case, encoded, mmbench, noise, truncated_jpeg
from conftest import ListTask, text_heavy_samples
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image

import mibench.conf
from mibench.errors import MibenchError
from mibench.images import MAX_PIXELS, ImageDataError, ImageRef, decode
from mibench.records import Sample
from mibench.runner import run_benchmark

TASK_CONF = Path(mibench.conf.__file__).parent / "task"


def task(name: str, data_root: Path, bad_rows: str = "error"):
    cfg = OmegaConf.load(TASK_CONF / f"{name}.yaml")
    cfg.data_dir = str(data_root)
    cfg.bad_rows = bad_rows
    return instantiate(cfg)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_each_malformed_copy_gets_an_error_naming_task_row_and_id(case: Case, tmp_path):
    case.write(tmp_path)
    t = task(case.task, tmp_path)
    with pytest.raises(MibenchError) as err:
        samples = t.samples()
        assert case.when == "decode", "the bad row was accepted"
        for s in samples:
            s.image.convert("RGB")
    message = str(err.value)
    where = (f"task {case.task!r}: row {case.row} of {tmp_path / case.task} split "
             f"{t.split!r} (id {case.id!r})")
    assert message.startswith(where), message
    assert re.search(case.error, message), message
    assert "\n" not in message
    if case.when == "load":
        assert message.endswith("set task.bad_rows=skip (grid.tasks."
                                f"{case.task}.bad_rows=skip inside a benchmark)")


# a column of the wrong type makes every row bad: that copy does not fit, even with skip
WHOLE_COLUMN = {"choices-stored-as-a-string", "bytes-question", "numeric-option-cell"}


@pytest.mark.parametrize("case", [c for c in CASES if c.when == "load"],
                         ids=[c.name for c in CASES if c.when == "load"])
def test_with_bad_rows_skip_the_row_is_left_out_and_listed(case: Case, tmp_path):
    case.write(tmp_path)
    t = task(case.task, tmp_path, bad_rows="skip")
    if case.name in WHOLE_COLUMN:
        with pytest.raises(MibenchError, match=r"every row of .* is malformed; the first: "):
            t.samples()
        return
    samples = t.samples()
    assert case.id not in {s.id for s in samples} and len(samples) >= 2
    assert t.describe()["skipped_rows"] == [case.id]


def test_mmlu_leaves_out_its_rows_with_repeated_options_by_default(tmp_path):
    """MMLU's test split has rows whose options repeat; its YAML says bad_rows: skip."""
    duplicate = next(c for c in CASES if c.name == "duplicate-options")
    duplicate.write(tmp_path)
    cfg = OmegaConf.load(TASK_CONF / "mmlu.yaml")
    cfg.data_dir = str(tmp_path)
    t = instantiate(cfg)
    assert [s.id for s in t.samples()] == ["test:0", "test:1"]
    assert t.describe()["skipped_rows"] == ["test:2"]


def test_a_bad_image_met_while_scoring_keeps_what_was_computed(tiny_adapter, tmp_path):
    """A JPEG cut short passes the header check and fails when its batch is scored: that task
    is reported, the batches before it and every other task are kept."""
    long_last = ["What colour?", "How many?", "Which one of the many things is in the image?"]
    mmbench([encoded(noise(0)), encoded(noise(1)), truncated_jpeg()],
            question=(long_last, datasets.Value("string")))(tmp_path)  # scored last
    tasks = {"mmbench": task("mmbench", tmp_path),
             "th": ListTask("th", "text_heavy", text_heavy_samples(3))}
    result = run_benchmark(tiny_adapter, tasks, {}, tmp_path / "run", batch_size=1,
                           progress=False)
    (failure,) = result.failures
    assert (failure.task, failure.condition) == ("mmbench", None)
    assert "row 2 of" in failure.error and "(id '102')" in failure.error
    assert set(result.metrics) == {"th"}
    kept = (tmp_path / "run" / "records.jsonl").read_text()
    assert kept.count('"task": "mmbench"') == 2  # the two readable rows were scored first
    assert kept.count('"task": "th"') == 3


# -- image modes -----------------------------------------------------------------------------
def gradient16() -> Image.Image:
    image = Image.fromarray((np.arange(256, dtype=np.uint16) * 257).reshape(16, 16))
    assert image.mode == "I;16"
    return image


def tiff(array: np.ndarray, mode: str) -> bytes:
    image = Image.fromarray(array)
    assert image.mode == mode
    return encoded(image, "TIFF")


def palette_with_transparency() -> bytes:
    image = Image.new("P", (4, 4), 1)
    image.putpalette([0, 0, 0, 200, 10, 10] + [0, 0, 0] * 254)
    image.putpixel((0, 0), 0)
    return encoded(image, "PNG", transparency=0)


def la_image() -> bytes:
    image = Image.new("LA", (4, 4), (40, 255))
    image.putpixel((0, 0), (40, 0))  # fully transparent: shows the white behind it
    return encoded(image, "PNG")


RAMP = np.arange(256, dtype=np.uint8).reshape(16, 16)
MODES = {
    # mode of the file: (encoded bytes, expected gray/RGB pixels)
    "I;16 PNG (16-bit gray)": (encoded(gradient16()), np.stack([RAMP] * 3, -1)),
    "I TIFF, 0..65535": (tiff((RAMP.astype(np.int32) * 257), "I"), np.stack([RAMP] * 3, -1)),
    "F TIFF, 0..1": (tiff(RAMP.astype(np.float32) / 255, "F"), np.stack([RAMP] * 3, -1)),
    "1 PNG (bilevel)": (encoded(Image.fromarray(RAMP >= 128)),
                        np.stack([np.where(RAMP >= 128, 255, 0)] * 3, -1)),
}


@pytest.mark.parametrize("mode", MODES)
def test_deep_and_odd_modes_are_scaled_never_clipped(mode, tmp_path):
    data, expected = MODES[mode]
    mmbench([encoded(noise(0)), data, encoded(noise(2))])(tmp_path)
    sample = task("mmbench", tmp_path).samples()[1]
    pixels = np.asarray(sample.image.convert("RGB"))
    np.testing.assert_array_equal(pixels, expected)


def test_a_16_bit_png_is_not_white():
    """The issue's case: PIL's own convert("RGB") clips 16-bit values at 255 (99% white)."""
    clipped = np.asarray(gradient16().convert("RGB"))
    assert (clipped == 255).mean() > 0.99
    assert np.asarray(decode(encoded(gradient16()))).mean() == pytest.approx(127.5, abs=0.5)


@pytest.mark.parametrize("data, corner, rest", [
    (la_image(), (255, 255, 255), (40, 40, 40)),
    (palette_with_transparency(), (255, 255, 255), (200, 10, 10)),
    (encoded(Image.new("RGBA", (4, 4), (0, 0, 255, 255)).crop((0, 0, 4, 4)), "PNG"),
     (0, 0, 255), (0, 0, 255)),
])
def test_transparency_is_composited_on_white(data, corner, rest):
    pixels = np.asarray(decode(data))
    assert tuple(pixels[0, 0]) == corner and tuple(pixels[3, 3]) == rest


def test_cmyk_and_ordinary_modes_give_the_pixels_they_always_gave(tmp_path):
    """RGB, L, P and CMYK decode exactly as `datasets` + `convert("RGB")` did before images
    were decoded on demand: per-sample results do not move."""
    images = [encoded(noise(0), "JPEG", quality=90), encoded(noise(1, mode="L")),
              encoded(noise(2, mode="P")), encoded(noise(3, mode="CMYK"), "JPEG")]
    for data in images:
        old = datasets.Image().decode_example({"bytes": data, "path": None}).convert("RGB")
        np.testing.assert_array_equal(np.asarray(decode(data)), np.asarray(old))
    mmbench(images[:3])(tmp_path)
    for sample, data in zip(task("mmbench", tmp_path).samples(), images):
        old = Image.open(io.BytesIO(data)).convert("RGB")
        np.testing.assert_array_equal(np.asarray(sample.image.convert("RGB")), np.asarray(old))


def test_oversize_jpegs_are_read_reduced_within_the_limit():
    """The limit is stated (2**26 pixels, below PIL's decompression-bomb warning at 89.5 M);
    a JPEG over it is decoded at a reduced scale, never at full size."""
    assert MAX_PIXELS == 2**26 < Image.MAX_IMAGE_PIXELS
    data = encoded(noise(5, size=200), "JPEG")
    reduced = ImageRef(lambda: data, "test", max_pixels=50 * 50).load()
    assert reduced.width * reduced.height <= 50 * 50 and reduced.width >= 35
    png = encoded(noise(5, size=200))
    with pytest.raises(ImageDataError, match="over the limit of 2,500"):
        ImageRef(lambda: png, "row 3 (id 'x')", max_pixels=50 * 50).load()


# -- decoded on demand -----------------------------------------------------------------------
def test_samples_hold_references_not_pixels_and_each_use_decodes_afresh(tmp_path):
    mmbench()(tmp_path)
    samples = task("mmbench", tmp_path).samples()
    assert [s.id for s in samples] == [str(i) for i in MMBENCH_IDS]
    ref = samples[0].image
    assert isinstance(ref, ImageRef)
    first, second = ref.convert("RGB"), ref.convert("RGB")
    assert first is not second and first.tobytes() == second.tobytes()
    assert ref.size == (24, 24)
    same = Sample(id="x", question="q?", options=("a", "b"), answer=0, category="vqa",
                  image=ref)
    assert same.image is ref  # untouched images keep their identity
