"""Pictures a person can judge: colour composites of cutouts and labelled montages (Pillow), shared by every tool
that draws (gal-sim --montage, gal-augment --montage, gal-knn --montage, gal-ood --montage)."""
from __future__ import annotations

import numpy as np

# One class -> colour mapping for every picture of a categorical column (gal-map --plot, the gal-view page): the
# categories ranked by rank_categories, coloured in that order; the missing value and "other" are grey.
CATEGORY_PALETTE = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
                    "#9c755f", "#1f3a5f", "#8cd17d")
CATEGORY_GREY = "#b3b3b3"
MAX_CATEGORIES = 12          # integer columns with at most this many values are categories; more become "other"
NO_VALUE = "(none)"
OTHER = "other"


def rank_categories(column) -> tuple[np.ndarray, list[str]]:
    """(category index per row, category names) of an Arrow column: the most frequent first (ties by name), past
    MAX_CATEGORIES the rest as "other", the missing value (shown as NO_VALUE) last."""
    values = [NO_VALUE if v is None else str(v) for v in column.to_pylist()]
    names, counts = np.unique(np.array(values, dtype=object), return_counts=True)
    order = sorted(range(len(names)), key=lambda i: (names[i] == NO_VALUE, -counts[i], names[i]))
    ranked = [str(names[i]) for i in order]
    if len(ranked) > MAX_CATEGORIES:
        kept = [n for n in ranked if n != NO_VALUE][:MAX_CATEGORIES - 1]
        ranked = kept + [OTHER] + ([NO_VALUE] if NO_VALUE in ranked else [])
    index_of = {name: i for i, name in enumerate(ranked)}
    other = index_of.get(OTHER)
    return np.array([index_of.get(v, other) for v in values], dtype=np.int64), ranked


def category_colours(names: list[str]) -> list[str]:
    """The colour ("#rrggbb") of each of ``names``, ranked as rank_categories ranks them."""
    return [CATEGORY_GREY if name in (NO_VALUE, OTHER) else CATEGORY_PALETTE[i % len(CATEGORY_PALETTE)]
            for i, name in enumerate(names)]


# SDSS convention for gri composites: i -> red, r -> green, g -> blue.
_COLOUR_CHOICES = (("i", "r", "g"), ("z", "r", "g"), ("r", "g", "u"), ("red", "green", "blue"))


def colour_planes(bands: list[str] | None, count: int) -> list[int]:
    """Indices of the planes shown as red, green, blue."""
    if bands:
        for choice in _COLOUR_CHOICES:
            if all(b in bands for b in choice):
                return [bands.index(b) for b in choice]
    if count >= 3:
        return [min(2, count - 1), 1, 0]  # longest of the first three as red
    return [0] * 3


def rgb_composite(images: np.ndarray, bands: list[str] | None = None, q: float = 8.0) -> np.ndarray:
    """(n, bands, H, W) fluxes to (n, H, W, 3) uint8 with an arcsinh stretch (after Lupton et al. 2004).

    Each image is scaled by its own bright level (99.5th percentile of the mean of the three planes after sky
    subtraction), so faint and bright galaxies are both visible; colours are kept because the same factor
    multiplies all three planes.
    """
    images = np.asarray(images, dtype=np.float64)
    rgb = images[:, colour_planes(bands, images.shape[1])]
    sky = np.median(np.concatenate([rgb[..., :2, :], rgb[..., -2:, :]], axis=-2), axis=(-2, -1), keepdims=True)
    rgb = np.nan_to_num(rgb - sky)
    intensity = rgb.mean(axis=1, keepdims=True)
    bright = np.percentile(intensity, 99.5, axis=(-2, -1), keepdims=True)
    bright = np.where(bright > 0, bright, 1.0)
    scaled = q * np.clip(intensity, 0, None) / bright
    factor = np.where(scaled > 1e-9, np.arcsinh(scaled) / np.maximum(scaled, 1e-9), 1.0) * q / np.arcsinh(q)
    out = np.clip(rgb / bright * factor, 0, None)
    peak = np.maximum(out.max(axis=1, keepdims=True), 1.0)   # saturate to the brightest channel's hue, not white
    out = out / peak
    return np.moveaxis((np.clip(out, 0, 1) * 255 + 0.5).astype(np.uint8), 1, -1)


def save_montage(rows, path: str, captions=None, row_titles=None, cell: int = 96, title: str | None = None) -> None:
    """Save a grid of uint8 HxWx3 pictures as a PNG, with a caption under each and an optional title per row."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    line_height = 12
    caption_lines = max((len(str(c).split("\n")) for row in (captions or []) for c in row), default=0)
    cell_height = cell + caption_lines * line_height + 4
    title_width = 0
    if row_titles:
        title_width = max(len(str(t)) for t in row_titles) * 7 + 10
    top = line_height + 8 if title else 0
    columns = max(len(r) for r in rows)
    canvas = Image.new("RGB", (title_width + columns * (cell + 4) + 4, top + len(rows) * cell_height + 4), "white")
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((4, 4), title, fill="black", font=font)
    for r, row in enumerate(rows):
        y = top + r * cell_height + 4
        if row_titles:
            draw.text((4, y + cell // 2 - 6), str(row_titles[r]), fill="black", font=font)
        for c, picture in enumerate(row):
            x = title_width + c * (cell + 4) + 4
            thumb = Image.fromarray(np.asarray(picture, dtype=np.uint8)).resize((cell, cell), Image.NEAREST)
            canvas.paste(thumb, (x, y))
            if captions and r < len(captions) and c < len(captions[r]):
                for k, line in enumerate(str(captions[r][c]).split("\n")):
                    draw.text((x, y + cell + 2 + k * line_height), line, fill="black", font=font)
    from galtools.io.files import atomic_file

    with atomic_file(path) as temporary:   # a failed run leaves no half-written picture
        canvas.save(temporary, format="PNG")
