"""Memory of an image task as it grows: RSS for 1k and 10k samples of a folder of 512-px images.

Builds, in a temporary directory, an image folder `caltech101/test/<class>/<image>.jpg` of
N 512 x 512 JPEGs (100 classes), loads it through the caltech101 task (the real loader:
`datasets` imagefolder, a throwaway HF cache), then reads every sample's pixels once the way
scoring does (`sample.image.convert("RGB")`, dropped after use). Each N runs in a fresh
process and prints its resident memory (VmRSS) after import, after `samples()`, and its peak
(VmHWM) over the decoding pass. For scale, `--eager` also holds every decoded image, which is
what a task that decodes at load time costs.

    python scripts/rss_images.py                 # N = 1000 and 10000
    python scripts/rss_images.py --sizes 1000 --eager
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SIDE = 512
CLASSES = 100


def build(root: Path, n: int) -> None:
    """n JPEGs of smooth colour fields with mild noise (about 30 kB each, like photos)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 1, SIDE, dtype=np.float32)
    for i in range(n):
        folder = root / "caltech101" / "test" / f"class_{i % CLASSES:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        a, b, c = rng.random(3, dtype=np.float32) * 255
        field = np.stack([a * ramp[None, :] + 0 * ramp[:, None],
                          b * ramp[:, None] + 0 * ramp[None, :],
                          np.full((SIDE, SIDE), c, np.float32)], -1)
        field = field + rng.normal(0, 6, field.shape).astype(np.float32)
        Image.fromarray(np.clip(field, 0, 255).astype(np.uint8)).save(
            folder / f"image_{i:05d}.jpg", quality=90)


def rss_mib() -> tuple[float, float]:
    """(VmRSS, VmHWM) of this process in MiB."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text()
                  .splitlines() if ":" in line)
    return (int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024)


def measure(data_root: str, eager: bool) -> None:
    """In a fresh process: load the task, decode every image once, print the figures."""
    import datasets  # noqa: F401 - imported before the baseline figure, as a run has it
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    import mibench.conf

    cfg = OmegaConf.load(Path(mibench.conf.__file__).parent / "task" / "caltech101.yaml")
    cfg.data_dir = data_root
    cfg.exclude_labels = []
    task = instantiate(cfg)
    imported, _ = rss_mib()
    start = time.perf_counter()
    samples = task.samples()
    loaded, _ = rss_mib()
    held = []
    for sample in samples:
        pixels = sample.image.convert("RGB")
        if eager:
            held.append(pixels)
    current, peak = rss_mib()
    print(f"n={len(samples):>6}  {'eager (all decoded images held)' if eager else 'on demand'}"
          f"  RSS after import {imported:7.0f} MiB | after samples() {loaded:7.0f} MiB | "
          f"after decoding all {current:7.0f} MiB | peak {peak:7.0f} MiB "
          f"({time.perf_counter() - start:.0f} s)", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--eager", action="store_true",
                        help="also measure holding every decoded image (the smallest size)")
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    parser.add_argument("--hold", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        measure(args.measure, args.hold)
        return
    with tempfile.TemporaryDirectory(prefix="mibench-rss-") as tmp:
        env = {**os.environ, "HF_HOME": str(Path(tmp) / "hf"), "HF_HUB_OFFLINE": "1",
               "MIBENCH_CACHE_DIR": str(Path(tmp) / "mibench-cache")}  # nothing left behind
        env.pop("HF_DATASETS_CACHE", None)
        runs = [(n, False) for n in args.sizes]
        if args.eager:
            runs.append((min(args.sizes), True))
        for n, hold in runs:
            root = Path(tmp) / f"data-{n}"
            if not root.exists():
                build(root, n)
            subprocess.run([sys.executable, __file__, "--measure", str(root),
                            *(["--hold"] if hold else [])], env=env, check=True)


if __name__ == "__main__":
    main()
