"""JSON from files a stranger could write, read in bounded memory and time.

`json.loads` recurses once per nesting level (200k nested brackets end in RecursionError) and
holds the whole text; a gzip of short lines can expand a thousandfold. So: the size is checked
before reading, the nesting depth is scanned before parsing, and gzip text is streamed line by
line with a cap on each line and on the total, never decompressed whole.
"""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import MibenchError

# A JSON string, or one bracket: brackets inside strings do not nest anything.
_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')


class UnreadableJSONError(MibenchError, ValueError):
    """A file (or line) refused before or while parsing; `reason` says why, without the
    source, so callers can list it among other problems."""

    def __init__(self, source: str, reason: str) -> None:
        self.source, self.reason = source, reason
        super().__init__(f"{source}: {reason}")


def depth(text: str) -> int:
    """Deepest bracket nesting of a JSON text, by a linear scan (no recursion)."""
    level = deepest = 0
    for match in _TOKENS.finditer(text):
        token = match.group()
        if token in "[{":
            level += 1
            deepest = max(deepest, level)
        elif token in "]}":
            level -= 1
    return deepest


def _refuse_constant(token: str) -> float:
    raise ValueError(f"{token} is not a JSON number")


def loads(text: str | bytes, source: str, max_depth: int, strict: bool = True) -> Any:
    """JSON no deeper than `max_depth`; `strict`: no NaN/Infinity either (a metrics.json
    written by mibench holds NaN where a metric is undefined)."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as err:
            raise UnreadableJSONError(source, f"is not UTF-8 text, so not JSON ({err})") from err
    # A cheap upper bound first: most texts have fewer brackets than the depth allowed.
    if text.count("[") + text.count("{") > max_depth and depth(text) > max_depth:
        raise UnreadableJSONError(source, f"is nested deeper than {max_depth} levels; "
                                          "refused before parsing")
    try:
        return json.loads(text, parse_constant=_refuse_constant if strict else None)
    except (ValueError, RecursionError) as err:
        raise UnreadableJSONError(source, f"is not plain JSON: {err}") from err


def read_bounded(path: Path, max_bytes: int) -> bytes:
    """A file's bytes, refused (unread) when larger than `max_bytes`."""
    size = path.stat().st_size
    if size > max_bytes:
        raise UnreadableJSONError(str(path), f"is {size:,} bytes; at most {max_bytes:,} are "
                                             "accepted")
    with path.open("rb") as handle:
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:  # grew while we looked
        raise UnreadableJSONError(str(path), f"is larger than {max_bytes:,} bytes")
    return data


def read_json_file(path: Path, max_bytes: int, max_depth: int, strict: bool = True) -> Any:
    """A JSON file, size-bounded before reading and depth-bounded before parsing."""
    return loads(read_bounded(path, max_bytes), str(path), max_depth, strict)


def gzip_lines(path: Path, max_line: int, max_total: int) -> Iterator[tuple[int, bytes]]:
    """(line number, line) of a gzip text file, streamed: a line longer than `max_line` bytes
    or more than `max_total` decompressed bytes in all are refused as soon as they are seen."""
    total = 0
    try:
        with gzip.open(path, "rb") as gz:
            number = 0
            while line := gz.readline(max_line + 1):
                number += 1
                total += len(line)
                if len(line) > max_line:
                    raise UnreadableJSONError(str(path), f"line {number} is longer than "
                                                         f"{max_line:,} bytes; no record is")
                if total > max_total:
                    raise UnreadableJSONError(
                        str(path), f"decompresses to more than {max_total:,} bytes, more than "
                                   "the declared records can take; refused (a compression "
                                   "bomb or records the submission does not declare)")
                yield number, line
    except (OSError, EOFError) as err:
        raise UnreadableJSONError(str(path), f"is a broken gzip file ({err})") from err
