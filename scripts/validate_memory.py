"""Peak memory and time of `mibench validate` on a real submission and on hostile ones.

Each hostile copy keeps the submission's valid submission.json and replaces its records with
a small gzip that expands to 1 GiB: copies of a real record line, one endless line, or blank
lines. Each validation runs in a fresh process; its peak RSS comes from the kernel (wait4).

    python scripts/validate_memory.py [results/submissions/toy_llava]
"""

from __future__ import annotations

import argparse
import gzip
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EXPANDED = 1 << 30  # each hostile records file decompresses to 1 GiB
# `mibench validate` as installed, and the same command without the benchmark app's imports
# (what a leaderboard server calling the library pays).
ENTRIES = {
    "mibench validate": [sys.executable, "-m", "mibench.cli", "validate"],
    "validate_main (library)": [sys.executable, "-c",
                                "import sys; from mibench.results.submission import validate_main; "
                                "sys.exit(validate_main(sys.argv[1:]))"],
}


def bomb(path: Path, line: bytes) -> int:
    """Write a gzip of `line` repeated up to 1 GiB; returns its compressed size."""
    block = line * max(1, (1 << 20) // len(line))
    with gzip.open(path, "wb", compresslevel=9) as gz:
        for _ in range(EXPANDED // len(block)):
            gz.write(block)
    return path.stat().st_size


def measure(command: list[str]) -> tuple[int, float, int, str]:
    """(exit code, seconds, peak RSS in MB, last stderr line) of one fresh process."""
    started = time.time()
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        err.seek(0)
        lines = err.read().decode(errors="replace").strip().splitlines()
    code = os.waitstatus_to_exitcode(status)
    return code, time.time() - started, usage.ru_maxrss // 1024, (lines or [""])[-1].strip()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("submission", nargs="?", default="results/submissions/toy_llava")
    args = parser.parse_args()
    source = Path(args.submission)
    cases = {"shipped submission": source}
    with tempfile.TemporaryDirectory() as tmp:
        first = gzip.open(source / "records.jsonl.gz").readline()
        for label, line in (("1 GiB of copies of a record", first),
                            ("1 GiB in one line", b"0" * 4096),
                            ("1 GiB of blank lines", b"\n")):
            folder = Path(tmp) / label.replace(" ", "_")
            folder.mkdir()
            shutil.copyfile(source / "submission.json", folder / "submission.json")
            size = bomb(folder / "records.jsonl.gz", line)
            cases[f"{label} ({size / 2**20:.1f} MiB gzip)"] = folder
        print("| input | command | exit | seconds | peak RSS MB | last line |\n"
              "|---|---|---|---|---|---|")
        for label, folder in cases.items():
            for entry, command in ENTRIES.items():
                code, seconds, rss, last = measure([*command, str(folder)])
                print(f"| {label} | {entry} | {code} | {seconds:.1f} | {rss} | {last[:90]} |",
                      flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
