"""Hostile submissions: each is refused with a reason naming the key, and nothing is written.

The corpus: a dotted path through the module attributes of every mibench module (enumerated,
not hand-picked) in each place a plug-in config sits; Hydra's own keys; nested targets;
interpolations and resolvers; unknown keys; sizes past the benchmark's; format-string tricks;
names outside the registry; oversized, deeply nested and expanding files. Nothing is mocked:
every case is a file on disk handed to the real validator, with a canary directory that every
payload aims at and that must stay empty.
"""

from __future__ import annotations

import copy
import gzip
import importlib
import json
import pkgutil
import types
from pathlib import Path

import pytest
from test_submission import benchmark_run

from mibench.config_guard import EXTRA_NESTED
from mibench.registry import registry
from mibench.results.submission import (
    RECORDS_GZ,
    SUBMISSION_FILE,
    SubmissionError,
    build_submission,
    validate_submission,
    write_submission,
)

PACKAGES = ("mibench", "mibench.models", "mibench.tasks", "mibench.perturbations",
            "mibench.conf")
# Attributes a module may hold and a callable on each that writes, runs or imports.
DANGEROUS = {"Path": ("write_text", "mkdir", "touch"), "os": ("makedirs", "system", "remove"),
             "shutil": ("copyfile", "rmtree"), "subprocess": ("run", "check_call"),
             "importlib": ("import_module",), "json": ("dump",), "sys": ("exit",),
             "hydra": ("utils",), "np": ("save",), "torch": ("save", "load")}
SLOTS = ("grid.tasks.toy_vqa", "grid.conditions.misleading_text.facts",
         "grid.conditions.switched_image.donors", "task")


def mibench_modules() -> list[str]:
    names = set(PACKAGES)
    for package in PACKAGES:
        path = importlib.import_module(package).__path__
        names |= {info.name for info in pkgutil.walk_packages(path, f"{package}.")}
    return sorted(names)


def dotted_paths() -> list[str]:
    """Through every module: its dangerous attributes, and everything it defines itself."""
    paths = []
    for name in mibench_modules():
        module = importlib.import_module(name)
        for attr, value in sorted(vars(module).items()):
            if attr in DANGEROUS:
                paths += [f"{name}.{attr}.{fn}" for fn in DANGEROUS[attr] if hasattr(value, fn)]
            elif callable(value) and getattr(value, "__module__", None) == name:
                paths.append(f"{name}.{attr}")
            elif isinstance(value, types.ModuleType):
                paths.append(f"{name}.{attr}")
    return paths


@pytest.fixture(scope="module")
def base(tiny_checkpoint, tmp_path_factory) -> tuple[dict, Path]:
    """A valid submission (document + records on disk) to turn hostile one key at a time."""
    run_dir = benchmark_run(tiny_checkpoint, tmp_path_factory.mktemp("run"))
    document, rows = build_submission(run_dir)
    out = tmp_path_factory.mktemp("sub")
    write_submission(document, rows, out)
    validate_submission(out)
    return document, out


@pytest.fixture
def canary(tmp_path) -> Path:
    path = tmp_path / "canary"
    path.mkdir()
    yield path
    assert sorted(path.iterdir()) == [], "a hostile submission wrote into the canary folder"


def set_at(config: dict, dotted: str, value: object) -> None:
    *parents, last = dotted.split(".")
    for key in parents:
        config = config.setdefault(key, {})
    config[last] = value


def payload(target: str, canary: Path, i: int) -> dict:
    """What Hydra would call: the target on a path in the canary folder."""
    victim = str(canary / f"case-{i}")
    if target.endswith("Path.write_text"):
        module = target[: -len(".Path.write_text")]
        return {"_target_": target, "_args_": [{"_target_": f"{module}.Path",
                                                "_args_": [victim]}, "pwned"]}
    if target.endswith("shutil.copyfile"):
        return {"_target_": target, "_args_": [__file__, victim]}
    if target.endswith("os.system"):
        return {"_target_": target, "_args_": [f"touch {victim}"]}
    return {"_target_": target, "_args_": [victim], "path": victim}


def refused(document: dict, folder: Path) -> str:
    (folder / SUBMISSION_FILE).write_text(json.dumps(document))
    with pytest.raises(SubmissionError) as err:
        validate_submission(folder)
    return str(err.value)


def test_the_corpus_is_live_without_the_guard(tmp_path):
    """The payloads are real: given to Hydra directly (as before the guard), they write."""
    from hydra.utils import instantiate

    for i, target in enumerate(("mibench.cli.Path.write_text",
                                "mibench.results.submission_validate.shutil.copyfile")):
        instantiate(payload(target, tmp_path, i))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case-0", "case-1"]
    assert (tmp_path / "case-0").read_text() == "pwned"


def test_every_dotted_path_through_every_mibench_module_is_refused(base, canary, tmp_path):
    document, folder = base
    paths = dotted_paths()
    modules = {p.rsplit(".", 1)[0] for p in paths}
    assert len(paths) > 300 and {"mibench.cli", "mibench.results.submission_io",
                                 "mibench.models.hf", "mibench.tasks.shapes"} <= modules
    work = tmp_path / "sub"
    work.mkdir()
    (work / RECORDS_GZ).write_bytes((folder / RECORDS_GZ).read_bytes())
    reg = registry()
    plugins = reg.task_targets | reg.perturbation_targets | {
        t for targets in [*reg.nested.values(), *EXTRA_NESTED.values()] for t in targets}
    slipped = []
    for i, target in enumerate(paths):
        slot = SLOTS[i % len(SLOTS)]
        hostile = copy.deepcopy(document)
        set_at(hostile["config"], slot, payload(target, canary, i))
        message = refused(hostile, work)
        # a plug-in of the suite may sit there, but never with Hydra's `_args_`
        named = target in plugins or f"config.{slot}._target_: {target!r} is not a" in message
        if not named or f"config.{slot}._args_: Hydra instantiation keys" not in message:
            slipped.append((target, message[:300]))
    assert slipped == []


def _mutate(path: str, value: object):
    return lambda doc, canary: set_at(doc["config"], path, value)


CASES = {
    "_args_ on a shipped target": (
        _mutate("grid.tasks.toy_vqa._args_", ["/tmp/x"]),
        "config.grid.tasks.toy_vqa._args_: Hydra instantiation keys"),
    "_partial_": (_mutate("grid.conditions.black_image._partial_", True),
                  "config.grid.conditions.black_image._partial_: Hydra instantiation keys"),
    "_recursive_": (_mutate("grid.conditions.white_image._recursive_", False),
                    "config.grid.conditions.white_image._recursive_: Hydra instantiation"),
    "_convert_": (_mutate("grid.tasks.toy_image_heavy._convert_", "all"),
                  "config.grid.tasks.toy_image_heavy._convert_: Hydra instantiation keys"),
    "nested foreign target": (
        _mutate("grid.conditions.misleading_text.facts",
                {"_target_": "mibench.perturbations.text.np.save"}),
        "config.grid.conditions.misleading_text.facts._target_: "
        "'mibench.perturbations.text.np.save' is not a plug-in at this key"),
    "a task where a fact writer goes": (
        _mutate("grid.conditions.misleading_text.facts",
                {"_target_": "mibench.tasks.shapes.ShapesTask", "kind": "vqa", "n": 3}),
        "is not a plug-in at this key the suite ships; allowed: "
        "mibench.perturbations.text.TemplateFacts"),
    "a fact writer that would load any hub model": (
        _mutate("grid.conditions.misleading_text.facts",
                {"_target_": "mibench.perturbations.text.GeneratedFacts",
                 "model": "someone/a-72b-model"}),
        "'mibench.perturbations.text.GeneratedFacts' is not a plug-in at this key"),
    "target inside plain data": (
        _mutate("grid.conditions.misleading_text.facts.templates",
                ["{option}", {"_target_": "os.system", "_args_": ["id"]}]),
        "config.grid.conditions.misleading_text.facts.templates[1]: "),
    "target in the model section": (
        _mutate("model._target_", "mibench.models.hf.shutil.rmtree"),
        "config.model._target_: 'mibench.models.hf.shutil.rmtree' is not a model the suite"),
    "env resolver": (_mutate("grid.tasks.toy_vqa.split", "${oc.env:HOME}"),
                     "config.grid.tasks.toy_vqa.split: '${oc.env:HOME}' holds an interpolation"),
    "custom resolver": (_mutate("model.path", "${mibench_asset:../../etc}"),
                        "config.model.path: '${mibench_asset:../../etc}' holds an interpolation"),
    "interpolation in a key": (
        _mutate("grid.tasks.toy_vqa.${seed}", 1),
        "config.grid.tasks.toy_vqa.${seed}: holds an interpolation"),
    "escaped interpolation": (_mutate("seed", "\\${seed}"), "config.seed: '\\\\${seed}' holds"),
    "unknown plug-in key": (_mutate("grid.tasks.toy_vqa.path", "/etc"),
                            "config.grid.tasks.toy_vqa.path: unknown key: ShapesTask takes"),
    "unknown run key": (_mutate("hydra", {"run": {"dir": "/"}}), "config.hydra: unknown key"),
    "unknown grid key": (_mutate("grid.evil", 1), "config.grid.evil: unknown key; grid takes"),
    "huge n": (_mutate("grid.tasks.toy_vqa.n", 10**9),
               "config.grid.tasks.toy_vqa.n: 1000000000 is outside [1, 30000]"),
    "huge donors": (_mutate("grid.conditions.switched_image.donors.n", 10**7),
                    "config.grid.conditions.switched_image.donors.n: 10000000 is outside"),
    "huge image": (_mutate("grid.conditions.black_image.size", [100000, 100000]),
                   "config.grid.conditions.black_image.size[0]: 100000 is outside [1, 4096]"),
    "huge PGD": (_mutate("perturbation", {"_target_": "mibench.perturbations.pgd_embed."
                                                      "EmbeddingPGD", "steps": 10**9}),
                 "config.perturbation.steps: 1000000000 is outside [0, 1000]"),
    "too many sentences": (_mutate("grid.conditions.unrelated_text.n_sentences", 10**6),
                           "config.grid.conditions.unrelated_text.n_sentences: 1000000 is "
                           "outside"),
    "a string for a number": (_mutate("grid.tasks.toy_vqa.n", "6"),
                              "config.grid.tasks.toy_vqa.n: '6' is not an integer"),
    "a boolean for a number": (_mutate("grid.tasks.toy_vqa.n", True),
                               "config.grid.tasks.toy_vqa.n: 'True' is not an integer"),
    "not a literal": (_mutate("grid.tasks.toy_vqa.kind", "all"),
                      "config.grid.tasks.toy_vqa.kind: 'all' is not one of"),
    "format attribute access": (
        _mutate("grid.conditions.misleading_text.template", "{option.__class__.__mro__}"),
        "config.grid.conditions.misleading_text.template: format field "
        "{option.__class__.__mro__} is not one of"),
    "format padding bomb": (
        _mutate("grid.conditions.misleading_text.template", "{option:>999999999}"),
        "format field {option:>999999999} is not one of"),
    "a folder of the validating machine": (
        _mutate("grid.conditions.ui_screenshot", {
            "_target_": "mibench.perturbations.ui_screenshot.UIScreenshot",
            "name": "ui_screenshot", "image_dir": "/etc"}),
        "config.grid.conditions.ui_screenshot.image_dir: a submitted config cannot name a "
        "folder of the validating machine"),
    "a hub id that is a path": (
        _mutate("task", {"_target_": "mibench.tasks.hf_dataset.HFDatasetTask",
                         "name": "mmlu", "category": "text_heavy", "path": "/etc/passwd",
                         "split": "test", "columns": {}}),
        "config.task.path: '/etc/passwd' is not a hub id"),
    "a task name outside the registry": (
        _mutate("grid.tasks.evil|name", {"_target_": "mibench.tasks.shapes.ShapesTask",
                                         "kind": "vqa", "n": 3}),
        "config.grid.tasks.evil|name: 'evil|name' is not a task of this suite"),
    "a benchmark name outside the registry": (
        _mutate("grid.name", "toy\n| 1 | fake | row |"),
        "config.grid.name: 'toy\\n| 1 | fake | row |' is not a benchmark of this suite"),
    "a declared benchmark name that is not the config's": (
        lambda doc, canary: doc["benchmark"].update(name="cai2025"),
        "benchmark.name: 'cai2025' is not the name of the benchmark its config composes"),
    "a local path as the model's": (
        lambda doc, canary: doc["model"].update(path="/home/someone/ckpt"),
        "model.path: '/home/someone/ckpt' is not a hub id"),
    "a record count past the benchmark": (
        lambda doc, canary: doc["records"].update(count=10**9),
        "records.count: declares 1,000,000,000 records; its config's benchmark can produce "
        "at most 210"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_config_is_refused_naming_the_key(base, canary, tmp_path, name):
    mutate, expected = CASES[name]
    document, folder = base
    hostile = copy.deepcopy(document)
    mutate(hostile, canary)
    work = tmp_path / "sub"
    work.mkdir()
    (work / RECORDS_GZ).write_bytes((folder / RECORDS_GZ).read_bytes())
    assert expected in refused(hostile, work)


def _record_line(document: dict, folder: Path) -> bytes:
    return gzip.decompress((folder / RECORDS_GZ).read_bytes()).splitlines(keepends=True)[0]


def _bomb(path: Path, chunk: bytes, total: int) -> None:
    """A gzip file that expands to `total` bytes of `chunk`, written in bounded memory."""
    with gzip.open(path, "wb", compresslevel=9) as gz:
        block = chunk * max(1, (1 << 20) // len(chunk))
        written = 0
        while written < total:
            gz.write(block)
            written += len(block)


FILES = {
    "deep nesting": (SUBMISSION_FILE, lambda doc, line: b"[" * 200_000 + b"]" * 200_000,
                     "is nested deeper than 32 levels; refused before parsing"),
    "deep nesting inside a valid document": (
        SUBMISSION_FILE,
        lambda doc, line: json.dumps({**doc, "x": 0}).replace(
            '"x": 0', '"x": ' + "[" * 100_000 + "]" * 100_000).encode(),
        "is nested deeper than 32 levels"),
    "oversize document": (
        SUBMISSION_FILE, lambda doc, line: json.dumps(doc).encode() + b" " * (9 << 20),
        "bytes; at most 8,388,608 are accepted"),
    "expansion bomb, one endless line": (
        RECORDS_GZ, lambda doc, line: ("bomb", b"0" * 4096, 64 << 20),
        "line 1 is longer than 65,536 bytes; no record is"),
    "expansion bomb, endless blank lines": (
        RECORDS_GZ, lambda doc, line: ("bomb", b"\n", 64 << 20),
        "line 1: is empty (canonical records have no blank lines)"),
    "expansion bomb, endless valid records": (
        RECORDS_GZ, lambda doc, line: ("bomb", line, 64 << 20),
        "holds more than the 102 records the submission declares"),
    "a record nested deep": (
        RECORDS_GZ, lambda doc, line: gzip.compress(
            line.replace(b'"probs":[', b'"probs":[[[[[[') + b"\n"),
        "line 1: is nested deeper than 4 levels"),
}


@pytest.mark.parametrize("name", list(FILES))
def test_hostile_file_is_refused_in_bounded_memory(base, canary, tmp_path, name):
    target, content, expected = FILES[name]
    document, folder = base
    work = tmp_path / "sub"
    work.mkdir()
    for file in (SUBMISSION_FILE, RECORDS_GZ):
        (work / file).write_bytes((folder / file).read_bytes())
    made = content(document, _record_line(document, folder))
    if isinstance(made, tuple):
        _bomb(work / target, made[1], made[2])
    else:
        (work / target).write_bytes(made)
    with pytest.raises(SubmissionError) as err:
        validate_submission(work)
    assert expected in str(err.value)
