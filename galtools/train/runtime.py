"""Where training runs: the device, and the process group when launched by torchrun or srun.

The same command line works on one process or many: ``torchrun`` sets RANK/WORLD_SIZE/LOCAL_RANK; under
``srun`` without torchrun, SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID are used (with MASTER_ADDR/MASTER_PORT
exported by the batch script, see examples/slurm-train.sh).  GPUs talk over NCCL, CPUs over gloo.

On CPUs: bf16 autocast where the CPU has bf16 matrix units (``--precision auto``), and torch's threads sized by
the CPU affinity, waiting without spinning (``cpu_threads``: before torch is imported).
"""
from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass

from galtools.device import torch_device


BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")   # /proc/cpuinfo flags of x86 bf16 matrix and dot-product units
PRECISIONS = ("bf16", "fp32")
# OpenMP workers that sleep as soon as they wait, instead of spinning: spinning threads of two processes sharing
# the cores steal each other's time slices (two spinning gal-train runs on 2 cores were 15 times slower each).
PASSIVE_WAIT = {"OMP_WAIT_POLICY": "PASSIVE", "KMP_BLOCKTIME": "0"}
_STARTED: dict[str, str] = {}   # OMP_WAIT_POLICY as torch started with it, when cpu_threads saw torch start


def cpu_flags(path: str = "/proc/cpuinfo") -> set[str]:
    """The CPU's feature flags (Linux /proc/cpuinfo); empty where there is no such file."""
    with contextlib.suppress(OSError), open(path, encoding="ascii", errors="replace") as handle:
        for line in handle:
            name, _, value = line.partition(":")
            if name.strip() == "flags":
                return set(value.split())
    return set()


def cpu_bf16_units() -> list[str]:
    """The bf16 units this CPU reports (AMX, AVX-512 BF16): where bf16 autocast makes a training step faster."""
    flags = cpu_flags()
    return [flag for flag in BF16_CPU_FLAGS if flag in flags]


def resolve_precision(precision: str, device) -> str:
    """``--precision auto|fp32|bf16`` on ``device`` -> what runs: bf16 (autocast) or fp32.  auto: bf16 on a GPU,
    and on a CPU with bf16 units (cpu_bf16_units); fp32 elsewhere, where bf16 would be emulated and slower."""
    if precision != "auto":
        return precision
    if device.type == "cuda" or (device.type == "cpu" and cpu_bf16_units()):
        return "bf16"
    return "fp32"


def cpu_threads() -> int:
    """Before torch is first imported: OpenMP waits passively (PASSIVE_WAIT, unless the environment says
    otherwise) and torch's CPU threads are the CPUs this process may use (affinity, Slurm's --cpus-per-task) less
    one, which makes the next batch's views (at least one thread), or an explicit OMP_NUM_THREADS.  Measured with
    the small preset on 2 shared cores: 1 thread made 80-100 images/s in bf16, 2 threads 21-23 (cause not
    established: barriers waiting on a busy neighbour, or AMX state switched with the threads).  Once torch is
    imported (a library caller's process) its settings are kept.  Returns torch's threads."""
    from galtools.embed.providers import cpu_allocation

    fresh = "torch" not in sys.modules
    if fresh:
        for name, value in PASSIVE_WAIT.items():
            os.environ.setdefault(name, value)
        _STARTED["OMP_WAIT_POLICY"] = os.environ["OMP_WAIT_POLICY"]
    import torch

    if fresh:
        explicit = os.environ.get("OMP_NUM_THREADS", "").strip()
        torch.set_num_threads(int(explicit) if explicit.isdigit() and int(explicit) > 0
                              else max(1, cpu_allocation() - 1))
    return torch.get_num_threads()


def describe_threads(threads: int) -> str:
    """How torch's CPU threads were set up, for the run's log: "1 thread(s), OMP_WAIT_POLICY=PASSIVE", or, where
    torch was imported before cpu_threads, "2 thread(s) as set before gal-train started"."""
    if "OMP_WAIT_POLICY" not in _STARTED:
        return f"{threads} thread(s) as set before gal-train started"
    return f"{threads} thread(s), OMP_WAIT_POLICY={_STARTED['OMP_WAIT_POLICY']}"


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


def collective(action, rt: Runtime):
    """Run ``action`` on every rank; if it fails on any, all ranks stop (the failing one with its own error)."""
    from galtools.errors import GalError

    error = None
    try:
        result = action()
    except GalError as exc:
        error, result = exc, None
    if any_rank(error is not None, rt.device):
        raise error or GalError("another process of this run failed", "see its error above")
    return result


def any_rank(flag: bool, device) -> bool:
    """True on every rank if ``flag`` is true on any (to stop, or to fail, together)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)
