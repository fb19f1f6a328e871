"""`mibench-train`: the study's mitigation fine-tune, as a Hydra app (conf/train.yaml).

    mibench-train train=study model=toy_llava out_dir=models/toy_llava_mitigated
    mibench-train -m train=sft_perturbed,consistency,adversarial,study     # the ablation
    accelerate launch -m mibench.train model=hf model.path=... precision=bf16  # DDP / FSDP

Loads any checkpoint the suite scores (through the `model=` YAMLs), trains it on train-split
samples and their perturbed twins (the suite's own perturbation plug-ins, seeds salted
"train") with `L = L_sft(clean) + L_sft(perturbed) + L_adv + λ·L_cons` (each term switchable,
see training_objective.py), checkpoints with Accelerate's save_state and resumes from the last
checkpoint when the same command runs again, saves `save_pretrained` weights + processor (LoRA
merged) to `out_dir`, scores base and trained model with the suite, and writes a model card.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections import defaultdict
from collections.abc import Mapping
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.experimental.callback import Callback
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from mibench.models.base import DifferentiableAdapter, WhiteBoxError

from . import __version__, distributed
from .atomic import write_text_atomic
from .cli import asset_path  # noqa: F401  (registers the mibench_asset resolver)
from .provenance import public_config, public_model, public_override, shown_path
from .report import config_hash, git_sha
from .training.checkpoints import (
    CHECKPOINTS,
    ResumeConfigError,
    check_resume,
    checkpoint_step,
    latest_checkpoint,
    save_checkpoint,
    trim_log,
)
from .training.data import TrainingStream, check_disjoint
from .training.objective import LossWeights, batch_loss
from .training.report import (
    ablation_table,
    evaluate_before_after,
    trained_model_config,
    write_model_card,
)
from .training.weights import apply_lora, freeze_modules, lr_factor

log = logging.getLogger("mibench.train")
__all__ = ["ResumeConfigError", "train", "main"]

CONFIG_FILE = "train_config.yaml"
SUMMARY_FILE = "summary.json"
LOG_FILE = "train_log.jsonl"
# What the trained weights depend on (not logging, progress, evaluation or where they go):
# a resumed run must agree on every one of them, and the process count and base weights.
WEIGHT_KEYS = ("model", "train", "data", "optim", "seed", "task", "perturbation", "lora",
               "freeze", "precision", "steps", "batch_size", "micro_batch_size", "threads",
               "gradient_checkpointing")


def train_id(*, _root_: DictConfig) -> str:
    """A run directory name fixed by what the weights depend on: rerunning resumes."""
    parts = {k: OmegaConf.to_container(_root_[k], resolve=True)
             if isinstance(_root_.get(k), DictConfig) else _root_.get(k) for k in WEIGHT_KEYS}
    model = _root_.model.get("name") or str(_root_.model.get("path", "model")).rstrip("/")
    return f"{model.split('/')[-1]}-{_root_.train.name}-seed{_root_.seed}-" \
           f"{config_hash(parts)[:10]}"


if not OmegaConf.has_resolver("mibench_train_id"):
    OmegaConf.register_new_resolver("mibench_train_id", train_id)


# -- configuration -> objects ----------------------------------------------------------------
def _split_of(cfg: DictConfig, split: str) -> DictConfig:
    return OmegaConf.merge(cfg, {"split": split}) if "split" in cfg else cfg


def training_plugins(cfg: DictConfig) -> tuple[dict[str, DictConfig], dict[str, DictConfig]]:
    """Training task and perturbation configs: `task=`/`perturbation=` replace data.*.

    A task given by `task=` is trained on its `data.train_split` (its YAML names the
    evaluation split); the split check below still runs.
    """
    data = cfg.data
    if cfg.get("task") is not None:
        tasks = {cfg.task.name: _split_of(cfg.task, data.train_split)}
    else:
        tasks = {str(k): v for k, v in (data.get("tasks") or {}).items()}
    if cfg.get("perturbation") is not None:
        conditions = {cfg.perturbation.name: cfg.perturbation}
    else:
        conditions = {str(k): v for k, v in (data.get("perturbations") or {}).items()}
    return tasks, conditions


def evaluation_ids(cfg: DictConfig, train_tasks: Mapping[str, DictConfig]) -> dict[str, list]:
    """Ids of every sample an evaluation could score: the tasks eval_after scores, and each
    training task's twin on `data.eval_split` (same dataset, evaluation split)."""
    configs: dict[str, DictConfig] = {}
    if cfg.get("task") is not None:
        configs[f"{cfg.task.name} (evaluated)"] = cfg.task
    else:
        for name, task_cfg in ((cfg.get("grid") or {}).get("tasks") or {}).items():
            configs[f"{name} (evaluated)"] = task_cfg
    for name, task_cfg in train_tasks.items():
        if "split" in task_cfg:
            configs[f"{name} split={cfg.data.eval_split}"] = _split_of(task_cfg,
                                                                      cfg.data.eval_split)
    ids: dict[str, list] = {}
    built: dict[str, list] = {}
    for label, task_cfg in configs.items():
        key = config_hash(OmegaConf.to_container(task_cfg, resolve=True))
        if key not in built:
            built[key] = [s.id for s in instantiate(task_cfg).samples()]
        ids[label] = built[key]
    return ids


def _instantiate_all(configs: Mapping[str, DictConfig], kind: str) -> dict[str, Any]:
    out = {}
    for name, c in configs.items():
        obj = instantiate(c)
        if getattr(obj, "name", name) != name:
            raise ValueError(f"{kind} {name!r}: its config names it {obj.name!r}; the two must "
                             "agree")
        out[name] = obj
    return out


# -- logging -----------------------------------------------------------------------------------
class ScalarLog:
    """Training scalars to the `logger=` backend (if it takes them) and to train_log.jsonl."""

    def __init__(self, logger: Any, path: Path, enabled: bool) -> None:
        self.logger, self.path, self.enabled = logger, path, enabled

    def __call__(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, **values}) + "\n")
        self.logger.log_scalars(step, values)


# -- the run, step by step ---------------------------------------------------------------------
@dataclass(frozen=True)
class StepPlan:
    """How one optimiser step is cut: `batch` rows = processes x `accum` micro-batches."""

    steps: int
    batch: int
    micro: int
    processes: int

    @property
    def accum(self) -> int:
        return self.batch // (self.micro * self.processes)

    @classmethod
    def of(cls, cfg: DictConfig, processes: int) -> StepPlan:
        plan = cls(int(cfg.steps), int(cfg.batch_size), int(cfg.micro_batch_size), processes)
        if plan.batch % (plan.micro * processes):
            raise ValueError(f"batch_size={plan.batch} must be a multiple of micro_batch_size="
                             f"{plan.micro} x {processes} process(es)")
        return plan


@dataclass
class Trainee:
    """The model being trained, reached through its adapter, and what optimises it."""

    adapter: DifferentiableAdapter
    trainable: torch.nn.Module  # the model, LoRA-wrapped or not, prepared by Accelerate
    optimizer: torch.optim.Optimizer
    params: list[torch.nn.Parameter]
    base_lrs: list[float]  # the schedule scales these (load_state would overwrite the groups')
    base_info: dict
    frozen: int

    @property
    def trained_parameters(self) -> int:
        return sum(p.numel() for p in self.params)


def weights_config(cfg: DictConfig) -> dict:
    """The settings the trained weights depend on (WEIGHT_KEYS), resolved."""
    return {k: OmegaConf.to_container(cfg[k], resolve=True)
            if isinstance(cfg.get(k), DictConfig) else cfg.get(k) for k in WEIGHT_KEYS}


def claim_run_dir(accelerator: Any, run_dir: Path, settings: dict) -> None:
    """Create the run directory, or check that the run it holds had these settings."""
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        check_resume(run_dir, {"config": settings}, "config")
        write_text_atomic(run_dir / CONFIG_FILE, OmegaConf.to_yaml(OmegaConf.create(
            public_config(settings))))
    accelerator.wait_for_everyone()


def training_stream(cfg: DictConfig, task_cfgs: Mapping[str, DictConfig],
                    condition_cfgs: Mapping[str, DictConfig]) -> TrainingStream:
    """Train splits only, paired with their perturbed twins; never an id an evaluation scores."""
    stream = TrainingStream(_instantiate_all(task_cfgs, "task"),
                            _instantiate_all(condition_cfgs, "perturbation"), int(cfg.seed),
                            pair_share=float(cfg.data.pair_share),
                            condition_weights=OmegaConf.to_container(
                                cfg.data.get("condition_weights") or {}, resolve=True))
    if cfg.data.check_splits:
        check_disjoint(stream.ids, evaluation_ids(cfg, task_cfgs))
    return stream


def load_trainee(cfg: DictConfig, accelerator: Any, run_dir: Path) -> Trainee:
    """Any checkpoint a model YAML loads, one device per process, frozen / LoRA as asked, with
    its AdamW optimiser, prepared by Accelerate."""
    adapter = instantiate(OmegaConf.merge(cfg.model, {"device": str(accelerator.device)}))
    if not isinstance(adapter, DifferentiableAdapter):
        raise WhiteBoxError(f"model {adapter.name!r} ({type(adapter).__name__}) can only be "
                            "queried; training needs one whose weights it can reach (a "
                            "DifferentiableAdapter)")
    base_info = {k: v for k, v in adapter.describe().items() if k != "device"}
    if accelerator.is_main_process:  # the base weights and the process count change the result
        check_resume(run_dir, {"run": {"processes": accelerator.num_processes,
                                       "base_model": base_info}}, "run")
    accelerator.wait_for_everyone()
    torch.manual_seed(int(cfg.seed))
    model = adapter.model
    frozen = freeze_modules(model, list(cfg.freeze or []))
    trainable: torch.nn.Module = apply_lora(model, cfg.lora) if cfg.lora.enabled else model
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    trainable.train()
    params = [p for p in trainable.parameters() if p.requires_grad]
    optim = cfg.optim
    optimizer = torch.optim.AdamW(params, lr=float(optim.lr),
                                  weight_decay=float(optim.weight_decay),
                                  betas=tuple(optim.betas))
    trainable, optimizer = accelerator.prepare(trainable, optimizer)
    return Trainee(adapter, trainable, optimizer, params,
                   [g["lr"] for g in optimizer.param_groups], base_info, frozen)


def adversarial_attacks(cfg: DictConfig, weights: LossWeights, accelerator: Any) -> dict:
    """The PGD attacks L_adv trains against (none when its weight is 0)."""
    if weights.adversarial <= 0:
        return {}
    if distributed.is_sharded(accelerator):
        raise ValueError("train.loss.adversarial > 0 needs the whole model on each process (the "
                         "PGD search runs the bare module); use DDP or ZeRO-1/2, or a recipe "
                         "without L_adv (train=consistency) under FSDP / ZeRO-3")
    attacks = {str(c): instantiate(a) for c, a in (cfg.train.adversarial or {}).items()}
    if not attacks:
        raise ValueError("train.loss.adversarial > 0 but train.adversarial names no attack")
    return attacks


def resume(accelerator: Any, run_dir: Path, steps: int) -> int:
    """Load the last checkpoint's state, if any; returns the step to continue from."""
    checkpoint = latest_checkpoint(run_dir)
    if checkpoint is None:
        return 0
    accelerator.load_state(str(checkpoint))
    step = checkpoint_step(checkpoint)
    if accelerator.is_main_process:
        print(f"resuming from {checkpoint} (step {step} of {steps})", flush=True)
    return step


def optimise(cfg: DictConfig, accelerator: Any, trainee: Trainee, stream: TrainingStream,
             plan: StepPlan, objective: tuple[LossWeights, dict], scalars: ScalarLog,
             run_dir: Path, start_step: int) -> float:
    """The optimisation loop from `start_step`; returns its seconds.

    Each step takes the next `plan.batch` pairs of the stream (row `i` of step `s` is pair
    `s·batch + i` whatever the process count), accumulates micro-batch gradients, clips,
    steps, logs every `log_every` steps and checkpoints every `checkpoint_every`.
    """
    weights, attacks = objective
    optim, seed, procs = cfg.optim, int(cfg.seed), plan.processes
    optimizer, trainable = trainee.optimizer, trainee.trainable
    bar = tqdm(total=plan.steps, initial=start_step, desc=f"train {cfg.train.name}",
               unit="step", disable=not (accelerator.is_main_process and cfg.progress))
    sums: dict[str, float] = defaultdict(float)
    seen, window_rows, window_start = 0, 0, time.time()
    started = time.time()
    for step in range(start_step, plan.steps):
        factor = lr_factor(step, plan.steps, int(optim.warmup_steps), str(optim.schedule))
        for group, lr in zip(optimizer.param_groups, trainee.base_lrs):
            group["lr"] = lr * factor
        for k in range(plan.accum):
            first = step * plan.batch + (k * procs + accelerator.process_index) * plan.micro
            pairs = stream.pairs(range(first, first + plan.micro))
            sync = accelerator.no_sync(trainable) if k < plan.accum - 1 else nullcontext()
            with sync:
                loss = batch_loss(trainable, trainee.adapter, pairs, weights, attacks,
                                  seed=seed, step=step)
                accelerator.backward(loss.total / plan.accum)
            for key, value in loss.terms.items():
                sums[key] += value / plan.accum
            window_rows += loss.rows
        if optim.max_grad_norm:
            accelerator.clip_grad_norm_(trainee.params, float(optim.max_grad_norm))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        seen += 1
        bar.update(1)
        done = step + 1
        if done % int(cfg.log_every) == 0 or done == plan.steps:
            elapsed = time.time() - window_start
            values = {k: v / seen for k, v in sums.items()}
            values.update({"lr": optimizer.param_groups[0]["lr"],
                           "throughput/rows_per_s": window_rows * procs / max(elapsed, 1e-9),
                           "throughput/steps_per_s": seen / max(elapsed, 1e-9)})
            scalars(done, values)
            bar.set_postfix(loss=f"{values.get('loss/total', 0):.3f}", lr=f"{values['lr']:.1e}")
            sums.clear()
            seen, window_rows, window_start = 0, 0, time.time()
        if cfg.checkpoint_every and done % int(cfg.checkpoint_every) == 0 and done < plan.steps:
            save_checkpoint(accelerator, run_dir, done, int(cfg.keep_checkpoints))
    bar.close()
    return time.time() - started


def save_weights(cfg: DictConfig, accelerator: Any, trainee: Trainee, out_dir: Path) -> None:
    """save_pretrained + processor (LoRA merged), so the suite scores them by path."""
    accelerator.wait_for_everyone()
    # FSDP / ZeRO-3 hold shards: get_state_dict gathers the full weights (a collective call)
    state = None if cfg.lora.enabled else accelerator.get_state_dict(trainee.trainable)
    if accelerator.is_main_process:
        final = accelerator.unwrap_model(trainee.trainable)
        if cfg.lora.enabled:
            final = final.merge_and_unload()
        if cfg.gradient_checkpointing:
            final.gradient_checkpointing_disable()
        out_dir.mkdir(parents=True, exist_ok=True)
        final.eval()
        trainee.adapter.save_pretrained(out_dir, final, state_dict=state)
    accelerator.wait_for_everyone()


def train(cfg: DictConfig) -> dict | None:
    """Train, save, evaluate and write the model card; returns the summary (main process)."""
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    run_dir, out_dir = Path(cfg.run_dir), Path(cfg.out_dir)
    accelerator = distributed.training_accelerator(str(cfg.precision))
    main = accelerator.is_main_process
    settings = weights_config(cfg)
    claim_run_dir(accelerator, run_dir, settings)

    task_cfgs, condition_cfgs = training_plugins(cfg)
    stream = training_stream(cfg, task_cfgs, condition_cfgs)
    trainee = load_trainee(cfg, accelerator, run_dir)
    weights = LossWeights(**OmegaConf.to_container(cfg.train.loss, resolve=True))
    objective = (weights, adversarial_attacks(cfg, weights, accelerator))
    plan = StepPlan.of(cfg, accelerator.num_processes)
    start_step = resume(accelerator, run_dir, plan.steps)

    logger = instantiate(cfg.logger)
    if main:
        logger.start(OmegaConf.to_container(cfg, resolve=True), run_dir)
        _announce(trainee, stream, plan, run_dir, start_step)
    seconds = optimise(cfg, accelerator, trainee, stream, plan, objective,
                       ScalarLog(logger, run_dir / LOG_FILE, main), run_dir, start_step)
    save_weights(cfg, accelerator, trainee, out_dir)
    if main:
        print(f"saved the trained model to {out_dir} ({seconds / 60:.1f} min of training "
              f"from step {start_step})", flush=True)
    base_info, n_train = trainee.base_info, trainee.trained_parameters
    del trainee

    summary: dict[str, Any] = {
        "recipe": str(cfg.train.name), "base": public_model(base_info),
        "command": _command(), "name": trained_model_config(cfg, out_dir)["name"],
        "out_dir": shown_path(out_dir),
        "train_minutes": round(seconds / 60, 2), "resumed_from_step": start_step,
        "steps": plan.steps, "trainable_parameters": n_train, "processes": plan.processes,
        "suite_version": __version__, "git_sha": git_sha(), "seed": int(cfg.seed),
        "data": {"tasks": {n: OmegaConf.to_container(c, resolve=True)
                           for n, c in task_cfgs.items()},
                 "perturbations": sorted(condition_cfgs), "samples": len(stream)},
    }
    if cfg.eval_after:
        summary["evaluation"] = evaluate_before_after(cfg, run_dir / "eval", out_dir)
    if main:
        if cfg.checkpoint_every and not cfg.keep_checkpoints_when_done:
            shutil.rmtree(run_dir / CHECKPOINTS, ignore_errors=True)
        write_text_atomic(run_dir / SUMMARY_FILE,
                          json.dumps(summary, indent=2, default=str) + "\n")
        write_model_card(out_dir, summary,
                         OmegaConf.to_yaml(OmegaConf.create(public_config(settings))))
        logger.finish()
    return summary if main else None


def _announce(trainee: Trainee, stream: TrainingStream, plan: StepPlan, run_dir: Path,
              start_step: int) -> None:
    """Trim the scalar log to a resumed checkpoint, or start it and say what will train."""
    if start_step > 0:
        trim_log(run_dir / LOG_FILE, start_step)
        return
    (run_dir / LOG_FILE).unlink(missing_ok=True)
    model = trainee.adapter.model
    print(f"training {trainee.trained_parameters / 1e6:.3f} M of "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.3f} M parameters "
          f"({trainee.frozen / 1e6:.3f} M frozen) on {len(stream)} train samples; {plan.steps} "
          f"steps of {plan.batch} ({plan.processes} process(es) x {plan.accum} micro-batches "
          f"of {plan.micro})", flush=True)


def _command() -> str | None:
    """The command line that made this run (Hydra's overrides), for the model card."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    return " ".join(["mibench-train", *map(public_override, HydraConfig.get().overrides.task)])


class AblationTable(Callback):
    """After a multirun (`mibench-train -m train=a,b,c`), one table of every run's figures."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep = Path(config.hydra.sweep.dir)
        paths = sorted(sweep.glob(f"*/{SUMMARY_FILE}"), key=lambda p: p.stat().st_mtime)
        summaries = [json.loads(p.read_text()) for p in paths]  # in the order the jobs ran
        if not summaries:
            return
        table = ablation_table(summaries)
        (sweep / "ablation.md").write_text(table + "\n")
        print(f"\n{table}\n\nablation table in {sweep / 'ablation.md'}")


@hydra.main(config_path="pkg://mibench.conf", config_name="train", version_base="1.3")
def train_app(cfg: DictConfig) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    train(cfg)


def main() -> None:
    train_app()


if __name__ == "__main__":
    main()
