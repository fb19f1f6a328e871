"""`mibench lures RUN`: the meaning check and transfer test of a run's inverted-lure images.

A run of `perturbation=inverted_lure` stores the source model's answers on the images it made
(records.jsonl) and the images themselves (PNG + JSON sidecar, in its cache). This report:
1. asks the condition's judge (never the source model: refused by weights digest) whether
   each image depicts its lure, and, as a control, whether the seeded start image does;
2. splits the samples: *semantic* lures (the source answered the lure and the judge sees it),
   *adversarial* lures (only the source model does), judge-only and neither; judge agreement;
3. scores the same images on other models (`--transfer "model=NAME ..."`, any `model=`);
4. reports the source's lure rate on judge-confirmed images as *interference* (a picture of a
   wrong option moved the answer) and on the other images as an *attack*, each with a Wilson
   interval. The leaderboard counts the whole condition with the attacks.

Writes RUN/lures.json and RUN/lures.md (and a picture grid with `--grid`), prints the tables.

    mibench lures outputs/<run> --transfer model=toy_llava_mitigated --grid lures.png
"""

from __future__ import annotations

import argparse
import json
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image, ImageDraw

from .atomic import write_text_atomic
from .bounded_json import read_json_file
from .errors import MibenchError
from .records import Record, Sample
from .report import format_estimate
from .results.metrics_file import MAX_METRICS_BYTES, MAX_METRICS_DEPTH, METRICS_FILE
from .runner import CLEAN
from .scoring import Estimate, proportion
from .seeding import stable_seed
from .store import FINGERPRINT_FILE, RECORDS_FILE, read_records

REPORT_JSON, REPORT_MD = "lures.json", "lures.md"
SCHEMA_VERSION = 1
MAX_SIDECAR_BYTES = 1 << 20


class LureReportError(MibenchError, ValueError):
    """A run whose lure images cannot be checked; the message says which and what to do."""


@dataclass
class Row:
    """One sample: its image and what each observer said about it."""

    task: str
    sample: Sample  # with its image
    target: int
    seed: int
    clean: Record
    lured: Record
    start: Image.Image
    sidecar: dict
    judge_sees: bool = False
    judge_choice: int | None = None
    judge_p_lure: float = 0.0
    judge_sees_start: bool = False
    transfer: dict[str, dict] = field(default_factory=dict)

    @property
    def source_lured(self) -> bool:
        return self.lured.prediction == self.target


# -- reading a run -----------------------------------------------------------------------------
def _read(run: Path, name: str) -> dict:
    path = run / name
    if not path.is_file():
        raise LureReportError(f"{run}: no {name}; give the directory a `mibench` run wrote")
    return read_json_file(path, MAX_METRICS_BYTES, MAX_METRICS_DEPTH)


def _configured_cache_dir(metrics: dict, condition: str) -> str | None:
    """The cache_dir the run was configured with (metrics.json's resolved config), if any."""
    config = metrics.get("config") or {}
    for node in ((config.get("perturbation") or {}),
                 ((config.get("grid") or {}).get("conditions") or {}).get(condition) or {}):
        if isinstance(node, dict) and node.get("name") == condition:
            value = node.get("cache_dir")
            return value if isinstance(value, str) else None
    return None


def load_rows(run: Path, condition: str, cache_dir: str | None):
    """The condition (rebuilt from the run's fingerprint), the source digest, and per
    scored sample its image, records and sidecar."""
    from mibench.models.judges import check_independent
    from mibench.perturbations.inversion import Parametrization
    from mibench.perturbations.inverted_lure import InvertedLure

    fingerprint = _read(run, FINGERPRINT_FILE)
    description = (fingerprint.get("conditions") or {}).get(condition)
    if description is None:
        raise LureReportError(f"{run}: the run has no condition {condition!r} (it has "
                              f"{sorted(fingerprint.get('conditions') or {})})")
    metrics = _read(run, METRICS_FILE) if (run / METRICS_FILE).is_file() else {}
    cache_dir = cache_dir or _configured_cache_dir(metrics, condition)
    attack = InvertedLure.from_description(description, cache_dir, where=str(run))
    model_info = fingerprint.get("model") or {}
    digest = model_info.get("weights_sha256")
    if not isinstance(digest, str):
        raise LureReportError(f"{run}: the source model has no weights digest, so its "
                              "images were not cached; nothing to check")
    if attack.judge is not None:
        check_independent(attack.judge, digest, str(model_info.get("name")))
    seed = fingerprint.get("seed")
    if not isinstance(seed, int):
        raise LureReportError(f"{run}: {FINGERPRINT_FILE} has no integer seed")
    records = read_records(run / RECORDS_FILE)
    by_key = {r.key: r for r in records}
    rows: list[Row] = []
    missing = []
    prior = attack._prior
    for record in sorted(records, key=lambda r: r.key):
        if record.condition != condition:
            continue
        clean = by_key.get((record.task, CLEAN, record.sample_id))
        if clean is None or record.lure is None:
            raise LureReportError(f"{run}: sample {record.sample_id!r} of task "
                                  f"{record.task!r} has no clean record or no lure")
        sample_seed = stable_seed(seed, record.task, condition, record.sample_id)
        key = attack.key(digest, sample_seed, record.lure)
        found = attack.cache.load(key, {})
        if found is None:
            missing.append(record.sample_id)
            continue
        image, sidecar = found
        sample = _sample(sidecar, record, image, run)
        side = tuple(int(d) for d in sidecar.get("side") or image.size[::-1])
        start = Parametrization(prior, side)
        with torch.no_grad():
            first = start(start.init([sample_seed], torch.float64, torch.device("cpu")))[0]
        start_image = Image.fromarray(
            (first.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy(), "RGB")
        rows.append(Row(record.task, sample, record.lure, sample_seed, clean, record,
                        start_image, sidecar))
    if missing:
        raise LureReportError(
            f"{run}: {len(missing)} image(s) of {condition!r} are not in the cache "
            f"{attack.cache.root} (e.g. samples {missing[:3]}); rerun the run's command to "
            "make them again, or give --cache-dir where they are")
    if not rows:
        raise LureReportError(f"{run}: no records of condition {condition!r}")
    return attack, model_info, rows


def _sample(sidecar: dict, record: Record, image: Image.Image, run: Path) -> Sample:
    """The sample the image was made for, from its sidecar (data: checked against the run)."""
    fields = sidecar.get("sample")
    try:
        sample = Sample(id=fields["id"], question=fields["question"],
                        options=tuple(fields["options"]), answer=int(fields["answer"]),
                        category=fields["category"], image=image,
                        distractor=fields.get("distractor") or "")
    except (KeyError, TypeError, ValueError) as err:
        raise LureReportError(f"{run}: the sidecar of sample {record.sample_id!r} does not "
                              f"describe a sample ({err})") from err
    if (sample.id, sample.answer, len(sample.options)) != (
            record.sample_id, record.gold, len(record.probs)):
        raise LureReportError(f"{run}: the cached image of sample {record.sample_id!r} was "
                              "made for another sample")
    return sample


# -- observers -----------------------------------------------------------------------------------
def judge_rows(judge, rows: Sequence[Row]) -> None:
    """The judge's verdict on each image and on its seeded start image."""
    options = [r.sample.options for r in rows]
    targets = [r.target for r in rows]
    for row, verdict, start in zip(
            rows, judge.verdicts([r.sample.image for r in rows], options, targets),
            judge.verdicts([r.start for r in rows], options, targets)):
        row.judge_sees, row.judge_choice = verdict.sees_lure, verdict.choice
        row.judge_p_lure, row.judge_sees_start = verdict.p_lure, start.sees_lure


def load_model(spec: str):
    """A model from `mibench` overrides ("model=toy_llava_mitigated", "model=hf
    model.path=ORG/NAME"): the user's own command line, composed as `mibench` composes it."""
    from hydra import compose, initialize_config_module
    from hydra.utils import instantiate

    import mibench.cli  # noqa: F401  (registers the config's resolvers)

    overrides = shlex.split(spec)
    if not any(o.startswith("model=") for o in overrides):
        raise LureReportError(f"--transfer {spec!r}: name a model, e.g. "
                              "--transfer model=toy_llava_mitigated")
    with initialize_config_module("mibench.conf", version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    return instantiate(cfg.model)


def transfer_rows(model, rows: Sequence[Row], batch_size: int) -> None:
    """The same images (and the clean questions) scored by another model."""
    by_task: dict[str, list[Row]] = {}
    for row in rows:
        by_task.setdefault(row.task, []).append(row)
    for task, group in by_task.items():
        model.check_samples(task, [r.sample for r in group])
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        with_image = model.option_probs([r.sample for r in chunk])
        clean = model.option_probs([_without_image(r.sample) for r in chunk])
        for row, p, q in zip(chunk, with_image, clean):
            row.transfer[model.name] = {"prediction": int(np.argmax(p)),
                                        "clean_prediction": int(np.argmax(q))}


def _without_image(sample: Sample) -> Sample:
    from dataclasses import replace

    return replace(sample, image=None)


# -- the report ----------------------------------------------------------------------------------
def _kappa(a: np.ndarray, b: np.ndarray) -> float | None:
    """Cohen's kappa of two binary ratings (None where chance agreement is 1)."""
    observed = float((a == b).mean())
    pa, pb = a.mean(), b.mean()
    chance = float(pa * pb + (1 - pa) * (1 - pb))
    return None if chance == 1 else (observed - chance) / (1 - chance)


def _est(flags: Sequence[bool]) -> dict:
    return proportion(np.asarray(flags, dtype=bool)).to_json()


def task_summary(rows: Sequence[Row], source: str) -> dict:
    lured = np.array([r.source_lured for r in rows])
    sees = np.array([r.judge_sees for r in rows])
    flips = np.array([r.lured.prediction != r.clean.prediction for r in rows])
    seconds = [r.sidecar.get("seconds") for r in rows if r.sidecar.get("seconds") is not None]
    summary = {
        "n": len(rows),
        "seconds_per_image": {"mean": float(np.mean(seconds)) if seconds else None,
                              "median": float(np.median(seconds)) if seconds else None,
                              "images_timed": len(seconds)},
        "source": {"model": source, "lure_rate": _est(lured),
                   "accuracy": _est([r.lured.correct for r in rows]),
                   "clean_accuracy": _est([r.clean.correct for r in rows]),
                   "flip_rate": _est(flips)},
        "judge": {"sees_lure": _est(sees),
                  "sees_lure_at_start": _est([r.judge_sees_start for r in rows]),
                  "none": _est([r.judge_choice is None for r in rows]),
                  "agreement_with_source": _est(lured == sees),
                  "kappa_with_source": _kappa(lured, sees)},
        "split": {"semantic": int((lured & sees).sum()), "adversarial": int((lured & ~sees).sum()),
                  "judge_only": int((~lured & sees).sum()), "neither": int((~lured & ~sees).sum())},
        # interference counts only pictures the judge confirms; the rest is an attack
        "interference": {"n": int(sees.sum()), "lure_rate": _est(lured[sees]),
                         "flip_rate": _est(flips[sees])},
        "attack": {"n": int((~sees).sum()), "lure_rate": _est(lured[~sees]),
                   "flip_rate": _est(flips[~sees])},
        "transfer": {},
    }
    for name in rows[0].transfer if rows else ():
        hit = np.array([r.transfer[name]["prediction"] == r.target for r in rows])
        moved = np.array([r.transfer[name]["prediction"] != r.transfer[name]["clean_prediction"]
                          for r in rows])
        summary["transfer"][name] = {
            "lure_rate": _est(hit), "lure_rate_judge_confirmed": _est(hit[sees]),
            "lure_rate_other": _est(hit[~sees]),
            "lure_rate_on_source_adversarial": _est(hit[lured & ~sees]),
            "flip_rate": _est(moved),
            "accuracy": _est([r.transfer[name]["prediction"] == r.sample.answer for r in rows]),
            "clean_accuracy": _est([r.transfer[name]["clean_prediction"] == r.sample.answer
                                    for r in rows]),
        }
    return summary


def lure_report(run: str | Path, condition: str = "inverted_lure",
                transfer: Sequence[str] = (), cache_dir: str | None = None,
                batch_size: int = 32, judge_settings: dict | None = None
                ) -> tuple[dict, list[Row]]:
    """The report document and the rows it was computed from. `judge_settings` changes the
    run's judge (e.g. {"threshold": 0.7}): same weights, another reading."""
    from mibench.models.judges import check_independent, judge_from_description

    run = Path(run)
    attack, model_info, rows = load_rows(run, condition, cache_dir)
    judge = attack.judge
    if judge is not None and judge_settings:
        judge = judge_from_description({**judge.describe(), **judge_settings}, "--judge-setting")
        check_independent(judge, model_info.get("weights_sha256"), str(model_info.get("name")))
    if judge is not None:
        judge_rows(judge, rows)
    models = {}
    for spec in transfer:
        model = load_model(spec)
        if model.describe().get("weights_sha256") == model_info.get("weights_sha256"):
            raise LureReportError(f"--transfer {spec!r} is the source model itself")
        transfer_rows(model, rows, batch_size)
        models[model.name] = {"spec": spec,
                              "weights_sha256": model.describe().get("weights_sha256")}
    tasks = sorted({r.task for r in rows})
    document = {
        "schema_version": SCHEMA_VERSION, "run": str(run), "condition": condition,
        "source": {k: model_info.get(k) for k in ("name", "path", "weights_sha256")},
        "judge": None if judge is None else judge.describe(),
        "threat_model": attack.threat_model(), "transfer_models": models,
        "tasks": {t: task_summary([r for r in rows if r.task == t],
                                  str(model_info.get("name"))) for t in tasks},
        "samples": [{
            "task": r.task, "sample_id": r.sample.id, "target": r.target,
            "option": r.sample.options[r.target], "source_prediction": r.lured.prediction,
            "clean_prediction": r.clean.prediction, "source_lured": r.source_lured,
            "judge_sees_lure": r.judge_sees, "judge_choice": r.judge_choice,
            "judge_p_lure": round(r.judge_p_lure, 6), "judge_sees_start": r.judge_sees_start,
            "transfer": {m: t["prediction"] for m, t in r.transfer.items()},
        } for r in rows],
    }
    return document, rows


def format_report(document: dict) -> str:
    """Markdown: per task, one row per observer (source, judge, transfer models)."""
    judge = document.get("judge") or {}
    lines = [f"# Inverted lures: {document['condition']} ({document['run']})", "",
             f"Judge: {judge.get('kind', 'none')} (sees the lure: its top choice with p >= "
             f"{judge.get('threshold', '-')})." if judge else
             "No judge: every lure counts as adversarial.", ""]
    for task, s in document["tasks"].items():
        split, j, src = s["split"], s["judge"], s["source"]
        secs = s["seconds_per_image"]["mean"]
        lines += [
            f"## {task} (n = {s['n']})", "",
            "| observer | lure rate % (all images) | on judge-confirmed images | on the other "
            "images | flip rate % | accuracy % | clean accuracy % |",
            "|---|---|---|---|---|---|---|",
            f"| source: {src['model']} | {format_estimate(src['lure_rate'])} | "
            f"{format_estimate(s['interference']['lure_rate'])} | "
            f"{format_estimate(s['attack']['lure_rate'])} | {format_estimate(src['flip_rate'])} "
            f"| {format_estimate(src['accuracy'])} | {format_estimate(src['clean_accuracy'])} |",
        ]
        for name, t in s["transfer"].items():
            lines.append(
                f"| transfer: {name} | {format_estimate(t['lure_rate'])} | "
                f"{format_estimate(t['lure_rate_judge_confirmed'])} | "
                f"{format_estimate(t['lure_rate_other'])} | {format_estimate(t['flip_rate'])} | "
                f"{format_estimate(t['accuracy'])} | {format_estimate(t['clean_accuracy'])} |")
        kappa = j["kappa_with_source"]
        lines += [
            "",
            f"- judge sees the lure in {format_estimate(j['sees_lure'])} % of the images "
            f"(in {format_estimate(j['sees_lure_at_start'])} % of the seeded start images; "
            f"says 'no shape/none' for {format_estimate(j['none'])} %)",
            f"- split: semantic lures {split['semantic']} (source and judge), adversarial "
            f"lures {split['adversarial']} (source only), judge only {split['judge_only']}, "
            f"neither {split['neither']}; judge-source agreement "
            f"{format_estimate(j['agreement_with_source'])} %, kappa "
            f"{'-' if kappa is None else f'{kappa:.2f}'}",
            f"- interference (judge-confirmed images, n = {s['interference']['n']}): lure rate "
            f"{format_estimate(s['interference']['lure_rate'])} %; attack (other images, n = "
            f"{s['attack']['n']}): lure rate {format_estimate(s['attack']['lure_rate'])} %",
            f"- time per image (when made): "
            f"{'-' if secs is None else f'{secs:.2f} s'} "
            f"({s['seconds_per_image']['images_timed']} images)", ""]
    return "\n".join(lines)


def picture_grid(rows: Sequence[Row], path: str | Path, n: int = 32, columns: int = 8,
                 scale: int = 3) -> Path:
    """The first n images (sample-id order), each over its target option's name; the frame
    says who sees the lure: green both (semantic), red only the source (adversarial), blue
    only the judge, grey neither."""
    rows = list(rows)[:n]
    side = max(max(r.sample.image.size) for r in rows) * scale
    cell_w, cell_h = side + 8, side + 20
    grid = Image.new("RGB", (cell_w * columns, cell_h * ((len(rows) + columns - 1) // columns)),
                     (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    colours = {(True, True): (30, 160, 60), (True, False): (210, 40, 40),
               (False, True): (40, 80, 220), (False, False): (150, 150, 150)}
    for k, row in enumerate(rows):
        x, y = cell_w * (k % columns), cell_h * (k // columns)
        frame = colours[(row.source_lured, row.judge_sees)]
        draw.rectangle((x + 1, y + 1, x + side + 6, y + side + 6), fill=frame)
        tile = row.sample.image.convert("RGB").resize((side, side), Image.NEAREST)
        grid.paste(tile, (x + 4, y + 4))
        draw.text((x + 4, y + side + 7), row.sample.options[row.target], fill=(0, 0, 0))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return path


def write_report(document: dict, run: Path) -> tuple[Path, Path]:
    json_path = write_text_atomic(run / REPORT_JSON, json.dumps(document, indent=2) + "\n")
    md_path = write_text_atomic(run / REPORT_MD, format_report(document) + "\n")
    return json_path, md_path


def lures_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="mibench lures", description="Meaning check and transfer test of a run's "
        "inverted-lure images; writes RUN/lures.json and RUN/lures.md.")
    parser.add_argument("run", help="a `mibench` run directory with an inverted_lure condition")
    parser.add_argument("--condition", default="inverted_lure")
    parser.add_argument("--transfer", action="append", default=[], metavar="OVERRIDES",
                        help="another model to score the same images on, as mibench overrides "
                             "(repeatable), e.g. 'model=toy_llava_mitigated'")
    parser.add_argument("--cache-dir", default=None,
                        help="where the images are (default: the run's cache_dir)")
    parser.add_argument("--judge-setting", action="append", default=[], metavar="KEY=VALUE",
                        help="read with the run's judge otherwise, e.g. threshold=0.7 or "
                             "require_shape=false (repeatable)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--grid", default=None, help="also write a PNG grid of the images here")
    parser.add_argument("--grid-n", type=int, default=32)
    args = parser.parse_args(list(argv))
    try:
        settings = {}
        for item in args.judge_setting:
            key, sep, value = item.partition("=")
            if not sep:
                raise LureReportError(f"--judge-setting {item!r}: write KEY=VALUE")
            settings[key.strip()] = yaml.safe_load(value)
        document, rows = lure_report(args.run, args.condition, args.transfer, args.cache_dir,
                                     args.batch_size, settings)
        json_path, _ = write_report(document, Path(args.run))
        if args.grid:
            picture_grid(rows, args.grid, args.grid_n)
    except MibenchError as err:
        print(f"{type(err).__name__}: {err}")
        return 1
    print(format_report(document))
    print(f"written: {json_path} and {REPORT_MD}" + (f"; grid {args.grid}" if args.grid else ""))
    return 0


__all__ = ["Estimate", "format_report", "lure_report", "lures_main", "picture_grid"]
