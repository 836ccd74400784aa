"""gal-train's presets and the default augmentations are data (galtools.train.config, galtools.augment.spec): the
help is written from them, and docs/training.md is checked against them here."""
from __future__ import annotations

import os
import re

from conftest import ROOT, run_tool
from galtools.augment.spec import DEFAULT_SPEC
from galtools.train.config import AUTO_OPS_8BIT, AUTO_OPS_FLUX, DISPLAY_OPS, PRESETS, preset_table, preset_settings

TRAINING_DOC = os.path.join(ROOT, "docs", "training.md")


def _help(*args) -> str:
    return " ".join(run_tool("gal-train", *args, check=True).stdout.decode().split())


def test_the_help_states_every_preset_and_default_from_the_data():
    text = _help("fit", "--help")
    preset = text.split("--preset [", 1)[1].split("--method", 1)[0]
    for name in PRESETS:
        described = preset.split(f"{name} (", 1)[1].split(";", 1)[0]
        assert " ".join(preset_settings(name)) in " ".join(described.replace("- ", "-").split()), (name, described)
    assert f"default: {DEFAULT_SPEC}." in text and f"auto: {AUTO_OPS_FLUX}," in text and DISPLAY_OPS in text
    assert "--tta 8" in " ".join(preset_settings("small")) and "--arch tiny" in " ".join(preset_settings("small"))


def test_docs_list_the_presets_as_they_are():
    """docs/training.md holds the table of the presets that galtools.train.config.preset_table() writes, and
    quotes the --ops auto augmentations as they are."""
    with open(TRAINING_DOC) as handle:
        doc = handle.read()
    assert preset_table() in doc, "docs/training.md's preset table is stale; paste in:\n" + preset_table()
    quoted = set(re.findall(r"`([a-z]+(?::[a-z_]+=[0-9.]+)+)`", doc))   # op specs with parameters, as quoted
    assert DISPLAY_OPS in quoted, quoted
    assert not {q for q in quoted if q.split(":")[0] == DISPLAY_OPS.split(":")[0]} - {DISPLAY_OPS}, quoted
    assert f"`{AUTO_OPS_FLUX}`" in doc and AUTO_OPS_8BIT == f"{AUTO_OPS_FLUX},{DISPLAY_OPS}"
