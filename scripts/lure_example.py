"""The worked example of inverted lures on the embedded toy, from one command.

Runs, with the `mibench` command itself:
1. `perturbation=inverted_lure` on toy_text_heavy (the shipped settings, plus any variant);
2. `mibench lures` on it: the shapes judge's meaning check, the semantic/adversarial split,
   transfer to the other models (and the judge read leniently: a colour wash counts);
3. `perturbation=switched_image` on the same samples, scored by the source and each transfer
   model, and the same judge on the switched images (real renders: its calibration).
Then prints (and writes OUT/example.md) the comparison table the README shows.

    python scripts/lure_example.py --out lure_example --grid results/inverted_lure/grid.png \
        --transfer model=toy_llava_mitigated
    python scripts/lure_example.py --n 100 --variant 'answer=perturbation.objective=answer'
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import OmegaConf

import mibench.conf
from mibench.models.judges import ShapesJudge
from mibench.report import format_estimate
from mibench.runner import perturb_all
from mibench.scoring import proportion
from mibench.tasks.shapes import COLOUR_NAMES

TASK = "toy_text_heavy"
CONF = Path(mibench.conf.__file__).parent


def mibench(*args: str) -> None:
    command = [sys.executable, "-m", "mibench.cli", *args]
    print("$ mibench " + " ".join(shlex.quote(a) for a in args), flush=True)
    subprocess.run(command, check=True)


def metric(run: Path, condition: str, name: str) -> dict:
    document = json.loads((run / "metrics.json").read_text())
    return document["results"][TASK][condition][name]


def model_name(spec: str) -> str:
    """The run-folder label of a `model=...` override string."""
    return spec.split("model=", 1)[1].split()[0].replace("/", "_")


def switched_judged(n: int, seed: int) -> dict:
    """The shapes judge on the switched images of the same samples (their lures), the task
    and donors built from the shipped YAMLs as `mibench` builds them."""
    task = instantiate(OmegaConf.merge(OmegaConf.load(CONF / "task" / f"{TASK}.yaml"),
                                       {"n": n}))
    condition = instantiate(OmegaConf.load(CONF / "perturbation" / "switched_image.yaml"))
    samples = [s for s in perturb_all(task.samples(), condition, seed, TASK)
               if s.meta.get("lure") is not None]
    verdicts = ShapesJudge().verdicts([s.image for s in samples],
                                      [s.options for s in samples],
                                      [s.meta["lure"] for s in samples])
    return proportion([v.sees_lure for v in verdicts]).to_json()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="lure_example")
    parser.add_argument("--n", type=int, default=600, help="samples of toy_text_heavy")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--transfer", action="append", default=[],
                        help="mibench model overrides of a transfer model (repeatable)")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=OVERRIDES",
                        help="another inverted_lure setting, e.g. 'answer=perturbation."
                             "objective=answer' (repeatable)")
    parser.add_argument("--grid", default=None, help="PNG grid of the default run's images")
    args = parser.parse_args(argv)
    out = Path(args.out)
    common = [f"task={TASK}", f"task.n={args.n}", f"seed={args.seed}", "progress=false"]
    variants = {"shipped settings": []}
    for item in args.variant:
        name, _, overrides = item.partition("=")
        variants[name] = shlex.split(overrides)
    rows, kinds = [], ""
    for k, (name, overrides) in enumerate(variants.items()):
        run = out / f"inverted_lure_{k}"
        start = time.perf_counter()
        mibench(*common, "perturbation=inverted_lure", *overrides, f"hydra.run.dir={run}")
        wall = time.perf_counter() - start
        transfer = [a for spec in args.transfer for a in ("--transfer", spec)]
        grid = ["--grid", args.grid] if args.grid and k == 0 else []
        mibench("lures", str(run), "--judge-setting", "require_shape=false")
        lenient_document = json.loads((run / "lures.json").read_text())
        lenient = lenient_document["tasks"][TASK]
        mibench("lures", str(run), *transfer, *grid)  # the run keeps the shipped judge's
        document = json.loads((run / "lures.json").read_text())
        report = document["tasks"][TASK]
        if k == 0:
            kinds = by_kind(document["samples"], lenient_document["samples"])
        rows.append({"condition": f"inverted_lure ({name})", "judge": report["judge"][
            "sees_lure"], "judge_lenient": lenient["judge"]["sees_lure"],
            "n": report["n"], "source": report["source"]["lure_rate"],
            "transfer": {m: t["lure_rate"] for m, t in report["transfer"].items()},
            "split": report["split"], "interference": report["interference"]["lure_rate"],
            "attack": report["attack"]["lure_rate"],
            "seconds": report["seconds_per_image"]["mean"], "wall": wall})
    switched = {}
    for spec in ["model=toy_llava", *args.transfer]:
        run = out / f"switched_{model_name(spec)}"
        mibench(*common, *shlex.split(spec), "perturbation=switched_image",
                f"hydra.run.dir={run}")
        switched[model_name(spec)] = metric(run, "switched_image", "lure_rate")
    judged = switched_judged(args.n, args.seed)
    rows.insert(0, {"condition": "switched_image (real renders)", "judge": judged,
                    "judge_lenient": None, "n": judged["n"], "source": switched.pop("toy_llava"),
                    "transfer": switched, "split": None, "interference": None,
                    "attack": None, "seconds": None, "wall": None})
    table = render(rows, [model_name(s) for s in args.transfer], args.n) + "\n\n" + kinds
    (out / "example.md").write_text(table + "\n")
    print(table)


def by_kind(strict: list[dict], lenient: list[dict]) -> str:
    """The shipped run's rates by the kind of option the image was made for: a colour can be
    a wash of that colour, an object must be its shape."""
    lenient_sees = {(r["task"], r["sample_id"]): r["judge_sees_lure"] for r in lenient}
    header = ["lure kind", "n", "source lured %", "judge sees it %", "(lenient judge) %"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for kind, test in (("colour", lambda o: o in COLOUR_NAMES),
                       ("object", lambda o: o not in COLOUR_NAMES)):
        rows = [r for r in strict if test(r["option"])]
        if not rows:
            continue
        lines.append("| " + " | ".join([kind, str(len(rows)), *[format_estimate(
            proportion(values).to_json()) for values in (
                [r["source_lured"] for r in rows], [r["judge_sees_lure"] for r in rows],
                [lenient_sees[(r["task"], r["sample_id"])] for r in rows])]]) + " |")
    return "\n".join(lines)


def render(rows: list[dict], transfer: list[str], n: int) -> str:
    header = ["condition", "n", "judge sees the lure %", "(lenient judge) %",
              "toy_llava lure rate %", *[f"{m} lure rate %" for m in transfer],
              "semantic / adversarial lures", "s per image"]
    lines = [f"toy_text_heavy, {n} samples, seed 0; n: the samples with a lure", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        split = row["split"]
        lines.append("| " + " | ".join([
            row["condition"], str(row["n"]), format_estimate(row["judge"]),
            format_estimate(row["judge_lenient"]), format_estimate(row["source"]),
            *[format_estimate(row["transfer"].get(m)) for m in transfer],
            "-" if split is None else f"{split['semantic']} / {split['adversarial']}",
            "-" if row["seconds"] is None else f"{row['seconds']:.2f}"]) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
