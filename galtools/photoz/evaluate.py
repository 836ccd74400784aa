"""``gal-photoz eval``: the metrics of a prediction table against the true redshifts, as text, JSON and a plot."""
from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa

from galtools.errors import BadData
from galtools.photoz.metrics import OUTLIER_DZ, binned_metrics, normalised_residuals, photoz_metrics, quantile_edges

log = logging.getLogger("galtools")


def evaluate_table(source: str, truth: str, pred_column: str = "z_phot", mag_column: str | None = None,
                   z_bins: int = 8, mag_bins: int = 5) -> tuple[dict[str, np.ndarray], dict, float]:
    """Read a prediction table and evaluate it: (its columns by role, the report, zmax of the z_spec bins: the
    model's as gal-photoz predict recorded it, else the largest true redshift)."""
    from galtools.io import read_columns
    from galtools.photoz.predict import bins_of

    arrays, metadata = read_columns(source, {"pred_column": pred_column, "truth": truth, "mag": mag_column})
    bins = bins_of(metadata)
    usable_truth = arrays["truth"][np.isfinite(arrays["truth"])]
    zmax = bins[1] if bins else (float(usable_truth.max()) if usable_truth.size else 1.0)
    report = evaluate(arrays["pred_column"], arrays["truth"], arrays.get("mag"),
                      z_edges=np.linspace(0.0, zmax, z_bins + 1), mag_bins=mag_bins)
    if mag_column:
        report["magnitude_column"] = mag_column
    fitted = _fitted_rows(source, metadata, np.isfinite(arrays["pred_column"]) & np.isfinite(arrays["truth"]),
                          arrays["truth"])
    if fitted is not None:
        report["n_fitted_on"] = fitted
    if fitted:
        log.warning(f"warning: {fitted} of the {report['n']} rows evaluated are rows the model was fitted on "
                    "(their redshifts were its training labels): these metrics flatter it; evaluate objects held "
                    "out from gal-photoz fit")
    return arrays, report, zmax


def _fitted_rows(source: str, metadata: dict, evaluated: np.ndarray, truth: np.ndarray) -> int | None:
    """How many evaluated rows the predicting model was fitted on (None: that cannot be told)."""
    from galtools.io import open_table
    from galtools.io.ids import OBJECT_ID
    from galtools.photoz.predict import MODEL_KEY, fitted_rows

    if source == "-" or "training_ids_sha256" not in (metadata.get(MODEL_KEY) or ""):
        return None
    with open_table(source) as table:
        if OBJECT_ID not in table.schema.names:
            return None
        ids = table.read_all(columns=[OBJECT_ID]).column(OBJECT_ID).combine_chunks()
    return fitted_rows(metadata, ids.filter(pa.array(evaluated)), truth[evaluated])


def evaluate(z_phot: np.ndarray, z_spec: np.ndarray, magnitude: np.ndarray | None = None,
             z_edges: np.ndarray | None = None, mag_bins: int = 5, outlier_dz: float = OUTLIER_DZ) -> dict:
    """Overall metrics, metrics in bins of z_spec and (with ``magnitude``) of magnitude, and what was skipped."""
    z_phot = np.asarray(z_phot, dtype=np.float64)
    z_spec = np.asarray(z_spec, dtype=np.float64)
    usable = np.isfinite(z_phot) & np.isfinite(z_spec)
    if magnitude is not None:
        magnitude = np.asarray(magnitude, dtype=np.float64)
    if not usable.any():
        raise BadData("no row has both a prediction and a true redshift",
                      "check --truth names the spectroscopic redshift column")
    report = {"n": int(usable.sum()), "n_skipped": int((~usable).sum()), "outlier_dz": outlier_dz}
    report.update({k: v for k, v in photoz_metrics(z_phot[usable], z_spec[usable], outlier_dz).items() if k != "n"})
    if z_edges is None:
        z_edges = np.linspace(0.0, float(np.max(z_spec[usable])), 9)
    report["by_z"] = binned_metrics(z_phot[usable], z_spec[usable], z_spec[usable], z_edges, outlier_dz)
    if magnitude is not None:
        edges = quantile_edges(magnitude[usable], mag_bins)
        report["by_magnitude"] = binned_metrics(z_phot[usable], z_spec[usable], magnitude[usable], edges, outlier_dz)
    return report


def format_report(report: dict, magnitude_name: str | None = None) -> str:
    lines = [f"N = {report['n']}" + (f" ({report['n_skipped']} rows without z_phot or truth skipped)"
                                     if report["n_skipped"] else ""),
             f"bias (median dz)  = {report['bias']:+.5f}",
             f"sigma_MAD         = {report['sigma_mad']:.5f}",
             f"eta (|dz| > {report['outlier_dz']:g}) = {report['eta']:.2f} %"]
    for key, title in (("by_z", "z_spec"), ("by_magnitude", magnitude_name or "magnitude")):
        if key not in report:
            continue
        lines += ["", f"{title + ' bin':>19}  {'N':>7}  {'bias':>9}  {'sigma_MAD':>9}  {'eta %':>6}"]
        for row in report[key]:
            label = f"{row['lo']:.3f} - {row['hi']:.3f}"
            if row["n"]:
                lines.append(f"{label:>19}  {row['n']:>7}  {row['bias']:>+9.5f}  {row['sigma_mad']:>9.5f}  "
                             f"{row['eta']:>6.2f}")
            else:
                lines.append(f"{label:>19}  {0:>7}  {'-':>9}  {'-':>9}  {'-':>6}")
    return "\n".join(lines)


def plot_report(z_phot: np.ndarray, z_spec: np.ndarray, report: dict, path: str, zmax: float | None = None) -> None:
    """Left: the density of z_phot against z_spec with y = x and the outlier bounds; right: the dz histogram."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    usable = np.isfinite(z_phot) & np.isfinite(z_spec)
    z_phot, z_spec = z_phot[usable], z_spec[usable]
    top = zmax or float(max(z_spec.max(), z_phot.max()))
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 5))
    *_, image = left.hist2d(z_spec, z_phot, bins=min(120, max(20, int(np.sqrt(len(z_spec))))),
                            range=[[0, top], [0, top]], norm=LogNorm(), cmap="viridis")
    figure.colorbar(image, ax=left, label="objects per cell")
    line = np.linspace(0, top, 100)
    bound = report["outlier_dz"]
    left.plot(line, line, "w-", lw=1)
    for sign in (+1, -1):
        left.plot(line, line + sign * bound * (1 + line), "r--", lw=1)
    left.set(xlabel="z_spec", ylabel="z_phot", xlim=(0, top), ylim=(0, top),
             title=f"N={report['n']}  sigma_MAD={report['sigma_mad']:.4f}  eta={report['eta']:.2f}%")
    dz = normalised_residuals(z_phot, z_spec)
    limit = max(3 * bound, 5 * report["sigma_mad"])
    right.hist(np.clip(dz, -limit, limit), bins=100, range=(-limit, limit), color="0.3")
    for sign in (+1, -1):
        right.axvline(sign * bound, color="r", ls="--", lw=1)
    right.axvline(report["bias"], color="b", lw=1)
    right.set(xlabel="dz = (z_phot - z_spec) / (1 + z_spec)", ylabel="objects",
              title=f"bias={report['bias']:+.4f}; red: |dz| = {bound:g}; beyond +-{limit:.2f} piled at the ends")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
