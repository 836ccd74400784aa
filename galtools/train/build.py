"""The model and optimizer of a training run: MoCo v2 or SimCLR around the chosen encoder, SGD with a linear
warm-up and a cosine decay, restored from a checkpoint's state when resuming."""
from __future__ import annotations

import contextlib
import math

from galtools.errors import UsageProblem
from galtools.train.config import TrainConfig


class WarmupCosine:
    """lr factor at a step: linear warm-up to 1 over ``warmup`` steps, then a cosine decay to 0 at ``total``.
    A plain object (not a closure) so that LambdaLR's state dict can hold it."""

    def __init__(self, warmup: int, total: int):
        self.warmup, self.total = int(warmup), int(total)

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        progress = (step - self.warmup) / max(1, self.total - self.warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def bn_splits(config: TrainConfig, world: int) -> int:
    """Batch-norm groups of MoCo's shuffle BN on one process: --bn-splits, or up to 8 dividing the batch (1 under
    DDP, where the keys are shuffled across processes, and for SimCLR)."""
    if config.bn_splits:
        return config.bn_splits
    if config.method != "moco" or world > 1:
        return 1
    local = config.batch_size
    splits = min(8, max(1, local // 2))
    while local % splits:
        splits -= 1
    return splits


def build_model(config: TrainConfig, bands: int, rt, state: dict | None, channels_last: bool):
    """MoCo or SimCLR around ``config.arch`` for ``bands`` bands on the run's device, with the same initial weights
    on every rank, or the checkpoint ``state``'s; compiled (--compile) and wrapped for DDP as asked."""
    import torch

    from galtools.models import build_encoder
    from galtools.ssl import MoCo, SimCLR

    torch.manual_seed(config.seed)            # the same initial weights on every rank
    backbone = build_encoder(config.arch, bands, width=config.width, pool=config.pool)
    if config.method == "moco":
        splits = bn_splits(config, rt.world)
        if (config.batch_size // rt.world) % splits:
            raise UsageProblem(f"--bn-splits {splits} does not divide the batch of {config.batch_size // rt.world}",
                               "choose a divisor of the per-process batch")
        model = MoCo(backbone, config.dim, config.queue_size, config.key_momentum, config.temperature, splits)
    else:
        model = SimCLR(backbone, config.dim, config.temperature)
    if state is not None:
        model.load_state_dict(state["model"])
    model.to(rt.device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if config.compile:
        model.encoder_q.compile()
        if hasattr(model, "encoder_k"):
            model.encoder_k.compile()
    if rt.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        ids = [rt.device.index] if rt.device.type == "cuda" else None
        model.set_query_runner(DistributedDataParallel(model.encoder_q, device_ids=ids))
    return model


def build_optimizer(model, config: TrainConfig, total_steps: int, warmup_steps: int, state: dict | None):
    """SGD over the query encoder and its warm-up + cosine schedule over ``total_steps``; when resuming, their
    states from ``state``, with the schedule following this command's length (which may extend the run)."""
    import torch

    params = [p for p in model.encoder_q.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=config.scaled_lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(warmup_steps, total_steps))
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scheduler.lr_lambdas[0] = WarmupCosine(warmup_steps, total_steps)
        for group, base in zip(optimizer.param_groups, scheduler.base_lrs):
            group["lr"] = base * scheduler.lr_lambdas[0](scheduler.last_epoch)
    return optimizer, scheduler


def autocast(bf16: bool, device_type: str):
    """bf16 autocast on ``device_type`` (--precision bf16), or nothing."""
    if not bf16:
        return contextlib.nullcontext()
    import torch

    return torch.autocast(device_type=device_type, dtype=torch.bfloat16)
