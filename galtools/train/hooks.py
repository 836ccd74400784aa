"""What a training run does around its steps, as hooks of the loop (galtools.train.loop.fit): stopping on a signal
or after --stop-after (with a checkpoint, then Requeue: exit 75), exporting encoder.onnx, monitoring (the metrics
log, the kNN accuracy, the plot) and checkpointing.

A hook sees the Run (galtools.train.loop.Run) at four moments: ``start`` before the first step, ``step`` after
each optimizer step (hooks in their order), ``close`` after the last step, also when the loop fails, and ``end``
after a loop that finished or stopped (hooks in the reverse order, as nested context managers unwind).
"""
from __future__ import annotations

import os
import signal
import time

import numpy as np

from galtools.errors import BadData, Requeue
from galtools.train import monitor, runtime
from galtools.preprocess import centre_crop

STOP_AFTER = -1   # the stop signal of a planned stop (--stop-after)
# a checkpoint, then exit 75: Slurm's time limit and preemption (SIGTERM), its --signal (SIGUSR1), a closed terminal
# (SIGHUP; left ignored under nohup)
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGUSR1", "SIGHUP") if hasattr(signal, name))


class Hook:
    def start(self, run) -> None:
        pass

    def step(self, run) -> None:
        pass

    def close(self, run) -> None:
        pass

    def end(self, run) -> None:
        pass


class StopHook(Hook):
    """A stop signal (STOP_SIGNALS) or --stop-after sets ``run.stopping`` (under DDP, on every rank at the same
    step, agreed at the logging cadence); the run then ends with a checkpoint and Requeue (exit 75)."""

    def __init__(self, stop_after: int | None = None):
        self.stop_after = stop_after
        self.previous: dict = {}

    def _on_signal(self, signum, frame) -> None:
        self.run.stop_signal = signum

    def start(self, run) -> None:
        self.run = run
        for sig in STOP_SIGNALS:
            if sig == getattr(signal, "SIGHUP", None) and signal.getsignal(sig) is signal.SIG_IGN:
                continue   # nohup: a closed terminal must not stop the run
            try:
                self.previous[sig] = signal.signal(sig, self._on_signal)
            except ValueError:   # not the main thread (e.g. called from a worker thread): no handlers
                break

    def step(self, run) -> None:
        step, config = run.step, run.config
        if self.stop_after is not None and step - run.start_step >= self.stop_after and step < run.plan.total_steps:
            run.stop_signal = run.stop_signal or STOP_AFTER
        stop = run.stop_signal is not None
        if run.rt.world > 1:   # agree on stopping at the same step (checked at the logging cadence)
            stop = run.logging_step() and runtime.any_rank(stop, run.rt.device)
            if stop and run.stop_signal is None:
                run.stop_signal = signal.SIGTERM
        run.stopping = stop

    def close(self, run) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous = {}

    def end(self, run) -> None:
        if run.stopping:
            name = "--stop-after" if run.stop_signal == STOP_AFTER else signal.Signals(run.stop_signal).name
            raise Requeue(f"stopped by {name} after step {run.step}; checkpoint {run.folder.last}",
                          "run the same command with --resume to continue (under Slurm: requeue the job)")


class ExportHook(Hook):
    """RUN/encoder.onnx at the end of a run that was not stopped (unless --no-export)."""

    def end(self, run) -> None:
        if run.rt.is_main and run.config.export and not run.stopping:
            run.result["export"] = export_run(run, run.folder.encoder)


class MonitorHook(Hook):
    """RUN/metrics.jsonl: the mean loss, positive-pair accuracy, learning rate and images/s of each --log-every
    window (a loss that is not finite stops the run: BadData); the kNN accuracy of the held-out rows each epoch and
    at the end (--monitor-label); RUN/training.png at the end.  Records and plots are the main process's."""

    def start(self, run) -> None:
        self.log = run.folder.metrics(run.start_step if run.resumed else None) if run.rt.is_main else None
        self.images = self._monitor_images(run) if run.rt.is_main else None
        self.losses, self.accuracy = [], []
        self.window_start, self.window_steps = time.perf_counter(), 0
        self.last_knn_step = None

    def step(self, run) -> None:
        import torch

        self.losses.append(run.loss)
        self.accuracy.append(run.accuracy)
        self.window_steps += 1
        step = run.step
        if run.logging_step():
            losses = torch.stack(self.losses).float()
            if not torch.isfinite(losses).all():
                raise BadData(f"the loss became NaN or infinite near step {step}",
                              "lower --lr, check the cutouts for extreme values, or use --precision fp32")
            elapsed = time.perf_counter() - self.window_start
            run.result["last_loss"] = float(losses.mean())
            if self.log is not None:
                self.log.write({"step": step, "epoch": step / run.plan.steps_per_epoch,
                                "loss": run.result["last_loss"],
                                "positive_top1": float(torch.stack(self.accuracy).mean()),
                                "lr": run.optimizer.param_groups[0]["lr"],
                                "images_per_s": self.window_steps * run.config.batch_size / max(elapsed, 1e-9),
                                "time": time.time()})
            self.losses, self.accuracy = [], []
            self.window_start, self.window_steps = time.perf_counter(), 0
        if self.images is not None and step % run.plan.steps_per_epoch == 0 and step < run.plan.total_steps:
            self._log_knn(run, step)

    def end(self, run) -> None:
        if not run.rt.is_main:
            return
        if self.images is not None and not run.stopping and self.last_knn_step != run.step:
            self._log_knn(run, run.step)
        run.folder.plot()

    def _monitor_images(self, run):
        plan = run.plan
        if plan.monitor_rows is None:
            return None
        return plan.preprocess.apply_numpy(centre_crop(plan.data.read(plan.monitor_rows), run.config.crop))

    def _log_knn(self, run, step: int) -> None:
        config = run.config
        accuracy = monitor.knn_accuracy(knn_features(run, self.images), run.plan.monitor_labels, config.monitor_k)
        self.last_knn_step = step
        self.log.write({"step": step, "epoch": step / run.plan.steps_per_epoch, "knn_accuracy": accuracy,
                        "label": config.monitor_label, "k": config.monitor_k, "monitor_size": len(self.images)})
        run.info(f"step {step}: kNN accuracy of {config.monitor_label} {accuracy:.3f}")


class CheckpointHook(Hook):
    """RUN/checkpoints/step-N.pt and RUN/last.pt every --checkpoint-every steps, and at the end (a stopped run's
    last step, or the final step when it is not on the cadence; --steps 0: the untrained state).  The processes
    of a DDP run wait for the main one's last checkpoint."""

    def step(self, run) -> None:
        if run.step % run.config.checkpoint_every == 0 and not run.stopping:
            self.save(run)

    def end(self, run) -> None:
        if run.stopping or run.step % run.config.checkpoint_every or run.step == 0:
            self.save(run)
        runtime.barrier()

    @staticmethod
    def save(run) -> None:
        if not run.rt.is_main:
            return
        from galtools.train import checkpoint as ckpt

        plan = run.plan
        state = {
            "step": run.step,
            "model": run.model.state_dict(),
            "optimizer": run.optimizer.state_dict(),
            "scheduler": run.scheduler.state_dict(),
            "rng": ckpt.rng_state(),
            "config": run.config.to_json(),
            "preprocess": plan.preprocess.to_json(),
            "augment": plan.pipe.spec,
            "bands": list(plan.data.bands),
            "image_shape": list(plan.data.image_shape),
            "world_size": run.rt.world,
        }
        run.folder.save_checkpoint(run.step, state, run.config.keep_checkpoints)


def export_run(run, path: str) -> dict:
    """The run's query backbone as ONNX at ``path``, with the metadata gal-embed reads (bands, crop,
    preprocessing, settings, augmentations, pixel scale, flux unit)."""
    from galtools.models import build_encoder
    from galtools.train.export import encoder_metadata, export_encoder

    config, plan = run.config, run.plan
    backbone = build_encoder(config.arch, len(plan.data.bands), width=config.width, pool=config.pool)
    backbone.load_state_dict({k: v.detach().float().cpu() for k, v in run.model.backbone.state_dict().items()})
    metadata = encoder_metadata(plan.data.bands, config.crop, plan.preprocess.to_json(), backbone.num_features,
                                config.arch, config.to_json(), plan.pipe.spec)
    if plan.pipe.pixscale:          # what gal-embed compares a table's pixel scale and flux unit with
        metadata["galtools.pixscale_arcsec"] = repr(float(plan.pipe.pixscale))
    if plan.data.metadata.get("galtools.flux_unit"):
        metadata["galtools.flux_unit"] = plan.data.metadata["galtools.flux_unit"]
    worst = export_encoder(backbone, path, metadata, config.crop, overwrite=True, tta=config.tta)
    run.info(f"wrote {path} ({backbone.num_features}-d embedding; ONNX Runtime matches torch to {worst:.1e})")
    return {"path": path, "parity": worst, "embedding_dim": backbone.num_features}


def knn_features(run, images: np.ndarray) -> np.ndarray:
    """The backbone's features of preprocessed ``images`` (eval mode, in chunks of 256), as float32."""
    import torch

    backbone = run.model.backbone
    was_training = backbone.training
    backbone.eval()
    chunks = []
    with torch.no_grad(), run.autocast():
        for lo in range(0, len(images), 256):
            x = torch.from_numpy(np.ascontiguousarray(images[lo:lo + 256])).to(run.rt.device)
            if run.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            chunks.append(backbone.forward_features(x).float().cpu().numpy())
    backbone.train(was_training)
    return np.concatenate(chunks)
