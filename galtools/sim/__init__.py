"""gal-sim's library: mock SDSS ugriz cutouts with known truth, rendered with GalSim.

    from galtools.sim import SimConfig, iter_chunks, render_object
    for chunk in iter_chunks(SimConfig(seed=1, size=64, anomaly_fraction=0.05), 0, 1000, jobs=2):
        chunk.images   # (n, 5, 64, 64) float32, nanomaggies per pixel
        chunk.labels   # {"object_id": ..., "z_true": ..., "morph_class": ..., ...}

GalSim is imported inside the functions that draw, so importing this package stays cheap.
"""
from galtools.sim.filters import BANDS
from galtools.sim.photometry import EXTINCTION_COEFFS, SED_TYPES
from galtools.sim.population import ANOMALY_KINDS, MAG_R_LIMITS, MORPH_CLASSES
from galtools.sim.simulate import (LABEL_COLUMNS, SDSS_PIXSCALE, SIZE_RANGE, Chunk, SimConfig, default_jobs,
                                   iter_chunks, object_scene, render_object, render_range)

__all__ = ["BANDS", "EXTINCTION_COEFFS", "SED_TYPES", "ANOMALY_KINDS", "MAG_R_LIMITS", "MORPH_CLASSES",
           "LABEL_COLUMNS", "SDSS_PIXSCALE", "SIZE_RANGE", "Chunk", "SimConfig", "default_jobs", "iter_chunks",
           "object_scene", "render_object", "render_range"]
