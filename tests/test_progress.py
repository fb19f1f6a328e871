"""Progress: a bar on a terminal, plain lines without cursor codes anywhere else."""

import io

from mibench.progress import Progress


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_off_a_terminal_a_plan_writes_plain_lines():
    stream, clock = io.StringIO(), Clock()
    bar = Progress("toy_image_heavy: clean, misleading_text", total=40, stream=stream,
                   every_s=60, clock=clock)
    for _ in range(4):
        clock.now += 40  # a line at most every 60 s while it runs
        bar.update(10)
    bar.close()
    lines = stream.getvalue().splitlines()
    assert lines == ["toy_image_heavy: clean, misleading_text: 20/40 samples 50% in 80 s, "
                     "0.2 samples/s",
                     "toy_image_heavy: clean, misleading_text: 40/40 samples done in 160 s, "
                     "0.2 samples/s"]
    assert "\r" not in stream.getvalue() and "\x1b" not in stream.getvalue()


def test_a_run_that_stops_says_where():
    stream = io.StringIO()
    bar = Progress("t: clean", total=10, stream=stream, clock=Clock())
    bar.update(3)
    bar.close()
    assert stream.getvalue() == "t: clean: 3/10 samples 30% in 0 s\n"


def test_disabled_or_empty_writes_nothing():
    stream = io.StringIO()
    for bar in (Progress("t", 5, enabled=False, stream=stream), Progress("t", 0, stream=stream)):
        bar.update(5)
        bar.close()
    assert stream.getvalue() == ""


def test_on_a_terminal_one_tqdm_bar():
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Terminal()
    bar = Progress("t: clean", total=4, stream=stream)
    assert bar.bar is not None
    bar.update(4)
    bar.close()
    assert "t: clean" in stream.getvalue() and "4/4" in stream.getvalue()
