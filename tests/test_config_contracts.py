"""Every shipped model and task YAML keeps its group's contract, file by file: a new YAML is
checked the day it lands, with no test written for it."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from hydra.utils import instantiate
from omegaconf import OmegaConf

import mibench.conf
from mibench.models import catalog
from mibench.records import CATEGORIES
from mibench.registry import registry
from mibench.tasks.base import Task

CONF = Path(mibench.conf.__file__).parent
MODELS = sorted((CONF / "model").glob("*.yaml"))
TASKS = sorted((CONF / "task").glob("*.yaml"))


def composed(group: str, name: str) -> dict:
    with initialize_config_module("mibench.conf", version_base="1.3"):
        cfg = compose("config", overrides=[f"{group}={name}", "data_root=/data"])
    return OmegaConf.to_container(cfg[group], resolve=False)


@pytest.mark.parametrize("path", MODELS, ids=[p.stem for p in MODELS])
def test_a_model_yaml_reads_the_same_to_hydra_and_to_the_listing(path):
    cfg = composed("model", path.stem)
    assert cfg == OmegaConf.to_container(catalog.read_model_yaml(path), resolve=False)
    assert cfg["_target_"] in registry().models
    assert cfg.get("name") in (None, path.stem)


def test_model_yamls_inherit_the_shared_keys_instead_of_repeating_them():
    base = OmegaConf.load(CONF / "model_base" / "hf_checkpoint.yaml")
    for path in MODELS:
        own = OmegaConf.load(path)
        if "defaults" not in own:
            continue
        repeated = [k for k in own if k in base and own[k] == base[k] and k != "defaults"]
        assert not repeated, f"{path.name} repeats {repeated} from its base"


@pytest.mark.parametrize("path", TASKS, ids=[p.stem for p in TASKS])
def test_a_task_yaml_builds_the_task_it_names(path):
    cfg = composed("task", path.stem)
    assert registry().tasks[path.stem] == cfg["_target_"]
    task = instantiate(cfg)  # builds without reading data: samples() loads
    assert isinstance(task, Task)
    assert task.name == cfg["name"] == path.stem
    assert task.category in CATEGORIES
    assert cfg.get("seed") is not None, "a task's subset must be seeded"
