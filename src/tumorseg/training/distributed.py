"""Data-parallel training with torchrun (PyTorch DDP): several GPUs of one machine, or several machines.

``train.nproc_per_node: N`` (N > 1) makes ``train@<model>`` relaunch itself under ``python -m torch.distributed.run``
with N processes. Each rank draws the same epoch sample list (same seed) and trains on its own share of every global
batch (``batch_size / world`` samples); DDP averages the gradients, so the global batch and the learning rate stay as
configured. Rank 0 alone validates (once per epoch, the result broadcast so every rank stops together), writes
models/, the resume checkpoint, history and MLflow. A resumed training loads rank 0's checkpoint on every rank.

Several machines: ``TUMORSEG_TORCHRUN_ARGS`` adds torchrun options, e.g. ``--nnodes 2 --node-rank 0
--rdzv-backend c10d --rdzv-endpoint host0:29500`` on the machine that runs ``dvc repro`` and ``--node-rank 1`` on
the other, which runs ``python -m torch.distributed.run <same options> --nproc-per-node N stages/train.py <model>``
over the same data (a shared file system or ``dvc pull``). Backend: NCCL on CUDA, gloo on the CPU.
"""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)

EXTRA_ARGS_ENV = "TUMORSEG_TORCHRUN_ARGS"


@dataclass(frozen=True)
class World:
    """This process's place among the training processes (rank 0 of 1 without torchrun)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.size > 1


def under_torchrun() -> bool:
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def world_from_env() -> World:
    if not under_torchrun():
        return World()
    return World(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"]))


def start(world: World, device: torch.device) -> torch.device:
    """Join the process group; on CUDA each local rank gets its own GPU. Returns this rank's device."""
    if not world.enabled:
        return device
    import torch.distributed as dist

    if device.type == "cuda":
        if torch.cuda.device_count() <= world.local_rank:
            raise RuntimeError(f"rank {world.rank}: local rank {world.local_rank} but only {torch.cuda.device_count()} GPU(s) "
                               f"visible; lower train.nproc_per_node")
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return device


def stop(world: World) -> None:
    if world.enabled:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def broadcast(obj, world: World):
    """Rank 0's ``obj`` on every rank."""
    if not world.enabled:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_sum(values: torch.Tensor, world: World) -> torch.Tensor:
    if not world.enabled:
        return values
    import torch.distributed as dist

    values = values.clone()
    dist.all_reduce(values)
    return values


def barrier(world: World) -> None:
    if world.enabled:
        import torch.distributed as dist

        dist.barrier()


def local_share(batch_size: int, world: World) -> slice:
    """This rank's part of each global batch of ``batch_size`` samples."""
    if batch_size % world.size:
        raise ValueError(f"batch size {batch_size} does not split evenly over {world.size} processes; choose a batch size "
                         f"that train.nproc_per_node x nnodes divides")
    share = batch_size // world.size
    return slice(world.rank * share, (world.rank + 1) * share)


def torchrun_command(program: list[str], nproc_per_node: int) -> list[str]:
    """``python -m torch.distributed.run [options] program...``; one machine unless TUMORSEG_TORCHRUN_ARGS names a
    rendezvous."""
    extra = shlex.split(os.environ.get(EXTRA_ARGS_ENV, ""))
    single_machine = [] if any(a.startswith(("--nnodes", "--rdzv")) for a in extra) else ["--standalone"]
    return [sys.executable, "-m", "torch.distributed.run", *single_machine, f"--nproc-per-node={nproc_per_node}", *extra,
            *program]


def relaunch(program: list[str], nproc_per_node: int) -> None:
    """Run ``program`` (e.g. ``-m tumorseg.training.loop unet``) under torchrun; raise if any rank fails."""
    cmd = torchrun_command(program, nproc_per_node)
    log.info("training under torchrun: %s", shlex.join(cmd))
    status = subprocess.call(cmd)
    if status:
        raise SystemExit(f"torchrun ({shlex.join(cmd)}) failed with exit status {status}; see the ranks' errors above")
