"""Everything that defines a training run, as one frozen, JSON-serialisable record.

It is stored in every checkpoint and, as ``galtools.train_config``, in the exported ``encoder.onnx``.  A run's
settings are resolved by pure functions, never by changing a record: ``resolve_config`` (options and a preset ->
TrainConfig), then, once the run knows its device and data, ``resolve_auto`` (precision, ``--ops auto``, the queue
of a resumed run) and ``resolve_queue`` (``--queue-size 0`` from the training cutouts).  The run records the
resolved record.
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import MISSING, asdict, dataclass, fields, replace

from galtools.augment.spec import DEFAULT_SPEC
from galtools.errors import UsageProblem

DEFAULT_ARCH = "resnet50-hayat"   # galtools.models.DEFAULT_ARCH, named here so that this module needs no torch

METHODS = ("moco", "simclr")
REFERENCE_BATCH = 256   # lr is given per 256 images and scaled linearly with the global batch (Goyal et al. 2017)
DEFAULT_EPOCHS = 200  # MoCo v2's schedule length, when neither --epochs nor --steps is given

# Fields that shape the model and its state: a checkpoint can only continue with the same values.
MODEL_FIELDS = ("arch", "width", "pool", "method", "dim", "queue_size", "crop")
POOLS = ("avg", "gem", "max")   # galtools.models.resnet.POOLS, named here so that this module needs no torch

AUTO_QUEUE = 0   # --queue-size 0: a quarter of the training cutouts (whole batches, at least one, at most 4,096)

# --ops auto: augmentations chosen by what the pixels are.  Fluxes (calibrated images): turns, shifts and noise,
# nothing that changes colours (a colour is a redshift).  8-bit display images (gal-pack of JPEG/PNG composites):
# the same and a brightness and colour jitter, since their brightness and colours are a choice of the display.
AUTO_OPS = "auto"
AUTO_OPS_FLUX = "rotate,jitter,noise"
DISPLAY_OPS = "gain:mag=0.5:colour=0.2"   # a brightness and colour jitter, for 8-bit display images only
AUTO_OPS_8BIT = f"{AUTO_OPS_FLUX},{DISPLAY_OPS}"


def auto_ops(flux_unit: str | None) -> str:
    """--ops auto for a table whose galtools.flux_unit is ``flux_unit``."""
    from galtools.io.meta import EIGHT_BIT_UNIT

    return AUTO_OPS_8BIT if (flux_unit or "").strip() == EIGHT_BIT_UNIT else AUTO_OPS_FLUX

# --preset NAME: settings that go together; options given on the command line override them one by one.  gal-train's
# help lists each preset's purpose and the settings in which it differs from the options' defaults (TrainConfig's).
PRESET_PURPOSES = {"paper": "Hayat et al. 2021's settings, after MoCo v2, for about a million cutouts on GPUs",
                   "small": "up to about 10^4 cutouts on a CPU in minutes",
                   "search": "small's recipe for similarity search, with 32-pixel crops and twice the steps (whiten it after)"}
PRESETS: dict[str, dict[str, object]] = {
    "paper": {"arch": "resnet50-hayat", "width": 1.0, "pool": "avg", "method": "moco", "dim": 128, "queue_size": 65536,
              "key_momentum": 0.999, "temperature": 0.2, "batch_size": 256, "lr": 0.03, "momentum": 0.9,
              "weight_decay": 1e-4, "epochs": float(DEFAULT_EPOCHS), "crop": 64, "ops": DEFAULT_SPEC, "tta": 1},
    # Up to about 10^4 cutouts on a CPU in minutes: the best recipe measured by benchmarks/bench_representation.py
    # (its notes list every recipe tried, with the numbers).
    "small": {"arch": "tiny", "width": 1.0, "pool": "gem", "method": "moco", "dim": 128, "queue_size": AUTO_QUEUE,
              "key_momentum": 0.99, "temperature": 0.2, "batch_size": 64, "lr": 0.3, "momentum": 0.9,
              "weight_decay": 1e-4, "steps": 1200, "crop": 48, "ops": AUTO_OPS, "tta": 8},
}
# Chosen on Galaxy Zoo 1 folds 0-2 among small, small --crop 32 and this, each also whitened, and reported on folds
# 3-4 (benchmarks/bench_representation.py --heldout --whiten; docs/results.md): whitened, it found similar galaxies
# best (precision@10 0.625 against small's 0.571 unwhitened and 0.602 whitened; raw-pixel PCA-64 0.547).
PRESETS["search"] = dict(PRESETS["small"], crop=32, steps=2400)
LENGTH_FIELDS = ("epochs", "steps")   # a run's length: giving either on the command line replaces the preset's
OPTION_OF = {"momentum": "sgd_momentum"}   # the gal-train option of a TrainConfig field, where the names differ


def option_name(key: str) -> str:
    """The gal-train option that sets TrainConfig field ``key`` (--batch-size for batch_size)."""
    return "--" + OPTION_OF.get(key, key).replace("_", "-")


def preset_settings(name: str) -> list[str]:
    """The options that preset ``name`` sets to other values than their defaults, as ``--option value``."""
    defaults = TrainConfig.defaults()

    def shown(value) -> str:
        return f"{value:g}" if isinstance(value, float) else str(value)

    return [f"{option_name(key)} {shown(value)}" for key, value in PRESETS[name].items() if value != defaults.get(key)]


def preset_table() -> str:
    """The presets as the Markdown table of docs/training.md (checked against it by the tests)."""
    rows = ["| preset | for | settings (where they differ from the defaults) |", "| --- | --- | --- |"]
    rows += [f"| `{name}` | {PRESET_PURPOSES[name]} | `{' '.join(preset_settings(name))}` |" for name in PRESETS]
    return "\n".join(rows)


def auto_queue_size(available: int, batch_size: int) -> int:
    """--queue-size 0: a quarter of the training cutouts in whole batches (at least one batch, at most 4,096)."""
    return max(batch_size, min(4096, (available // 4) // batch_size * batch_size))


def resolve_preset(name: str | None, values: dict, explicit: set[str]) -> dict:
    """The settings of a run: ``values`` (the options, by TrainConfig field) where ``explicit`` names them or no
    preset is chosen, else the preset's.  The preset's length (epochs or steps) goes when either is explicit."""
    if name is None:
        return dict(values)
    if name not in PRESETS:
        raise UsageProblem(f"unknown --preset {name!r}", f"choose from {', '.join(PRESETS)}")
    resolved = dict(values)
    preset = dict(PRESETS[name])
    if explicit & set(LENGTH_FIELDS):
        for key in LENGTH_FIELDS:
            preset.pop(key, None)
    for key, value in preset.items():
        if key not in explicit:
            resolved[key] = value
    for key in LENGTH_FIELDS:      # the preset's length replaces the other one's default
        if key in preset and not explicit & set(LENGTH_FIELDS):
            resolved[[k for k in LENGTH_FIELDS if k != key][0]] = None
    resolved["preset"] = name
    return resolved


@dataclass(frozen=True)
class TrainConfig:
    inputs: tuple[str, ...] = ()        # a list given is kept as a tuple
    out: str = "run"
    preset: str | None = None           # the --preset the settings started from (recorded; they are resolved)
    # model and method
    arch: str = DEFAULT_ARCH
    width: float = 1.0
    pool: str = "avg"                   # global pooling of the last feature maps: avg, gem or max
    method: str = "moco"
    dim: int = 128
    queue_size: int = 65536
    key_momentum: float = 0.999
    temperature: float = 0.2
    bn_splits: int = 0                  # 0: automatic (8 on one process for MoCo, 1 under DDP)
    # optimisation
    batch_size: int = 256               # global: split evenly over the processes
    lr: float = 0.03                    # per 256 images
    momentum: float = 0.9
    weight_decay: float = 1e-4
    epochs: float | None = None
    steps: int | None = None
    warmup_steps: int | None = None     # None: 5% of the run
    # data
    crop: int = 64
    ops: str = ""                       # augmentation spec; "" is galtools.augment's default
    pixscale: float | None = None
    preprocess_sample: int = 2048
    loader_threads: int = 4
    prefetch: int = 4
    # run
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"             # auto: bf16 autocast on CUDA, fp32 on CPU
    channels_last: bool | None = None   # None: on CUDA
    compile: bool = False
    deterministic: bool = False
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    log_every: int = 10
    monitor_label: str | None = None
    monitor_size: int = 1000
    monitor_k: int = 20
    export: bool = True
    tta: int = 1                        # views averaged by the exported encoder (1, 4 or 8; galtools.train.export)

    def __post_init__(self):
        object.__setattr__(self, "inputs", tuple(self.inputs))

    @classmethod
    def defaults(cls) -> dict:
        """Each field's default: gal-train's options take theirs from here."""
        return {f.name: f.default for f in fields(cls) if f.default is not MISSING}

    def validate(self) -> "TrainConfig":
        from galtools.models import list_encoders

        if not self.inputs:
            raise UsageProblem("no cutout table given", "gal-train CUTOUTS... --out RUN/")
        if self.arch not in list_encoders():
            raise UsageProblem(f"unknown --arch {self.arch!r}", f"choose from {', '.join(list_encoders())}")
        if self.pool not in POOLS:
            raise UsageProblem(f"unknown --pool {self.pool!r}", f"choose from {', '.join(POOLS)}")
        if self.method not in METHODS:
            raise UsageProblem(f"unknown --method {self.method!r}", "choose moco or simclr")
        positive = {"--batch-size": self.batch_size, "--lr": self.lr, "--width": self.width, "--crop": self.crop,
                    "--dim": self.dim, "--temperature": self.temperature, "--checkpoint-every": self.checkpoint_every,
                    "--log-every": self.log_every, "--preprocess-sample": self.preprocess_sample}
        for name, value in positive.items():
            if not value > 0:
                raise UsageProblem(f"{name} must be positive, got {value}")
        if self.method == "moco" and not 0 <= self.key_momentum < 1:
            raise UsageProblem(f"--key-momentum must be in [0, 1), got {self.key_momentum}")
        if self.method == "moco" and self.queue_size < 0:
            raise UsageProblem(f"--queue-size must be positive (or 0: a quarter of the cutouts), got {self.queue_size}")
        if self.epochs is not None and self.steps is not None:
            raise UsageProblem("give --epochs or --steps, not both")
        if (self.epochs is not None and not self.epochs > 0) or (self.steps is not None and self.steps < 0):
            raise UsageProblem("--epochs must be positive and --steps at least 0 (0: export the untrained encoder)")
        if self.tta not in (1, 4, 8):
            raise UsageProblem(f"--tta must be 1, 4 or 8, got {self.tta}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise UsageProblem(f"unknown --precision {self.precision!r}", "choose auto, fp32 or bf16")
        return self

    @property
    def scaled_lr(self) -> float:
        return self.lr * self.batch_size / REFERENCE_BATCH

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in json.loads(text).items() if k in known})


def resolve_config(options: Mapping[str, object], preset: str | None = None,
                   explicit: Iterable[str] | None = None) -> TrainConfig:
    """The settings of a run: TrainConfig fields from ``options``, where a ``preset`` replaces those that
    ``explicit`` does not name (all of ``options`` when it is None; gal-train passes the options given on its command
    line); see resolve_preset.  Pure: the same arguments give an equal record, and nothing given is changed."""
    names = set(options) if explicit is None else set(explicit)
    return TrainConfig(**resolve_preset(preset, dict(options), names))


def resolve_auto(config: TrainConfig, precision: str, flux_unit: str | None,
                 saved: TrainConfig | None = None) -> TrainConfig:
    """``config`` with what runs in place of its 'auto' values: ``precision`` (what the device makes of
    --precision, runtime.resolve_precision), --ops auto for a table of ``flux_unit``, and --queue-size 0 of a run
    resumed from ``saved`` (the size it resolved when it started)."""
    changes: dict[str, object] = {"precision": precision}
    if config.ops == AUTO_OPS:
        changes["ops"] = auto_ops(flux_unit)
    if config.queue_size == AUTO_QUEUE and saved is not None:
        changes["queue_size"] = saved.queue_size
    return replace(config, **changes)


def resolve_queue(config: TrainConfig, available: int) -> TrainConfig:
    """``config`` with MoCo's --queue-size 0 resolved for ``available`` training cutouts (auto_queue_size)."""
    if config.method == "moco" and config.queue_size == AUTO_QUEUE:
        return replace(config, queue_size=auto_queue_size(available, config.batch_size))
    return config
