"""Where training runs: the device, and the process group when launched by torchrun or srun.

The same command line works on one process or many: ``torchrun`` sets RANK/WORLD_SIZE/LOCAL_RANK; under
``srun`` without torchrun, SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID are used (with MASTER_ADDR/MASTER_PORT
exported by the batch script, see examples/slurm-train.sh).  GPUs talk over NCCL, CPUs over gloo.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from galtools.device import torch_device


def resolve_device(text: str, local_rank: int | None = None):
    """``auto|cpu|cuda[:N]`` -> torch.device (galtools.device); cuda without a usable GPU is DeviceUnavailable
    (exit 69). Under DDP each process takes the GPU of its local rank."""
    return torch_device(text, local_rank)


@dataclass
class Runtime:
    rank: int
    world: int
    local_rank: int
    device: object

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _launch_env() -> tuple[int, int, int] | None:
    env = os.environ
    if int(env.get("WORLD_SIZE", "1")) > 1:
        return int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", "0"))
    if int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_STEP_ID" in env and "MASTER_ADDR" in env:
        env.setdefault("MASTER_PORT", "29500")
        return int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", "0"))
    return None


def setup(device_text: str) -> Runtime:
    """Resolve the device and, when launched as several processes, join the process group."""
    import torch
    import torch.distributed as dist

    launch = _launch_env()
    if launch is None:
        return Runtime(0, 1, 0, resolve_device(device_text))
    rank, world, local_rank = launch
    device = resolve_device(device_text, local_rank if device_text != "cpu" else None)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", rank=rank, world_size=world, device_id=device)
    else:
        dist.init_process_group("gloo", rank=rank, world_size=world)
    return Runtime(rank, world, local_rank, device)


def teardown() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def any_rank(flag: bool, device) -> bool:
    """True on every rank if ``flag`` is true on any (to stop, or to fail, together)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)
