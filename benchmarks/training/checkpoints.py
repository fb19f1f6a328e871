"""A training run's directory: checkpoints that survive a kill, the settings a resumed run must
share, and the scalar log cut back to the checkpoint it resumes from."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from mibench.atomic import write_text_atomic
from mibench.errors import MibenchError
from mibench.store import differences

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.json"
FINGERPRINT_FILE = "fingerprint.json"


class ResumeConfigError(MibenchError, RuntimeError):
    """A run directory holds checkpoints of a run whose weights would differ from this one's."""


def latest_checkpoint(run_dir: Path) -> Path | None:
    done = sorted(p for p in (run_dir / CHECKPOINTS).glob("step-*")
                  if (p / STATE_FILE).is_file())
    return done[-1] if done else None


def checkpoint_step(checkpoint: Path) -> int:
    return json.loads((checkpoint / STATE_FILE).read_text())["step"]


def save_checkpoint(accelerator: Any, run_dir: Path, step: int, keep: int) -> Path:
    """save_state into a temporary directory, renamed when complete: a kill mid-save leaves
    the previous checkpoint as the latest one."""
    root = run_dir / CHECKPOINTS
    final, partial = root / f"step-{step:07d}", root / f"partial-{step:07d}"
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_text_atomic(partial / STATE_FILE, json.dumps({"step": step}) + "\n")
        shutil.rmtree(final, ignore_errors=True)
        partial.rename(final)
        for old in sorted(root.glob("step-*"))[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def check_resume(run_dir: Path, fingerprint: dict, part: str) -> None:
    """Refuse to continue a run whose `part` of the fingerprint (the config; later the
    process count and base weights) differs, naming each setting; record it otherwise."""
    path = run_dir / FINGERPRINT_FILE
    stored = json.loads(path.read_text()) if path.is_file() else {}
    new = json.loads(json.dumps(fingerprint[part], sort_keys=True, default=str))
    if part in stored and stored[part] != new:
        changed = differences(stored[part], new)
        shown = "\n".join(f"  - {line}" for line in changed[:20])
        raise ResumeConfigError(
            f"{run_dir} holds a training run with other settings, and each of these changes "
            f"the weights, so it cannot be resumed under them:\n{shown}\n"
            "Choose another run directory (hydra.run.dir=... run_dir=...), or delete this one "
            "to start over.")
    write_text_atomic(path, json.dumps({**stored, part: new}, indent=2, sort_keys=True) + "\n")


def trim_log(path: Path, last_step: int) -> None:
    """Keep only log rows up to the checkpoint a run resumes from (rows past it are logged
    again), and drop a row cut short by a kill."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int) and (
                row["step"] <= last_step):
            kept.append(line + "\n")
    write_text_atomic(path, "".join(kept))
