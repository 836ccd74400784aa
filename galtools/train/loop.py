"""The training run behind ``gal-train``: data -> augment -> preprocess -> MoCo v2 / SimCLR step, with hooks for
stopping, export, monitoring and checkpoints (galtools.train.hooks).

``train`` puts a run together: the CPU threads (before torch starts), the settings (galtools.train.config), the
run folder (rundir), what the run trains on (plan), the model (build), then the loop (``fit``) and its hooks.

Order of a step: raw fluxes are read, augmented on the training device (physical operations in flux units),
preprocessed (arcsinh + per-band normalisation, the parameters that go into the ONNX metadata) and encoded.
Everything random in a step is a function of (seed, step) or (seed, epoch, object), so a run resumed from a
checkpoint continues exactly as if it had not stopped.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from galtools.progress import NullProgress
from galtools.train import build, runtime
from galtools.train import checkpoint as ckpt
from galtools.train.build import WarmupCosine  # noqa: F401  (the schedule, where it has always been found)
from galtools.train.config import TrainConfig
from galtools.train.data import BatchLoader, ahead
from galtools.train.hooks import CheckpointHook, ExportHook, Hook, MonitorHook, StopHook
from galtools.train.plan import Plan, open_plan
from galtools.train.rundir import RunFolder


def epoch_seed(seed: int, epoch: int) -> int:
    """The augmentation seed of an epoch: new views every epoch, the same views for the same (seed, epoch)."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1, np.uint64)[0])


def step_seed(seed: int, step: int) -> int:
    """The seed of a step's key shuffle (shuffle BN)."""
    return int(np.random.SeedSequence([seed, step, 1]).generate_state(1, np.uint32)[0])


@dataclass
class Run:
    """A run in progress, as the loop and its hooks see it."""
    config: TrainConfig
    plan: Plan
    rt: runtime.Runtime
    folder: RunFolder
    model: object
    optimizer: object
    scheduler: object
    bf16: bool
    channels_last: bool
    start_step: int
    resumed: bool
    log: object = None
    step: int = 0
    loss: object = None                 # the last step's loss and positive-pair accuracy (tensors)
    accuracy: object = None
    stop_signal: int | None = None      # set by a signal handler or --stop-after (hooks.StopHook)
    stopping: bool = False              # the loop stops after this step
    result: dict = field(default_factory=dict)

    def info(self, message: str) -> None:
        if self.log is not None and self.rt.is_main:
            self.log.info(message)

    def autocast(self):
        return build.autocast(self.bf16, self.rt.device.type)

    def logging_step(self) -> bool:
        return self.step % self.config.log_every == 0 or self.step == self.plan.total_steps

    def views(self, batch):
        """Two augmented, preprocessed views of the batch on the training device."""
        import torch

        plan = self.plan
        raw = batch.images if isinstance(batch.images, torch.Tensor) else torch.from_numpy(batch.images)
        raw = raw.to(self.rt.device, non_blocking=True)
        extra = {name: values[batch.rows] for name, values in plan.catalogue.items()}
        seed = epoch_seed(self.config.seed, batch.epoch)
        views = []
        for view in (0, 1):
            x = plan.pipe(raw, batch.rows, view=view, seed=seed, **extra)
            x = plan.preprocess.apply_torch(x)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            views.append(x)
        return views


def fit(run: Run, loader, hooks: list[Hook], progress=NullProgress) -> int:
    """Train over ``loader``'s batches, calling the hooks (see galtools.train.hooks); returns the last step."""
    model, optimizer, scheduler = run.model, run.optimizer, run.scheduler
    model.train()
    run.step = run.start_step
    for hook in hooks:
        hook.start(run)
    try:
        with progress(run.plan.total_steps - run.start_step, "training") as bar:
            # On a CPU the next batch's views are made while this step runs (on a GPU its kernels queue anyway).
            for batch, views in ahead(loader, run.views, background=run.rt.device.type == "cpu"):
                with run.autocast():
                    loss, accuracy = model(views[0], views[1], step_seed(run.config.seed, batch.step))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                run.step, run.loss, run.accuracy = batch.step + 1, loss.detach(), accuracy.detach()
                bar.advance(1)
                for hook in hooks:
                    hook.step(run)
                if run.stopping:
                    break
    finally:
        for hook in hooks:
            hook.close(run)
    for hook in reversed(hooks):
        hook.end(run)
    return run.step


def train(config: TrainConfig, resume: str | None = None, overwrite: bool = False, progress=None, log=None,
          stop_after: int | None = None) -> dict:
    """Train (or resume) a run as ``gal-train`` does; returns a summary dict (steps, last loss, export).

    resume: None, "auto" (RUN/last.pt if it exists) or a checkpoint path; stop_after: stop with a checkpoint
    (Requeue, exit 75) after that many steps of this call.  progress: a factory like
    galtools.cli.common.progress_bar.
    """
    threads = runtime.cpu_threads()     # first: before anything imports torch (validate does)
    config = config.validate()
    import torch

    if config.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    rt = runtime.setup(config.device)
    plan = None
    try:
        if config.deterministic:
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False
        elif rt.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        folder = RunFolder(config.out)
        resume_path = runtime.collective(lambda: folder.check(resume, overwrite), rt)
        precision = runtime.resolve_precision(config.precision, rt.device)
        info = log.info if log is not None and rt.is_main else (lambda message: None)
        # every rank reads the tables (and fails the same way on bad data)
        plan, state = runtime.collective(lambda: open_plan(config, resume_path, rt.world, precision, info), rt)
        if rt.is_main:                 # only now, with good inputs, does RUN/ get created
            runtime.collective(lambda: folder.create(fresh=resume_path is None), rt)
        else:
            runtime.collective(lambda: None, rt)
        run = _start(plan, state, rt, folder, resume_path, log)
        state = None   # free the checkpoint's tensors
        loader = BatchLoader(plan.data, plan.train_rows, run.config.batch_size, run.config.seed, run.start_step,
                             plan.total_steps, rt.rank, rt.world, run.config.loader_threads, run.config.prefetch,
                             pin=rt.device.type == "cuda")
        run.info(_describe(run, threads))
        fit(run, loader, [StopHook(stop_after), ExportHook(), MonitorHook(), CheckpointHook()],
            (progress or NullProgress) if rt.is_main else NullProgress)
        return run.result
    finally:
        if plan is not None:
            plan.data.close()
        runtime.teardown()


def _start(plan: Plan, state: dict | None, rt, folder: RunFolder, resume_path: str | None, log) -> Run:
    """The run's model and optimizer, new or restored from the checkpoint ``state`` (with the RNG states)."""
    config = plan.config
    channels_last = rt.device.type == "cuda" if config.channels_last is None else config.channels_last
    model = build.build_model(config, len(plan.data.bands), rt, state, channels_last)
    optimizer, scheduler = build.build_optimizer(model, config, plan.total_steps, plan.warmup_steps, state)
    start_step = int(state["step"]) if state is not None else 0
    run = Run(config, plan, rt, folder, model, optimizer, scheduler, config.precision == "bf16", channels_last,
              start_step, resumed=resume_path is not None, log=log,
              result={"steps": plan.total_steps, "start_step": start_step, "is_main": rt.is_main, "last_loss": None})
    if state is not None:
        ckpt.restore_rng(state["rng"])
        run.info(f"resuming {resume_path} at step {start_step}")
    return run


def _describe(run: Run, threads: int) -> str:
    config, plan, rt = run.config, run.plan, run.rt
    return (f"training {config.arch} ({config.method}) on {plan.data.num_rows} cutouts {plan.data.image_shape} "
            f"from {len(config.inputs)} table(s), {rt.world} process(es) on {rt.device}: steps "
            f"{run.start_step}..{plan.total_steps}, {plan.steps_per_epoch} per epoch, batch {config.batch_size}, "
            f"lr {config.scaled_lr:g}, {config.precision}"
            + ("" if rt.device.type == "cuda" else f", {runtime.describe_threads(threads)}"))
