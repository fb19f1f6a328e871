"""`mibench show RUN ID`: one sample under every condition, as the model was shown it.

For each condition: the rendered prompt (from prompts.jsonl, by the digest in the record),
the added text, the image (rebuilt from the run's config and saved as a PNG: the same seeded
perturbation the run applied), the option distribution and the answer. The run's config is
rebuilt through the config guard (allowlisted plug-ins only), so a run directory from
elsewhere is read as data.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .audit import plain_meta, read_prompts
from .errors import MibenchError
from .images import ImageRef
from .records import CLEAN, OPTION_LETTERS, Record, Sample
from .results.metrics_file import METRICS_FILE, read_metrics
from .seeding import rng_for, stable_seed
from .store import RECORDS_FILE, SHARDS_DIR, read_records


class ShowError(MibenchError, LookupError):
    """The run or the sample asked for is not there; the message says what is."""


@dataclass(frozen=True)
class Shown:
    """One condition of the sample: its record, and what rebuilding it gave (if it could)."""

    record: Record
    sample: Sample | None = None
    image_path: Path | None = None
    image_source: str = ""
    mismatch: str = ""  # how the rebuilt sample differs from the recorded audit, if it does


def run_records(run: Path) -> list[Record]:
    """Every record of a run directory (merged file and shards of a run still going)."""
    if not run.is_dir():
        raise ShowError(f"{run}: not a run directory")
    records = {r.key: r for r in read_records(run / RECORDS_FILE)}
    for shard in sorted((run / SHARDS_DIR).glob("rank-*.jsonl")):
        for record in read_records(shard):
            records.setdefault(record.key, record)
    if not records:
        raise ShowError(f"{run}: no records ({RECORDS_FILE}); is it a mibench run directory?")
    return list(records.values())


def pick(records: Sequence[Record], sample_id: str, task: str | None) -> list[Record]:
    """The sample's records (of `task`), clean first; errors say which ids and tasks exist."""
    found = [r for r in records if r.sample_id == sample_id and task in (None, r.task)]
    tasks = sorted({r.task for r in found})
    if not found:
        ids = sorted({r.sample_id for r in records if task in (None, r.task)})
        near = [i for i in ids if sample_id in i or i in sample_id][:5] or ids[:5]
        where = f" in task {task!r}" if task else ""
        raise ShowError(f"no sample {sample_id!r}{where} in this run ({len(ids)} ids, e.g. "
                        f"{', '.join(near)})")
    if len(tasks) > 1:
        raise ShowError(f"sample {sample_id!r} is in tasks {tasks}; say which with --task")
    return sorted(found, key=lambda r: (r.condition != CLEAN, r.condition))


def rebuild(run: Path, records: Sequence[Record], out: Path, data_root: str | None
            ) -> tuple[list[Shown], str]:
    """Each record with its rebuilt sample and saved image; or the records alone and why not.

    The samples come from the run's own config (metrics.json), each condition applied with
    the seed the run used, and are checked against the recorded audit.
    """
    metrics_file = run / METRICS_FILE
    if not metrics_file.is_file():
        return [Shown(r) for r in records], f"no {METRICS_FILE} yet: images not rebuilt"
    from .results.submission_io import SubmissionError
    from .results.submission_validate import build_plugins_from_config

    document = read_metrics(metrics_file).document
    task_name, sample_id = records[0].task, records[0].sample_id
    try:
        tasks, conditions = build_plugins_from_config(document.get("config", {}),
                                                      str(metrics_file), data_root)
        sample = next((s for s in tasks[task_name].samples() if s.id == sample_id), None)
    except (SubmissionError, KeyError, OSError, ValueError) as err:
        return [Shown(r) for r in records], f"the run's tasks could not be rebuilt ({err})"
    if sample is None:
        return [Shown(r) for r in records], (f"task {task_name!r} no longer yields "
                                             f"{sample_id!r}")
    seed = int(document.get("seed", 0))
    shown = []
    for record in records:
        if record.condition == CLEAN:
            perturbed = sample
        elif record.condition not in conditions:
            shown.append(Shown(record, mismatch="condition not in the run's config"))
            continue
        else:
            perturbed = _apply(conditions[record.condition], sample, seed, task_name)
        source = _image_source(sample, perturbed)
        path = None
        if perturbed.image is not None:
            out.mkdir(parents=True, exist_ok=True)
            path = out / f"{_safe(task_name)}__{_safe(record.condition)}__{_safe(sample_id)}.png"
            perturbed.image.convert("RGB").save(path, format="PNG")
        shown.append(Shown(record, perturbed, path, source, _mismatch(record, perturbed)))
    return shown, ""


def _apply(condition: object, sample: Sample, seed: int, task: str) -> Sample:
    """The condition as the runner applied it: same rng, or an attack's seeded base."""
    from mibench.perturbations.base import Attack

    if isinstance(condition, Attack):
        return condition.apply_base([sample], [stable_seed(seed, task, condition.name,
                                                           sample.id)])[0]
    return condition.apply(sample, rng_for(seed, task, condition.name, sample.id))


def _image_source(original: Sample, shown: Sample) -> str:
    if shown.image is None:
        return "no image"
    # a dataset's image names where it was read (file, or row of a split)
    where = f", from {shown.image.where}" if isinstance(shown.image, ImageRef) else ""
    if shown.image is original.image:
        return f"the sample's own image{where}"
    if "donor" in shown.meta:
        return f"switched: the image of sample {shown.meta['donor']!r}{where}"
    return "made by the condition"


def _mismatch(record: Record, sample: Sample) -> str:
    if record.audit is None:
        return ""
    differs = []
    if record.audit.meta != plain_meta(sample.meta):
        differs.append(f"meta {dict(record.audit.meta)} vs rebuilt {plain_meta(sample.meta)}")
    if not sample.distractor.startswith(record.audit.distractor.rstrip("…")):
        differs.append("added text")
    return "; ".join(differs)


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)[:80]


def format_shown(shown: Sequence[Shown], prompts: dict[str, str], note: str = "") -> str:
    """The text `mibench show` prints."""
    first = shown[0]
    rec = first.record
    sample = next((s.sample for s in shown if s.sample is not None), None)
    head = f"sample {rec.sample_id!r} of task {rec.task!r}"
    if sample is not None:
        head += f" ({sample.category}); gold {_option(sample, rec.gold)}"
    lines = [head]
    if rec.audit is not None and rec.audit.meta:
        lines.append("meta: " + ", ".join(f"{k}={v}" for k, v in rec.audit.meta.items()))
    if note:
        lines.append(f"({note})")
    for item in shown:
        r = item.record
        lines += ["", f"== {r.condition} =="]
        if r.audit is None:
            lines.append("prompt: not recorded (records written before the audit trail)")
        else:
            text = prompts.get(r.audit.prompt)
            lines.append(f"prompt (sha256 {r.audit.prompt[:12]}…):")
            lines += ([f"  | {line}" for line in text.splitlines()] if text is not None
                      else ["  (text not in prompts.jsonl)"])
            if r.audit.distractor:
                lines.append(f"added text: {r.audit.distractor!r}")
            extra = {k: v for k, v in r.audit.meta.items()
                     if rec.audit is None or rec.audit.meta.get(k) != v}
            if extra and r.condition != CLEAN:
                lines.append("noted by the condition: "
                             + ", ".join(f"{k}={v}" for k, v in extra.items()))
        if item.image_path is not None:
            size = item.sample.image.size if item.sample is not None else None
            lines.append(f"image: {item.image_path} ({item.image_source}"
                         f"{f', {size[0]}x{size[1]}' if size else ''})")
        elif item.sample is not None:
            lines.append("image: none")
        if item.mismatch:
            lines.append(f"WARNING: the rebuilt sample differs from the record ({item.mismatch})"
                         "; what is shown here may not be what was scored")
        if r.generated is not None:  # scorer=generate: what the model wrote, each ask
            lines += [f"response {i + 1}: {text!r}" for i, text in
                      enumerate(r.generated.responses)]
        if r.probs is None:
            lines.append("options: no distribution (generated without log-probabilities)")
        else:
            lines.append("options:")
            for k, p in enumerate(r.probs):
                marks = [m for m, hit in (("gold", k == r.gold), ("answer", k == r.prediction),
                                          ("lure", k == r.lure)) if hit]
                name = _option(item.sample, k) if item.sample is not None else OPTION_LETTERS[k]
                bar = "#" * round(20 * p)
                lines.append(f"  {name:<28} {p:6.3f} {bar:<20} {' '.join(marks)}".rstrip())
        verdict = "correct" if r.correct else "wrong"
        if r.prediction is None:
            failure = r.generated.failure if r.generated is not None else None
            lines.append(f"answer: none read ({failure or 'no option'}; wrong)")
        else:
            lines.append(f"answer: {OPTION_LETTERS[r.prediction]} ({verdict})")
    return "\n".join(lines)


def _option(sample: Sample, index: int) -> str:
    text = sample.options[index]
    return f"{OPTION_LETTERS[index]}. {text if len(text) <= 24 else text[:23] + '…'}"


def show_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="mibench show",
        description="One sample of a run under every condition: prompt, added text, image "
                    "(saved as PNG), option distribution, answer.")
    parser.add_argument("run", help="a run directory (records.jsonl, prompts.jsonl)")
    parser.add_argument("sample_id", help="the sample's id, as in records.jsonl")
    parser.add_argument("--task", help="the task, where the id is in several")
    parser.add_argument("--out", help="where the images go (default: RUN/show)")
    parser.add_argument("--data-root", help="local dataset copies, for a run that used them")
    args = parser.parse_args(argv)
    run = Path(args.run)
    try:
        records = pick(run_records(run), args.sample_id, args.task)
        shown, note = rebuild(run, records, Path(args.out) if args.out else run / "show",
                              args.data_root)
    except (ShowError, ValueError) as err:
        print(f"mibench show: {err}", file=sys.stderr)
        return 1
    digests = [r.audit.prompt for r in records if r.audit is not None]
    print(format_shown(shown, read_prompts(run, digests), note))
    return 0
