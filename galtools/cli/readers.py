"""Options telling the readers what a foreign table does not say itself (HDF5 files, partitioned folders)."""
from __future__ import annotations

import functools

import click


def band_list(text: str | None):
    return tuple(b.strip() for b in text.split(",") if b.strip()) if text else None


def read_options(bands: bool = True, id_column: bool = True):
    """--image-key, --id-column, --bands and --drop-partition-columns, handed to the command as ``read_opts``
    (a galtools.io ReadOptions). Commands with their own --bands/--id-column pass False and fill those in."""

    def decorator(func):
        @functools.wraps(func)
        def wrapper(*args, image_key=None, drop_partition_columns=False, **kwargs):
            from galtools.io.table import ReadOptions

            names = kwargs.pop("hdf5_bands", None) if bands else None
            key = kwargs.pop("hdf5_id_column", None) if id_column else None
            kwargs["read_opts"] = ReadOptions(image_key=image_key, id_column=key, bands=band_list(names),
                                              partition_columns=not drop_partition_columns)
            return func(*args, **kwargs)

        wrapper = click.option("--drop-partition-columns", is_flag=True,
                               help="Reading a partitioned Parquet folder (a HATS catalogue): leave out the partition "
                                    "columns (Norder, Dir, Npix) instead of carrying them.")(wrapper)
        if bands:
            wrapper = click.option("--bands", "hdf5_bands", default=None, metavar="B1,B2,...",
                                   help="Band names of the input's image planes, in their order, when the table "
                                        "does not name them (an HDF5 file without a bands attribute, a bare FITS "
                                        "cube). Unnamed planes are never matched to a model's bands by position.")(wrapper)
        if id_column:
            wrapper = click.option("--id-column", "hdf5_id_column", default=None, metavar="DATASET",
                                   help="HDF5 input: the 1-D dataset that becomes object_id (default: a dataset "
                                        "named object_id, else the row number).")(wrapper)
        wrapper = click.option("--image-key", default=None, metavar="DATASET",
                               help="HDF5 input: the image dataset (default: the one named images, image, cutouts, "
                                    "cube or image_array).")(wrapper)
        return wrapper

    return decorator
