"""The `mibench` command: the benchmark's Hydra app, and the subcommands beside it.

Imports of torch, transformers and the scoring stack happen inside the functions that need
them, so a subcommand (`mibench models`) and `--help` start in well under a second.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import logging
import os
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import hydra
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from .errors import MibenchError

if TYPE_CHECKING:
    from mibench.models.base import ModelAdapter
    from mibench.perturbations.base import Attack, Perturbation
    from mibench.tasks.base import Task

log = logging.getLogger(__name__)
T = TypeVar("T")


class ConfigError(MibenchError, ValueError):
    """The configured tasks and conditions cannot make a run (names the key and the fix)."""


def asset_path(name: str) -> str:
    """Path of a file shipped in the `mibench.models` package (the toy checkpoint)."""
    import mibench.models

    return str(Path(mibench.models.__file__).parent / name)


# What a run's results depend on; the rest (batch size, logger, progress) changes no number.
RUN_KEYS = ("model", "grid", "task", "perturbation", "scorer", "seed", "data_root")
# Model settings that change how answers are fetched, never which: a served model's
# concurrency, timeouts, retries and response cache (which also sits in the run directory,
# so naming the directory after it would go round in a circle).
FETCH_KEYS = frozenset({"concurrency", "timeout_s", "max_retries", "backoff_s",
                        "max_backoff_s", "cache_dir"})


def run_id(*, _root_: DictConfig) -> str:
    """A directory name fixed by the config: re-running a command resumes its run."""
    from .report import config_hash

    def part(key: str) -> object:
        node = _root_.get(key)
        if not isinstance(node, DictConfig):
            return node
        # resolved in place: a model setting may point elsewhere in the config (the official
        # benchmark's prompt names ${grid.study_release}); a masked copy could not resolve it
        value = OmegaConf.to_container(node, resolve=True)
        if key == "model":
            value = {k: v for k, v in value.items() if k not in FETCH_KEYS}
        return value

    parts = {k: part(k) for k in RUN_KEYS}
    # a served model is named by the server's name for it
    model = (_root_.model.get("name") or _root_.model.get("model")
             or str(_root_.model.get("path", "model")).rstrip("/"))
    what = (_root_.get("task") or {}).get("name") or (_root_.get("grid") or {}).get("name")
    condition = (_root_.get("perturbation") or {}).get("name")
    digest = config_hash(parts)[:10]
    return "-".join(str(p).replace("/", "_")
                    for p in (model.split("/")[-1], what, condition, digest) if p)


def subcommand_summary(spec: str) -> str:
    """First sentence of a subcommand's argparse description (or docstring), from its source.

    Read with `ast` rather than imported: `mibench --help` must not import torch.
    """
    module, _, function = spec.partition(":")
    try:
        origin = importlib.util.find_spec(module).origin
        tree = ast.parse(Path(origin).read_text())
    except (ImportError, AttributeError, OSError, SyntaxError, TypeError, ValueError):
        return ""
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == function:
            texts = [kw.value.value for call in ast.walk(node) if isinstance(call, ast.Call)
                     for kw in call.keywords if kw.arg == "description"
                     and isinstance(kw.value, ast.Constant) and isinstance(kw.value.value, str)]
            text = (texts or [ast.get_docstring(node) or ""])[0]
            return textwrap.shorten(text.split(". ")[0].rstrip("."), 78, placeholder=" ...")
    return ""


def help_header() -> str:
    """The top of `mibench --help`: how to run a benchmark, and every subcommand."""
    width = max(map(len, SUBCOMMANDS))
    lines = ["mibench: score modality interference of a multimodal LLM.", "",
             "Run a benchmark:  mibench [group=option] [key=value] ...   (Hydra overrides below)",
             "Subcommands (mibench NAME --help for their options):"]
    lines += [f"  {name.ljust(width)}  {subcommand_summary(spec)}".rstrip()
              for name, spec in SUBCOMMANDS.items()]
    return "\n".join(lines) + "\n"


for _name, _resolver in (("mibench_asset", asset_path), ("mibench_run_id", run_id),
                         ("mibench_help", help_header)):
    if not OmegaConf.has_resolver(_name):
        OmegaConf.register_new_resolver(_name, _resolver)


def _named(configs: DictConfig | None) -> dict[str, DictConfig]:
    return {} if configs is None else {str(k): v for k, v in configs.items()}


def build_plugins(cfg: DictConfig) -> tuple[dict[str, Task], dict[str, Perturbation]]:
    """The tasks and conditions to run: `task=`/`perturbation=` replace the benchmark's.

    A benchmark condition that applies to none of the tasks (`task=toy_text_heavy` under a
    grid with text conditions) is skipped with a note; one asked for by `perturbation=` is
    an error.
    """
    from hydra.utils import instantiate

    from mibench.perturbations.base import Attack, Perturbation
    from mibench.tasks.base import Task

    from .runner import applies_to

    grid = cfg.get("grid") or {}
    task_cfgs = ({cfg.task.name: cfg.task} if cfg.get("task") is not None
                 else _named(grid.get("tasks")))
    cond_cfgs = ({cfg.perturbation.name: cfg.perturbation} if cfg.get("perturbation") is not None
                 else _named(grid.get("conditions")))
    if not task_cfgs:
        raise ConfigError("no task to run: choose a benchmark (benchmark=toy) or a task "
                          "(task=toy_image_heavy)")
    tasks = {name: instantiate(c) for name, c in task_cfgs.items()}
    conditions = {name: instantiate(c) for name, c in cond_cfgs.items()}
    for kind, plugins, bases in (("task", tasks, (Task,)),
                                 ("perturbation", conditions, (Perturbation, Attack))):
        for name, plugin in plugins.items():
            if not isinstance(plugin, bases):
                raise ConfigError(f"{kind} {name!r}: _target_ built a {type(plugin).__name__}, "
                                  f"not a {' or '.join(b.__name__ for b in bases)}")
            if plugin.name != name:
                raise ConfigError(f"{kind} {name!r}: its config names it {plugin.name!r}; "
                                  "the two must agree")
    idle = [name for name, c in conditions.items()
            if not any(applies_to(c, task) for task in tasks.values())]
    if idle and cfg.get("perturbation") is not None:
        (name,) = idle
        raise ConfigError(
            f"perturbation={name} touches the {conditions[name].touches} modality, which "
            f"{', '.join(tasks)} needs to answer: nothing to measure; choose a perturbation "
            "of the other modality, or another task")
    if idle:
        log.info("conditions that apply to none of the tasks (%s), skipped: %s",
                 ", ".join(tasks), ", ".join(idle))
    return tasks, {name: c for name, c in conditions.items() if name not in idle}


def fingerprint(model: ModelAdapter, tasks: dict[str, Task],
                conditions: dict[str, Perturbation | Attack], seed: int) -> dict:
    """Every input that changes a number (not batch size, device or process count)."""
    from mibench.prompts import ANSWER_INSTRUCTION

    model_info = {k: v for k, v in model.describe().items() if k != "device"}
    return {
        "model": model_info,
        "tasks": {n: t.describe() for n, t in tasks.items()},
        "conditions": {n: p.describe() for n, p in conditions.items()},
        "prompt": {"instruction": ANSWER_INSTRUCTION},
        "seed": seed,
    }


def run(cfg: DictConfig) -> dict | None:
    """Run the configured grid and write records.jsonl, metrics.json and the table.

    Under `accelerate launch` every process runs this; only the main one writes and logs
    (and returns the metrics document).
    """
    from hydra.utils import instantiate

    from . import distributed
    from .loggers import NullLogger
    from .plots import accuracy_bars
    from .progress import is_terminal, quiet_library_bars
    from .report import format_table, metrics_document, write_metrics
    from .results.metrics_file import metrics_of
    from .runner import run_benchmark
    from .scoring import chance_accuracy
    from .store import RECORDS_FILE, read_records

    if not (cfg.progress and is_terminal(sys.stderr)):
        quiet_library_bars()
    out_dir = Path(cfg.out_dir)
    processes = distributed.current()
    tasks, conditions = build_plugins(cfg)
    model_cfg = cfg.model
    if model_cfg.get("device") == "auto":  # one device per process under accelerate launch
        model_cfg = OmegaConf.merge(model_cfg, {"device": processes.device})
    model: ModelAdapter = instantiate(model_cfg)
    model.bind_run_dir(out_dir)  # before anything is asked of it (a served model's cache)
    scorer = instantiate(cfg.scorer) if cfg.get("scorer") is not None else None
    logger = instantiate(cfg.logger) if processes.is_main else NullLogger()
    config = OmegaConf.to_container(cfg, resolve=True)
    logger.start(config, out_dir)
    try:
        prints = fingerprint(model, tasks, conditions, int(cfg.seed))
        result = run_benchmark(model, tasks, conditions, out_dir, batch_size=int(cfg.batch_size),
                               seed=int(cfg.seed), fingerprint=prints,
                               progress=bool(cfg.progress), scorer=scorer)
        if result is None:
            return None
        document = metrics_document(result, result.fingerprint, config)
        # how it was scored: recorded, never fingerprinted (batch size changes no number)
        document["scoring"] = {"batch_size": int(cfg.batch_size), "processes": result.processes}
        if fetched := model.fetch_report():  # a served model's requests and retries
            document["scoring"]["fetch"] = fetched
        path = write_metrics(document, out_dir)
        metrics = metrics_of(document, path)
        table = format_table(metrics.results, metrics.failed, references={
            t: d["reference"] for t, d in metrics.tasks.items() if "reference" in d})
        (out_dir / "table.md").write_text(table + "\n")
        if metrics.results:  # every task may have failed
            accuracy_bars(metrics.results, out_dir / "accuracy.png", model=metrics.model_name,
                          chance=chance_accuracy(read_records(out_dir / RECORDS_FILE)))
        print(table)
        print(f"\nrecords, metrics and table in {out_dir} ({path.name}); "
              f"scored by {result.processes} process(es)")
        logger.log_results(document, out_dir)
    finally:
        logger.finish()
    return document


def user_error(err: BaseException) -> MibenchError | None:
    """The MibenchError behind `err`, if any: Hydra's `instantiate` wraps what a target raises.

    A config value left `???` (model=hf without model.path) is a user's mistake too.
    """
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, MibenchError):
            return err
        if isinstance(err, MissingMandatoryValue):
            key = err.full_key or "a config value"
            return ConfigError(f"{key} must be set: add {key}=... to the command")
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def exit_on_user_error(function: Callable[..., T], *args: object) -> T:
    """Call `function`; a user's mistake ends the process with one line on stderr, exit code 2.

    Anything else is a bug and keeps its traceback, as does every error under
    HYDRA_FULL_ERROR=1.
    """
    try:
        return function(*args)
    except Exception as err:
        mistake = user_error(err)
        if mistake is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"mibench: {mistake}", file=sys.stderr, flush=True)
        sys.exit(2)


@hydra.main(config_path="pkg://mibench.conf", config_name="config", version_base="1.3")
def benchmark_app(cfg: DictConfig) -> None:
    # caught here, inside the task function: Hydra would print what escapes it as a traceback
    document = exit_on_user_error(run, cfg)
    if document and document["failed"]:  # everything else was written: say so, and fail
        print(f"{len(document['failed'])} task(s)/condition(s) failed; see `failed` in "
              f"{Path(cfg.out_dir) / 'metrics.json'}", file=sys.stderr)
        sys.exit(1)


# `mibench NAME args...`: plain tools beside the Hydra app, as "module:function(argv)".
SUBCOMMANDS: dict[str, str] = {
    "submit": "mibench.results.submission:submit_main",
    "validate": "mibench.results.submission:validate_main",
    "leaderboard": "mibench.results.leaderboard:leaderboard_main",
    "compare": "mibench.results.compare:compare_main",
    "models": "mibench.models.catalog:main",
    "tables": "mibench.results.tables:main",
    "show": "mibench.show:show_main",
    "diagnose": "mibench.diagnose_cli:diagnose_main",
    "lures": "mibench.lures:lures_main",
}


def main() -> None:
    """`mibench [hydra overrides]` runs a benchmark; `mibench NAME ...` runs a subcommand."""
    if len(sys.argv) > 1 and sys.argv[1] in SUBCOMMANDS:
        module, function = SUBCOMMANDS[sys.argv[1]].split(":")
        command = getattr(importlib.import_module(module), function)
        sys.exit(exit_on_user_error(command, sys.argv[2:]))
    benchmark_app()


if __name__ == "__main__":
    main()
