"""Experiment loggers (`logger=` group). The only module that talks to W&B."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from .store import RECORDS_FILE

log = logging.getLogger(__name__)


class NullLogger:
    """Logs nothing: metrics.json and records.jsonl in the run directory are the record."""

    def start(self, config: dict[str, Any], out_dir: str | Path) -> None:
        pass

    def log_results(self, document: dict[str, Any], out_dir: str | Path) -> None:
        pass

    def log_scalars(self, step: int, values: dict[str, float]) -> None:
        pass

    def finish(self) -> None:
        pass


def flatten_results(results: dict[str, Any]) -> dict[str, float]:
    """{"task/condition/metric": value, ".../low", ".../high"} for W&B's summary and charts."""
    flat: dict[str, float] = {}
    for task, conditions in results.items():
        for cond, metrics in conditions.items():
            for metric, estimate in metrics.items():
                key = f"{task}/{cond}/{metric}"
                flat[key] = estimate["value"]
                flat[f"{key}/low"] = estimate["low"]
                flat[f"{key}/high"] = estimate["high"]
    return flat


class WandbLogger:
    """Logs the config, every metric with its interval, and a per-sample table to W&B.

    mode: "online", "offline" (writes under the run directory; `wandb sync` uploads it
    later) or "disabled".
    """

    def __init__(self, project: str = "mibench", entity: str | None = None,
                 name: str | None = None, mode: str = "offline",
                 tags: list[str] | None = None) -> None:
        if mode not in ("online", "offline", "disabled"):
            raise ValueError(f"logger.mode={mode!r} must be online, offline or disabled")
        self.project, self.entity, self.name, self.mode = project, entity, name, mode
        self.tags = list(tags or [])
        self._run = None

    def start(self, config: dict[str, Any], out_dir: str | Path) -> None:
        import wandb

        init = {"project": self.project, "entity": self.entity, "name": self.name,
                "tags": self.tags, "config": config, "dir": str(out_dir),
                "reinit": "finish_previous"}
        try:
            self._run = wandb.init(mode=self.mode, **init)
        except Exception as err:  # no network or no login: the benchmark must still run
            if self.mode != "online":
                raise
            log.warning("W&B online logging failed (%s); logging offline under %s instead "
                        "(upload later with `wandb sync`)", err, out_dir)
            self._run = wandb.init(mode="offline", **init)

    def log_results(self, document: dict[str, Any], out_dir: str | Path) -> None:
        import wandb

        flat = flatten_results(document["results"])
        self._run.log(flat)
        self._run.summary.update(flat)
        for figure in sorted(Path(out_dir).glob("*.png")):
            self._run.log({f"plots/{figure.stem}": wandb.Image(str(figure))})
        records = Path(out_dir) / RECORDS_FILE
        if records.exists():
            rows = [json.loads(line) for line in records.read_text().splitlines()]
            columns = ["task", "condition", "sample_id", "prediction", "gold", "correct",
                       "probs"]
            generated = any("generated" in row for row in rows)
            table = wandb.Table(columns=columns + ["response", "parse_failure"] * generated)
            for row in rows:
                cells = [row[c] if c != "probs" else json.dumps(row[c]) for c in columns]
                if generated:  # the answer as read: its last response, why it was not read
                    answer = row.get("generated") or {}
                    cells += [(answer.get("responses") or [None])[-1], answer.get("failure")]
                table.add_data(*cells)
            self._run.log({"records": table})

    def log_scalars(self, step: int, values: dict[str, float]) -> None:
        """Training curves: loss terms, learning rate, throughput."""
        self._run.log(values, step=step)

    def finish(self) -> None:
        if self._run is not None:
            import wandb

            self._run.finish()
            self._run = None
            wandb.teardown()  # flush the run's log to disk now, not at interpreter exit
