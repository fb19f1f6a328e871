"""`mibench diagnose`: measure a model's modality gap, separability and clean entropy on a
task, from its own activations, and write diagnostics.json beside the run's metrics.json.

    mibench diagnose model=toy_llava                      # the default grid's tasks
    mibench diagnose model=toy_llava task=toy_image_heavy --layer 2 --layer -1
    mibench diagnose model=toy_llava --on switched_image  # text-only tasks, under an image
    mibench diagnose --across RUN RUN RUN ...             # Spearman vs interference scores

The model is reached only through `DifferentiableAdapter` (encode, embed, hidden_states,
image/text positions, letter logits). Measured on each task's clean samples (`--on NAME`:
under that condition, where it applies: a text-only task has no image tokens to measure).
Hydra overrides pick model, task or benchmark as for `mibench`, so the file lands in the
directory `mibench` with the same overrides writes (or `--out`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from mibench import __version__

from .diagnostics import (
    PROBE_L2,
    PROBE_TEST_SHARE,
    TokenSums,
    entropy_bits,
    modality_gap,
    probe_separability,
)
from .errors import MibenchError
from .records import Sample
from .report import git_sha
from .scoring import mean, proportion
from .seeding import rng_for

DIAGNOSTICS_FILE = "diagnostics.json"
SCHEMA_VERSION = 1
MAX_TOKENS = 8  # per sample and modality, for the probe (centroids use every token)

DEFINITIONS = {
    "gap_l2": "L2 distance between the centroid (mean) of all image-token vectors and that of "
              "all text-token vectors (every real, non-image position: prompt and template)",
    "gap_l2_unit": "the same between centroids of unit-normalised vectors (Liang et al. 2022)",
    "gap_cosine": "1 - cosine similarity of the two raw centroids",
    "probe": "balanced accuracy of a class-balanced, L2-regularised logistic probe telling "
             "image from text tokens, trained and tested on disjoint samples",
    "entropy_bits": "mean Shannon entropy (bits) of the clean option distribution",
    "layers": "0 = the language model's input sequence (image features after the projector); "
              "k = after k decoder layers; the last is the output after the final norm; "
              "negative counts from the end",
    "intervals": "gaps: percentile bootstrap over samples; probe: over test samples; "
                 "entropy, accuracy: as the suite's metrics",
}


class DiagnoseError(MibenchError, ValueError):
    """A diagnosis that cannot be made; the message says why and what to do."""


@dataclass(frozen=True)
class Settings:
    """What a diagnosis depends on besides the model and the samples."""

    layers: tuple[int, ...] = (-1,)
    max_tokens: int = MAX_TOKENS
    test_share: float = PROBE_TEST_SHARE
    probe_l2: float = PROBE_L2
    seed: int = 0
    limit: int | None = None
    on: str | None = None
    batch_size: int = 32


@dataclass
class _Collected:
    """Everything one task's passes leave behind, per layer."""

    sums: dict[int, TokenSums]
    features: dict[int, list[np.ndarray]] = field(default_factory=dict)
    labels: list[np.ndarray] = field(default_factory=list)
    groups: list[np.ndarray] = field(default_factory=list)
    entropies: list[float] = field(default_factory=list)
    correct: list[bool] = field(default_factory=list)
    image_tokens: list[int] = field(default_factory=list)
    text_tokens: list[int] = field(default_factory=list)


def _subsample(rows: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    return rows if rows.size <= k else np.sort(rng.choice(rows, size=k, replace=False))


def _collect(model, samples: Sequence[Sample], settings: Settings) -> _Collected:
    """One clean pass per batch (plus one per extra layer): token sums, probe tokens, the
    option distributions' entropy."""
    from mibench.models.base import option_distributions

    layers = tuple(dict.fromkeys((0, *settings.layers)))
    out = _Collected({layer: TokenSums.empty() for layer in layers},
                     {layer: [] for layer in layers})
    for start in range(0, len(samples), settings.batch_size):
        chunk = list(samples[start:start + settings.batch_size])
        embedded = model.embed(model.encode(chunk))
        states = {0: embedded.embeds, **{layer: model.hidden_states(embedded, layer=layer)
                                         for layer in layers if layer != 0}}
        states = {k: v.detach().double().cpu().numpy() for k, v in states.items()}
        image = model.image_positions(embedded).cpu().numpy()
        text = model.text_positions(embedded).cpu().numpy()
        dists = option_distributions(model.letter_logits(embedded.logits, chunk), chunk)
        for i, sample in enumerate(chunk):
            out.entropies.append(entropy_bits(dists[i]))
            out.correct.append(int(dists[i].argmax()) == sample.answer)
            rows_image, rows_text = np.flatnonzero(image[i]), np.flatnonzero(text[i])
            if rows_image.size == 0 or rows_text.size == 0:
                continue
            out.image_tokens.append(int(rows_image.size))
            out.text_tokens.append(int(rows_text.size))
            rng = rng_for(settings.seed, "probe", sample.id)
            pick_image = _subsample(rows_image, settings.max_tokens, rng)
            pick_text = _subsample(rows_text, settings.max_tokens, rng)
            for layer, h in states.items():
                out.sums[layer].add(h[i][rows_image], h[i][rows_text])
                out.features[layer].append(
                    np.vstack([h[i][pick_image], h[i][pick_text]]).astype(np.float32))
            out.labels.append(np.r_[np.ones(pick_image.size, bool), np.zeros(pick_text.size, bool)])
            out.groups.append(np.full(pick_image.size + pick_text.size, len(out.groups)))
    return out


def measure(model, samples: Sequence[Sample], settings: Settings, measured_on: str = "clean"
            ) -> dict:
    """One task's diagnostics (a JSON-able dict): per layer the gaps and the probe, and the
    clean option distribution's entropy and accuracy."""
    if not samples:
        raise DiagnoseError("no samples to diagnose")
    got = _collect(model, samples, settings)
    result = {
        "measured_on": measured_on,
        "samples": len(samples),
        "samples_with_both_modalities": len(got.image_tokens),
        "tokens_per_sample": {
            "image": float(np.mean(got.image_tokens)) if got.image_tokens else 0.0,
            "text": float(np.mean(got.text_tokens)) if got.text_tokens else 0.0},
        "entropy_bits": mean(np.array(got.entropies), settings.seed).to_json(),
        "accuracy": proportion(np.array(got.correct)).to_json(),
        "layers": {},
    }
    if len(got.image_tokens) < 4:
        result["note"] = (f"{len(got.image_tokens)} sample(s) show both an image and text: "
                          "no modality gap or probe (a text-only task needs an image "
                          "condition: --on switched_image, say)")
        return result
    for layer in dict.fromkeys((0, *settings.layers)):
        labels = np.concatenate(got.labels)
        probe = probe_separability(np.vstack(got.features[layer]), labels,
                                   np.concatenate(got.groups), settings.seed,
                                   settings.test_share, settings.probe_l2)
        gaps = modality_gap(got.sums[layer], settings.seed)
        result["layers"][str(layer)] = {
            "where": "input (after the projector)" if layer == 0 else f"layer {layer}",
            **{k: e.to_json() for k, e in gaps.items()},
            "probe": probe.to_json(),
        }
    return result


def diagnose_tasks(model, tasks: dict, conditions: dict, settings: Settings) -> dict:
    """Every task's diagnostics, on clean samples or under `settings.on` where it applies."""
    from .runner import applies_to, perturb_all

    found = {}
    for name, task in tasks.items():
        samples = task.samples()
        if settings.limit is not None and settings.limit < len(samples):
            keep = rng_for(settings.seed, "diagnose", name).choice(
                len(samples), size=settings.limit, replace=False)
            samples = [samples[i] for i in sorted(keep)]
        on = "clean"
        if settings.on is not None:
            if settings.on not in conditions:
                raise DiagnoseError(f"--on {settings.on!r}: no such condition in the config "
                                    f"({', '.join(conditions) or 'none'}); add it, e.g. "
                                    f"perturbation={settings.on}")
            condition = conditions[settings.on]
            if applies_to(condition, task) and not any(s.image is not None for s in samples):
                samples, on = perturb_all(samples, condition, settings.seed, name), settings.on
        found[name] = {"task": task.describe(), **measure(model, samples, settings, on)}
    return found


def document(model, tasks: dict, settings: Settings, results: dict) -> dict:
    return {"schema_version": SCHEMA_VERSION, "suite_version": __version__,
            "git_sha": git_sha(),
            "model": {k: v for k, v in model.describe().items() if k != "device"},
            "settings": asdict(settings), "definitions": DEFINITIONS, "tasks": results}


def scalars(doc: dict) -> dict[str, float]:
    """{"diagnostics/TASK/LAYER/NAME": value, ".../low", ".../high"} for a logger."""
    flat: dict[str, float] = {}

    def put(key: str, estimate: dict) -> None:
        for part in ("value", "low", "high"):
            flat[key if part == "value" else f"{key}/{part}"] = estimate[part]

    for task, result in doc["tasks"].items():
        put(f"diagnostics/{task}/entropy_bits", result["entropy_bits"])
        for layer, values in result["layers"].items():
            for name in ("gap_l2", "gap_l2_unit", "gap_cosine"):
                put(f"diagnostics/{task}/{layer}/{name}", values[name])
            put(f"diagnostics/{task}/{layer}/probe", values["probe"]["accuracy"])
    return flat


def format_diagnostics(doc: dict) -> str:
    """A markdown table: a row per task and layer."""
    def cell(e: dict, digits: int = 3) -> str:
        return f"{e['value']:.{digits}f} [{e['low']:.{digits}f}, {e['high']:.{digits}f}]"

    lines = ["| task | on | layer | gap L2 | gap L2 (unit) | gap cosine | probe bal. acc. "
             "| entropy (bits) |", "|" + "---|" * 8]
    for task, r in doc["tasks"].items():
        entropy = cell(r["entropy_bits"])
        if not r["layers"]:
            lines.append(f"| {task} | {r['measured_on']} | - | - | - | - | - | {entropy} |")
        for layer, v in r["layers"].items():
            lines.append(f"| {task} | {r['measured_on']} | {layer} | {cell(v['gap_l2'])} | "
                         f"{cell(v['gap_l2_unit'])} | {cell(v['gap_cosine'])} | "
                         f"{cell(v['probe']['accuracy'])} | {entropy} |")
    notes = [f"- {t}: {r['note']}" for t, r in doc["tasks"].items() if r.get("note")]
    return "\n".join(lines + ([""] + notes if notes else []))
