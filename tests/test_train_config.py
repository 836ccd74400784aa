"""gal-train's settings are resolved by pure functions into a frozen record (options + preset -> TrainConfig, then the
'auto' values from the device and the data); the loop's hooks (stopping on a signal, checkpoints) on their own."""
from __future__ import annotations

import copy
import dataclasses
import os
import signal
from types import SimpleNamespace

import pytest

from galtools.errors import Requeue
from galtools.io.meta import EIGHT_BIT_UNIT
from galtools.train.config import (AUTO_OPS, AUTO_OPS_8BIT, AUTO_OPS_FLUX, AUTO_QUEUE, PRESETS, TrainConfig,
                                   auto_queue_size, resolve_auto, resolve_config, resolve_queue)

# what gal-train fit passes: every option with its value (defaults included), and the names given explicitly
OPTIONS = {"inputs": ["a.fits", "b.fits"], "out": "runs/x", "arch": "resnet50-hayat", "width": 1.0, "pool": "avg",
           "method": "moco", "dim": 128, "queue_size": 65536, "key_momentum": 0.999, "temperature": 0.2,
           "batch_size": 256, "lr": 0.03, "momentum": 0.9, "weight_decay": 1e-4, "epochs": None, "steps": 300,
           "crop": 32, "ops": "", "tta": 1, "seed": 3}


def test_the_same_options_and_preset_give_the_same_frozen_config_and_change_nothing_given():
    given = copy.deepcopy(OPTIONS)
    first = resolve_config(given, "small", {"inputs", "out", "steps", "crop", "seed"})
    second = resolve_config(given, "small", {"inputs", "out", "steps", "crop", "seed"})
    assert first == second and first.to_json() == second.to_json()
    assert given == OPTIONS                                  # the options are not touched
    assert TrainConfig.from_json(first.to_json()) == first   # what a checkpoint records reads back equal
    with pytest.raises(dataclasses.FrozenInstanceError):
        first.queue_size = 4
    assert first.inputs == ("a.fits", "b.fits")              # a tuple: nothing in the record can change


def test_a_preset_fills_what_was_not_given_and_given_options_override_it_one_by_one():
    small = PRESETS["small"]
    config = resolve_config(OPTIONS, "small", {"inputs", "out", "steps", "crop", "seed"})
    assert config.preset == "small"
    for key in ("arch", "pool", "batch_size", "lr", "key_momentum", "queue_size", "ops", "tta"):
        assert getattr(config, key) == small[key], key       # the preset's, not the options' defaults
    assert (config.steps, config.epochs, config.crop, config.seed) == (300, None, 32, 3)   # given: kept
    assert config.out == "runs/x" and config.inputs == ("a.fits", "b.fits")
    # giving --epochs drops the preset's length (steps) as well as taking the epochs given
    by_epochs = resolve_config({**OPTIONS, "steps": None, "epochs": 2.0}, "small", {"inputs", "epochs"})
    assert (by_epochs.epochs, by_epochs.steps, by_epochs.crop) == (2.0, None, small["crop"])
    # no preset: the options as given; a library call names only what it sets (all of it explicit)
    assert resolve_config(OPTIONS) == TrainConfig(**OPTIONS)
    library = resolve_config({"inputs": ["a.fits"], "arch": "resnet18"}, "paper")
    assert (library.arch, library.queue_size, library.epochs) == ("resnet18", 65536, 200.0)
    assert library.steps is None


def test_auto_values_are_resolved_from_the_device_and_the_data_into_a_new_record():
    config = resolve_config({"inputs": ["a.fits"], "steps": 10}, "small")
    assert (config.ops, config.queue_size, config.precision) == (AUTO_OPS, AUTO_QUEUE, "auto")
    before = config.to_json()
    flux = resolve_auto(config, "bf16", None)
    assert (flux.ops, flux.precision, flux.queue_size) == (AUTO_OPS_FLUX, "bf16", AUTO_QUEUE)
    assert resolve_auto(config, "fp32", EIGHT_BIT_UNIT).ops == AUTO_OPS_8BIT
    saved = dataclasses.replace(config, queue_size=192, ops=AUTO_OPS_FLUX)
    assert resolve_auto(config, "fp32", None, saved).queue_size == 192          # a resumed run keeps its queue
    assert resolve_queue(flux, 1500).queue_size == auto_queue_size(1500, 64) == 320
    assert resolve_queue(dataclasses.replace(flux, method="simclr"), 1500).queue_size == AUTO_QUEUE
    explicit = dataclasses.replace(config, ops="rotate", queue_size=128)
    assert resolve_queue(resolve_auto(explicit, "fp32", EIGHT_BIT_UNIT), 1500).ops == "rotate"
    assert resolve_queue(explicit, 1500).queue_size == 128
    assert config.to_json() == before and resolve_auto(config, "bf16", None) == flux   # pure


# -- hooks ------------------------------------------------------------------------------------------------------
def _run(tmp_path, checkpoint_every=3):
    """A stand-in for galtools.train.loop.Run with what the stop and checkpoint hooks read."""
    saved = []
    folder = SimpleNamespace(last=str(tmp_path / "last.pt"),
                             save_checkpoint=lambda step, state, keep: saved.append((step, state["step"], keep)))
    config = TrainConfig(inputs=["a.fits"], checkpoint_every=checkpoint_every, keep_checkpoints=2, log_every=1)
    plan = SimpleNamespace(total_steps=100, preprocess=SimpleNamespace(to_json=lambda: "{}"),
                           pipe=SimpleNamespace(spec="rotate"), data=SimpleNamespace(bands=["g"], image_shape=(1, 8, 8)))
    state_dict = SimpleNamespace(state_dict=dict)
    run = SimpleNamespace(config=config, plan=plan, folder=folder, rt=SimpleNamespace(is_main=True, world=1),
                          model=state_dict, optimizer=state_dict, scheduler=state_dict, start_step=0, step=0,
                          stop_signal=None, stopping=False, logging_step=lambda: True)
    return run, saved


def test_the_stop_hook_turns_a_signal_into_a_stop_after_the_step_and_requeue(tmp_path):
    from galtools.train.hooks import StopHook

    run, _ = _run(tmp_path)
    hook = StopHook()
    before = signal.getsignal(signal.SIGUSR1)
    hook.start(run)
    run.step = 4
    hook.step(run)
    assert not run.stopping
    os.kill(os.getpid(), signal.SIGUSR1)          # as Slurm's --signal would
    run.step = 5
    hook.step(run)
    assert run.stopping and run.stop_signal == signal.SIGUSR1
    hook.close(run)
    assert signal.getsignal(signal.SIGUSR1) == before     # the caller's handler is back
    with pytest.raises(Requeue) as stopped:
        hook.end(run)
    assert stopped.value.exit_code == 75
    assert str(stopped.value).startswith(f"stopped by SIGUSR1 after step 5; checkpoint {tmp_path}/last.pt")
    # --stop-after N: N steps of this call (a run resumed at step 10 stops after step 12)
    run, _ = _run(tmp_path)
    run.start_step, hook = 10, StopHook(stop_after=2)
    hook.start(run)
    for run.step in (11, 12):
        hook.step(run)
        assert run.stopping == (run.step == 12)
    hook.close(run)
    with pytest.raises(Requeue, match="stopped by --stop-after after step 12"):
        hook.end(run)


def test_the_checkpoint_hook_saves_on_its_cadence_and_once_at_the_end(tmp_path):
    pytest.importorskip("torch")
    from galtools.train.hooks import CheckpointHook

    run, saved = _run(tmp_path, checkpoint_every=3)
    hook = CheckpointHook()
    for run.step in range(1, 8):
        hook.step(run)
    hook.end(run)                                 # step 7 is off the cadence: saved at the end
    assert saved == [(3, 3, 2), (6, 6, 2), (7, 7, 2)]
    run, saved = _run(tmp_path, checkpoint_every=3)
    for run.step in range(1, 7):
        run.stopping = run.step == 6              # stopping at a step on the cadence: one checkpoint, at the end
        hook.step(run)
    hook.end(run)
    assert saved == [(3, 3, 2), (6, 6, 2)]
