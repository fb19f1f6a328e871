"""A corpus of malformed dataset copies: real files in a study task's layout, each with the
error the real loader must give.

Every case writes `<root>/<task>/...` with three rows, one of them bad (`row`), so the error
can be checked to name the task, the row and its id, and says what is wrong (`error`, a
regex). `when` says where it must be caught: "load" (building the samples) or "decode"
(reading the image's pixels, e.g. a JPEG cut short, whose header is fine).
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Case:
    name: str
    task: str
    write: Callable[[Path], None]
    row: int
    id: str
    error: str
    when: str = "load"


def encoded(image: Image.Image, fmt: str = "PNG", **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def noise(seed: int, size: int = 24, mode: str = "RGB") -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB").convert(mode)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (a decompression bomb's first bytes)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0"))
            + chunk(b"IEND", b""))


def write_parquet(columns: dict, path: Path) -> None:
    """{column: (values, feature)} as one parquet file, typed by the features given."""
    ds = datasets.Dataset.from_dict({k: v for k, (v, _) in columns.items()},
                                    features=datasets.Features(
                                        {k: f for k, (_, f) in columns.items()}))
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.to_parquet(str(path))


# -- text-heavy: cais/mmlu columns, <root>/mmlu/test.parquet ---------------------------------
def mmlu(**changes) -> Callable[[Path], None]:
    """Three good MMLU rows with `changes` ({column: (values, feature)}) applied."""
    def write(root: Path) -> None:
        columns = {
            "question": (["What is 2 + 3?", "Who wrote Hamlet?", "What is H2O?"],
                         datasets.Value("string")),
            "subject": (["math", "history", "chemistry"], datasets.Value("string")),
            "choices": ([["4", "5", "6", "7"], ["Shakespeare", "Dickens", "Austen", "Joyce"],
                         ["salt", "water", "sugar", "air"]],
                        datasets.Sequence(datasets.Value("string"))),
            "answer": ([1, 0, 1], datasets.Value("int64")),
            **changes,
        }
        write_parquet(columns, root / "mmlu" / "test.parquet")
    return write


STRING = datasets.Value("string")
STRINGS = datasets.Sequence(datasets.Value("string"))

# -- VQA: lmms-lab/MMBench columns, <root>/mmbench/dev.parquet -------------------------------
MMBENCH_IDS = [100, 101, 102]


def mmbench(images: list[bytes | None] | None = None, **changes) -> Callable[[Path], None]:
    """Three MMBench rows (index 100..102) whose images are the given encoded bytes."""
    def write(root: Path) -> None:
        cells = images or [encoded(noise(i)) for i in range(3)]
        columns = {
            "index": (MMBENCH_IDS, datasets.Value("int64")),
            "question": (["What colour?", "How many?", "Which one?"], STRING),
            "hint": (["nan", "nan", "nan"], STRING),
            "A": (["red", "one", "left"], STRING), "B": (["blue", "two", "right"], STRING),
            "C": (["green", "three", "nan"], STRING), "D": (["nan", "nan", "nan"], STRING),
            "answer": (["A", "B", "A"], STRING),
            "category": (["x", "y", "z"], STRING),
            "image": ([None if c is None else {"bytes": c, "path": None} for c in cells],
                      datasets.Image()),
            **changes,
        }
        write_parquet(columns, root / "mmbench" / "dev.parquet")
    return write


def with_bad_image(data: bytes) -> Callable[[Path], None]:
    return mmbench([encoded(noise(0)), data, encoded(noise(2))])


def truncated_jpeg() -> bytes:
    data = encoded(noise(1, size=64), "JPEG", quality=95)
    return data[: len(data) // 2]


def oversize_png() -> bytes:
    """8200 x 8200 = 67.2 million pixels, just over the 2**26 limit (a small file: zeros)."""
    return encoded(Image.new("L", (8200, 8200)), "PNG")


# -- image folder: <root>/caltech101/test/<class>/<image> ------------------------------------
def caltech_folder_with_empty_file(root: Path) -> None:
    for k, cls in enumerate(["accordion", "anchor", "panda"]):
        folder = root / "caltech101" / "test" / cls
        folder.mkdir(parents=True, exist_ok=True)
        if cls == "anchor":
            (folder / "image_0001.jpg").write_bytes(b"")
        else:
            noise(k).save(folder / "image_0001.jpg")
    for k in range(6):  # enough classes for six options
        folder = root / "caltech101" / "test" / f"class_{k}"
        folder.mkdir(parents=True, exist_ok=True)
        noise(10 + k).save(folder / "image_0001.jpg")


CASES = [
    Case("choices-stored-as-a-string", "mmlu", mmlu(choices=(["4567", "abcd", "wxyz"], STRING)),
         0, "test:0", r"choices column 'choices' must be a list of strings, got str '4567'"),
    Case("null-question", "mmlu", mmlu(question=(["What?", None, "Why?"], STRING)),
         1, "test:1", r"question column 'question' is null"),
    Case("bytes-question", "mmlu",
         mmlu(question=([b"What?", b"Who?", b"Why?"], datasets.Value("binary"))),
         0, "test:0", r"question column 'question' is bytes \(b'What\?'\)"),
    Case("blank-question", "mmlu", mmlu(question=(["What?", "   ", "Why?"], STRING)),
         1, "test:1", r"question column 'question' is empty"),
    Case("empty-option", "mmlu",
         mmlu(choices=([["a", "b", "c", "d"], ["a", " ", "c", "d"], ["a", "b", "c", "d"]],
                       STRINGS)),
         1, "test:1", r"choices column 'choices'\[1\] is empty"),
    Case("null-option", "mmlu",
         mmlu(choices=([["a", "b", "c", "d"], ["a", None, "c", "d"], ["a", "b", "c", "d"]],
                       STRINGS)),
         1, "test:1", r"choices column 'choices'\[1\] is null"),
    Case("duplicate-options", "mmlu",
         mmlu(choices=([["a", "b", "c", "d"], ["a", "b", "c", "d"], ["x", "y", "x", "z"]],
                       STRINGS)),
         2, "test:2", r"options \['x', 'y', 'x', 'z'\] repeat \['x'\]"),
    Case("answer-out-of-range", "mmlu", mmlu(answer=([1, 0, 7], datasets.Value("int64"))),
         2, "test:2", r"answer 7 is out of range for 4 options"),
    Case("numeric-option-cell", "mmbench",
         mmbench(C=([3, 4, 5], datasets.Value("int64"))),
         0, "100", r"option column 'C' is int 3, not text"),
    Case("zero-byte-png", "mmbench", with_bad_image(b""),
         1, "101", r"unreadable image: the image is empty \(0 bytes\)"),
    Case("corrupt-image", "mmbench", with_bad_image(b"\x89PNG\r\n\x1a\n" + bytes(range(200))),
         1, "101", r"unreadable image: not an image PIL can identify"),
    Case("truncated-jpeg", "mmbench", with_bad_image(truncated_jpeg()),
         1, "101", r"unreadable image: image file is truncated", when="decode"),
    Case("oversize-png", "mmbench", with_bad_image(oversize_png()),
         1, "101", r"8200x8200 = 67,240,000 pixels, over the limit of 67,108,864"),
    Case("decompression-bomb", "mmbench", with_bad_image(png_header_only(40_000, 40_000)),
         1, "101", r"decompression bomb"),
    Case("zero-byte-file-in-an-image-folder", "caltech101", caltech_folder_with_empty_file,
         1, "test:1", r"image_0001.jpg is empty \(0 bytes\)"),
]
