"""Robust accuracy against the PGD budget: one benchmark condition per (ε, steps).

Runs `mibench.runner.run_benchmark` on one task with one attack condition per budget (named
e.g. `pgd_pixel_eps0.01`, or `..._eps0.01_steps5` when several step counts are swept), then
writes records.jsonl, metrics.json, table.md (the runner's table), sweep.md (robust accuracy,
attack success rate = share of clean-correct samples made wrong, flip rate, JS divergence,
each with its 95% interval) and sweep.png (robust accuracy against ε, one line per steps).

    python scripts/pgd_sweep.py                              # toy model, pgd_embed, IH task
    python scripts/pgd_sweep.py --attack pgd_pixel --task toy_text_heavy \
        --eps 0 0.004 0.008 0.016 0.031 --steps 10
    python scripts/pgd_sweep.py --set mask=distractor \
        --set 'base={_target_: mibench.perturbations.text.MisleadingText}'
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

import mibench.conf
from mibench.cli import asset_path, fingerprint
from mibench.models.hf import HFModelAdapter
from mibench.perturbations.base import Attack
from mibench.report import format_table, metrics_document, write_metrics
from mibench.runner import CLEAN, run_benchmark

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

CONF = Path(mibench.conf.__file__).parent


def condition_name(attack: str, eps: float, steps: int, several_steps: bool) -> str:
    name = f"{attack}_eps{eps:g}"
    return f"{name}_steps{steps}" if several_steps else name


def build_conditions(attack: str, epsilons: list[float], steps_list: list[int],
                     overrides: list[str], alpha_ratio: float
                     ) -> dict[str, tuple[float, int, Attack]]:
    """name -> (ε, steps, attack), each built from the attack's YAML plus the overrides;
    alpha = alpha_ratio * ε when alpha_ratio > 0, else the config's alpha."""
    path = CONF / "perturbation" / f"{attack}.yaml"
    if not path.exists():
        raise SystemExit(f"no attack config {path}")
    base = OmegaConf.merge(OmegaConf.load(path), OmegaConf.from_dotlist(overrides))
    out = {}
    for steps in steps_list:
        for eps in epsilons:
            name = condition_name(attack, eps, steps, len(steps_list) > 1)
            cfg = OmegaConf.merge(base, {"name": name, "eps": eps, "steps": steps})
            if alpha_ratio > 0:
                cfg.alpha = alpha_ratio * eps
            built = instantiate(cfg)
            if not isinstance(built, Attack):
                raise SystemExit(f"{path} builds a {type(built).__name__}, not an Attack")
            out[name] = (eps, steps, built)
    return out


def sweep_table(results: dict, grid: dict[str, tuple[float, int, Attack]]) -> str:
    """Markdown: one row per (ε, steps) with robust accuracy, success, flip rate, JS."""
    def pct(m, key):
        e = m.get(key)
        return "-" if e is None else (f"{100 * e['value']:.1f} "
                                      f"[{100 * e['low']:.1f}, {100 * e['high']:.1f}]")

    lines = ["| ε | steps | n | robust accuracy % | attack success % (of clean-correct) "
             "| flip rate % | JS div. (bits) |", "|---|---|---|---|---|---|---|"]
    clean = results[CLEAN]
    lines.append(f"| clean | - | {clean['accuracy']['n']} | {pct(clean, 'accuracy')} "
                 "| - | - | - |")
    for name, (eps, steps, _) in grid.items():
        m = results[name]
        js = m["js_divergence"]
        lines.append(f"| {eps:g} | {steps} | {m['accuracy']['n']} | {pct(m, 'accuracy')} | "
                     f"{pct(m, 'harm_rate')} | {pct(m, 'flip_rate')} | "
                     f"{js['value']:.3f} [{js['low']:.3f}, {js['high']:.3f}] |")
    return "\n".join(lines)


def plot(results: dict, grid: dict[str, tuple[float, int, Attack]], title: str,
         path: Path) -> None:
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for steps in sorted({s for _, s, _ in grid.values()}):
        rows = sorted((eps, results[n]["accuracy"]) for n, (eps, s, _) in grid.items()
                      if s == steps)
        xs = [eps for eps, _ in rows]
        ax.plot(xs, [100 * a["value"] for _, a in rows], marker="o", label=f"{steps} steps")
        ax.fill_between(xs, [100 * a["low"] for _, a in rows],
                        [100 * a["high"] for _, a in rows], alpha=0.2)
    ax.axhline(100 * results[CLEAN]["accuracy"]["value"], color="grey", ls="--", label="clean")
    ax.set_xlabel("ε")
    ax.set_ylabel("robust accuracy % (95% CI)")
    ax.set_ylim(0, 100)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=asset_path("toy_llava"),
                        help="checkpoint directory or hub id (default: the embedded toy)")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--task", default="toy_image_heavy", help="a conf/task YAML stem")
    parser.add_argument("--n", type=int, default=None, help="override the task's sample count")
    parser.add_argument("--attack", default="pgd_embed", help="a conf/perturbation YAML stem")
    parser.add_argument("--eps", type=float, nargs="+",
                        default=[0.0, 0.01, 0.02, 0.05, 0.1, 0.2])
    parser.add_argument("--steps", type=int, nargs="+", default=[10])
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override an attack parameter (repeatable)")
    parser.add_argument("--alpha-ratio", type=float, default=0.25,
                        help="alpha = ratio * eps for each eps (0: keep the config's alpha)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="outputs/pgd_sweep")
    parser.add_argument("--progress", action="store_true", help="progress bars")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    task_cfg = OmegaConf.load(CONF / "task" / f"{args.task}.yaml")
    if args.n is not None:
        task_cfg.n = args.n
    task = instantiate(task_cfg)
    grid = build_conditions(args.attack, args.eps, args.steps, args.set, args.alpha_ratio)
    conditions = {name: attack for name, (_, _, attack) in grid.items()}
    model = HFModelAdapter.from_pretrained(args.model, dtype=args.dtype, device=args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tasks = {task.name: task}
    prints = fingerprint(model, tasks, conditions, args.seed)
    result = run_benchmark(model, tasks, conditions, out, batch_size=args.batch_size,
                           seed=args.seed, fingerprint=prints, progress=args.progress)
    document = metrics_document(result, prints, {"sweep": vars(args)})
    write_metrics(document, out)
    results = document["results"][task.name]
    (out / "table.md").write_text(format_table(document["results"]) + "\n")
    table = sweep_table(results, grid)
    threat = next(iter(conditions.values())).describe()["threat_model"]
    header = (f"{args.attack} on {task.name} ({model.name}); threat model: "
              + json.dumps({k: v for k, v in threat.items() if k not in ("eps", "alpha", "steps")})
              + (f"; alpha = {args.alpha_ratio:g} x eps" if args.alpha_ratio > 0 else ""))
    (out / "sweep.md").write_text(f"{header}\n\n{table}\n")
    plot(results, grid, f"{args.attack} on {task.name} ({model.name})", out / "sweep.png")
    print(table)
    print(f"\n{header}\nsweep.md, sweep.png, metrics.json and records in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
