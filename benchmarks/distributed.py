"""The only module that imports Accelerate: who am I, which batches are mine, gather; and
the training run's `Accelerator` (whose methods the trainer then calls).

Work is split by whole batches of one global batch plan, so every sample is computed in the
same batch whatever the number of processes: records are bit-identical for 1 or N processes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import DistributedDataParallelKwargs, DistributedType, gather_object

T = TypeVar("T")


@dataclass(frozen=True)
class Processes:
    """This process's place among the processes `accelerate launch` started (1 without it)."""

    index: int
    count: int
    device: str

    @property
    def is_main(self) -> bool:
        return self.index == 0


def current() -> Processes:
    # Without a GPU, processes started by `accelerate launch --multi_gpu` or torchrun talk
    # over gloo on the CPU (Accelerate only does this when asked for the CPU).
    state = PartialState(cpu=not torch.cuda.is_available())
    return Processes(index=state.process_index, count=state.num_processes,
                     device=str(state.device))


def my_share(items: Sequence[T], processes: Processes) -> list[T]:
    """Round-robin share: batches are sorted by length, so shares cost about the same."""
    return list(items[processes.index::processes.count])


def gather(items: list[T], processes: Processes) -> list[T]:
    """Every process's items, on every process (a no-op for one process)."""
    return list(gather_object(items)) if processes.count > 1 else items


def barrier(processes: Processes) -> None:
    if processes.count > 1:
        PartialState().wait_for_everyone()


def training_accelerator(precision: str) -> Accelerator:
    """The trainer's Accelerator: DDP that tolerates parameters a loss term leaves unused
    (an objective without L_adv, say), on the CPU when there is no GPU."""
    return Accelerator(
        mixed_precision=precision, cpu=not torch.cuda.is_available(),
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])


def is_sharded(accelerator: Accelerator) -> bool:
    """FSDP or DeepSpeed ZeRO-3: parameters are sharded across processes."""
    if accelerator.distributed_type == DistributedType.FSDP:
        return True
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    return bool(plugin is not None and getattr(plugin, "zero_stage", 0) == 3)
