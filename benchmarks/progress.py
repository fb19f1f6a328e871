"""Progress of a run: a tqdm bar on a terminal, plain lines (no cursor codes) in a log.

A log file or a SLURM output is not a terminal: a tqdm bar there becomes a stream of carriage
returns and escape codes. Each batch plan (the conditions scored together) gets one bar on a
terminal, and otherwise one line when it ends, plus a line at most every `every_s` seconds
while it runs.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import TextIO

from tqdm.auto import tqdm


def is_terminal(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


class Progress:
    """Samples scored out of `total` for one label (a task and the conditions of its plan)."""

    def __init__(self, label: str, total: int, *, enabled: bool = True,
                 stream: TextIO | None = None, every_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.label, self.total, self.done = label, total, 0
        self.stream = stream or sys.stderr
        self.every_s, self.clock = every_s, clock
        self.started = self.last_line = clock()
        self.enabled = enabled and total > 0
        self.bar = (tqdm(total=total, desc=label, unit="sample", file=self.stream)
                    if self.enabled and is_terminal(self.stream) else None)

    def update(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.enabled and self.done < self.total and (
                self.clock() - self.last_line >= self.every_s):
            self._line()

    def close(self) -> None:
        """Ends the bar, or writes the closing line ("done", or where it stopped)."""
        if self.bar is not None:
            self.bar.close()
        elif self.enabled:
            self._line()

    def _line(self) -> None:
        now = self.clock()
        self.last_line = now
        elapsed = now - self.started
        rate = f", {self.done / elapsed:.1f} samples/s" if elapsed > 0 and self.done else ""
        state = "done" if self.done >= self.total else f"{100 * self.done / self.total:.0f}%"
        print(f"{self.label}: {self.done}/{self.total} samples {state} in {elapsed:.0f} s{rate}",
              file=self.stream, flush=True)


def quiet_library_bars() -> None:
    """Turn off the bars transformers, datasets and the hub draw (loading weights, reading
    files): off a terminal they would write cursor codes into the log."""
    from transformers.utils import logging as hf_logging  # the model needs it anyway

    hf_logging.disable_progress_bar()  # the hub's bars too
    # datasets reads this when imported; importing it here would cost seconds on toy runs
    os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] = "1"
    if "datasets" in sys.modules:
        sys.modules["datasets"].disable_progress_bars()
