"""The label-efficiency curve: photo-z quality against the number of labels (Hayat et al. 2021, fig. 5).

The labelled rows are split once into a fixed test set and a training pool; for each fraction the first
``fraction x pool`` rows of one seeded permutation of the pool train the model (so the subsets are nested), and
every model is scored on the same test set.  Methods: ``linear`` (a linear probe on the frozen representation)
and ``median`` (predict the training median: the floor any method must beat); fine-tuning and training from
scratch are added by the caller when it has the images and a checkpoint.
"""
from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np

from galtools.errors import BadData, UsageProblem
from galtools.photoz.fit import FitSettings, check_finite_rows, fit_arrays
from galtools.photoz.metrics import photoz_metrics

log = logging.getLogger("galtools")


def parse_fractions(text: str) -> list[float]:
    try:
        fractions = sorted({float(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise UsageProblem(f"--fractions {text!r} is not a list of numbers", "e.g. --fractions 0.01,0.1,1") from None
    if not fractions or fractions[0] <= 0 or fractions[-1] > 1:
        raise UsageProblem(f"--fractions must lie in (0, 1], got {text!r}", "e.g. --fractions 0.01,0.1,1")
    return fractions


def split_test(n: int, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(training pool, test rows): the pool in a seeded random order, the test rows sorted."""
    if not 0 < test_fraction < 1:
        raise UsageProblem(f"--test-fraction must be between 0 and 1, got {test_fraction}")
    order = np.random.default_rng([seed, 11]).permutation(n)
    n_test = max(1, int(round(test_fraction * n)))
    return order[n_test:], np.sort(order[:n_test])


def subset_sizes(pool: int, fractions: list[float], n_outputs: int, outputs: str = "bins",
                 fix: str = "use larger --fractions, fewer --bins, or more labelled rows") -> list[tuple[float, int]]:
    """(fraction, number of labels) for each fraction that gives at least one label per output (redshift bin, or
    class for gal-classify's curve); the others are skipped with a warning."""
    sizes = []
    for fraction in fractions:
        count = int(round(fraction * pool))
        if count < n_outputs:
            log.warning(f"fraction {fraction:g} gives {count} labels, fewer than the {n_outputs} {outputs}: skipped")
            continue
        sizes.append((fraction, count))
    if not sizes:
        raise BadData(f"no fraction gives at least {n_outputs} labels from a training pool of {pool}", fix)
    return sizes


def curve_row(method: str, fraction: float, n_labels: int, z_pred: np.ndarray, z_true: np.ndarray) -> dict:
    metrics = photoz_metrics(z_pred, z_true)
    return {"method": method, "fraction": fraction, "n_labels": n_labels, "n_test": metrics["n"],
            "sigma_mad": metrics["sigma_mad"], "eta": metrics["eta"], "bias": metrics["bias"]}


def linear_probe_curve(x: np.ndarray, z: np.ndarray, fractions: list[float], settings: FitSettings,
                       test_fraction: float = 0.2, model_sha256: str | None = None) -> tuple[list[dict], dict]:
    """Rows of the curve for the median baseline and the linear probe, and the split used (for other methods)."""
    labelled = np.flatnonzero(np.isfinite(z))
    x, z = x[labelled], z[labelled]
    check_finite_rows(x, "the labelled embeddings")
    pool, test = split_test(len(z), test_fraction, settings.seed)
    rows = []
    sizes = subset_sizes(len(pool), fractions, settings.n_bins)
    for fraction, count in sizes:
        train = np.sort(pool[:count])
        median = float(np.median(z[train]))
        rows.append(curve_row("median", fraction, count, np.full(len(test), median), z[test]))
        log.info(f"linear probe on {count} labels ({fraction:g} of {len(pool)})")
        model = fit_arrays(x[train], z[train], replace(settings), model_sha256)
        rows.append(curve_row("linear", fraction, count, model.predict(x[test])["z_phot"], z[test]))
    split = {"labelled_rows": labelled, "pool": pool, "test": test, "sizes": sizes}
    return rows, split


def network_curve(data, split: dict, source, settings, methods=("finetune", "scratch")) -> list[dict]:
    """Rows of the curve for the encoder fine-tuned from ``source`` and the same network from scratch, trained on
    the same nested subsets and scored on the same test set as the linear probe (``split`` from
    :func:`linear_probe_curve`; ``data`` the labelled cutouts in the order of its labelled rows)."""
    from galtools.photoz.finetune import FinetuneSettings, train_network
    from galtools.photoz.bins import summarise_pdf

    rows = []
    test = data.subset(split["test"])
    for fraction, count in split["sizes"]:
        train = np.sort(split["pool"][:count])
        for method in methods:
            log.info(f"{'fine-tuning' if method == 'finetune' else 'training from scratch'} on {count} labels")
            mode = FinetuneSettings(fit=replace(settings.fit), backbone_lr_factor=settings.backbone_lr_factor,
                                    augment=settings.augment, from_scratch=method == "scratch",
                                    device=settings.device)
            network, _ = train_network(data.subset(train), source, mode)
            z_phot = summarise_pdf(network.predict_pdf(test.images), settings.fit.bins.centres)[0]
            rows.append(curve_row(method, fraction, count, z_phot, test.z))
    return rows


def format_curve(rows: list[dict]) -> str:
    lines = [f"{'method':<12} {'fraction':>8} {'labels':>8} {'sigma_MAD':>10} {'eta %':>7} {'bias':>9}"]
    for row in rows:
        lines.append(f"{row['method']:<12} {row['fraction']:>8g} {row['n_labels']:>8} {row['sigma_mad']:>10.5f} "
                     f"{row['eta']:>7.2f} {row['bias']:>+9.5f}")
    return "\n".join(lines)


def plot_curve(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    methods = list(dict.fromkeys(row["method"] for row in rows))
    for method in methods:
        mine = [row for row in rows if row["method"] == method]
        labels = [row["n_labels"] for row in mine]
        style = "k:" if method == "median" else "o-"
        axes[0].plot(labels, [row["sigma_mad"] for row in mine], style, label=method)
        axes[1].plot(labels, [row["eta"] for row in mine], style, label=method)
    from matplotlib.ticker import NullFormatter

    counts = sorted({row["n_labels"] for row in rows})
    for axis, what in zip(axes, ("sigma_MAD", "eta (% with |dz| > 0.05)")):
        axis.set(xscale="log", xlabel="number of labels", ylabel=what)
        axis.set_xticks(counts, [str(c) for c in counts])     # the sizes measured, not log decades
        axis.xaxis.set_minor_formatter(NullFormatter())
        axis.grid(alpha=0.3)
        axis.legend()
    figure.suptitle("label efficiency (same test set for every point)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
