"""gal-augment's work: check a cutout table against an augmentation spec, write every object's views to a sink,
and draw the montage. torch is imported inside the functions that augment."""
from __future__ import annotations


class ViewPlan:
    """The pipeline and where its inputs come from, checked against the table before any pixel is read."""

    def __init__(self, pipe, device, bands, ebv_column, psf_names, spec_text):
        self.pipe, self.device, self.bands, self.spec_text = pipe, device, bands, spec_text
        self.ebv_column, self.psf_names = ebv_column, psf_names

    @classmethod
    def make(cls, table, spec, size, pixscale, ebv_column, psf_pattern, device_text):
        from galtools.augment import AugmentPipeline
        from galtools.errors import BadData, UsageProblem
        from galtools.io import PIXSCALE
        from galtools.device import torch_device as resolve_device

        bands_count, height, width = table.require_images()
        if min(height, width) < size:
            raise BadData(f"{table.name}: cutouts of {height}x{width} are smaller than the output size {size}",
                          "choose a smaller --size")
        if "object_id" not in table.schema.names:
            raise BadData(f"{table.name}: has no object_id column", "each view is keyed by its object's object_id")
        if "view" in table.schema.names:
            raise BadData(f"{table.name}: already has a view column (is it gal-augment output?)",
                          "augment the original cutouts")
        bands = table.bands
        if bands is not None and len(bands) != bands_count:
            raise BadData(f"{table.name}: metadata names {len(bands)} bands ({','.join(bands)}) but the images have "
                          f"{bands_count}", "fix galtools.bands (gal-pack --bands)")
        if pixscale is None and table.metadata.get(PIXSCALE):
            try:
                pixscale = float(table.metadata[PIXSCALE])
            except ValueError:
                raise BadData(f"{table.name}: galtools.pixscale_arcsec is {table.metadata[PIXSCALE]!r}, not a number",
                              "pass --pixscale") from None
        pipe = AugmentPipeline.from_spec(spec, out_size=size, bands=bands, pixscale=pixscale)
        names = table.schema.names
        if "ebv" in pipe.needs and ebv_column not in names:
            raise UsageProblem(f"the deredden augmentation needs E(B-V): {table.name} has no column {ebv_column!r}",
                               "name it with --ebv-column, or drop deredden from --ops")
        psf_names = psf_columns(psf_pattern, bands, names)
        if "psf_fwhm" in pipe.needs and psf_names is None:
            expected = psf_pattern if "{band}" not in psf_pattern or not bands else \
                ", ".join(psf_pattern.format(band=b) for b in bands)
            raise UsageProblem(f"the psf augmentation needs the input PSF: {table.name} has no column(s) {expected}",
                               "name them with --psf-columns, or give psf:fwhm_in=ARCSEC in --ops")
        return cls(pipe, resolve_device(device_text), bands, ebv_column if ebv_column in names else None, psf_names,
                   spec)

    def augment(self, batch, views, seed):
        """(n*views, bands, S, S) numpy views of a record batch, object-major (object 0 views 0..V-1 first)."""
        import numpy as np
        import torch

        from galtools.errors import BadData
        from galtools.io import images_of

        ids = batch.column("object_id").to_numpy(zero_copy_only=False)
        images = torch.from_numpy(np.array(images_of(batch), dtype=np.float32)).to(self.device)  # writable copy
        finite = torch.isfinite(images).flatten(1).all(dim=1).cpu().numpy()
        if not finite.all():
            raise BadData(f"the cutout of object_id {ids[int(np.argmin(finite))]} holds NaN or infinite pixels",
                          "fill them, e.g. gal-pack IN --fill-nan 0 -o OUT")
        ebv = batch.column(self.ebv_column).to_numpy(zero_copy_only=False) if self.ebv_column else None
        psf = self._psf_of(batch)
        out = [self.pipe(images, ids, view=v, seed=seed, ebv=ebv, psf_fwhm=psf) for v in range(views)]
        return torch.stack(out, dim=1).flatten(0, 1).cpu().numpy(), ids

    def _psf_of(self, batch):
        import numpy as np

        if not self.psf_names:
            return None
        columns = [batch.column(name).to_numpy(zero_copy_only=False).astype(np.float64) for name in self.psf_names]
        return np.stack(columns, axis=1)


def psf_columns(pattern, bands, names):
    """The catalogue PSF columns present: one per band from a {band} pattern, or a single column; else None."""
    if "{band}" in pattern:
        if not bands:
            return None
        wanted = [pattern.format(band=b) for b in bands]
        return wanted if all(w in names for w in wanted) else None
    return [pattern] if pattern in names else None


def views_metadata(table, plan, views) -> dict:
    """The input's metadata with the canonical spec and the number of views."""
    from galtools.io import meta

    metadata = dict(table.metadata)
    metadata[meta.AUGMENT] = plan.pipe.spec
    metadata[meta.AUGMENT_VIEWS] = str(views)
    return metadata


def write_views(table, plan, views, seed, batch_size, sink, keep=0, track=None):
    """Write ``views`` views of every cutout of ``table`` to ``sink`` (galtools.io.sink); return the first
    ``keep`` objects' montage rows. ``track(iterable, total)`` may wrap the batches (a progress bar)."""
    import numpy as np
    import pyarrow as pa

    from galtools.io import tensor_column

    kept = []
    batches = table.iter_batches(batch_size=batch_size)
    if track is not None:
        batches = track(batches, None if table.num_rows is None else -(-table.num_rows // batch_size))
    sink.expect_schema(output_schema(table.schema, views, plan.pipe.out_size))
    for batch in batches:
        if batch.num_rows == 0:
            continue
        images, ids = plan.augment(batch, views, seed)
        repeat = np.repeat(np.arange(batch.num_rows), views)
        carried = batch.drop_columns(["object_id", "image"]).take(pa.array(repeat))
        columns = {"object_id": batch.column("object_id").take(pa.array(repeat)),
                   "view": pa.array(np.tile(np.arange(views, dtype=np.int32), batch.num_rows)),
                   "image": tensor_column(images)}
        columns.update({name: carried.column(name) for name in carried.schema.names})
        sink.write(pa.RecordBatch.from_pydict(columns))
        if len(kept) < keep:
            kept.extend(montage_rows(batch, images, ids, views, keep - len(kept), plan.pipe.out_size))
    return kept


def output_schema(schema, views, size):
    import pyarrow as pa

    image = schema.field("image").type
    fields = [schema.field("object_id"), pa.field("view", pa.int32()),
              pa.field("image", pa.fixed_shape_tensor(image.value_type, (image.shape[0], size, size)))]
    fields += [f for f in schema if f.name not in ("object_id", "image")]
    return pa.schema(fields)


def montage_rows(batch, views_np, ids, views, count, size):
    """[(object_id, original centre crop, [view images])] for the first ``count`` objects of a batch."""
    from galtools.io import images_of
    from galtools.preprocess import centre_crop

    originals = centre_crop(images_of(batch.slice(0, count)), size)
    rows = []
    for i in range(min(count, batch.num_rows)):
        rows.append((ids[i], originals[i], list(views_np[i * views:(i + 1) * views])))
    return rows


def first_objects(table, count, batch_size):
    """Montage-only: read just the objects that will be drawn."""
    batches, have = [], 0
    for batch in table.iter_batches(batch_size=min(batch_size, count)):
        batches.append(batch.slice(0, count - have))
        have += batches[-1].num_rows
        if have >= count:
            break
    return batches


def draw_views_montage(rows_or_batches, plan, views, seed, path) -> int:
    """Objects by row, the input's centre crop then its views by column (record batches are augmented first)."""
    import numpy as np
    import pyarrow as pa

    from galtools.errors import BadData
    from galtools.viz import rgb_composite, save_montage

    if rows_or_batches and isinstance(rows_or_batches[0], pa.RecordBatch):
        rows = []
        for batch in rows_or_batches:
            images, ids = plan.augment(batch, views, seed)
            rows.extend(montage_rows(batch, images, ids, views, batch.num_rows, plan.pipe.out_size))
    else:
        rows = rows_or_batches
    if not rows:
        raise BadData("no cutouts to draw: the input has no rows", "check the input and any --shard")
    pictures, captions, titles = [], [], []
    for object_id, original, view_images in rows:
        stack = np.stack([original, *view_images])
        pictures.append(list(rgb_composite(stack, plan.bands)))
        captions.append(["input"] + [f"view {v}" for v in range(views)])
        titles.append(str(object_id))
    save_montage(pictures, path, captions=captions, row_titles=titles,
                 title=f"gal-augment --seed {seed} --ops {plan.spec_text}"[:160])
    return len(rows)
