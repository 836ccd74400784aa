"""The training run behind ``gal-train``: data -> augment -> preprocess -> MoCo v2 / SimCLR step, checkpoints,
monitoring, and the export of ``encoder.onnx`` at the end.

Order of a step: raw fluxes are read, augmented on the training device (physical
operations in flux units), preprocessed (arcsinh + per-band normalisation, the parameters that go into the ONNX
metadata) and encoded.  Everything random in a step is a function of (seed, step) or (seed, epoch, object), so a
run resumed from a checkpoint continues exactly as if it had not stopped.
"""
from __future__ import annotations

import math
import os
import shutil
import signal
import time

import numpy as np

from galtools.progress import NullProgress
from galtools.errors import BadData, GalError, InputMissing, OutputError, Requeue, UsageProblem
from galtools.train import checkpoint as ckpt
from galtools.train import monitor, runtime
from galtools.train.config import (AUTO_OPS, AUTO_QUEUE, DEFAULT_EPOCHS, MODEL_FIELDS, TrainConfig, auto_ops,
                                   auto_queue_size)
from galtools.train.data import BatchLoader, CutoutData, ahead, centre_crop

ENCODER = "encoder.onnx"
STOP_AFTER = -1   # stop_signal value of a planned stop (--stop-after)
# a checkpoint, then exit 75: Slurm's time limit and preemption (SIGTERM), its --signal (SIGUSR1), a closed terminal
# (SIGHUP; left ignored under nohup)
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGUSR1", "SIGHUP") if hasattr(signal, name))
RUN_FILES = (ckpt.LAST, monitor.METRICS, monitor.PLOT, ENCODER)


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


def epoch_seed(seed: int, epoch: int) -> int:
    """The augmentation seed of an epoch: new views every epoch, the same views for the same (seed, epoch)."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1, np.uint64)[0])


def step_seed(seed: int, step: int) -> int:
    """The seed of a step's key shuffle (shuffle BN)."""
    return int(np.random.SeedSequence([seed, step, 1]).generate_state(1, np.uint32)[0])


# -- the run folder ---------------------------------------------------------------------------------------------
def check_run_dir(out: str, resume: str | None, overwrite: bool) -> str | None:
    """Refuse a RUN/ that cannot be used; returns the checkpoint to resume from, if any.  Creates nothing."""
    last = os.path.join(out, ckpt.LAST)
    if os.path.exists(out) and not os.path.isdir(out):
        raise OutputError(f"--out {out} is a file, not a folder", "give a folder for the run")
    existing = os.path.abspath(out)
    while not os.path.exists(existing):               # the folder that RUN/ would be created in
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing) or not os.access(existing, os.W_OK):
        why = "is not a folder" if not os.path.isdir(existing) else "is not writable"
        raise OutputError(f"cannot write the run folder {out}: {existing} {why}", "choose a writable --out")
    if resume == "auto":
        return last if os.path.exists(last) else None
    if resume:
        if not os.path.isfile(resume):
            raise InputMissing(f"--resume {resume}: no such checkpoint", "give RUN/last.pt, or --resume alone")
        return resume
    if os.path.exists(last) and not overwrite:
        raise GalError(f"{out} already holds a training run", "add --resume to continue it, or --overwrite to start again")
    return None


def create_run_dir(out: str, fresh: bool) -> None:
    """Make RUN/ and RUN/checkpoints/; a fresh run (--overwrite) first removes what an earlier run wrote."""
    try:
        if fresh and os.path.isdir(out):
            for name in RUN_FILES:
                if os.path.exists(os.path.join(out, name)):
                    os.unlink(os.path.join(out, name))
            shutil.rmtree(os.path.join(out, ckpt.FOLDER), ignore_errors=True)
        os.makedirs(os.path.join(out, ckpt.FOLDER), exist_ok=True)
        probe = os.path.join(out, ".gal-train-write-test")
        open(probe, "w").close()        # can we create a file here? (permissions, read-only mounts)
        os.unlink(probe)
    except OSError as exc:
        raise OutputError(f"cannot write the run folder {out}: {exc.strerror}",
                          "choose a writable --out (and check free space)") from None


def _collective(action, rt: runtime.Runtime):
    """Run ``action`` on every rank; if it fails on any, all ranks stop (the failing one with its own error)."""
    error = None
    try:
        result = action()
    except GalError as exc:
        error, result = exc, None
    if runtime.any_rank(error is not None, rt.device):
        raise error or GalError("another process of this run failed", "see its error above")
    return result


# -- catalogue inputs of the augmentations ----------------------------------------------------------------------
def catalogue_columns(pipe, data: CutoutData) -> dict[str, list[str]]:
    """Columns that feed the pipeline's catalogue inputs: ebv, and the PSF FWHM (one column per band, or one)."""
    wanted: dict[str, list[str]] = {}
    if "ebv" in pipe.needs:
        if not data.has_column("ebv"):
            raise UsageProblem("the deredden augmentation needs a column 'ebv'", "add it, or leave deredden out of --ops")
        wanted["ebv"] = ["ebv"]
    if "psf_fwhm" in pipe.needs:
        per_band = [f"psf_fwhm_{band}" for band in data.bands]
        if all(data.has_column(c) for c in per_band):
            wanted["psf_fwhm"] = per_band
        elif data.has_column("psf_fwhm"):
            wanted["psf_fwhm"] = ["psf_fwhm"]
        else:
            raise UsageProblem("the psf augmentation needs the cutouts' PSF FWHM: columns "
                               f"{','.join(per_band)} (arcsec) are missing",
                               "add them, give --ops with psf:fwhm_in=ARCSEC, or leave psf out of --ops")
    return wanted


def catalogue_arrays(data: CutoutData, wanted: dict[str, list[str]]) -> dict[str, np.ndarray]:
    """The catalogue inputs of every row, once: ebv (N,), psf_fwhm (N, bands or 1)."""
    arrays = {}
    for name, columns in wanted.items():
        values = np.stack([np.asarray(data.columns[c], dtype=np.float64) for c in columns], axis=1)
        arrays[name] = values[:, 0] if name == "ebv" else values
    return arrays


# -- the run ----------------------------------------------------------------------------------------------------
class Trainer:
    def __init__(self, config: TrainConfig, resume: str | None = None, overwrite: bool = False, progress=None,
                 log=None, stop_after: int | None = None):
        self.config = config.validate()
        self.resume, self.overwrite, self.stop_after = resume, overwrite, stop_after
        self.progress = progress
        self.log = log
        self.stop_signal: int | None = None

    def info(self, message: str) -> None:
        if self.log is not None and self.rt.is_main:
            self.log.info(message)

    def run(self) -> dict:
        config = self.config
        self.threads = runtime.cpu_threads()      # before torch starts its thread pool
        import torch

        if config.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        self.rt = runtime.setup(config.device)
        try:
            if config.deterministic:
                torch.use_deterministic_algorithms(True)
                torch.backends.cudnn.benchmark = False
            elif self.rt.device.type == "cuda":
                torch.backends.cudnn.benchmark = True
            return self._run()
        finally:
            if getattr(self, "data", None) is not None:
                self.data.close()
            runtime.teardown()

    # -- set-up ----------------------------------------------------------------------------------------------
    def _open(self):
        config = self.config
        self.state = ckpt.load(self.resume_path) if self.resume_path else None
        self.data = CutoutData(config.inputs)
        if self.state is not None:
            self._check_resume_matches()
        if min(self.data.image_shape[1:]) < config.crop:
            height, width = self.data.image_shape[1:]
            raise BadData(f"cutouts of {height}x{width} pixels are smaller than --crop {config.crop}",
                          "give a smaller --crop, or larger cutouts")
        self.pipe = self._pipeline()
        catalogue_names = catalogue_columns(self.pipe, self.data)
        columns = [c for cols in catalogue_names.values() for c in cols]
        if config.monitor_label:
            if not self.data.has_column(config.monitor_label):
                raise UsageProblem(f"--monitor-label {config.monitor_label}: no such column",
                                   f"the table has {', '.join(self.data.names)}")
            columns.append(config.monitor_label)
        self.data.load_columns(columns)
        self.catalogue = catalogue_arrays(self.data, catalogue_names)
        self._split_monitor()
        self._check_batch()
        self.preprocess = self._fit_preprocess()   # reads a sample: bad pixels show up before RUN/ exists

    def _check_resume_matches(self) -> None:
        saved = TrainConfig.from_json(self.state["config"])
        bands = list(self.state["bands"])
        if bands != self.data.bands or tuple(self.state["image_shape"])[0] != self.data.image_shape[0]:
            raise BadData(f"the checkpoint was trained on {len(bands)} bands ({','.join(bands)}), the table has "
                          f"{self.data.image_shape[0]} ({','.join(self.data.bands)})",
                          "resume with cutouts of the same bands, or start a new run in another --out")
        if self.config.queue_size == AUTO_QUEUE:
            self.config.queue_size = saved.queue_size     # the size the run resolved when it started
        for name in MODEL_FIELDS:
            if getattr(saved, name) != getattr(self.config, name):
                raise UsageProblem(f"the checkpoint has {name.replace('_', '-')}={getattr(saved, name)}, this "
                                   f"command {getattr(self.config, name)}", "resume with the run's own settings")

    def _pipeline(self):
        from galtools.augment import DEFAULT_SPEC, AugmentPipeline
        from galtools.io import PIXSCALE
        from galtools.io.meta import FLUX_UNIT

        if self.config.ops == AUTO_OPS:    # resolved by the table's pixels, and recorded resolved
            self.config.ops = auto_ops(self.data.metadata.get(FLUX_UNIT))
        spec = self.config.ops or DEFAULT_SPEC
        pixscale = self.config.pixscale
        if pixscale is None and self.data.metadata.get(PIXSCALE):
            pixscale = float(self.data.metadata[PIXSCALE])
        return AugmentPipeline.from_spec(spec, out_size=self.config.crop, bands=self.data.bands, pixscale=pixscale)

    def _split_monitor(self) -> None:
        """Hold out a fixed random subset of labelled rows for the kNN monitor; train on the rest."""
        config = self.config
        self.monitor_rows = self.train_rows = None
        if not config.monitor_label:
            return
        codes = monitor.encode_labels(self.data.columns[config.monitor_label], config.monitor_label)
        labelled = np.nonzero(codes >= 0)[0]
        size = min(config.monitor_size, len(labelled) // 5)
        if size < 10:
            raise UsageProblem(f"--monitor-label {config.monitor_label}: only {len(labelled)} labelled rows",
                               "the kNN monitor holds out a fifth of them and needs at least 10; drop --monitor-label")
        rng = np.random.default_rng([config.seed, 2])
        self.monitor_rows = np.sort(rng.choice(labelled, size, replace=False))
        self.monitor_labels = codes[self.monitor_rows]
        self.train_rows = np.setdiff1d(np.arange(self.data.num_rows), self.monitor_rows)

    def _check_batch(self) -> None:
        config, world = self.config, self.rt.world
        available = self.data.num_rows if self.train_rows is None else len(self.train_rows)
        if config.batch_size > available:
            raise UsageProblem(f"--batch-size {config.batch_size} is larger than the {available} cutouts to train on",
                               f"give --batch-size {max(1, available // 2)} or less, or more cutouts")
        if config.batch_size % world:
            raise UsageProblem(f"--batch-size {config.batch_size} does not split over {world} processes",
                               f"give a multiple of {world}")
        if config.method == "moco" and config.queue_size == AUTO_QUEUE:
            config.queue_size = auto_queue_size(available, config.batch_size)
        if config.method == "moco" and config.queue_size < config.batch_size:
            raise UsageProblem(f"--queue-size {config.queue_size} is smaller than the batch {config.batch_size}",
                               "the queue must hold at least one batch of keys")
        self.steps_per_epoch = available // config.batch_size
        if config.steps is not None:
            self.total_steps = config.steps
        else:
            self.total_steps = max(1, math.ceil((config.epochs or DEFAULT_EPOCHS) * self.steps_per_epoch))
        self.warmup_steps = config.warmup_steps if config.warmup_steps is not None else max(1, self.total_steps // 20)
        if config.method == "moco":
            self._note_moco_settings(available)

    def _note_moco_settings(self, available: int) -> None:
        """Two MoCo settings that hold back a short run on a small table.  Measured with the tiny encoder, ridge
        probe of z_true, sigma_MAD: 6,000 gal-sim cutouts, crop 48, 600 steps: 0.0377 with m=0.999, 0.0326 with
        m=0.99 (random weights 0.0413); 2,000 cutouts, crop 32, 300 steps, m=0.99: 0.0298 with a queue of 2048,
        0.0284 with 512."""
        config = self.config
        if config.queue_size > available // 2:
            self.info(f"note: --queue-size {config.queue_size} is more than half the {available} training cutouts: "
                      "the queue will hold earlier keys of the very objects it is matching, as negatives "
                      f"(give --queue-size {max(config.batch_size, available // 4)} or less)")
        lag_steps = 1.0 / max(1e-12, 1.0 - config.key_momentum)   # the key encoder averages about this many steps
        if 0 < self.total_steps < 3 * lag_steps:
            shorter = math.floor(1000 * (1 - 3 / self.total_steps)) / 1000
            advice = (f"give --key-momentum {shorter:g} or less" if shorter > 0 else
                      f"give --steps {3 * round(lag_steps)} or more, or --key-momentum 0 to copy the query encoder")
            self.info(f"note: --key-momentum {config.key_momentum:g} averages the key encoder over about "
                      f"{lag_steps:.0f} steps, a long lag for a {self.total_steps}-step run ({advice})")

    def _fit_preprocess(self):
        from galtools.preprocess import Preprocess

        if self.state is not None:
            return Preprocess.from_json(self.state["preprocess"])
        config = self.config
        pool = np.arange(self.data.num_rows) if self.train_rows is None else self.train_rows
        rng = np.random.default_rng([config.seed, 1])
        sample = np.sort(rng.choice(pool, min(config.preprocess_sample, len(pool)), replace=False))
        return Preprocess.fit(centre_crop(self.data.read(sample), config.crop), self.data.bands)

    def _bn_splits(self) -> int:
        config = self.config
        if config.bn_splits:
            return config.bn_splits
        if config.method != "moco" or self.rt.world > 1:
            return 1
        local = config.batch_size
        splits = min(8, max(1, local // 2))
        while local % splits:
            splits -= 1
        return splits

    def _build_model(self):
        import torch

        from galtools.models import build_encoder
        from galtools.ssl import MoCo, SimCLR

        config, rt = self.config, self.rt
        torch.manual_seed(config.seed)            # the same initial weights on every rank
        backbone = build_encoder(config.arch, len(self.data.bands), width=config.width, pool=config.pool)
        if config.method == "moco":
            splits = self._bn_splits()
            if (config.batch_size // rt.world) % splits:
                raise UsageProblem(f"--bn-splits {splits} does not divide the batch of {config.batch_size // rt.world}",
                                   "choose a divisor of the per-process batch")
            model = MoCo(backbone, config.dim, config.queue_size, config.key_momentum, config.temperature, splits)
        else:
            model = SimCLR(backbone, config.dim, config.temperature)
        if self.state is not None:
            model.load_state_dict(self.state["model"])
        model.to(rt.device)
        if self.channels_last:
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

    def _build_optimizer(self, model):
        import torch

        config = self.config
        params = [p for p in model.encoder_q.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(params, lr=config.scaled_lr, momentum=config.momentum,
                                    weight_decay=config.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(self.warmup_steps, self.total_steps))
        if self.state is not None:
            optimizer.load_state_dict(self.state["optimizer"])
            scheduler.load_state_dict(self.state["scheduler"])
            # The schedule follows this command's length (steps/epochs may be extended on resume).
            scheduler.lr_lambdas[0] = WarmupCosine(self.warmup_steps, self.total_steps)
            for group, base in zip(optimizer.param_groups, scheduler.base_lrs):
                group["lr"] = base * scheduler.lr_lambdas[0](scheduler.last_epoch)
        return optimizer, scheduler

    # -- checkpoints -----------------------------------------------------------------------------------------
    def _checkpoint(self, step: int) -> None:
        if not self.rt.is_main:
            return
        state = {
            "step": step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": ckpt.rng_state(),
            "config": self.config.to_json(),
            "preprocess": self.preprocess.to_json(),
            "augment": self.pipe.spec,
            "bands": list(self.data.bands),
            "image_shape": list(self.data.image_shape),
            "world_size": self.rt.world,
        }
        ckpt.save_step(self.config.out, step, state, self.config.keep_checkpoints)

    # -- monitoring ------------------------------------------------------------------------------------------
    def _monitor_images(self):
        if self.monitor_rows is None:
            return None
        images = centre_crop(self.data.read(self.monitor_rows), self.config.crop)
        return self.preprocess.apply_numpy(images)

    def _knn(self, images) -> float:
        import torch

        backbone = self.model.backbone
        was_training = backbone.training
        backbone.eval()
        chunks = []
        with torch.no_grad(), self._autocast():
            for lo in range(0, len(images), 256):
                x = torch.from_numpy(np.ascontiguousarray(images[lo:lo + 256])).to(self.rt.device)
                if self.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                chunks.append(backbone.forward_features(x).float().cpu().numpy())
        backbone.train(was_training)
        return monitor.knn_accuracy(np.concatenate(chunks), self.monitor_labels, self.config.monitor_k)

    def _autocast(self):
        import contextlib

        import torch

        if self.bf16:
            return torch.autocast(device_type=self.rt.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # -- signals ---------------------------------------------------------------------------------------------
    def _on_signal(self, signum, frame) -> None:
        self.stop_signal = signum

    def _install_signals(self) -> dict:
        previous = {}
        for sig in STOP_SIGNALS:
            if sig == getattr(signal, "SIGHUP", None) and signal.getsignal(sig) is signal.SIG_IGN:
                continue   # nohup: a closed terminal must not stop the run
            try:
                previous[sig] = signal.signal(sig, self._on_signal)
            except ValueError:   # not the main thread (e.g. called from a worker thread): no handlers
                break
        return previous

    # -- the loop --------------------------------------------------------------------------------------------
    def _run(self) -> dict:
        config, rt = self.config, self.rt
        self.resume_path = _collective(lambda: check_run_dir(config.out, self.resume, self.overwrite), rt)
        _collective(self._open, rt)   # every rank reads the tables (and fails the same way on bad data)
        if rt.is_main:                 # only now, with good inputs, does RUN/ get created
            _collective(lambda: create_run_dir(config.out, fresh=self.resume_path is None), rt)
        else:
            _collective(lambda: None, rt)
        cuda = rt.device.type == "cuda"
        config.precision = runtime.resolve_precision(config.precision, rt.device)   # recorded resolved
        self.bf16 = config.precision == "bf16"
        self.channels_last = cuda if config.channels_last is None else config.channels_last
        self.model = self._build_model()
        self.optimizer, self.scheduler = self._build_optimizer(self.model)
        start_step = int(self.state["step"]) if self.state is not None else 0
        if self.state is not None:
            ckpt.restore_rng(self.state["rng"])
            self.info(f"resuming {self.resume_path} at step {start_step}")
        self.state = None   # free the checkpoint's tensors
        metrics = monitor.MetricsLog(config.out, start_step if self.resume_path else None) if rt.is_main else None
        monitor_images = self._monitor_images() if rt.is_main else None
        loader = BatchLoader(self.data, self.train_rows, config.batch_size, config.seed, start_step,
                             self.total_steps, rt.rank, rt.world, config.loader_threads, config.prefetch, pin=cuda)
        self.info(f"training {config.arch} ({config.method}) on {self.data.num_rows} cutouts "
                  f"{self.data.image_shape} from {len(config.inputs)} table(s), {rt.world} process(es) on "
                  f"{rt.device}: steps {start_step}..{self.total_steps}, {self.steps_per_epoch} per epoch, "
                  f"batch {config.batch_size}, lr {config.scaled_lr:g}, {config.precision}"
                  + ("" if cuda else f", {self.threads} thread(s)"))
        previous_handlers = self._install_signals()
        result = {"steps": self.total_steps, "start_step": start_step, "is_main": rt.is_main}
        try:
            last_step = self._loop(loader, start_step, metrics, monitor_images)
        finally:
            for sig, handler in previous_handlers.items():
                signal.signal(sig, handler)
        result["last_loss"] = self.last_loss
        if self.stop_signal is not None:
            self._checkpoint(last_step)
            runtime.barrier()
            if rt.is_main:
                monitor.plot_training(config.out)
            name = "--stop-after" if self.stop_signal == STOP_AFTER else signal.Signals(self.stop_signal).name
            raise Requeue(f"stopped by {name} after step {last_step}; checkpoint {os.path.join(config.out, ckpt.LAST)}",
                          "run the same command with --resume to continue (under Slurm: requeue the job)")
        if last_step % config.checkpoint_every or last_step == 0:   # (--steps 0: the untrained state)
            self._checkpoint(last_step)
        runtime.barrier()
        if rt.is_main:
            if monitor_images is not None and self.last_knn_step != last_step:
                self._log_knn(metrics, monitor_images, last_step)
            monitor.plot_training(config.out)
            if config.export:
                result["export"] = self.export(os.path.join(config.out, ENCODER))
        return result

    def _log_knn(self, metrics, images, step: int) -> None:
        accuracy = self._knn(images)
        self.last_knn_step = step
        metrics.write({"step": step, "epoch": step / self.steps_per_epoch, "knn_accuracy": accuracy,
                       "label": self.config.monitor_label, "k": self.config.monitor_k, "monitor_size": len(images)})
        self.info(f"step {step}: kNN accuracy of {self.config.monitor_label} {accuracy:.3f}")

    def _loop(self, loader, start_step: int, metrics, monitor_images) -> int:
        import torch

        config, rt, model = self.config, self.rt, self.model
        model.train()
        pending_losses, pending_accuracy = [], []
        self.last_loss, self.last_knn_step = None, None
        window_start, window_steps = time.perf_counter(), 0
        step = start_step
        progress = self.progress if rt.is_main else NullProgress
        with progress(self.total_steps - start_step, "training") as bar:
            # On a CPU the next batch's views are made while this step runs (on a GPU its kernels queue anyway).
            for batch, views in ahead(loader, self._views, background=rt.device.type == "cpu"):
                with self._autocast():
                    loss, accuracy = model(views[0], views[1], step_seed(config.seed, batch.step))
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
                self.scheduler.step()
                step = batch.step + 1
                pending_losses.append(loss.detach())
                pending_accuracy.append(accuracy.detach())
                window_steps += 1
                bar.advance(1)
                if step % config.log_every == 0 or step == self.total_steps:
                    losses = torch.stack(pending_losses).float()
                    if not torch.isfinite(losses).all():
                        raise BadData(f"the loss became NaN or infinite near step {step}",
                                      "lower --lr, check the cutouts for extreme values, or use --precision fp32")
                    elapsed = time.perf_counter() - window_start
                    self.last_loss = float(losses.mean())
                    if metrics is not None:
                        metrics.write({"step": step, "epoch": step / self.steps_per_epoch, "loss": self.last_loss,
                                       "positive_top1": float(torch.stack(pending_accuracy).mean()),
                                       "lr": self.optimizer.param_groups[0]["lr"],
                                       "images_per_s": window_steps * config.batch_size / max(elapsed, 1e-9),
                                       "time": time.time()})
                    pending_losses, pending_accuracy = [], []
                    window_start, window_steps = time.perf_counter(), 0
                if self.stop_after is not None and step - start_step >= self.stop_after and step < self.total_steps:
                    self.stop_signal = self.stop_signal or STOP_AFTER
                stop = self.stop_signal is not None
                if rt.world > 1:   # agree on stopping at the same step (checked at the logging cadence)
                    stop = (step % config.log_every == 0 or step == self.total_steps) and runtime.any_rank(stop, rt.device)
                    if stop and self.stop_signal is None:
                        self.stop_signal = signal.SIGTERM
                if step % config.checkpoint_every == 0 and not stop:
                    self._checkpoint(step)
                if monitor_images is not None and step % self.steps_per_epoch == 0 and step < self.total_steps:
                    self._log_knn(metrics, monitor_images, step)
                if stop:
                    break
        return step

    def _views(self, batch):
        """Two augmented, preprocessed views of the batch on the training device."""
        import torch

        raw = batch.images if isinstance(batch.images, torch.Tensor) else torch.from_numpy(batch.images)
        raw = raw.to(self.rt.device, non_blocking=True)
        extra = {name: values[batch.rows] for name, values in self.catalogue.items()}
        seed = epoch_seed(self.config.seed, batch.epoch)
        views = []
        for view in (0, 1):
            x = self.pipe(raw, batch.rows, view=view, seed=seed, **extra)
            x = self.preprocess.apply_torch(x)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            views.append(x)
        return views

    # -- export ----------------------------------------------------------------------------------------------
    def export(self, path: str) -> dict:
        from galtools.models import build_encoder
        from galtools.train.export import encoder_metadata, export_encoder

        config = self.config
        backbone = build_encoder(config.arch, len(self.data.bands), width=config.width, pool=config.pool)
        backbone.load_state_dict({k: v.detach().float().cpu() for k, v in self.model.backbone.state_dict().items()})
        metadata = encoder_metadata(self.data.bands, config.crop, self.preprocess.to_json(), backbone.num_features,
                                    config.arch, config.to_json(), self.pipe.spec)
        if self.pipe.pixscale:          # what gal-embed compares a table's pixel scale and flux unit with
            metadata["galtools.pixscale_arcsec"] = repr(float(self.pipe.pixscale))
        if self.data.metadata.get("galtools.flux_unit"):
            metadata["galtools.flux_unit"] = self.data.metadata["galtools.flux_unit"]
        worst = export_encoder(backbone, path, metadata, config.crop, overwrite=True, tta=config.tta)
        self.info(f"wrote {path} ({backbone.num_features}-d embedding; ONNX Runtime matches torch to {worst:.1e})")
        return {"path": path, "parity": worst, "embedding_dim": backbone.num_features}


def train(config: TrainConfig, resume: str | None = None, overwrite: bool = False, progress=None, log=None,
          stop_after: int | None = None) -> dict:
    """Train (or resume) a run as ``gal-train`` does; returns a summary dict (steps, last loss, export).

    resume: None, "auto" (RUN/last.pt if it exists) or a checkpoint path; stop_after: stop with a checkpoint
    (Requeue, exit 75) after that many steps of this call.  progress: a factory like
    galtools.cli.common.progress_bar.
    """
    return Trainer(config, resume, overwrite, progress or NullProgress, log, stop_after).run()
