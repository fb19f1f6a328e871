"""Images decoded only when their pixels are needed, to RGB by a stated rule, within a size limit.

A task over a large image set must not hold every decoded image at once (10,000 images of
512 px are 7.5 GiB as RGB arrays). A task therefore gives each sample an `ImageRef`: where
the encoded image is (a file, or a cell of a memory-mapped dataset) and how to name it in an
error. Its pixels are decoded by `ImageRef.load()` (or `.convert("RGB")`, as on a PIL image)
each time they are needed, and dropped with the batch that used them.

Decoding, for every image a task reads:
- the file must be an image PIL can identify and fully decode: a zero-byte, corrupt or
  truncated file is an `ImageDataError` naming the dataset, row and sample id;
- pixels are converted to 8-bit RGB by scaling, never by clipping: 16-bit modes by 1/257;
  32-bit integer ("I") and float ("F") images by their value range (0..255 kept, 0..65535
  scaled by 1/257, floats in 0..1 times 255, anything else stretched from its min..max);
  images with transparency (RGBA, LA, PA, P with a transparent colour) are composited on
  white, as transformers' `convert_to_rgb` does; every other mode is PIL's `convert("RGB")`,
  so ordinary RGB, L and P images give exactly the pixels they always gave;
- an image larger than `MAX_PIXELS` (2**26, e.g. 8192 x 8192) is never decoded at full size:
  a JPEG is decoded at a reduced scale (PIL's `draft`) and resized to fit within the limit;
  any other format is refused, naming the row, its size and the limit. PIL's own
  decompression-bomb check (about 179 megapixels) refuses earlier still, with the same error.
- as the `datasets` library does when it decodes, an EXIF orientation tag is applied.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import MibenchError

MAX_PIXELS = 2**26
SIXTEEN_BIT = {"I;16", "I;16L", "I;16B", "I;16N"}
WITH_ALPHA = {"RGBA", "LA", "PA", "RGBa", "La"}

# What an ImageRef reads: the encoded bytes, a path to the file, or a `datasets` Image cell
# ({"bytes": ..., "path": ...}).
Encoded = bytes | str | Path | dict


class ImageDataError(MibenchError, ValueError):
    """An image that cannot be read or converted; the message names dataset, row and id."""


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB by the module's rule: scale deep modes, composite alpha on white."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in SIXTEEN_BIT or mode in ("I", "F"):
        return Image.fromarray(_to_uint8(np.asarray(image), mode), "L").convert("RGB")
    if mode in WITH_ALPHA or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def _to_uint8(values: np.ndarray, mode: str) -> np.ndarray:
    values = values.astype(np.float64)
    if mode in SIXTEEN_BIT:
        scaled = values / 257.0
    else:
        low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
        if mode == "F" and 0.0 <= low and high <= 1.0:
            scaled = values * 255.0
        elif 0.0 <= low and high <= 255.0:
            scaled = values
        elif mode == "I" and 0.0 <= low and high <= 65535.0:
            scaled = values / 257.0
        elif high > low:
            scaled = (values - low) * (255.0 / (high - low))
        else:
            scaled = np.zeros_like(values)
    return np.rint(scaled).astype(np.uint8)  # in 0..255 by construction


def _open(encoded: Encoded) -> Image.Image:
    if isinstance(encoded, dict):
        data, path = encoded.get("bytes"), encoded.get("path")
        if data is None and not path:
            raise ValueError("the image cell holds neither bytes nor a path")
        encoded = data if data is not None else path
    if isinstance(encoded, (bytes, bytearray)):
        if not encoded:
            raise ValueError("the image is empty (0 bytes)")
        return Image.open(io.BytesIO(encoded))
    path = Path(encoded)
    if path.is_file() and path.stat().st_size == 0:
        raise ValueError(f"the image file {path} is empty (0 bytes)")
    return Image.open(path)


def decode(encoded: Encoded, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """The RGB pixels of an encoded image (see the module doc); ValueError/OSError if bad."""
    with _open(encoded) as image:
        width, height = image.size
        if width * height > max_pixels:
            if image.format != "JPEG":
                raise ValueError(f"the image is {width}x{height} = {width * height:,} pixels, "
                                 f"over the limit of {max_pixels:,}; only JPEG images are "
                                 "reduced on reading, so shrink this one first")
            scale = math.sqrt(max_pixels / (width * height))
            image.draft("RGB", (max(1, int(width * scale)), max(1, int(height * scale))))
        image.load()
        if image.getexif().get(Image.ExifTags.Base.Orientation) is not None:
            image = ImageOps.exif_transpose(image)
        rgb = to_rgb(image)
        if rgb.width * rgb.height > max_pixels:  # draft reduces by powers of 2 only
            scale = math.sqrt(max_pixels / (rgb.width * rgb.height))
            rgb = rgb.resize((max(1, int(rgb.width * scale)), max(1, int(rgb.height * scale))),
                             Image.Resampling.BICUBIC)
        return rgb if rgb is not image else rgb.copy()  # detached from the file


@dataclass(frozen=True, slots=True, eq=False)
class ImageRef:
    """An image a sample refers to, decoded on each `load()`; never cached.

    `fetch` returns the encoded image (bytes, a path, or a datasets Image cell); `where`
    names it in errors ("task 'x': row 5 of /data/x split 'test' (id '...')"). Identity is
    the image's identity: a perturbation that leaves the image alone keeps the same ref.
    """

    fetch: Callable[[], Encoded]
    where: str
    max_pixels: int = MAX_PIXELS

    def load(self) -> Image.Image:
        """The image as 8-bit RGB, decoded now (a new object each call)."""
        try:
            return decode(self.fetch(), self.max_pixels)
        except ImageDataError:
            raise
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
            raise ImageDataError(f"{self.where}: unreadable image: {_reason(err)}") from err

    def convert(self, mode: str = "RGB") -> Image.Image:
        """As PIL's `Image.convert`: what consumers of `Sample.image` call for pixels."""
        image = self.load()
        return image if mode == "RGB" else image.convert(mode)

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the decoded image (it decodes: read it once, not per pixel)."""
        return self.load().size

    def check(self) -> None:
        """Refuse now, by the header alone, what could never decode: an empty, unidentifiable
        or oversize non-JPEG image. (A truncated body is found when the pixels are read.)"""
        try:
            with _open(self.fetch()) as image:
                width, height = image.size
                if width * height > self.max_pixels and image.format != "JPEG":
                    raise ValueError(f"the image is {width}x{height} = {width * height:,} "
                                     f"pixels, over the limit of {self.max_pixels:,}; only "
                                     "JPEG images are reduced on reading, so shrink this one "
                                     "first")
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
            raise ImageDataError(f"{self.where}: unreadable image: {_reason(err)}") from err


def _reason(err: BaseException) -> str:
    if isinstance(err, UnidentifiedImageError):
        return "not an image PIL can identify (corrupt, or not an image file)"
    if isinstance(err, Image.DecompressionBombError):
        return f"{err} (a decompression bomb, or an image far too large to score)"
    return f"{err}" or type(err).__name__
