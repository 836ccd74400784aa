"""Where training runs: the device, and the process group when launched by torchrun or srun.

The same command line works on one process or many: ``torchrun`` sets RANK/WORLD_SIZE/LOCAL_RANK; under
``srun`` without torchrun, SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID are used (with MASTER_ADDR/MASTER_PORT
exported by the batch script, see examples/slurm-train.sh).  GPUs talk over NCCL, CPUs over gloo.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from galtools.errors import DeviceUnavailable, UsageProblem


def resolve_device(text: str, local_rank: int | None = None):
    """``auto|cpu|cuda[:N]`` -> torch.device; cuda without a usable GPU is DeviceUnavailable (exit 69).
    Under DDP each process takes the GPU of its local rank."""
    import torch

    text = (text or "auto").strip().lower()
    if text == "auto":
        text = "cuda" if torch.cuda.is_available() else "cpu"
    if text == "cpu":
        return torch.device("cpu")
    if text == "cuda" or text.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise DeviceUnavailable(f"--device {text}: no usable GPU (torch.cuda.is_available() is False)",
                                    "use --device cpu, or check the driver and CUDA_VISIBLE_DEVICES")
        if local_rank is not None:    # one GPU per process: all GPUs visible, or only its own (--gpus-per-task)
            index = local_rank % torch.cuda.device_count()
        else:
            index = int(text.split(":", 1)[1]) if ":" in text else 0
        if index >= torch.cuda.device_count():
            raise DeviceUnavailable(f"--device {text}: GPU {index} does not exist ({torch.cuda.device_count()} visible)",
                                    "choose another GPU or fewer processes per node")
        return torch.device("cuda", index)
    raise UsageProblem(f"unknown --device {text!r}", "use auto, cpu or cuda[:N]")


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
