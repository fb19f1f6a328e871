"""The style rules that tools can hold: ruff clean, and the import fences between subsystems
(Accelerate only in distributed.py, Hydra/OmegaConf only at the edges, W&B only in loggers)."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


def ruff(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ruff", *args], cwd=ROOT, input=stdin,
                          capture_output=True, text=True, timeout=300)


def test_the_code_is_ruff_clean():
    out = ruff("check", ".")
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize(("module", "code"), [
    ("benchmarks/scoring.py", "import accelerate\n"),
    ("benchmarks/runner.py", "from omegaconf import OmegaConf\n"),
    ("perturbations/text.py", "from hydra.utils import instantiate\n"),
    ("models/hf.py", "import wandb\n"),
    ("tasks/base.py", "import pickle\n"),
])
def test_an_import_across_a_fence_is_refused(module, code):
    out = ruff("check", "--stdin-filename", module, "-", stdin=code)
    assert out.returncode == 1 and "TID251" in out.stdout, out.stdout + out.stderr


@pytest.mark.parametrize(("module", "code"), [
    ("benchmarks/distributed.py", "import accelerate\n\naccelerate.PartialState()\n"),
    ("benchmarks/cli.py", "from omegaconf import OmegaConf\n\nOmegaConf.create()\n"),
])
def test_the_edges_may_import_what_they_own(module, code):
    out = ruff("check", "--stdin-filename", module, "-", stdin=code)
    assert out.returncode == 0, out.stdout + out.stderr
