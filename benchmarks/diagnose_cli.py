"""`mibench diagnose`: the command (an edge: Hydra composes the config here, the measuring
in `diagnose.py` takes plain objects). Hydra overrides pick model, task or benchmark as for
`mibench`, so diagnostics.json lands in the directory `mibench` with the same overrides
writes (or `--out`).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from .atomic import write_text_atomic
from .diagnose import (
    DIAGNOSTICS_FILE,
    MAX_TOKENS,
    DiagnoseError,
    Settings,
    diagnose_tasks,
    document,
    format_diagnostics,
    scalars,
)
from .errors import MibenchError


def _compose(overrides: Sequence[str]):
    from hydra import compose, initialize_config_module

    import mibench.cli  # noqa: F401 - registers the config's resolvers

    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise DiagnoseError(f"not an option or a key=value override: {' '.join(bad)}")
    with initialize_config_module("mibench.conf", version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=True)


def _logger(cfg):
    from hydra.utils import instantiate

    return instantiate(cfg.logger)


def diagnose_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="mibench diagnose",
        description="Modality gap, linear separability and clean entropy of a model on its "
                    "tasks, from its own activations (diagnostics.json); with --across, "
                    "their Spearman correlation with interference scores over several runs.",
        epilog="Other arguments are Hydra overrides, as for `mibench` (model=..., task=..., "
               "logger=wandb).")
    parser.add_argument("--layer", type=int, action="append",
                        help="a language-model layer besides its input (repeatable; default "
                             "-1, the last)")
    parser.add_argument("--limit", type=int, help="at most this many samples per task (seeded)")
    parser.add_argument("--on", help="measure text-only tasks under this condition of the "
                                     "config (e.g. switched_image)")
    parser.add_argument("--max-tokens", type=int, default=MAX_TOKENS,
                        help=f"probe tokens per sample and modality (default {MAX_TOKENS})")
    parser.add_argument("--out", help="where diagnostics.json goes (default: the run "
                                      "directory `mibench` uses for the same overrides)")
    parser.add_argument("--across", nargs="+", metavar="RUN",
                        help="run directories holding metrics.json and diagnostics.json")
    parser.add_argument("--score", action="append", metavar="TASK/CONDITION/METRIC",
                        help="with --across: the interference score(s) (default: every "
                             "condition's drop)")
    args, overrides = parser.parse_known_args(argv)
    try:
        cfg = _compose(overrides)
        if args.across:
            from .diagnose_across import run_across

            return run_across(args.across, args.score, Path(args.out or "."), _logger(cfg),
                              int(cfg.seed))
        return _run(cfg, args)
    except (MibenchError, FileNotFoundError) as err:
        print(f"mibench diagnose: {err}", file=sys.stderr)
        return 1


def _run(cfg, args: argparse.Namespace) -> int:
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from .cli import build_plugins

    settings = Settings(layers=tuple(args.layer or (-1,)), max_tokens=args.max_tokens,
                        seed=int(cfg.seed), limit=args.limit, on=args.on,
                        batch_size=int(cfg.batch_size))
    out = Path(args.out or cfg.hydra.run.dir)
    tasks, conditions = build_plugins(cfg)
    model = instantiate(cfg.model)
    if not hasattr(model, "hidden_states"):
        raise DiagnoseError(f"model {model.name!r} can only be queried; diagnostics need its "
                            "activations (a DifferentiableAdapter)")
    logger = _logger(cfg)
    # hydra's own keys resolve only inside a Hydra app; the run's config is the rest
    config = OmegaConf.to_container(
        OmegaConf.masked_copy(cfg, [k for k in cfg if k not in ("hydra", "out_dir")]),
        resolve=True)
    logger.start(config, out)
    try:
        doc = document(model, tasks, settings, diagnose_tasks(model, tasks, conditions, settings))
        out.mkdir(parents=True, exist_ok=True)
        path = write_text_atomic(out / DIAGNOSTICS_FILE, json.dumps(doc, indent=2) + "\n")
        print(format_diagnostics(doc))
        print(f"\ndiagnostics in {path}")
        logger.log_diagnostics(scalars(doc), [])
    finally:
        logger.finish()
    return 0
