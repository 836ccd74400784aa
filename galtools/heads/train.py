"""Training a head (torch, imported lazily): one optimisation loop and one early-stopping rule for every arm.

The rule (``EarlyStopping``), the same for a linear probe, an MLP, a fine-tuned encoder and a network trained from
scratch: after each validation check, a loss below the best by more than ``MIN_DELTA`` is an improvement (its
weights are kept); ``PLATEAU_CHECKS`` checks in a row without one cut the learning rate by ``PLATEAU_FACTOR``;
``patience`` checks without one stop the run.  A run that reaches ``max_epochs`` first stopped at its cap: the
record says which (``stopped``: "patience" or "cap"), so a comparison can refuse a run that had not converged.

``train_head`` fits a head on embeddings (cross-entropy against class indices or soft targets), the input
standardisation and the learnt logit scale folded into the saved layers, so that applying it needs numpy only.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import numpy as np

from galtools.errors import UsageProblem
from galtools.heads.format import StackedLinear

log = logging.getLogger("galtools")

MIN_DELTA = 1e-4               # a validation loss must beat the best by this much to count as an improvement
PLATEAU_CHECKS = 2             # checks without improvement before the learning rate is cut ...
PLATEAU_FACTOR = 0.2           # ... by this factor
MIN_STEPS_PER_CHECK = 25       # tiny training sets: still take this many steps between validation checks
DEFAULT_MAX_CHECKS = 100       # without --max-epochs: at most this many validation checks
SMALL_STEP_FLOPS = 1 << 26     # below this (inputs x outputs x batch), one thread is faster than two
PATIENCE, CAP = "patience", "cap"


@dataclass
class TrainSettings:
    hidden: int | None = None          # None: linear probe; N: one hidden layer of N units
    val_fraction: float = 0.1
    max_epochs: int | None = None      # None: at most DEFAULT_MAX_CHECKS validation checks
    patience: int = 6                  # validation checks without improvement before stopping
    batch_size: int = 512
    lr: float = 1e-2
    weight_decay: float = 1e-4
    seed: int = 0

    def validate(self):
        if not 0 < self.val_fraction < 1:
            raise UsageProblem(f"--val-fraction must be between 0 and 1, got {self.val_fraction}")
        if self.hidden is not None and self.hidden < 1:
            raise UsageProblem(f"--hidden must be positive, got {self.hidden}")
        for name, value in (("--max-epochs", self.max_epochs), ("--patience", self.patience),
                            ("--batch-size", self.batch_size)):
            if value is not None and value < 1:
                raise UsageProblem(f"{name} must be at least 1, got {value}")
        if not self.lr > 0:
            raise UsageProblem(f"--lr must be positive, got {self.lr}")
        return self


def check_cadence(steps_per_pass: int, max_epochs: int | None) -> tuple[int, int]:
    """(steps between validation checks, the most checks): once per pass, but at least MIN_STEPS_PER_CHECK steps
    apart, so that a run on a few hundred rows is not judged (and its learning rate cut) every handful of steps.
    The most checks keep the run within ``max_epochs`` passes over the rows (a check may span several passes);
    without ``max_epochs``, the run has DEFAULT_MAX_CHECKS checks at most, however many passes they span."""
    if not steps_per_pass:
        return max(MIN_STEPS_PER_CHECK, 1), 1
    if max_epochs is None:
        return max(steps_per_pass, MIN_STEPS_PER_CHECK), DEFAULT_MAX_CHECKS
    most_steps = max(max_epochs, 1) * steps_per_pass
    steps_per_check = min(max(steps_per_pass, MIN_STEPS_PER_CHECK), most_steps)
    return steps_per_check, most_steps // steps_per_check


class EarlyStopping:
    """The one stopping rule: keep the best, cut the learning rate on plateaus, stop after ``patience`` checks
    without improvement or at ``max_checks``."""

    def __init__(self, patience: int, max_checks: int, optimiser=None):
        self.patience, self.max_checks, self.optimiser = patience, max_checks, optimiser
        self.best_loss, self.best_check = math.inf, -1
        self.checks, self.lr_cuts, self._since_cut = 0, 0, 0
        self.stopped: str | None = None

    def update(self, loss: float) -> bool:
        """Record one check's validation loss; True when it is the best so far (keep these weights)."""
        check = self.checks
        self.checks += 1
        improved = loss < self.best_loss - MIN_DELTA
        if improved:
            self.best_loss, self.best_check, self._since_cut = loss, check, 0
        elif check - self.best_check >= self.patience:
            self.stopped = PATIENCE
        else:
            self._since_cut += 1
            if self._since_cut >= PLATEAU_CHECKS:       # a plateau: smaller steps before giving up
                self._since_cut = 0
                self.lr_cuts += 1
                for group in getattr(self.optimiser, "param_groups", []):
                    group["lr"] *= PLATEAU_FACTOR
        if self.stopped is None and self.checks >= self.max_checks:
            self.stopped = CAP
        return improved

    @property
    def done(self) -> bool:
        return self.stopped is not None

    def record(self) -> dict:
        return {"checks": self.checks, "best_check": self.best_check + 1, "best_val_loss": round(self.best_loss, 5),
                "stopped": self.stopped, "stopped_early": self.stopped == PATIENCE, "lr_cuts": self.lr_cuts}


def run_checks(train_until_check, validation_loss, snapshot, restore, stopping: EarlyStopping,
               progress=None) -> dict:
    """The loop every arm runs: train (``train_until_check()`` -> mean training loss), validate, let ``stopping``
    decide, keep the best ``snapshot()``; at the end ``restore`` it. Returns the run's record."""
    history, train_losses, seconds = [], [], []
    started, best = time.perf_counter(), None
    while not stopping.done:
        train_loss = train_until_check()
        val_loss = validation_loss()
        history.append(round(val_loss, 5))
        train_losses.append(round(train_loss, 5))
        seconds.append(round(time.perf_counter() - started, 3))
        if progress is not None:
            progress(stopping.checks, val_loss)
        log.debug(f"check {stopping.checks + 1}: train loss {train_loss:.4f}, validation loss {val_loss:.4f}")
        if stopping.update(val_loss) or best is None:
            best = snapshot()
    restore(best)
    return {**stopping.record(), "val_loss": history, "train_loss": train_losses, "seconds_at_check": seconds}


def describe_run(record: dict) -> str:
    """One line for the log: best loss, checks, and why the run stopped."""
    why = "its epoch cap (raise --max-epochs)" if record["stopped"] == CAP else "patience"
    return (f"best validation loss {record['best_val_loss']:.4f} after {record['best_check']} of "
            f"{record['checks']} checks ({record['epochs']:g} epochs); stopped by {why}")


# --------------------------------------------------------------------------------------------------- the network

def torch_head(dim: int, n_outputs: int, hidden: int | None):
    """A linear (or one-hidden-layer MLP) head whose logits are multiplied by a learnt scale exp(log_scale).

    A sharp redshift pdf needs logits that differ by hundreds between bins; Adam moves each weight by about the
    learning rate per step, so reaching them additively takes tens of thousands of steps.  A shared
    multiplicative scale gets there in a few hundred, and it folds into the last layer when saving.
    """
    import torch

    class ScaledHead(torch.nn.Module):
        def __init__(self):
            super().__init__()
            if hidden is None:
                self.body = torch.nn.Linear(dim, n_outputs)
            else:
                self.body = torch.nn.Sequential(torch.nn.Linear(dim, hidden), torch.nn.ReLU(),
                                                torch.nn.Linear(hidden, n_outputs))
            self.log_scale = torch.nn.Parameter(torch.zeros(()))

        def forward(self, x):
            return self.body(x) * self.log_scale.exp()

    return ScaledHead()


def linear_layers(module) -> list:
    import torch

    return [m for m in module.modules() if isinstance(m, torch.nn.Linear)]


def start_at_the_prior(head, counts: np.ndarray) -> None:
    """Zero last-layer weights and biases = log of the (Laplace-smoothed) class frequencies: training starts from
    predicting the label distribution for every object and moves away from it only as far as the data support
    (early stopping then acts as shrinkage towards the prior, which matters with few labels)."""
    import torch

    last = linear_layers(head)[-1]
    prior = (counts + 1.0) / (counts.sum() + len(counts))
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.from_numpy(np.log(prior).astype(np.float32)))


def as_targets(y, kernel: np.ndarray | None = None):
    """Class indices (1-d) as int64, or per-class probabilities (2-d, soft targets such as vote fractions) as
    float32: torch's cross_entropy takes either.  With a smoothing ``kernel``, class index k becomes row k."""
    import torch

    y = np.asarray(y)
    if kernel is not None and y.ndim == 1:
        y = kernel[y]
    if y.ndim == 2:
        return torch.from_numpy(np.ascontiguousarray(y, dtype=np.float32))
    return torch.from_numpy(y.astype(np.int64, copy=False))


def export_head(head, mean: np.ndarray | None = None, scale: np.ndarray | None = None) -> StackedLinear:
    """The head's layers as numpy arrays, with its logit scale folded into the last layer and (given ``mean`` and
    ``scale``) the input standardisation (x - mean) / scale folded into the first."""
    layers = linear_layers(head)
    weights = [layer.weight.detach().cpu().numpy().T.astype(np.float64) for layer in layers]
    biases = [layer.bias.detach().cpu().numpy().astype(np.float64) for layer in layers]
    logit_scale = float(head.log_scale.detach().exp())
    weights[-1], biases[-1] = weights[-1] * logit_scale, biases[-1] * logit_scale
    if mean is not None:
        # x @ (W / scale) + (b - mean @ (W / scale))
        weights[0] = weights[0] / scale[:, None]
        biases[0] = biases[0] - mean @ weights[0]
    return StackedLinear([w.astype(np.float32) for w in weights], [b.astype(np.float32) for b in biases])


# ------------------------------------------------------------------------------------------------ the probe

def train_head(rows, val_x: np.ndarray, val_y: np.ndarray, dim: int, n_outputs: int, settings: TrainSettings,
               kernel: np.ndarray | None = None, progress=None) -> tuple[StackedLinear, dict]:
    """Minimise cross-entropy on ``rows`` (InMemoryRows or StreamedRows) with AdamW, stopping by the one rule.

    Targets (``rows``' and ``val_y``) are class indices, or (n, classes) probabilities for soft targets; with a
    ``kernel``, class index k stands for the soft target ``kernel[k]``.  Returns the best (lowest validation
    loss) layers with the input standardisation folded in, and the record of the run."""
    import torch

    threads = torch.get_num_threads()
    if dim * (settings.hidden or n_outputs) * settings.batch_size < SMALL_STEP_FLOPS:
        torch.set_num_threads(1)    # small steps: thread start-up and contention cost more than they give
    try:
        return _train_head(rows, val_x, val_y, dim, n_outputs, settings, kernel, progress)
    finally:
        torch.set_num_threads(threads)


def _train_head(rows, val_x, val_y, dim, n_outputs, settings, kernel, progress):
    import torch

    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    mean, std = rows.mean_and_scale()
    scale = np.where(std > 1e-12, std, 1.0)    # constant features: leave them unscaled
    mean_t = torch.from_numpy(mean.astype(np.float32))
    scale_t = torch.from_numpy(scale.astype(np.float32))
    model = torch_head(dim, n_outputs, settings.hidden)
    start_at_the_prior(model, rows.class_counts(n_outputs))
    optimiser = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    val_xt = (torch.from_numpy(np.ascontiguousarray(val_x, dtype=np.float32)) - mean_t) / scale_t
    val_yt = as_targets(val_y, kernel)

    steps_per_pass = math.ceil(rows.count / settings.batch_size)
    steps_per_check, max_checks = check_cadence(steps_per_pass, settings.max_epochs)
    batches = rows.passes(rng, settings.batch_size)

    def train_until_check() -> float:
        model.train()
        running, seen = 0.0, 0
        for _ in range(steps_per_check):
            x, y = next(batches)
            loss = torch.nn.functional.cross_entropy(model((torch.from_numpy(x) - mean_t) / scale_t),
                                                     as_targets(y, kernel))
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            running += float(loss.detach()) * len(y)
            seen += len(y)
        return running / max(seen, 1)

    def validation_loss() -> float:
        model.eval()
        with torch.no_grad():
            return float(torch.nn.functional.cross_entropy(model(val_xt), val_yt))

    stopping = EarlyStopping(settings.patience, max_checks, optimiser)
    record = run_checks(train_until_check, validation_loss,
                        lambda: {k: v.detach().clone() for k, v in model.state_dict().items()},
                        model.load_state_dict, stopping, progress)
    record.update(steps_per_check=steps_per_check, epochs=round(stopping.checks * steps_per_check / steps_per_pass, 2),
                  logit_scale=round(float(model.log_scale.detach().exp()), 4))
    return export_head(model, mean, scale), record
