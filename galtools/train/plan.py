"""What a training run trains on, settled before anything is written: the cutouts, the run's settings with their
'auto' values resolved (galtools.train.config), the augmentations and their catalogue inputs, the rows held out
for the kNN monitor, the run's length, and the preprocessing (fitted on a sample, or the resumed run's).  Bad
inputs fail here, before RUN/ exists."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from galtools.errors import BadData, UsageProblem
from galtools.preprocess import centre_crop
from galtools.train import checkpoint as ckpt
from galtools.train import monitor
from galtools.train.config import DEFAULT_EPOCHS, MODEL_FIELDS, TrainConfig, resolve_auto, resolve_queue
from galtools.train.data import CutoutData


@dataclass(frozen=True)
class Plan:
    config: TrainConfig                 # resolved: what the run records
    data: CutoutData
    pipe: object                        # galtools.augment.AugmentPipeline
    catalogue: dict                     # catalogue inputs of the augmentations, one array per input
    preprocess: object                  # galtools.preprocess.Preprocess
    train_rows: np.ndarray | None       # None: every row
    monitor_rows: np.ndarray | None     # rows held out for the kNN monitor (None: no monitor)
    monitor_labels: np.ndarray | None
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int


def open_plan(config: TrainConfig, resume_path: str | None, world: int, precision: str, info) -> tuple[Plan, dict]:
    """The plan of a run of ``config`` (validated) on ``world`` processes, where the device runs ``precision``;
    and the checkpoint state it resumes from (or None).  ``info``: where notes go.  The cutouts stay open until
    ``plan.data.close()``."""
    state = ckpt.load(resume_path) if resume_path else None
    data = CutoutData(config.inputs)
    try:
        return _plan(config, data, state, world, precision, info), state
    except BaseException:
        data.close()
        raise


def _plan(config: TrainConfig, data: CutoutData, state: dict | None, world: int, precision: str, info) -> Plan:
    from galtools.io import PIXSCALE
    from galtools.io.meta import FLUX_UNIT

    saved = _check_resume_bands(state, data) if state is not None else None
    config = resolve_auto(config, precision, data.metadata.get(FLUX_UNIT), saved)
    if saved is not None:
        _check_same_model(saved, config)
    if min(data.image_shape[1:]) < config.crop:
        height, width = data.image_shape[1:]
        raise BadData(f"cutouts of {height}x{width} pixels are smaller than --crop {config.crop}",
                      "give a smaller --crop, or larger cutouts")
    pipe = _pipeline(config, data, data.metadata.get(PIXSCALE))
    catalogue_names = catalogue_columns(pipe, data)
    columns = [c for cols in catalogue_names.values() for c in cols]
    if config.monitor_label:
        if not data.has_column(config.monitor_label):
            raise UsageProblem(f"--monitor-label {config.monitor_label}: no such column",
                               f"the table has {', '.join(data.names)}")
        columns.append(config.monitor_label)
    data.load_columns(columns)
    catalogue = catalogue_arrays(data, catalogue_names)
    train_rows, monitor_rows, monitor_labels = _split_monitor(config, data)
    available = data.num_rows if train_rows is None else len(train_rows)
    _check_batch(config, available, world)
    config = resolve_queue(config, available)
    if config.method == "moco" and config.queue_size < config.batch_size:
        raise UsageProblem(f"--queue-size {config.queue_size} is smaller than the batch {config.batch_size}",
                           "the queue must hold at least one batch of keys")
    steps_per_epoch = available // config.batch_size
    if config.steps is not None:
        total_steps = config.steps
    else:
        total_steps = max(1, math.ceil((config.epochs or DEFAULT_EPOCHS) * steps_per_epoch))
    warmup_steps = config.warmup_steps if config.warmup_steps is not None else max(1, total_steps // 20)
    if config.method == "moco":
        _note_moco_settings(config, available, total_steps, info)
    preprocess = _preprocess(config, data, state, train_rows)   # reads a sample: bad pixels show up before RUN/
    return Plan(config, data, pipe, catalogue, preprocess, train_rows, monitor_rows, monitor_labels,
                steps_per_epoch, total_steps, warmup_steps)


# -- resuming ---------------------------------------------------------------------------------------------------
def _check_resume_bands(state: dict, data: CutoutData) -> TrainConfig:
    """The resumed run's settings, once its bands are known to be the table's."""
    bands = list(state["bands"])
    if bands != data.bands or tuple(state["image_shape"])[0] != data.image_shape[0]:
        raise BadData(f"the checkpoint was trained on {len(bands)} bands ({','.join(bands)}), the table has "
                      f"{data.image_shape[0]} ({','.join(data.bands)})",
                      "resume with cutouts of the same bands, or start a new run in another --out")
    return TrainConfig.from_json(state["config"])


def _check_same_model(saved: TrainConfig, config: TrainConfig) -> None:
    for name in MODEL_FIELDS:
        if getattr(saved, name) != getattr(config, name):
            raise UsageProblem(f"the checkpoint has {name.replace('_', '-')}={getattr(saved, name)}, this "
                               f"command {getattr(config, name)}", "resume with the run's own settings")


# -- augmentations and their catalogue inputs -------------------------------------------------------------------
def _pipeline(config: TrainConfig, data: CutoutData, table_pixscale):
    from galtools.augment import DEFAULT_SPEC, AugmentPipeline

    pixscale = config.pixscale
    if pixscale is None and table_pixscale:
        pixscale = float(table_pixscale)
    return AugmentPipeline.from_spec(config.ops or DEFAULT_SPEC, out_size=config.crop, bands=data.bands,
                                     pixscale=pixscale)


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


# -- rows, batches, length --------------------------------------------------------------------------------------
def _split_monitor(config: TrainConfig, data: CutoutData):
    """Hold out a fixed random subset of labelled rows for the kNN monitor; train on the rest.  Returns the
    training rows, the held-out rows and their class codes (all None without --monitor-label)."""
    if not config.monitor_label:
        return None, None, None
    codes = monitor.encode_labels(data.columns[config.monitor_label], config.monitor_label)
    labelled = np.nonzero(codes >= 0)[0]
    size = min(config.monitor_size, len(labelled) // 5)
    if size < 10:
        raise UsageProblem(f"--monitor-label {config.monitor_label}: only {len(labelled)} labelled rows",
                           "the kNN monitor holds out a fifth of them and needs at least 10; drop --monitor-label")
    rng = np.random.default_rng([config.seed, 2])
    monitor_rows = np.sort(rng.choice(labelled, size, replace=False))
    return np.setdiff1d(np.arange(data.num_rows), monitor_rows), monitor_rows, codes[monitor_rows]


def _check_batch(config: TrainConfig, available: int, world: int) -> None:
    if config.batch_size > available:
        raise UsageProblem(f"--batch-size {config.batch_size} is larger than the {available} cutouts to train on",
                           f"give --batch-size {max(1, available // 2)} or less, or more cutouts")
    if config.batch_size % world:
        raise UsageProblem(f"--batch-size {config.batch_size} does not split over {world} processes",
                           f"give a multiple of {world}")


def _note_moco_settings(config: TrainConfig, available: int, total_steps: int, info) -> None:
    """Two MoCo settings that hold back a short run on a small table.  Measured with the tiny encoder, ridge
    probe of z_true, sigma_MAD: 6,000 gal-sim cutouts, crop 48, 600 steps: 0.0377 with m=0.999, 0.0326 with
    m=0.99 (random weights 0.0413); 2,000 cutouts, crop 32, 300 steps, m=0.99: 0.0298 with a queue of 2048,
    0.0284 with 512."""
    if config.queue_size > available // 2:
        info(f"note: --queue-size {config.queue_size} is more than half the {available} training cutouts: "
             "the queue will hold earlier keys of the very objects it is matching, as negatives "
             f"(give --queue-size {max(config.batch_size, available // 4)} or less)")
    lag_steps = 1.0 / max(1e-12, 1.0 - config.key_momentum)   # the key encoder averages about this many steps
    if 0 < total_steps < 3 * lag_steps:
        shorter = math.floor(1000 * (1 - 3 / total_steps)) / 1000
        advice = (f"give --key-momentum {shorter:g} or less" if shorter > 0 else
                  f"give --steps {3 * round(lag_steps)} or more, or --key-momentum 0 to copy the query encoder")
        info(f"note: --key-momentum {config.key_momentum:g} averages the key encoder over about "
             f"{lag_steps:.0f} steps, a long lag for a {total_steps}-step run ({advice})")


def _preprocess(config: TrainConfig, data: CutoutData, state: dict | None, train_rows):
    from galtools.preprocess import Preprocess

    if state is not None:
        return Preprocess.from_json(state["preprocess"])
    pool = np.arange(data.num_rows) if train_rows is None else train_rows
    rng = np.random.default_rng([config.seed, 1])
    sample = np.sort(rng.choice(pool, min(config.preprocess_sample, len(pool)), replace=False))
    return Preprocess.fit(centre_crop(data.read(sample), config.crop), data.bands)
