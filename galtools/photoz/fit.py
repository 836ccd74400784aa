"""Fitting the photo-z head: cross-entropy over redshift bins, a validation split, early stopping (torch).

Two ways to feed the training rows, with the same optimisation:
- in memory: the labelled embeddings (n x D float32) fit under ``IN_MEMORY_BYTES`` (or come from a pipe);
  every pass is a full random permutation;
- streamed: the table is re-read once per pass in record batches, and rows are shuffled inside windows of about
  ``WINDOW_BYTES`` (so memory stays bounded whatever the table's size).  The validation rows are kept in memory.

The input standardisation (per-feature mean and standard deviation of the training rows) is folded into the
first layer of the saved model, so predicting needs only numpy.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from typing import Iterator

import numpy as np

from galtools.errors import BadData, UsageProblem
from galtools.io import EMBEDDING, MODEL_SHA256, open_table, vectors_of
from galtools.photoz.bins import RedshiftBins, smoothing_kernel
from galtools.photoz.model import PhotozModel

log = logging.getLogger("galtools")

IN_MEMORY_BYTES = 2 << 30      # labelled embeddings up to this size are held in memory
WINDOW_BYTES = 256 << 20       # shuffle window of the streamed mode
MAX_VALIDATION_ROWS = 50_000   # enough for a stable validation loss, small enough to keep in memory
MIN_STEPS_PER_CHECK = 25       # tiny training sets: still take this many steps between validation checks
PLATEAU_CHECKS = 2             # checks without improvement before the learning rate is cut ...
PLATEAU_FACTOR = 0.2           # ... by this factor
SMALL_STEP_FLOPS = 1 << 26     # below this (inputs x outputs x batch), one thread is faster than two


@dataclass
class FitSettings:
    n_bins: int = 180
    zmax: float = 0.4
    hidden: int | None = None          # None: linear probe; N: one hidden layer of N units
    val_fraction: float = 0.1
    max_epochs: int = 100
    patience: int = 6                  # validation checks without improvement before stopping
    batch_size: int = 512
    lr: float = 1e-2
    weight_decay: float = 1e-4
    seed: int = 0
    stream: bool | None = None         # None: stream only when the labelled rows do not fit IN_MEMORY_BYTES
    label_smoothing: float = 0.0       # Gaussian sigma, in bins, that each label is spread over (0: one-hot)
    clip_labels: bool = False          # put labels at or above zmax in the last bin however many there are

    def validate(self) -> "FitSettings":
        if self.n_bins < 2:
            raise UsageProblem(f"--bins must be at least 2, got {self.n_bins}")
        if not self.zmax > 0:
            raise UsageProblem(f"--zmax must be positive, got {self.zmax}")
        if not 0 < self.val_fraction < 1:
            raise UsageProblem(f"--val-fraction must be between 0 and 1, got {self.val_fraction}")
        if self.hidden is not None and self.hidden < 1:
            raise UsageProblem(f"--hidden must be positive, got {self.hidden}")
        for name, value in (("--max-epochs", self.max_epochs), ("--patience", self.patience),
                            ("--batch-size", self.batch_size)):
            if value < 1:
                raise UsageProblem(f"{name} must be at least 1, got {value}")
        if not self.lr > 0:
            raise UsageProblem(f"--lr must be positive, got {self.lr}")
        if not 0 <= self.label_smoothing <= self.n_bins:
            raise UsageProblem(f"--label-smoothing must be between 0 and the number of bins, got "
                               f"{self.label_smoothing}", "give a width in bins, e.g. 2")
        return self

    @property
    def bins(self) -> RedshiftBins:
        return RedshiftBins(self.n_bins, self.zmax)


# ------------------------------------------------------------------------------------------------ reading labels

def check_columns(schema, name: str, z_column: str, embedding: str = EMBEDDING) -> None:
    import pyarrow as pa

    if embedding not in schema.names:
        raise BadData(f"{name} has no '{embedding}' column (columns: {', '.join(schema.names)})",
                      "give an embedding table made by gal-embed")
    if not pa.types.is_fixed_size_list(schema.field(embedding).type):
        raise BadData(f"{name}: column '{embedding}' is {schema.field(embedding).type}, not a fixed-size vector",
                      "give an embedding table made by gal-embed")
    if z_column not in schema.names:
        raise BadData(f"{name} has no '{z_column}' column (columns: {', '.join(schema.names)})",
                      "name the spectroscopic redshift column with --z-column")
    field_type = schema.field(z_column).type
    if not (pa.types.is_floating(field_type) or pa.types.is_integer(field_type)):
        raise BadData(f"{name}: column '{z_column}' is {field_type}, not numeric",
                      "name the spectroscopic redshift column with --z-column")


def labels_of(batch, z_column: str) -> np.ndarray:
    """The redshifts of a batch as float64, NaN where null."""
    column = batch.column(z_column)
    return np.asarray(column.to_numpy(zero_copy_only=False), dtype=np.float64)


def check_label_count(n_labelled: int, n_rows: int, z_column: str, name: str, n_bins: int) -> None:
    if n_labelled == 0:
        raise BadData(f"{name}: all {n_rows} values of '{z_column}' are NaN or null",
                      "give a table with spectroscopic redshifts, or name the right column with --z-column")
    if n_labelled < n_bins:
        raise BadData(f"{name}: only {n_labelled} rows have a '{z_column}', fewer than the {n_bins} redshift bins",
                      "give more labelled rows, or fewer --bins")


def check_finite_rows(x: np.ndarray, name: str) -> None:
    bad = np.flatnonzero(~np.isfinite(x).all(axis=1))
    if bad.size:
        raise BadData(f"{name}: {bad.size} labelled embedding(s) hold NaN or infinite values",
                      "re-embed those objects or drop them")


MAX_CLIPPED_FRACTION = 0.01   # labels at or above zmax tolerated (put in the last bin) without --clip-labels


def warn_clipped(above: int, below: int, bins: RedshiftBins, z_column: str, z=None, clip_labels: bool = True) -> None:
    """Warn about labels outside [0, zmax); refuse (BadData) when more than MAX_CLIPPED_FRACTION of the labels ``z``
    lie at or above zmax, unless ``clip_labels``: the model could not tell those redshifts apart."""
    if above and z is not None and not clip_labels:
        finite = np.asarray(z, dtype=np.float64)
        finite = finite[np.isfinite(finite)]
        if above > MAX_CLIPPED_FRACTION * len(finite):
            largest = float(finite.max())
            covering = round(float(np.ceil(largest * 20)) / 20, 2)   # the next multiple of 0.05 above the largest
            if covering <= largest:
                covering = round(covering + 0.05, 2)
            raise BadData(f"{above} of {len(finite)} labels ({100 * above / len(finite):.0f}%) have {z_column} >= "
                          f"--zmax {bins.zmax:g} (the largest is {largest:.3g}), and would all fall in the last bin",
                          f"--zmax {covering:g} covers them; pass --clip-labels to clip them anyway")
    if above:
        log.warning(f"{above} label(s) with {z_column} >= {bins.zmax:g} were put in the last bin "
                    "(raise --zmax to resolve them)")
    if below:
        log.warning(f"{below} label(s) with {z_column} < 0 were put in the first bin")


# ------------------------------------------------------------------------------------------------ training rows

class InMemoryRows:
    """Training rows held as arrays; each pass is a permutation."""

    def __init__(self, x: np.ndarray, y: np.ndarray):
        self.x, self.y = x, y

    @property
    def count(self) -> int:
        return len(self.y)

    def class_counts(self, n_classes: int) -> np.ndarray:
        if self.y.ndim == 2:                     # soft targets: expected counts
            return self.y.sum(axis=0, dtype=np.float64)
        return np.bincount(self.y, minlength=n_classes).astype(np.float64)

    def mean_and_scale(self) -> tuple[np.ndarray, np.ndarray]:
        mean = self.x.mean(axis=0, dtype=np.float64)
        std = self.x.std(axis=0, dtype=np.float64)
        return mean, std

    def passes(self, rng: np.random.Generator, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        while True:
            order = rng.permutation(self.count)
            for start in range(0, self.count, batch_size):
                rows = np.sort(order[start:start + batch_size])   # sorted rows: faster gather, same batch
                yield self.x[rows], self.y[rows]


class StreamedRows:
    """Training rows re-read from the table on every pass, shuffled within windows of ``window_bytes``."""

    def __init__(self, path: str, label_of_row: np.ndarray, dim: int, window_bytes: int = WINDOW_BYTES):
        self.path = path
        self.label_of_row = label_of_row        # (rows,) int16 bin index, -1 where not a training row
        self.dim = dim
        self.window_rows = max(1, window_bytes // (4 * dim))

    @property
    def count(self) -> int:
        return int(np.count_nonzero(self.label_of_row >= 0))

    def _training_blocks(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        with open_table(self.path) as table:
            start = 0
            for batch in table.iter_batches(columns=[EMBEDDING]):
                labels = self.label_of_row[start:start + batch.num_rows]
                start += batch.num_rows
                keep = np.flatnonzero(labels >= 0)
                if keep.size:
                    yield vectors_of(batch)[keep], labels[keep].astype(np.int64)

    def class_counts(self, n_classes: int) -> np.ndarray:
        labels = self.label_of_row[self.label_of_row >= 0]
        return np.bincount(labels, minlength=n_classes).astype(np.float64)

    def mean_and_scale(self) -> tuple[np.ndarray, np.ndarray]:
        total = np.zeros(self.dim)
        squares = np.zeros(self.dim)
        for x, _ in self._training_blocks():
            total += x.sum(axis=0, dtype=np.float64)
            squares += np.einsum("ij,ij->j", x, x, dtype=np.float64)
        mean = total / self.count
        return mean, np.sqrt(np.clip(squares / self.count - mean ** 2, 0, None))

    def passes(self, rng: np.random.Generator, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        while True:
            xs, ys, held = [], [], 0
            for x, y in self._training_blocks():
                xs.append(x)
                ys.append(y)
                held += len(y)
                if held >= self.window_rows:
                    yield from self._shuffled(xs, ys, rng, batch_size)
                    xs, ys, held = [], [], 0
            if held:
                yield from self._shuffled(xs, ys, rng, batch_size)

    @staticmethod
    def _shuffled(xs, ys, rng, batch_size):
        x = np.concatenate(xs)
        y = np.concatenate(ys)
        xs.clear()
        ys.clear()
        order = rng.permutation(len(y))
        for start in range(0, len(y), batch_size):
            rows = np.sort(order[start:start + batch_size])
            yield x[rows], y[rows]


# ------------------------------------------------------------------------------------------------ the optimiser

def _torch_head(dim: int, n_bins: int, hidden: int | None):
    import torch

    class ScaledHead(torch.nn.Module):
        """Linear (or MLP) logits times a learnt scale exp(log_scale).

        A sharp redshift pdf needs logits that differ by hundreds between bins; Adam moves each weight by about
        the learning rate per step, so reaching them additively takes tens of thousands of steps.  A shared
        multiplicative scale gets there in a few hundred, and it folds into the last layer when saving.
        """

        def __init__(self):
            super().__init__()
            if hidden is None:
                self.body = torch.nn.Linear(dim, n_bins)
            else:
                self.body = torch.nn.Sequential(torch.nn.Linear(dim, hidden), torch.nn.ReLU(),
                                                torch.nn.Linear(hidden, n_bins))
            self.log_scale = torch.nn.Parameter(torch.zeros(()))

        def forward(self, x):
            return self.body(x) * self.log_scale.exp()

    return ScaledHead()


def _start_at_the_prior(model, counts: np.ndarray) -> None:
    """Zero last-layer weights and biases = log of the (Laplace-smoothed) class frequencies: training starts from
    predicting the label distribution for every object and moves away from it only as far as the data support
    (early stopping then acts as shrinkage towards the prior, which matters with few labels)."""
    import torch

    last = _layers(model)[-1]
    prior = (counts + 1.0) / (counts.sum() + len(counts))
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.from_numpy(np.log(prior).astype(np.float32)))


def _layers(module) -> list:
    import torch

    return [m for m in module.modules() if isinstance(m, torch.nn.Linear)]


def train_head(rows, val_x: np.ndarray, val_y: np.ndarray, dim: int, settings: FitSettings,
               progress=None) -> tuple[list[np.ndarray], list[np.ndarray], dict]:
    """Minimise cross-entropy on ``rows``; stop when the validation loss has not improved for ``patience`` checks.

    Targets (``rows``' and ``val_y``) are class indices, or (n, classes) probabilities for soft targets.

    Returns the best (lowest validation loss) weights with the input standardisation folded into the first layer,
    and a record of the run.
    """
    import torch

    threads = torch.get_num_threads()
    if dim * (settings.hidden or settings.n_bins) * settings.batch_size < SMALL_STEP_FLOPS:
        torch.set_num_threads(1)    # small steps: thread start-up and contention cost more than they give
    try:
        return _train_head(rows, val_x, val_y, dim, settings, progress)
    finally:
        torch.set_num_threads(threads)


def _targets(torch, y, kernel: np.ndarray | None = None):
    """Class indices (1-d) as int64, or per-class probabilities (2-d, soft targets such as vote fractions) as
    float32: torch's cross_entropy takes either.  With a smoothing ``kernel``, class index k becomes row k."""
    y = np.asarray(y)
    if kernel is not None and y.ndim == 1:
        y = kernel[y]
    if y.ndim == 2:
        return torch.from_numpy(np.ascontiguousarray(y, dtype=np.float32))
    return torch.from_numpy(y.astype(np.int64, copy=False))


def _train_head(rows, val_x, val_y, dim, settings, progress):
    import torch

    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    mean, std = rows.mean_and_scale()
    scale = np.where(std > 1e-12, std, 1.0)    # constant features: leave them unscaled
    mean_t = torch.from_numpy(mean.astype(np.float32))
    scale_t = torch.from_numpy(scale.astype(np.float32))
    model = _torch_head(dim, settings.n_bins, settings.hidden)
    _start_at_the_prior(model, rows.class_counts(settings.n_bins))
    optimiser = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    val_xt = (torch.from_numpy(np.ascontiguousarray(val_x, dtype=np.float32)) - mean_t) / scale_t
    kernel = smoothing_kernel(settings.bins, settings.label_smoothing) if settings.label_smoothing > 0 else None
    val_yt = _targets(torch, val_y, kernel)

    steps_per_pass = math.ceil(rows.count / settings.batch_size)
    steps_per_check = max(steps_per_pass, MIN_STEPS_PER_CHECK)
    max_checks = settings.max_epochs * math.ceil(steps_per_pass / steps_per_check) if steps_per_pass else 1
    best = {"loss": math.inf, "check": -1, "state": None}
    history, train_losses = [], []
    batches = rows.passes(rng, settings.batch_size)
    since_cut = 0
    started, check_seconds = time.perf_counter(), []
    for check in range(max_checks):
        model.train()
        running, seen = 0.0, 0
        for _ in range(steps_per_check):
            x, y = next(batches)
            logits = model((torch.from_numpy(x) - mean_t) / scale_t)
            loss = torch.nn.functional.cross_entropy(logits, _targets(torch, y, kernel))
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            running += float(loss.detach()) * len(y)
            seen += len(y)
        model.eval()
        with torch.no_grad():
            val_loss = float(torch.nn.functional.cross_entropy(model(val_xt), val_yt))
        history.append(round(val_loss, 5))
        train_losses.append(round(running / max(seen, 1), 5))
        check_seconds.append(round(time.perf_counter() - started, 3))
        if progress is not None:
            progress(check, val_loss)
        log.debug(f"check {check + 1}: train loss {train_losses[-1]:.4f}, validation loss {val_loss:.4f}")
        if val_loss < best["loss"] - 1e-4:
            best = {"loss": val_loss, "check": check,
                    "state": {k: v.detach().clone() for k, v in model.state_dict().items()}}
            since_cut = 0
        else:
            since_cut += 1
            if check - best["check"] >= settings.patience:
                break
            if since_cut >= PLATEAU_CHECKS:   # a plateau: smaller steps before giving up
                since_cut = 0
                for group in optimiser.param_groups:
                    group["lr"] *= PLATEAU_FACTOR
    model.load_state_dict(best["state"])
    weights = [layer.weight.detach().numpy().T.astype(np.float64) for layer in _layers(model)]
    biases = [layer.bias.detach().numpy().astype(np.float64) for layer in _layers(model)]
    logit_scale = float(model.log_scale.detach().exp())
    weights[-1], biases[-1] = weights[-1] * logit_scale, biases[-1] * logit_scale
    # fold (x - mean) / scale into the first layer: x @ (W / scale) + (b - mean @ (W / scale))
    weights[0] = weights[0] / scale[:, None]
    biases[0] = biases[0] - mean @ weights[0]
    record = {"checks": len(history), "best_check": best["check"] + 1, "steps_per_check": steps_per_check,
              "best_val_loss": round(best["loss"], 5), "val_loss": history, "train_loss": train_losses,
              "stopped_early": len(history) < max_checks, "logit_scale": round(logit_scale, 4),
              "seconds_at_check": check_seconds}
    return ([w.astype(np.float32) for w in weights], [b.astype(np.float32) for b in biases], record)


# ------------------------------------------------------------------------------------------------ entry points

def validation_split(n: int, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of the validation rows among ``n`` labelled rows (at least 1, at most MAX_VALIDATION_ROWS)."""
    count = min(MAX_VALIDATION_ROWS, max(1, int(round(fraction * n))), n - 1)
    mask = np.zeros(n, dtype=bool)
    mask[np.random.default_rng([seed, 7]).choice(n, count, replace=False)] = True
    return mask


def fit_arrays(x: np.ndarray, z: np.ndarray, settings: FitSettings, model_sha256: str | None = None,
               name: str = "the labels") -> PhotozModel:
    """Fit on labelled embeddings held in memory (rows with a non-finite z are dropped)."""
    settings.validate()
    bins = settings.bins
    labelled = np.isfinite(z)
    check_label_count(int(labelled.sum()), len(z), "z", name, bins.n_bins)
    x, z = np.ascontiguousarray(x[labelled], dtype=np.float32), z[labelled]
    check_finite_rows(x, name)
    y, above, below = bins.assign(z)
    warn_clipped(above, below, bins, "z", z, settings.clip_labels)
    val = validation_split(len(y), settings.val_fraction, settings.seed)
    weights, biases, record = train_head(InMemoryRows(x[~val], y[~val]), x[val], y[val], x.shape[1], settings)
    info = _info(settings, int((~val).sum()), int(val.sum()), above, below, "z", record, streamed=False)
    return PhotozModel(weights, biases, bins, model_sha256, info)


def fit_table(path: str, z_column: str, settings: FitSettings, progress=None) -> PhotozModel:
    """Fit on an embedding table (a file, a folder of parts, or '-'), streaming it when it is large."""
    settings.validate()
    bins = settings.bins
    name = "stdin" if path == "-" else path
    with open_table(path) as table:
        check_columns(table.schema, name, z_column)
        dim = table.schema.field(EMBEDDING).type.list_size
        from galtools.search.table import check_single_model

        check_single_model(table)
        model_sha256 = table.metadata.get(MODEL_SHA256) or None
        if path == "-":
            if settings.stream:
                raise UsageProblem("--stream needs a file: a pipe cannot be read once per pass",
                                   "write the embeddings to a file first")
            return _fit_whole(table, name, z_column, dim, model_sha256, settings)
        z = np.concatenate([labels_of(b, z_column) for b in table.iter_batches(columns=[z_column])] or [np.empty(0)])
    n_labelled = int(np.isfinite(z).sum())
    check_label_count(n_labelled, len(z), z_column, name, bins.n_bins)
    stream = settings.stream if settings.stream is not None else n_labelled * dim * 4 > IN_MEMORY_BYTES
    if not stream:
        with open_table(path) as table:
            return _fit_whole(table, name, z_column, dim, model_sha256, settings)
    return _fit_streamed(path, name, z, z_column, dim, model_sha256, settings, progress)


def _labelled_arrays(table, name, z_column, n_bins, ids=None) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings, redshifts) of the rows of an open table that have a finite redshift (their object_ids are
    appended to ``ids`` when it is a list)."""
    xs, zs, n_rows = [], [], 0
    columns = [EMBEDDING, z_column] + (["object_id"] if ids is not None else [])
    for batch in table.iter_batches(columns=columns):
        n_rows += batch.num_rows
        z = labels_of(batch, z_column)
        keep = np.flatnonzero(np.isfinite(z))
        if keep.size:
            xs.append(np.array(vectors_of(batch)[keep], dtype=np.float32))
            zs.append(z[keep])
            if ids is not None:
                ids.extend(batch.column("object_id").take(keep).to_pylist())
    check_label_count(sum(len(z) for z in zs), n_rows, z_column, name, n_bins)
    x, z = np.concatenate(xs), np.concatenate(zs)
    xs.clear()
    check_finite_rows(x, name)
    return x, z


def read_labelled(path: str, z_column: str, n_bins: int, ids: list | None = None
                  ) -> tuple[np.ndarray, np.ndarray, str | None]:
    """The labelled rows of an embedding table in memory: (embeddings, redshifts, encoder sha256); with a list
    ``ids``, their object_ids are appended to it."""
    name = "stdin" if path == "-" else path
    with open_table(path) as table:
        check_columns(table.schema, name, z_column)
        if ids is not None and "object_id" not in table.schema.names:
            raise BadData(f"{name} has no object_id column", "give an embedding table made by gal-embed")
        from galtools.search.table import check_single_model

        check_single_model(table)
        x, z = _labelled_arrays(table, name, z_column, n_bins, ids)
        return x, z, table.metadata.get(MODEL_SHA256) or None


def _fit_whole(table, name, z_column, dim, model_sha256, settings) -> PhotozModel:
    x, z = _labelled_arrays(table, name, z_column, settings.n_bins)
    bins = settings.bins
    y, above, below = bins.assign(z)
    warn_clipped(above, below, bins, z_column, z, settings.clip_labels)
    val = validation_split(len(y), settings.val_fraction, settings.seed)
    log.info(f"fitting on {int((~val).sum())} labelled rows, validating on {int(val.sum())}")
    weights, biases, record = train_head(InMemoryRows(x[~val], y[~val]), x[val], y[val], dim, settings)
    info = _info(settings, int((~val).sum()), int(val.sum()), above, below, z_column, record, streamed=False)
    return PhotozModel(weights, biases, bins, model_sha256, info)


def _fit_streamed(path, name, z, z_column, dim, model_sha256, settings, progress) -> PhotozModel:
    bins = settings.bins
    labelled_rows = np.flatnonzero(np.isfinite(z))
    y, above, below = bins.assign(z[labelled_rows])
    warn_clipped(above, below, bins, z_column, z[labelled_rows], settings.clip_labels)
    val = validation_split(len(labelled_rows), settings.val_fraction, settings.seed)
    label_of_row = np.full(len(z), -1, dtype=np.int16)
    label_of_row[labelled_rows[~val]] = y[~val]
    val_rows = labelled_rows[val]
    val_x = np.empty((len(val_rows), dim), dtype=np.float32)
    with open_table(path) as table:     # one pass: collect the validation rows and check for NaNs
        start, filled = 0, 0
        for batch in table.iter_batches(columns=[EMBEDDING]):
            stop = start + batch.num_rows
            x = vectors_of(batch)
            labelled_here = labelled_rows[(labelled_rows >= start) & (labelled_rows < stop)] - start
            check_finite_rows(x[labelled_here], name)
            here = val_rows[(val_rows >= start) & (val_rows < stop)] - start
            val_x[filled:filled + len(here)] = x[here]
            filled += len(here)
            start = stop
    rows = StreamedRows(path, label_of_row, dim)
    log.info(f"fitting on {rows.count} labelled rows (streamed from {name}), validating on {len(val_rows)}")
    weights, biases, record = train_head(rows, val_x, y[val], dim, settings, progress)
    info = _info(settings, rows.count, len(val_rows), above, below, z_column, record, streamed=True)
    return PhotozModel(weights, biases, bins, model_sha256, info)


def _info(settings, n_train, n_val, above, below, z_column, record, streamed) -> dict:
    return {"z_column": z_column, "n_train": n_train, "n_val": n_val, "n_clipped_above_zmax": above,
            "n_clipped_below_zero": below, "streamed": streamed, "settings": asdict(settings), "training": record,
            "seed": settings.seed}
