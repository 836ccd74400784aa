"""A short summary of any galtools table: rows, columns, image shape and bands, metadata and history."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa

from galtools.io import meta
from galtools.io.table import Table
from galtools.io.tensor import IMAGE, images_of, is_tensor_type


def type_name(arrow_type) -> str:
    if is_tensor_type(arrow_type):
        return f"tensor<{arrow_type.value_type}>[{'x'.join(str(s) for s in arrow_type.shape)}]"
    return str(arrow_type)


def count_rows(table: Table) -> int:
    """The row count, reading through a stream (key column only) when the header does not say."""
    if table.num_rows is not None:
        return table.num_rows
    first = table.schema.names[0]
    return sum(batch.num_rows for batch in table.iter_batches(columns=[first]))


def pixel_statistics(table: Table) -> dict:
    """Per-band min/median/max over all images (streamed) and the count of non-finite pixels; min/median/max are
    None when there are no images."""
    bands = table.image_shape[0]
    lows, highs = np.full(bands, np.inf), np.full(bands, -np.inf)
    medians, bad_pixels, bad_images, first_bad, count = [], 0, 0, None, 0
    for batch in table.iter_batches(columns=[IMAGE, "object_id"]):
        if batch.num_rows == 0:
            continue
        count += batch.num_rows
        images = images_of(batch)
        finite = np.isfinite(images)
        if not finite.all():
            per_image = (~finite).reshape(len(images), -1).sum(axis=1)
            bad_pixels += int(per_image.sum())
            bad_images += int((per_image > 0).sum())
            if first_bad is None and "object_id" in batch.schema.names:
                first_bad = batch.column("object_id")[int(np.argmax(per_image > 0))].as_py()
        clean = np.where(finite, images, np.nan)
        lows = np.fmin(lows, np.nanmin(clean, axis=(0, 2, 3)))
        highs = np.fmax(highs, np.nanmax(clean, axis=(0, 2, 3)))
        medians.append(np.nanmedian(clean, axis=(2, 3)))
    if not count:
        return {"images": 0, "min": None, "median_of_image_medians": None, "max": None, "nonfinite_pixels": 0,
                "images_with_nonfinite": 0, "first_nonfinite_object_id": None}
    median = np.nanmedian(np.concatenate(medians), axis=0)
    return {"images": count, "min": lows.tolist(), "median_of_image_medians": median.tolist(), "max": highs.tolist(),
            "nonfinite_pixels": bad_pixels, "images_with_nonfinite": bad_images, "first_nonfinite_object_id": first_bad}


def summarize(table: Table, source: str, pixels: bool = False) -> dict:
    info = {
        "source": source,
        "format": table.format,
        "parts": len(table.parts),
        "rows": count_rows(table),
        "columns": [{"name": f.name, "type": type_name(f.type)} for f in table.schema],
    }
    if table.image_shape is not None:
        info["image"] = {"shape": list(table.image_shape), "bands": table.bands,
                         "pixscale_arcsec": table.metadata.get(meta.PIXSCALE),
                         "flux_unit": table.metadata.get(meta.FLUX_UNIT)}
    for field in table.schema:
        if pa.types.is_fixed_size_list(field.type) and field.name == "embedding":
            info["embedding"] = {"dim": field.type.list_size, "model_sha256": table.metadata.get(meta.MODEL_SHA256)}
    info["metadata"] = {k: v for k, v in table.metadata.items() if k != meta.HISTORY}
    info["history"] = table.history
    if pixels and table.image_shape is not None:
        info["pixels"] = pixel_statistics(table)
    return info


def generic_bands_note(bands: list[str] | None) -> str | None:
    """What to say of band names gal-pack had to make up (pictures' colour planes, numbered FITS planes)."""
    if not bands:
        return ("the image planes are not named: tools that match bands to a model refuse them; name them with "
                "--bands B1,B2,... or gal-pack IN --bands B1,B2,... -o OUT")
    if bands in (["red", "green", "blue"], ["gray"]):
        return (f"{','.join(bands)} are the colour planes of 8-bit pictures, not filters; to name the filters "
                "(e.g. i,r,g for SDSS gri composites), pack the pictures again with gal-pack --bands")
    if all(b.startswith("b") and b[1:].isdigit() for b in bands):
        return (f"{','.join(bands)} are plane numbers, not filters; to name the filters, pack the stamps again "
                "with gal-pack --bands")
    return None


def render_text(info: dict) -> str:
    lines = [f"{info['source']}: {info['rows']} rows, {len(info['columns'])} columns ({info['format']}"
             + (f", {info['parts']} parts" if info["parts"] > 1 else "") + ")"]
    if "image" in info:
        image = info["image"]
        bands = ",".join(image["bands"]) if image["bands"] else "unnamed"
        extra = ""
        if image.get("pixscale_arcsec"):
            extra += f", {image['pixscale_arcsec']} arcsec/pixel"
        if image.get("flux_unit"):
            extra += f", {image['flux_unit']}"
        lines.append(f"images: {' x '.join(str(s) for s in image['shape'])} (bands {bands}{extra})")
        note = generic_bands_note(image["bands"])
        if note:
            lines.append(f"  note: {note}")
    if "embedding" in info:
        sha = info["embedding"]["model_sha256"] or "unknown model"
        lines.append(f"embedding: {info['embedding']['dim']}-d ({sha[:16]})")
    lines.append("columns:")
    width = max(len(c["name"]) for c in info["columns"]) if info["columns"] else 0
    lines += [f"  {c['name']:<{width}}  {c['type']}" for c in info["columns"]]
    extra_meta = {k: v for k, v in info["metadata"].items() if k not in (meta.BANDS, meta.PIXSCALE, meta.FLUX_UNIT)}
    if extra_meta:
        lines.append("metadata:")
        for key, value in extra_meta.items():
            value = value if len(value) <= 100 else value[:97] + "..."
            lines.append(f"  {key} = {value}")
    if info["history"]:
        lines.append("history:")
        for entry in info["history"]:
            seed = f" (seed {entry['seed']})" if entry.get("seed") is not None else ""
            lines.append(f"  {entry.get('time', '?')}  {entry.get('tool', '?')} {entry.get('version', '')}  "
                         f"{' '.join(entry.get('argv', []))}{seed}")
    if "pixels" in info:
        pix = info["pixels"]
        if not pix["images"]:
            lines.append("pixels: none to scan (the table has no rows)")
            return "\n".join(lines)
        lines.append("pixels (per band):")
        for i, band in enumerate(info["image"]["bands"] or [str(i) for i in range(len(pix["min"]))]):
            lines.append(f"  {band}: min {pix['min'][i]:.4g}  median {pix['median_of_image_medians'][i]:.4g}  "
                         f"max {pix['max'][i]:.4g}")
        lines.append(f"  non-finite pixels: {pix['nonfinite_pixels']} in {pix['images_with_nonfinite']} images")
    return "\n".join(lines)


def render_json(info: dict) -> str:
    return json.dumps(info, indent=2, default=str)
