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
import math
import os
import shutil
import time
from collections import defaultdict
from collections.abc import Mapping
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.experimental.callback import Callback
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from mibench.models.base import DifferentiableAdapter, WhiteBoxError

from . import __version__
from .atomic import write_text_atomic
from .cli import asset_path  # noqa: F401  (registers the mibench_asset resolver)
from .errors import MibenchError
from .provenance import public_config, public_model, public_override, shown_path
from .report import config_hash, git_sha
from .store import differences
from .training_data import TrainingStream, check_disjoint
from .training_objective import LossWeights, batch_loss
from .training_report import (
    ablation_table,
    evaluate_before_after,
    trained_model_config,
    write_model_card,
)

log = logging.getLogger("mibench.train")

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.json"
CONFIG_FILE = "train_config.yaml"
SUMMARY_FILE = "summary.json"
LOG_FILE = "train_log.jsonl"
FINGERPRINT_FILE = "fingerprint.json"
# What the trained weights depend on (not logging, progress, evaluation or where they go):
# a resumed run must agree on every one of them, and the process count and base weights.
WEIGHT_KEYS = ("model", "train", "data", "optim", "seed", "task", "perturbation", "lora",
               "freeze", "precision", "steps", "batch_size", "micro_batch_size", "threads",
               "gradient_checkpointing")


class ResumeConfigError(MibenchError, RuntimeError):
    """A run directory holds checkpoints of a run whose weights would differ from this one's."""


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


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Linear warm-up, then cosine to 0, linear to 0, or constant."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    if schedule == "linear":
        return max(0.0, 1.0 - progress)
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    raise ValueError(f"optim.schedule={schedule!r} is not one of constant, linear, cosine")


def freeze_modules(model: torch.nn.Module, prefixes: list[str]) -> int:
    """No gradient for parameters under each prefix (e.g. model.vision_tower); returns count."""
    frozen = 0
    for prefix in prefixes:
        hits = [p for n, p in model.named_parameters() if n == prefix or n.startswith(prefix + ".")]
        if not hits:
            names = sorted({n.rsplit(".", 2)[0] for n, _ in model.named_parameters()})[:12]
            raise ValueError(f"freeze: no parameter under {prefix!r} in {type(model).__name__}; "
                             f"parameter prefixes start like {names}")
        for p in hits:
            p.requires_grad_(False)
            frozen += p.numel()
    return frozen


def apply_lora(model: torch.nn.Module, lora: DictConfig) -> torch.nn.Module:
    """peft LoRA on the language model's projections; merged back before saving."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as err:
        raise ImportError("lora.enabled=true needs peft: pip install 'mibench[lora]'") from err
    config = LoraConfig(r=int(lora.r), lora_alpha=int(lora.alpha), lora_dropout=float(lora.dropout),
                        target_modules=lora.target_modules if isinstance(lora.target_modules, str)
                        else list(lora.target_modules), bias="none")
    return get_peft_model(model, config)


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


# -- checkpoints -------------------------------------------------------------------------------
def latest_checkpoint(run_dir: Path) -> Path | None:
    done = sorted(p for p in (run_dir / CHECKPOINTS).glob("step-*")
                  if (p / STATE_FILE).is_file())
    return done[-1] if done else None


def save_checkpoint(accelerator, run_dir: Path, step: int, keep: int) -> Path:
    """save_state into a temporary directory, renamed when complete: a kill mid-save leaves
    the previous checkpoint as the latest one."""
    root = run_dir / CHECKPOINTS
    final, partial = root / f"step-{step:07d}", root / f"partial-{step:07d}"
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_text_atomic(partial / STATE_FILE, json.dumps({"step": step}) + "\n")
        shutil.rmtree(final, ignore_errors=True)
        partial.rename(final)
        for old in sorted(root.glob("step-*"))[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def check_resume(run_dir: Path, fingerprint: dict, part: str) -> None:
    """Refuse to continue a run whose `part` of the fingerprint (the config; later the
    process count and base weights) differs, naming each setting; record it otherwise."""
    path = run_dir / FINGERPRINT_FILE
    stored = json.loads(path.read_text()) if path.is_file() else {}
    new = json.loads(json.dumps(fingerprint[part], sort_keys=True, default=str))
    if part in stored and stored[part] != new:
        changed = differences(stored[part], new)
        shown = "\n".join(f"  - {line}" for line in changed[:20])
        raise ResumeConfigError(
            f"{run_dir} holds a training run with other settings, and each of these changes "
            f"the weights, so it cannot be resumed under them:\n{shown}\n"
            "Choose another run directory (hydra.run.dir=... run_dir=...), or delete this one "
            "to start over.")
    write_text_atomic(path, json.dumps({**stored, part: new}, indent=2, sort_keys=True) + "\n")


def trim_log(path: Path, last_step: int) -> None:
    """Keep only log rows up to the checkpoint a run resumes from (rows past it are logged
    again), and drop a row cut short by a kill."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int) and (
                row["step"] <= last_step):
            kept.append(line + "\n")
    write_text_atomic(path, "".join(kept))


# -- the run -----------------------------------------------------------------------------------
def train(cfg: DictConfig) -> dict | None:
    """Train, save, evaluate and write the model card; returns the summary (main process)."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    run_dir, out_dir = Path(cfg.run_dir), Path(cfg.out_dir)
    accelerator = Accelerator(
        mixed_precision=str(cfg.precision), cpu=not torch.cuda.is_available(),
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    main = accelerator.is_main_process
    seed, optim = int(cfg.seed), cfg.optim
    weights_config = {k: OmegaConf.to_container(cfg[k], resolve=True)
                      if isinstance(cfg.get(k), DictConfig) else cfg.get(k) for k in WEIGHT_KEYS}
    procs = accelerator.num_processes
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        check_resume(run_dir, {"config": weights_config}, "config")
        write_text_atomic(run_dir / CONFIG_FILE, OmegaConf.to_yaml(OmegaConf.create(
            public_config(weights_config))))
    accelerator.wait_for_everyone()

    # data: train splits only, never an id the evaluation scores
    task_cfgs, condition_cfgs = training_plugins(cfg)
    stream = TrainingStream(_instantiate_all(task_cfgs, "task"),
                            _instantiate_all(condition_cfgs, "perturbation"), seed,
                            pair_share=float(cfg.data.pair_share),
                            condition_weights=OmegaConf.to_container(
                                cfg.data.get("condition_weights") or {}, resolve=True))
    if cfg.data.check_splits:
        check_disjoint(stream.ids, evaluation_ids(cfg, task_cfgs))

    # model: any checkpoint a model YAML loads, one device per process
    model_cfg = OmegaConf.merge(cfg.model, {"device": str(accelerator.device)})
    adapter = instantiate(model_cfg)
    if not isinstance(adapter, DifferentiableAdapter):
        raise WhiteBoxError(f"model {adapter.name!r} ({type(adapter).__name__}) can only be "
                            "queried; training needs one whose weights it can reach (a "
                            "DifferentiableAdapter)")
    base_info = {k: v for k, v in adapter.describe().items() if k != "device"}
    if main:  # the base checkpoint's files and the process count change the weights too
        check_resume(run_dir, {"run": {"processes": procs, "base_model": base_info}}, "run")
    accelerator.wait_for_everyone()
    torch.manual_seed(seed)
    model = adapter.model
    frozen = freeze_modules(model, list(cfg.freeze or []))
    trainable: torch.nn.Module = model
    if cfg.lora.enabled:
        trainable = apply_lora(model, cfg.lora)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    trainable.train()
    params = [p for p in trainable.parameters() if p.requires_grad]
    n_train = sum(p.numel() for p in params)
    optimizer = torch.optim.AdamW(params, lr=float(optim.lr),
                                  weight_decay=float(optim.weight_decay),
                                  betas=tuple(optim.betas))
    trainable, optimizer = accelerator.prepare(trainable, optimizer)

    weights = LossWeights(**OmegaConf.to_container(cfg.train.loss, resolve=True))
    attacks = {}
    if weights.adversarial > 0 and _sharded(accelerator):
        raise ValueError("train.loss.adversarial > 0 needs the whole model on each process (the "
                         "PGD search runs the bare module); use DDP or ZeRO-1/2, or a recipe "
                         "without L_adv (train=consistency) under FSDP / ZeRO-3")
    if weights.adversarial > 0:
        attacks = {str(c): instantiate(a) for c, a in (cfg.train.adversarial or {}).items()}
        if not attacks:
            raise ValueError("train.loss.adversarial > 0 but train.adversarial names no attack")

    steps, batch, micro = int(cfg.steps), int(cfg.batch_size), int(cfg.micro_batch_size)
    if batch % (micro * procs):
        raise ValueError(f"batch_size={batch} must be a multiple of micro_batch_size={micro} x "
                         f"{procs} process(es)")
    accum = batch // (micro * procs)

    base_lrs = [g["lr"] for g in optimizer.param_groups]  # before load_state overwrites them
    start_step = 0
    resume = latest_checkpoint(run_dir)
    if resume is not None:
        accelerator.load_state(str(resume))
        start_step = json.loads((resume / STATE_FILE).read_text())["step"]
        if main:
            print(f"resuming from {resume} (step {start_step} of {steps})", flush=True)

    logger = instantiate(cfg.logger)
    if main:
        logger.start(OmegaConf.to_container(cfg, resolve=True), run_dir)
    scalars = ScalarLog(logger, run_dir / LOG_FILE, main)
    if main and start_step > 0:
        trim_log(run_dir / LOG_FILE, start_step)
    if main and start_step == 0:
        (run_dir / LOG_FILE).unlink(missing_ok=True)
        print(f"training {n_train / 1e6:.3f} M of "
              f"{sum(p.numel() for p in model.parameters()) / 1e6:.3f} M parameters "
              f"({frozen / 1e6:.3f} M frozen) on {len(stream)} train samples; {steps} steps of "
              f"{batch} ({procs} process(es) x {accum} micro-batches of {micro})", flush=True)

    bar = tqdm(total=steps, initial=start_step, desc=f"train {cfg.train.name}", unit="step",
               disable=not (main and cfg.progress))
    sums: dict[str, float] = defaultdict(float)
    seen, window_rows, window_start = 0, 0, time.time()
    started = time.time()
    for step in range(start_step, steps):
        factor = lr_factor(step, steps, int(optim.warmup_steps), str(optim.schedule))
        for group, lr in zip(optimizer.param_groups, base_lrs):
            group["lr"] = lr * factor
        for k in range(accum):
            first = step * batch + (k * procs + accelerator.process_index) * micro
            pairs = stream.pairs(range(first, first + micro))
            sync = accelerator.no_sync(trainable) if k < accum - 1 else nullcontext()
            with sync:
                loss = batch_loss(trainable, adapter, pairs, weights, attacks,
                                  seed=seed, step=step)
                accelerator.backward(loss.total / accum)
            for key, value in loss.terms.items():
                sums[key] += value / accum
            window_rows += loss.rows
        if optim.max_grad_norm:
            accelerator.clip_grad_norm_(params, float(optim.max_grad_norm))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        seen += 1
        bar.update(1)
        done = step + 1
        if done % int(cfg.log_every) == 0 or done == steps:
            elapsed = time.time() - window_start
            values = {k: v / seen for k, v in sums.items()}
            values.update({"lr": optimizer.param_groups[0]["lr"],
                           "throughput/rows_per_s": window_rows * procs / max(elapsed, 1e-9),
                           "throughput/steps_per_s": seen / max(elapsed, 1e-9)})
            scalars(done, values)
            bar.set_postfix(loss=f"{values.get('loss/total', 0):.3f}", lr=f"{values['lr']:.1e}")
            sums.clear()
            seen, window_rows, window_start = 0, 0, time.time()
        if cfg.checkpoint_every and done % int(cfg.checkpoint_every) == 0 and done < steps:
            save_checkpoint(accelerator, run_dir, done, int(cfg.keep_checkpoints))
    bar.close()
    train_seconds = time.time() - started

    # weights: save_pretrained + processor (LoRA merged), scored by path with no extra step
    accelerator.wait_for_everyone()
    # FSDP / ZeRO-3 hold shards: get_state_dict gathers the full weights (a collective call)
    state = None if cfg.lora.enabled else accelerator.get_state_dict(trainable)
    if main:
        final = accelerator.unwrap_model(trainable)
        if cfg.lora.enabled:
            final = final.merge_and_unload()
        if cfg.gradient_checkpointing:
            final.gradient_checkpointing_disable()
        out_dir.mkdir(parents=True, exist_ok=True)
        final.eval()
        adapter.save_pretrained(out_dir, final, state_dict=state)
        print(f"saved the trained model to {out_dir} ({train_seconds / 60:.1f} min of training "
              f"from step {start_step})", flush=True)
    accelerator.wait_for_everyone()
    del trainable, optimizer, adapter, model

    summary: dict[str, Any] = {
        "recipe": str(cfg.train.name), "base": public_model(base_info),
        "command": _command(), "name": trained_model_config(cfg, out_dir)["name"],
        "out_dir": shown_path(out_dir),
        "train_minutes": round(train_seconds / 60, 2), "resumed_from_step": start_step,
        "steps": steps, "trainable_parameters": n_train, "processes": procs,
        "suite_version": __version__, "git_sha": git_sha(), "seed": seed,
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
                         OmegaConf.to_yaml(OmegaConf.create(public_config(weights_config))))
        logger.finish()
    return summary if main else None


def _command() -> str | None:
    """The command line that made this run (Hydra's overrides), for the model card."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    return " ".join(["mibench-train", *map(public_override, HydraConfig.get().overrides.task)])


def _sharded(accelerator) -> bool:
    """FSDP or DeepSpeed ZeRO-3: parameters are sharded across processes."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.FSDP:
        return True
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    return bool(plugin is not None and getattr(plugin, "zero_stage", 0) == 3)


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
