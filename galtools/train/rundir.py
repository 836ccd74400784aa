"""The run folder RUN/ of ``gal-train``: what may be done with it (resume, start again, refuse), its paths, and the
files a run writes into it (checkpoints written atomically by galtools.train.checkpoint through galtools.io, the
metrics log and the plot of galtools.train.monitor, encoder.onnx).

    RUN/last.pt               the latest checkpoint (a hard link to the newest of RUN/checkpoints/)
    RUN/checkpoints/step-N.pt step checkpoints, the most recent --keep-checkpoints of them
    RUN/metrics.jsonl         one JSON record per logging window and per kNN evaluation
    RUN/training.png          loss, learning rate (and kNN accuracy) against step
    RUN/encoder.onnx          the exported encoder
"""
from __future__ import annotations

import os
import shutil

from galtools.errors import GalError, InputMissing, OutputError
from galtools.train import checkpoint as ckpt
from galtools.train import monitor

ENCODER = "encoder.onnx"
RUN_FILES = (ckpt.LAST, monitor.METRICS, monitor.PLOT, ENCODER)   # what --overwrite removes from an earlier run


class RunFolder:
    def __init__(self, out: str):
        self.out = out

    @property
    def last(self) -> str:
        return os.path.join(self.out, ckpt.LAST)

    @property
    def encoder(self) -> str:
        return os.path.join(self.out, ENCODER)

    def check(self, resume: str | None, overwrite: bool) -> str | None:
        """Refuse a RUN/ that cannot be used; returns the checkpoint to resume from, if any.  Creates nothing.
        resume: None, "auto" (RUN/last.pt if there is one) or a checkpoint's path."""
        out = self.out
        if os.path.exists(out) and not os.path.isdir(out):
            raise OutputError(f"--out {out} is a file, not a folder", "give a folder for the run")
        existing = os.path.abspath(out)
        while not os.path.exists(existing):               # the folder that RUN/ would be created in
            existing = os.path.dirname(existing)
        if not os.path.isdir(existing) or not os.access(existing, os.W_OK):
            why = "is not a folder" if not os.path.isdir(existing) else "is not writable"
            raise OutputError(f"cannot write the run folder {out}: {existing} {why}", "choose a writable --out")
        if resume == "auto":
            return self.last if os.path.exists(self.last) else None
        if resume:
            if not os.path.isfile(resume):
                raise InputMissing(f"--resume {resume}: no such checkpoint", "give RUN/last.pt, or --resume alone")
            return resume
        if os.path.exists(self.last) and not overwrite:
            raise GalError(f"{out} already holds a training run",
                           "add --resume to continue it, or --overwrite to start again")
        return None

    def create(self, fresh: bool) -> None:
        """Make RUN/ and RUN/checkpoints/; a fresh run (--overwrite) first removes what an earlier run wrote."""
        out = self.out
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

    def save_checkpoint(self, step: int, state: dict, keep: int) -> str:
        """RUN/checkpoints/step-N.pt and RUN/last.pt (written atomically), keeping the ``keep`` latest steps."""
        return ckpt.save_step(self.out, step, state, keep)

    def metrics(self, resume_step: int | None) -> monitor.MetricsLog:
        """RUN/metrics.jsonl, emptied for a fresh run, cut back to ``resume_step`` for a resumed one."""
        return monitor.MetricsLog(self.out, resume_step)

    def plot(self) -> str | None:
        """RUN/training.png from RUN/metrics.jsonl."""
        return monitor.plot_training(self.out)
