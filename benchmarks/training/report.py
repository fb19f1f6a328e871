"""After a fine-tune: score base and trained model with the suite, compare, write the card.

The numbers come from the benchmark itself (`cli.run` on the same grid, seed and samples for
both checkpoints) and the paired comparison from `mibench compare` (exact McNemar, Holm), so
the model card shows what `mibench` would print, not a training-time estimate.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from mibench.atomic import write_text_atomic
from mibench.provenance import hub_id, shown_path
from mibench.results.compare import compare_runs, format_report, load_run
from mibench.results.metrics_file import metrics_of
from mibench.runner import CLEAN

CARD_FILE = "README.md"


def _plain(cfg: DictConfig, key: str) -> Any:
    node = cfg.get(key)
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def eval_config(cfg: DictConfig, model: dict, out_dir: Path) -> DictConfig:
    """The `mibench` config that scores `model` on this run's evaluation grid."""
    return OmegaConf.create({
        "model": model, "grid": _plain(cfg, "grid"), "task": _plain(cfg, "task"),
        "perturbation": _plain(cfg, "perturbation"),
        "logger": {"_target_": "mibench.loggers.NullLogger"},
        "seed": int(cfg.seed), "batch_size": int(cfg.eval.batch_size),
        "progress": bool(cfg.progress), "data_root": cfg.get("data_root"),
        "out_dir": str(out_dir)})


def trained_model_config(cfg: DictConfig, out_dir: Path) -> dict:
    """The base model's YAML, pointed at the saved weights (same adapter, dtype, prompt)."""
    model = _plain(cfg, "model")
    name = model.get("name") or str(model.get("path", "model")).rstrip("/").split("/")[-1]
    return {**model, "path": str(out_dir), "revision": None, "name": f"{name}-{cfg.train.name}"}


def evaluate_before_after(cfg: DictConfig, eval_root: Path, out_dir: Path) -> dict | None:
    """Score base and trained model (every process takes part; the main one returns)."""
    from mibench.cli import run

    documents = {}
    for label, model in (("base", _plain(cfg, "model")),
                         ("trained", trained_model_config(cfg, out_dir))):
        print(f"\n== {label} model: {model['name']} ==", flush=True)
        documents[label] = run(eval_config(cfg, model, eval_root / label))
    if documents["trained"] is None:
        return None
    a, b = load_run(eval_root / "base"), load_run(eval_root / "trained")
    tests = compare_runs(a, b)
    report = format_report(a, b, tests)
    (eval_root / "compare.md").write_text(report)
    print(f"\n{report}", flush=True)
    return {
        "dirs": {"base": str(eval_root / "base"), "trained": str(eval_root / "trained")},
        "base": metrics_of(documents["base"]).results,
        "trained": metrics_of(documents["trained"]).results,
        "compare": [{"task": t.task, "condition": t.condition, "metric": t.metric, "n": t.n,
                     "a": t.a, "b": t.b, "difference": t.difference.to_json(),
                     "b_count": t.mcnemar.b, "c_count": t.mcnemar.c,
                     "p": t.mcnemar.pvalue, "p_holm": t.p_holm} for t in tests],
    }


def _cells(results: dict) -> list[tuple[str, str]]:
    return [(task, cond) for task, conds in results.items() for cond in conds]


def _value(results: dict, task: str, cond: str) -> float:
    """Clean: accuracy %; a condition: its change vs clean in points (negative = worse)."""
    m = results[task][cond]
    return 100 * (m["accuracy"]["value"] if cond == CLEAN else -m["drop"]["value"]) + 0.0


def before_after_table(evaluation: dict) -> str:
    """Base vs trained, per cell: accuracy, change vs clean, and the paired test's Holm p."""
    tests = {(t["task"], t["condition"]): t for t in evaluation["compare"]
             if t["metric"] == "accuracy"}
    lines = ["| task | condition | base acc % | trained acc % | base change | trained change "
             "| Δacc (B−A) [95% CI] | McNemar p (Holm) |", "|" + "---|" * 8]
    base, trained = evaluation["base"], evaluation["trained"]
    for task, cond in _cells(trained):
        t = tests.get((task, cond))
        d = t["difference"] if t else None
        diff = "-" if d is None else (f"{100 * d['value']:+.1f} [{100 * d['low']:+.1f}, "
                                      f"{100 * d['high']:+.1f}]")
        p = "-" if t is None else f"{t['p_holm']:.2g}{' *' if t['p_holm'] < 0.01 else ''}"
        change = ("", "") if cond == CLEAN else (f"{_value(base, task, cond):+.1f}",
                                                 f"{_value(trained, task, cond):+.1f}")
        lines.append(
            f"| {task} | {cond} | {100 * base[task][cond]['accuracy']['value']:.1f} | "
            f"{100 * trained[task][cond]['accuracy']['value']:.1f} | {change[0]} | "
            f"{change[1]} | {diff} | {p} |")
    return "\n".join(lines)


def ablation_table(summaries: Sequence[dict]) -> str:
    """One row per recipe (and the base model): clean accuracy %, else change in points."""
    evaluated = [s for s in summaries if s.get("evaluation")]
    if not evaluated:
        return "| recipe | train min |\n|---|---|\n" + "\n".join(
            f"| {s['recipe']} | {s['train_minutes']:.1f} |" for s in summaries)
    cells = _cells(evaluated[0]["evaluation"]["trained"])
    head = " | ".join(f"{t} {c}" + (" acc %" if c == CLEAN else " Δ") for t, c in cells)
    lines = [f"| recipe | {head} | train min |", "|" + "---|" * (len(cells) + 2)]
    base = evaluated[0]["evaluation"]["base"]
    lines.append("| base | " + " | ".join(
        f"{_value(base, t, c):.1f}" if c == CLEAN else f"{_value(base, t, c):+.1f}"
        for t, c in cells) + " | - |")
    for s in evaluated:
        res = s["evaluation"]["trained"]
        lines.append(f"| {s['recipe']} | " + " | ".join(
            f"{_value(res, t, c):.1f}" if c == CLEAN else f"{_value(res, t, c):+.1f}"
            for t, c in cells) + f" | {s['train_minutes']:.1f} |")
    return "\n".join(lines)


def write_model_card(out_dir: Path, summary: dict, recipe_yaml: str) -> Path:
    """README.md next to the weights: base, recipe, data, seed, suite version, before/after."""
    base = summary["base"]
    evaluation = summary.get("evaluation")
    lines = [
        "---",
        *([f"base_model: {base['path']}"] if hub_id(base.get("path")) else []),
        "library_name: transformers",
        "tags: [mibench, modality-interference, mitigation]",
        "---",
        "",
        f"# {summary.get('name') or Path(summary['out_dir']).name}: {base.get('name')} "
        "fine-tuned against modality interference",
        "",
        f"Made by `mibench-train` (mibench {summary['suite_version']}, git "
        f"{summary.get('git_sha') or 'unknown'}) with the recipe **{summary['recipe']}**: the "
        "fine-tune of Cai et al. (arXiv 2505.19616), `L = L_sft(clean) + L_sft(perturbed) + "
        "L_adv + λ·L_cons`, each term weighted as in the recipe below.",
        "",
        *([f"Reproduce (same weights on the same CPU and thread count): `{summary['command']}`",
           ""] if summary.get("command") else []),
        "## Base checkpoint",
        f"- name: `{base.get('name')}`; hub id: `{hub_id(base.get('path')) or 'none (local)'}`;"
        f" revision: `{base.get('revision')}`; commit: `{base.get('commit')}`; "
        f"dtype: `{base.get('dtype')}`",
        f"- weights sha256 (weights, config and processor files): "
        f"`{base.get('weights_sha256')}`",
        "",
        "## Data and seed",
        f"- seed {summary['seed']}; {summary['data']['samples']} clean training samples from "
        "these tasks (train splits; the run refuses any sample id the evaluation scores):",
    ]
    for name, task in summary["data"]["tasks"].items():
        desc = ", ".join(f"{k}={v}" for k, v in task.items() if k not in ("_target_", "name"))
        lines.append(f"  - `{name}` ({desc})")
    lines += [
        f"- perturbed twins (label unchanged) from the suite's own plug-ins: "
        f"{', '.join(f'`{p}`' for p in summary['data']['perturbations'])}, seeded with a "
        "\"train\" salt, on train-split samples.",
        "- Honest caveat: the training perturbations come from the same families (and, for "
        "misleading text, the same caption template) as the evaluation's, as in the study; "
        "only the samples and seeds differ. Gains on those conditions measure robustness to "
        "the families trained on, not to unseen kinds of distraction.",
        "",
        f"Training: {summary['steps']} steps, {summary['trainable_parameters']:,} trainable "
        f"parameters, {summary['processes']} process(es), {summary['train_minutes']:.2f} min "
        f"of training wall time.",
        "",
        "## Before / after (scored by the suite)",
    ]
    if evaluation:
        lines += [
            "Accuracy %, change vs clean in points, paired difference with a 95% bootstrap "
            "interval and the exact McNemar test, Holm-adjusted across all cells (* p < 0.01). "
            f"Records: `{shown_path(evaluation['dirs']['base'])}` (base) and "
            f"`{shown_path(evaluation['dirs']['trained'])}` (trained).",
            "", before_after_table(evaluation), ""]
    else:
        lines += ["Not evaluated in this run (eval_after=false); score it with "
                  f"`mibench model=hf model.path={summary['out_dir']}`.", ""]
    lines += ["## Recipe (resolved training config)", "", "```yaml", recipe_yaml.rstrip(),
              "```", ""]
    path = write_text_atomic(out_dir / CARD_FILE, "\n".join(lines))
    write_text_atomic(out_dir / "training_summary.json", json.dumps(
        {k: v for k, v in summary.items() if k != "evaluation"}, indent=2, default=str) + "\n")
    return path
