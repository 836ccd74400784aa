"""The scatter picture of a map, coloured by a column: a legend for a category (strings, booleans, integers with
few values), a colour bar for a quantity (redshift, magnitude, a class probability)."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from galtools.errors import BadData
from galtools.viz import MAX_CATEGORIES, category_colours, rank_categories


def is_categorical(column: pa.ChunkedArray | pa.Array, name: str) -> bool:
    kind = column.type
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_boolean(kind):
        return True
    if pa.types.is_integer(kind):
        return len(pc.unique(column)) <= MAX_CATEGORIES
    if pa.types.is_floating(kind):
        return False
    raise BadData(f"column '{name}' is {kind}: a map can be coloured by strings, booleans or numbers",
                  "choose another --color column")


def _point_size(n: int) -> float:
    return float(np.clip(20000.0 / max(n, 1), 0.5, 25.0))


def plot_map(xy: np.ndarray, path: str, colour=None, colour_name: str | None = None, seed: int = 0,
             title: str = "") -> None:
    """Draw the map's points (in a seeded random order, so no group always hides another) and save a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = np.random.default_rng(seed).permutation(len(xy))
    size = _point_size(len(xy))
    figure, axis = plt.subplots(figsize=(8, 7))
    if colour is None:
        axis.scatter(xy[order, 0], xy[order, 1], s=size, c="0.25", alpha=0.6, linewidths=0)
    elif is_categorical(colour, colour_name):
        from matplotlib.colors import to_rgba

        index, names = rank_categories(colour)    # the colours gal-view gives the same classes
        colours = np.array([to_rgba(c) for c in category_colours(names)])
        axis.scatter(xy[order, 0], xy[order, 1], s=size, c=colours[index[order]], alpha=0.8, linewidths=0)
        counts = np.bincount(index, minlength=len(names))
        handles = [plt.Line2D([], [], ls="", marker="o", color=colours[i], label=f"{n} ({counts[i]})")
                   for i, n in enumerate(names)]
        axis.legend(handles=handles, title=colour_name, loc="best", fontsize=8, markerscale=1.2)
    else:
        values = np.asarray(colour.to_numpy(zero_copy_only=False), dtype=np.float64)
        finite = np.isfinite(values)
        if not finite.any():
            raise BadData(f"column '{colour_name}' has no finite value to colour by", "choose another --color column")
        missing = order[~finite[order]]
        axis.scatter(xy[missing, 0], xy[missing, 1], s=size, c="0.8", linewidths=0)
        shown = order[finite[order]]
        low, high = np.percentile(values[finite], [0.5, 99.5])
        points = axis.scatter(xy[shown, 0], xy[shown, 1], s=size, c=values[shown], cmap="viridis",
                              vmin=low, vmax=high if high > low else low + 1, alpha=0.9, linewidths=0)
        figure.colorbar(points, ax=axis, label=colour_name, extend="both")
    axis.set(xlabel="map x", ylabel="map y", title=title)
    axis.set_aspect("equal", adjustable="datalim")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
