"""The `mibench` command: a Hydra app. The only module that sees a DictConfig."""

from __future__ import annotations

import importlib
import logging
import sys
from pathlib import Path

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from mibench.models.base import ModelAdapter
from mibench.perturbations.base import Attack, Perturbation
from mibench.prompts import ANSWER_INSTRUCTION
from mibench.tasks.base import Task

from .report import format_table, metrics_document, write_metrics
from .runner import run_benchmark

log = logging.getLogger("mibench")



def asset_path(name: str) -> str:
    """Path of a file shipped in the `mibench.models` package (the toy checkpoint)."""
    import mibench.models

    return str(Path(mibench.models.__file__).parent / name)


if not OmegaConf.has_resolver("mibench_asset"):
    OmegaConf.register_new_resolver("mibench_asset", asset_path)


def _named(configs: DictConfig | None) -> dict[str, DictConfig]:
    return {} if configs is None else {str(k): v for k, v in configs.items()}


def build_plugins(cfg: DictConfig) -> tuple[dict[str, Task], dict[str, Perturbation]]:
    """The tasks and conditions to run: `task=`/`perturbation=` replace the benchmark's."""
    grid = cfg.get("grid") or {}
    task_cfgs = ({cfg.task.name: cfg.task} if cfg.get("task") is not None
                 else _named(grid.get("tasks")))
    cond_cfgs = ({cfg.perturbation.name: cfg.perturbation} if cfg.get("perturbation") is not None
                 else _named(grid.get("conditions")))
    if not task_cfgs:
        raise ValueError("no task to run: choose a benchmark (benchmark=toy) or a task "
                         "(task=toy_image_heavy)")
    tasks = {name: instantiate(c) for name, c in task_cfgs.items()}
    conditions = {name: instantiate(c) for name, c in cond_cfgs.items()}
    for kind, plugins, bases in (("task", tasks, (Task,)),
                                 ("perturbation", conditions, (Perturbation, Attack))):
        for name, plugin in plugins.items():
            if not isinstance(plugin, bases):
                raise TypeError(f"{kind} {name!r}: _target_ built a {type(plugin).__name__}, "
                                f"not a {' or '.join(b.__name__ for b in bases)}")
            if plugin.name != name:
                raise ValueError(f"{kind} {name!r}: its config names it {plugin.name!r}; "
                                 "the two must agree")
    return tasks, conditions


def fingerprint(model: ModelAdapter, tasks: dict[str, Task],
                conditions: dict[str, Perturbation | Attack], seed: int) -> dict:
    """Every input that changes a number (not batch size, device or process count)."""
    model_info = {k: v for k, v in model.describe().items() if k != "device"}
    return {
        "model": model_info,
        "tasks": {n: t.describe() for n, t in tasks.items()},
        "conditions": {n: p.describe() for n, p in conditions.items()},
        "prompt": {"instruction": ANSWER_INSTRUCTION},
        "seed": seed,
    }


def run(cfg: DictConfig) -> dict:
    """Run the configured grid and write records.jsonl, metrics.json and the table."""
    out_dir = Path(cfg.out_dir)
    tasks, conditions = build_plugins(cfg)
    model: ModelAdapter = instantiate(cfg.model)
    logger = instantiate(cfg.logger)
    config = OmegaConf.to_container(cfg, resolve=True)
    logger.start(config, out_dir)
    try:
        prints = fingerprint(model, tasks, conditions, int(cfg.seed))
        result = run_benchmark(model, tasks, conditions, out_dir, batch_size=int(cfg.batch_size),
                               seed=int(cfg.seed), fingerprint=prints,
                               progress=bool(cfg.progress))
        document = metrics_document(result, prints, config)
        path = write_metrics(document, out_dir)
        table = format_table(document["results"])
        (out_dir / "table.md").write_text(table + "\n")
        print(table)
        print(f"\nrecords, metrics and table in {out_dir} ({path.name})")
        logger.log_results(document, out_dir)
    finally:
        logger.finish()
    return document


@hydra.main(config_path="pkg://mibench.conf", config_name="config", version_base="1.3")
def benchmark_app(cfg: DictConfig) -> None:
    run(cfg)


# `mibench NAME args...`: plain tools beside the Hydra app, as "module:function(argv)".
SUBCOMMANDS: dict[str, str] = {}


def main() -> None:
    """`mibench [hydra overrides]` runs a benchmark; `mibench NAME ...` runs a subcommand."""
    if len(sys.argv) > 1 and sys.argv[1] in SUBCOMMANDS:
        module, function = SUBCOMMANDS[sys.argv[1]].split(":")
        sys.exit(getattr(importlib.import_module(module), function)(sys.argv[2:]))
    benchmark_app()


if __name__ == "__main__":
    main()
