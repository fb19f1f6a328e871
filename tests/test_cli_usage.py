"""The `mibench` command as a user meets it: help, one-line errors, `task=` alone, `models`."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from hydra.errors import InstantiationException

from mibench.cli import SUBCOMMANDS, ConfigError, build_plugins, user_error
from mibench.errors import MibenchError
from mibench.models import catalog

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
ENV.pop("HYDRA_FULL_ERROR", None)


def mibench(*args: str, env: dict | None = None, cwd: Path | None = None):
    return subprocess.run([sys.executable, "-m", "mibench.cli", *args], capture_output=True,
                          text=True, env=env or ENV, cwd=cwd, timeout=600)


def compose_cfg(overrides):
    with initialize_config_module("mibench.conf", version_base="1.3"):
        return compose("config", overrides=overrides)


def test_a_task_alone_runs_the_benchmark_conditions_that_apply_to_it():
    tasks, conditions = build_plugins(compose_cfg(["task=toy_text_heavy", "task.n=4"]))
    assert list(tasks) == ["toy_text_heavy"]
    assert list(conditions) == ["random_pixels", "black_image", "white_image", "switched_image"]
    tasks, conditions = build_plugins(compose_cfg(["task=toy_image_heavy", "task.n=4"]))
    assert list(conditions) == ["unrelated_text", "misleading_text"]
    tasks, conditions = build_plugins(compose_cfg(["task=toy_vqa", "task.n=4"]))
    assert conditions == {}  # clean only


def test_an_explicit_perturbation_that_applies_to_no_task_is_refused():
    cfg = compose_cfg(["task=toy_text_heavy", "perturbation=misleading_text", "task.n=4"])
    with pytest.raises(ConfigError, match="perturbation=misleading_text touches the text"):
        build_plugins(cfg)


def test_help_lists_every_subcommand_and_hydras_groups():
    out = mibench("--help")
    assert out.returncode == 0, out.stderr
    for name in SUBCOMMANDS:
        assert f"\n  {name} " in out.stdout, name
    assert "  models       List the model configs" in out.stdout  # its argparse description
    assert "== Configuration groups ==" in out.stdout and "task: " in out.stdout
    assert "${" not in out.stdout.split("== Config ==")[0]


@pytest.mark.parametrize("args, message", [
    (["model=hf"], "mibench: model.path must be set"),
    (["model=hf", "model.path=/nonexistent/checkpoint"], "mibench: model path "),
    (["task=toy_text_heavy", "perturbation=misleading_text"],
     "mibench: perturbation=misleading_text touches the text modality"),
    (["tables", "/nonexistent/run"], "mibench: no metrics.json at /nonexistent/run"),
])
def test_user_mistakes_end_in_one_line_without_a_traceback(args, message, tmp_path):
    out = mibench(*args, cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    assert out.stderr.startswith(message), out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_full_error_keeps_the_traceback(tmp_path):
    out = mibench("model=hf", "model.path=/nonexistent/checkpoint", cwd=tmp_path,
                  env={**ENV, "HYDRA_FULL_ERROR": "1"})
    assert out.returncode == 1 and "Traceback" in out.stderr and "CheckpointError" in out.stderr


def test_user_error_is_found_behind_hydras_wrapping():
    class Mistake(MibenchError):
        pass

    try:
        try:
            raise Mistake("the key x is wrong")
        except Mistake as err:
            raise InstantiationException("Error in call to target 'x'") from err
    except InstantiationException as wrapped:
        assert str(user_error(wrapped)) == "the key x is wrong"
    assert user_error(ValueError("a bug")) is None  # a bug keeps its traceback


def test_models_listing_reads_yamls_only(tmp_path):
    """No torch, no transformers: that is what makes `mibench models` start at once."""
    code = ("import sys; from mibench.cli import main; sys.argv = ['mibench', 'models']\n"
            "try:\n    main()\nexcept SystemExit as e:\n    assert e.code == 0, e.code\n"
            "heavy = [m for m in ('torch', 'transformers', 'scipy', 'matplotlib') "
            "if m in sys.modules]\nassert not heavy, heavy\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert "| toy_llava " in out.stdout and "${" not in out.stdout


def test_models_listing_shows_the_suites_transformers_floor(capsys):
    floor = catalog.suite_requirement("transformers")
    assert floor is not None and int(floor.split(".")[0]) >= 5  # from the installed metadata
    assert catalog.main([]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ") and "---" not in line]
    assert all(f">={floor}" in row for row in rows[1:]), "a row below the suite's floor"
    assert f"the suite needs >={floor}" in out
    assert "embedded (toy_llava)" in out


def test_a_family_needing_a_later_release_than_the_suite_shows_it():
    info = catalog.FamilyInfo("Future", r"future", "99.1")
    assert catalog.transformers_floor(info, "5.0") == ">=99.1"
    assert catalog.transformers_floor(catalog.family_of("llava-hf/llava-1.5-7b-hf"), "5.0") \
        == ">=5.0"
