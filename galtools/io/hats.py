"""HATS catalogues out as well as in: a tool given a HATS catalogue and a folder writes a HATS catalogue.

The output has the input's partitions, file for file (``dataset/Norder=K/Dir=D/Npix=N.parquet``, or the files of
an ``Npix=N/`` folder), each holding the rows that came from the same input file in the same order, plus the
catalogue-level files HATS readers (``lsdb.open_catalog``, ``hats.read_hats``) open: ``properties`` and
``hats.properties`` (the input's, with this catalogue's name, row counts and builder), ``partition_info.csv``,
``dataset/_common_metadata``, ``dataset/_metadata`` and copies of the input's ``point_map.fits`` and skymaps (the
rows are the same objects, so the maps are the same).

One partition is one shard: the tasks of a Slurm array (``--shard i/n``) each write whole partition files into
the same folder. Every partition file is written atomically (a temporary file, then a rename) and stamped with the
build's identity (the tool, the input catalogue and the settings, see :func:`build_identity`). The catalogue-level
files are a function of the finished partitions alone: every task, after its own partitions, looks whether all the
input's partitions exist with this build's stamp, and if they do writes them (each atomically, the properties
last). Whichever task finishes last therefore writes them, tasks finishing together write the same content, and
until then the folder has no properties and no HATS reader takes it for a catalogue. A rerun of the same command
(or of any task of its array) rewrites its partitions and the catalogue files; a folder holding another catalogue
is refused without ``overwrite``.

A HATS *collection* (``collection.properties``, as ``lsdb``'s ``write_catalog`` makes) is read through its primary
catalogue; its margin caches hold copies of rows and are not read.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import logging
import os
import shutil

import pyarrow as pa

from galtools.errors import BadData, GalError, OutputError, UsageProblem
from galtools.io.files import is_temporary
from galtools.io import meta
from galtools.io.files import atomic_file
from galtools.io.output import FORMATS, Output, output_kind

log = logging.getLogger("galtools")

PROPERTIES = ("hats.properties", "properties")      # HATS readers take the first that exists
COLLECTION = "collection.properties"
PARTITION_INFO = "partition_info.csv"
DATASET = "dataset"
RECORD = ".galtools-build.json"                     # which build the folder's partitions belong to
BUILD_KEY = meta.HATS_BUILD                   # the same identity, in each partition file's metadata
PARTITION_COLUMNS = ("Norder", "Dir", "Npix")
# Files a HATS catalogue folder may hold besides dataset/: an output folder holding anything else is not ours.
CATALOGUE_FILES = (*PROPERTIES, PARTITION_INFO, RECORD, "point_map.fits", "per_partition_statistics.parquet",
                   "data_thumbnail.parquet")
# Metadata that says how a task was invoked or computed (the input as typed, device, arithmetic), in which the
# tasks of one array may differ (the input catalogue itself is in the identity, as its real path).
RUN_KEYS = (meta.HISTORY, meta.EMBED_INPUT, meta.EMBED_PROVIDER, meta.EMBED_PRECISION, meta.EMBED_PRECISION_REQUESTED,
            meta.EMBED_PARITY, meta.EMBED_AUTO)


# ------------------------------------------------------------------------------------------ properties files

def read_properties(path: str) -> dict[str, str]:
    """A Java-style properties file (``key=value`` lines, ``#`` comments, ``\\`` continuations) as a dict."""
    with open(path, encoding="utf-8") as handle:
        lines = handle.read().splitlines()
    found, pending = {}, ""
    for raw in lines:
        line = pending + raw.lstrip()
        if line.endswith("\\") and not line.endswith("\\\\"):
            pending = line[:-1]
            continue
        pending = ""
        if not line or line[0] in "#!":
            continue
        cut = min((i for i in (line.find("="), line.find(":")) if i >= 0), default=-1)
        if cut < 0:
            key, _, value = line.partition(" ")
        else:
            key, value = line[:cut], line[cut + 1:]
        found[key.strip()] = value.strip()
    return found


def format_properties(values: dict[str, str]) -> str:
    lines = ["#HATS catalog"] + [f"{key}={' '.join(str(value).split())}" for key, value in values.items()]
    return "\n".join(lines) + "\n"


def _properties_of(folder: str) -> dict[str, str] | None:
    for name in PROPERTIES:
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            return read_properties(path)
    return None


# ------------------------------------------------------------------------------------------------ what is HATS

def catalogue_root(path: str) -> str | None:
    """The HATS catalogue folder ``path`` names (a folder with ``properties`` and ``dataset/``; a collection is
    followed to its primary catalogue), or None."""
    if not path or path == "-" or not os.path.isdir(path):
        return None
    collection = os.path.join(path, COLLECTION)
    if os.path.isfile(collection) and not any(os.path.isfile(os.path.join(path, n)) for n in PROPERTIES):
        primary = read_properties(collection).get("hats_primary_table_url", "")
        inner = os.path.normpath(os.path.join(path, primary)) if primary and "://" not in primary else None
        if inner and os.path.isfile(os.path.join(inner, COLLECTION)):
            return None   # a collection inside a collection: not what HATS writes
        return catalogue_root(inner) if inner else None
    if _properties_of(path) is not None and os.path.isdir(os.path.join(path, DATASET)):
        return path
    return None


def _has_table_suffix(path: str) -> bool:
    return path.lower().endswith(tuple(FORMATS))


def wants_catalogue(source: str | None, output: str | None, fmt: str | None = None) -> bool:
    """Whether ``output`` is to be a HATS catalogue: ``source`` is one, no --format was given, and ``output`` names
    a folder (ends in '/', is an existing folder, or has no table extension)."""
    if fmt is not None or not source or not output or output == "-" or output_kind(output) != "file":
        return False
    folder_like = output.endswith(("/", os.sep)) or os.path.isdir(output) or not _has_table_suffix(output)
    return folder_like and catalogue_root(source) is not None


# ------------------------------------------------------------------------------------------ the input's layout

class Layout:
    """The input catalogue's partition files (in the order open_table reads them), with their pixels."""

    def __init__(self, source: str):
        from galtools.io import partitioned

        self.root = catalogue_root(source)
        if self.root is None:
            raise UsageProblem(f"{source} is not a HATS catalogue", "give a folder with properties and dataset/")
        self.properties = _properties_of(self.root) or {}
        dataset = os.path.join(self.root, DATASET)
        self.files = []   # (path relative to dataset/, Norder, Npix)
        for path, values in partitioned.partition_files(dataset):
            if not isinstance(values.get("Norder"), int) or not isinstance(values.get("Npix"), int):
                raise BadData(f"{path}: not in a Norder=K/.../Npix=N partition", "give a HATS catalogue")
            self.files.append((os.path.relpath(path, dataset), values["Norder"], values["Npix"]))
        if not self.files:
            raise BadData(f"{source}: the catalogue holds no partition files", "check the path")

    def bounds(self, shard) -> tuple[int, int]:
        """The files a shard reads: the same whole files as Table(shard_by_files=True)."""
        return shard.bounds(len(self.files)) if shard is not None else (0, len(self.files))

    def row_bounds(self, shard) -> tuple[int, int]:
        """The rows (of the whole table, in open_table's order) of the files a shard reads: what a command that
        searches every row writes into those partitions."""
        first, last = self.bounds(shard)
        counts = [_file_rows(os.path.join(self.root, DATASET, relative)) for relative, _, _ in self.files[:last]]
        return sum(counts[:first]), sum(counts)

    def healpix_order(self) -> list[int]:
        """File indices in HEALPix order (each pixel at the deepest order, then the file name), as HATS lists them."""
        deepest = max(order for _, order, _ in self.files)
        return sorted(range(len(self.files)),
                      key=lambda i: (self.files[i][2] << 2 * (deepest - self.files[i][1]), self.files[i][0]))


def build_identity(tool: str, root: str, partitions: int, metadata: dict) -> str:
    """What makes two runs write the same catalogue: the tool, the input catalogue, and the output's metadata less
    how each task computed (``RUN_KEYS``)."""
    settled = {k: v for k, v in sorted(metadata.items()) if k not in RUN_KEYS}
    text = json.dumps({"tool": tool, "input": os.path.realpath(root), "partitions": partitions, "metadata": settled},
                      sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


# ------------------------------------------------------------------------------------------ the output folder

def _read_record(folder: str) -> dict | None:
    try:
        with open(os.path.join(folder, RECORD)) as handle:
            record = json.load(handle)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _holds_catalogue(folder: str) -> bool:
    return any(os.path.exists(os.path.join(folder, n)) for n in (*PROPERTIES, PARTITION_INFO, DATASET))


def check_catalogue_output(source: str, output: str, overwrite: bool, tool: str = "galtools") -> None:
    """Before any work: refuse an output folder that cannot or must not become this catalogue."""
    root = os.path.realpath(catalogue_root(source))
    here = os.path.realpath(output)
    if here == root or here.startswith(root + os.sep) or root.startswith(here + os.sep):
        raise UsageProblem(f"{output}: the output catalogue would overlap the input {source}",
                           "write it to a folder of its own")
    parent = os.path.dirname(here)
    if not os.path.isdir(parent):
        raise OutputError(f"cannot write {output}: folder {os.path.dirname(output.rstrip('/')) or '.'} does not "
                          "exist", "create it first (mkdir -p)")
    if not os.path.exists(output):
        if not os.access(parent, os.W_OK):
            raise OutputError(f"cannot write {output}: folder is not writable", "choose another output folder")
        return
    if not os.path.isdir(output):
        raise OutputError(f"cannot write the catalogue {output}: it is a file", "give a folder name")
    others = sorted(n for n in os.listdir(output)   # another array task's temporaries are its work in progress
                    if n not in (*CATALOGUE_FILES, DATASET) and not _is_skymap(n) and not is_temporary(n))
    if others:
        shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
        raise OutputError(f"{output} holds files that are not a HATS catalogue's ({shown})",
                          "give a new or empty folder")
    if not os.access(output, os.W_OK):
        raise OutputError(f"cannot write {output}: folder is not writable", "choose another output folder")
    record = _read_record(output)
    ours = record is not None and record.get("tool") == tool and record.get("input") == root
    if _holds_catalogue(output) and not ours and not overwrite:
        raise _another(output, record)


def _another(output: str, record: dict | None) -> GalError:
    if record is None:
        return GalError(f"{output} already holds a HATS catalogue", "pass --overwrite to replace it")
    return GalError(f"{output} already holds another catalogue ({record.get('tool', '?')} of "
                    f"{record.get('input', '?')} with other settings)",
                    "pass --overwrite to replace it, or choose another folder")


# ----------------------------------------------------------------------------------------------------- the sink

class CatalogueOutput:
    """A sink writing the rows of one shard of a HATS catalogue's table (in the table's order) to the same
    partitions of the HATS catalogue ``path``; see the module's description. Use as a context manager, like
    :class:`galtools.io.Output`: a partition is renamed into place once all its rows came; on an exception the
    one being written is removed, and the finished ones stay for a rerun to rewrite."""

    def __init__(self, source: str, path: str, overwrite: bool = False, metadata: dict | None = None,
                 tool: str = "galtools", seed=None, shard=None):
        self.path, self.tool, self.seed = path.rstrip("/") or path, tool, seed
        self.layout = Layout(source)
        self.metadata = dict(metadata or {})
        self.identity = build_identity(tool, self.layout.root, len(self.layout.files), self.metadata)
        self.metadata[BUILD_KEY] = self.identity
        self.rows = 0
        self.complete = False            # whether this task found every partition and wrote the catalogue files
        first, last = self.layout.bounds(shard)
        self._mine = list(range(first, last))
        self._counts = [_file_rows(os.path.join(self.layout.root, DATASET, self.layout.files[i][0]))
                        for i in self._mine]
        self._next = 0                   # index into _mine of the partition being filled
        self._filled = 0                 # its rows so far
        self._out: Output | None = None
        self._schema: pa.Schema | None = None
        self._empty_schema: pa.Schema | None = None   # the columns of an empty partition, if no row came
        self._drop: list[str] = []
        check_catalogue_output(source, self.path, overwrite, tool)
        self._claim(overwrite)

    # -- the folder
    @property
    def dataset(self) -> str:
        return os.path.join(self.path, DATASET)

    def _record(self) -> dict:
        return {"tool": self.tool, "input": os.path.realpath(self.layout.root),
                "partitions": len(self.layout.files), "identity": self.identity}

    def _claim(self, overwrite: bool) -> None:
        """Join this build (the record is ours), start it (an empty folder), or take the folder over
        (``overwrite``): old catalogue files first, so that nothing reads it as complete meanwhile."""
        try:
            os.makedirs(self.path, exist_ok=True)
            holds = _holds_catalogue(self.path)   # looked at before the record: a sibling writes its record first
            record = _read_record(self.path)
            if record == self._record():
                return
            if holds:   # another build's, or a catalogue some other program wrote
                if not overwrite:
                    raise _another(self.path, record)
                self._take_over()
            with atomic_file(os.path.join(self.path, RECORD)) as temporary:
                with open(temporary, "w") as handle:
                    json.dump(self._record(), handle, indent=1)
        except OSError as exc:
            from galtools.io.files import write_failure

            raise write_failure(exc, self.path) from None

    def _take_over(self) -> None:
        for name in os.listdir(self.path):   # properties first: from now on nothing takes it for a catalogue
            if name in CATALOGUE_FILES or _is_skymap(name):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(self.path, name))
        for name in ("_metadata", "_common_metadata"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self.dataset, name))
        # The old partitions stay until this build's tasks replace them (a sibling may be renaming its new ones into
        # place right now); those of pixels this catalogue lacks go when it is finished.

    # -- the sink
    def expect_schema(self, schema: pa.Schema) -> None:
        self._empty_schema = schema

    def set_metadata(self, key: str, value: str) -> None:
        if self._schema is not None:
            raise RuntimeError("metadata must be set before the first write")
        self.metadata[key] = value

    def write(self, data) -> None:
        batches = data.to_batches() if isinstance(data, pa.Table) else [data]
        for batch in batches:
            if self._schema is None:
                self._start(batch.schema)
            offset = 0
            while offset < batch.num_rows:
                if self._next >= len(self._mine):
                    raise BadData(f"{self.path}: more rows than the input's partitions hold",
                                  "the rows must come one for one from the input catalogue")
                take = min(batch.num_rows - offset, self._counts[self._next] - self._filled)
                self._write_part(batch.slice(offset, take))
                offset += take

    def _start(self, schema: pa.Schema) -> None:
        self._drop = [name for name in PARTITION_COLUMNS if name in schema.names]   # HATS keeps them in the paths
        self._schema = pa.schema([f for f in schema if f.name not in self._drop], metadata=schema.metadata)
        wanted = [self.layout.properties.get(k) for k in ("hats_col_ra", "hats_col_dec")]
        lacking = [c for c in wanted if c and c not in self._schema.names]
        if lacking:
            raise BadData(f"{self.path}: the rows lack the catalogue's coordinate column(s) {', '.join(lacking)}",
                          "carry them from the input: HATS readers place rows by them")

    def _write_part(self, piece: pa.RecordBatch) -> None:
        index = self._mine[self._next]
        relative, order, npix = self.layout.files[index]
        for name, value in (("Norder", order), ("Npix", npix)):
            if name in self._drop and piece.num_rows and set(piece.column(name).to_pylist()) != {value}:
                raise BadData(f"{self.path}: rows of another partition arrived for {relative}",
                              "the rows must come in the input's order")
        if self._out is None:
            target = os.path.join(self.dataset, relative)
            try:
                os.makedirs(os.path.dirname(target), exist_ok=True)
            except OSError as exc:
                from galtools.io.files import write_failure

                raise write_failure(exc, target) from None
            self._out = Output(target, fmt="parquet", overwrite=True, metadata=self.metadata, tool=self.tool,
                               seed=self.seed)
        if piece.num_rows:
            self._out.write(piece.drop_columns(self._drop) if self._drop else piece)
        self._filled += piece.num_rows
        self.rows += piece.num_rows
        if self._filled == self._counts[self._next]:
            self._close_part()

    def _close_part(self) -> None:
        out, self._out = self._out, None
        out.commit(self._schema_for_empty())
        self._next += 1
        self._filled = 0

    def _schema_for_empty(self) -> pa.Schema | None:
        if self._schema is None and self._empty_schema is not None:
            self._start(self._empty_schema)
        return self._schema

    def commit(self, empty_schema: pa.Schema | None = None) -> None:
        self._empty_schema = empty_schema or self._empty_schema
        while self._next < len(self._mine) and self._counts[self._next] == 0:   # empty input files stay empty
            self._write_part(pa.RecordBatch.from_pylist([], schema=self._full_schema()))
        if self._next < len(self._mine):
            relative = self.layout.files[self._mine[self._next]][0]
            raise BadData(f"{self.path}: {relative} got {self._filled} of its {self._counts[self._next]} rows",
                          "the rows must come one for one from the input catalogue")
        self.complete = self.finish()

    def _full_schema(self) -> pa.Schema:
        schema = self._empty_schema or self._schema
        if schema is None:
            raise BadData("nothing to write: the input had no rows", "check the input")
        return schema

    def abort(self) -> None:
        if self._out is not None:
            out, self._out = self._out, None
            out.abort()

    __enter__, __exit__ = Output.__enter__, Output.__exit__   # commit on success, abort on any exception

    # -- the catalogue-level files
    def finish(self) -> bool:
        """Write the catalogue-level files if every partition of this build exists; return whether it did."""
        import pyarrow.parquet as pq

        files = self.layout.files
        paths = [os.path.join(self.dataset, relative) for relative, _, _ in files]
        present = set(_partition_paths(self.dataset))   # one walk of the folder, not a look-up per partition
        missing = sum(p not in present for p in paths)
        if missing:
            log.info(f"{self.path}: {missing} of {len(files)} partitions still to come; the task that writes the "
                     "last one writes the catalogue files")
            return False
        footers = [pq.read_metadata(p) for p in paths]
        stale = [r for (r, _, _), f in zip(files, footers) if meta.decode(f.metadata).get(BUILD_KEY) != self.identity]
        if stale:
            log.info(f"{self.path}: {len(stale)} partitions ({stale[0]}, ...) are from another run; they are "
                     "rewritten by the tasks that own them")
            return False
        schema = footers[0].schema
        for (relative, _, _), footer in zip(files, footers):
            if not footer.schema.equals(schema):
                raise BadData(f"{self.path}: {relative} has other columns than {files[0][0]}",
                              "rerun every task with the same options, or all of them with --overwrite")
        try:
            self._write_catalogue_files(footers)
        except OSError as exc:
            from galtools.io.files import write_failure

            raise write_failure(exc, self.path) from None
        log.info(f"{self.path}: HATS catalogue complete ({len(files)} partition files)")
        return True

    def _write_catalogue_files(self, footers) -> None:
        import pyarrow.parquet as pq

        files = self.layout.files
        order = self.layout.healpix_order()
        arrow_schema = pq.read_schema(os.path.join(self.dataset, files[0][0]))
        for path in _partition_paths(self.dataset):   # a replaced catalogue's pixels that this one lacks
            if os.path.relpath(path, self.dataset) not in {r for r, _, _ in files}:
                os.unlink(path)
        with atomic_file(os.path.join(self.dataset, "_common_metadata")) as temporary:
            pq.write_metadata(arrow_schema, temporary)
        collected = []
        for i in order:
            footers[i].set_file_path(files[i][0].replace(os.sep, "/"))
            collected.append(footers[i])
        with atomic_file(os.path.join(self.dataset, "_metadata")) as temporary:
            pq.write_metadata(arrow_schema, temporary, metadata_collector=collected)
        pixels, rows = [], {}
        for i in order:
            pixel = files[i][1:]
            if pixel not in rows:
                pixels.append(pixel)
                rows[pixel] = 0
            rows[pixel] += footers[i].num_rows
        with atomic_file(os.path.join(self.path, PARTITION_INFO)) as temporary:
            with open(temporary, "w") as handle:
                handle.write("Norder,Npix\n" + "".join(f"{k},{n}\n" for k, n in pixels))
        for name in os.listdir(self.layout.root):
            if name == "point_map.fits" or _is_skymap(name):
                with atomic_file(os.path.join(self.path, name)) as temporary:
                    shutil.copyfile(os.path.join(self.layout.root, name), temporary)
        text = format_properties(self._properties(arrow_schema, sum(rows.values()), max(rows.values())))
        for name in PROPERTIES:   # last: a folder with properties is a catalogue to HATS readers
            with atomic_file(os.path.join(self.path, name)) as temporary:
                with open(temporary, "w", encoding="utf-8") as handle:
                    handle.write(text)

    def _properties(self, schema: pa.Schema, total: int, largest: int) -> dict[str, str]:
        from galtools import __version__

        given = dict(self.layout.properties)
        values = {"obs_collection": os.path.basename(os.path.abspath(self.path)),
                  "dataproduct_type": given.pop("dataproduct_type", "object"), "hats_nrows": str(total)}
        given.pop("obs_collection", None)
        source_name = self.layout.properties.get("obs_collection")
        for key in ("hats_col_ra", "hats_col_dec"):
            if key in given:
                values[key] = given.pop(key)
        healpix = given.pop("hats_col_healpix", None)
        healpix_order = given.pop("hats_col_healpix_order", None)
        if healpix and healpix in schema.names:
            values["hats_col_healpix"] = healpix
            if healpix_order:
                values["hats_col_healpix_order"] = healpix_order
        default = given.pop("hats_cols_default", None)
        if default:   # the input's defaults that are still here, and every column this tool added
            inputs = set(_input_columns(self.layout))
            kept = [c for c in default.replace(",", " ").split() if c in schema.names]
            values["hats_cols_default"] = " ".join(kept + [c for c in schema.names if c not in inputs])
        for key in ("hats_max_rows", "hats_max_bytes", "hats_estsize", "hats_builder", "hats_creation_date",
                    "prov_progenitor"):
            given.pop(key, None)
        values.update(given)
        size = sum(os.path.getsize(p) for p in _partition_paths(self.dataset))
        values.update({"hats_max_rows": str(largest), "hats_estsize": str(size // 1024),
                       "hats_builder": f"galtools v{__version__} ({self.tool})",
                       "hats_creation_date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%MUTC")})
        if source_name:
            values["prov_progenitor"] = source_name
        return values


def check_finished(folder: str) -> None:
    """Refuse to read a catalogue folder that a galtools build has not finished (partitions still to come): it
    has the build's record and no properties yet."""
    record = _read_record(folder)
    if record is None or _properties_of(folder) is not None:
        return
    written = len(_partition_paths(os.path.join(folder, DATASET)))
    raise BadData(f"{folder}: an unfinished HATS catalogue ({written} of {record.get('partitions', '?')} partition "
                  f"files written by {record.get('tool', '?')})", "wait for the tasks writing it, or rerun those "
                  "that failed; the last one writes its properties")


def _is_skymap(name: str) -> bool:
    return name.startswith("skymap") and name.endswith(".fits")


def _file_rows(path: str) -> int:
    import pyarrow.parquet as pq

    return pq.read_metadata(path).num_rows


def _input_columns(layout: Layout) -> list[str]:
    import pyarrow.parquet as pq

    return pq.read_schema(os.path.join(layout.root, DATASET, layout.files[0][0])).names


def _partition_paths(dataset: str) -> list[str]:
    """The partition files under a catalogue's dataset/ (not its _metadata files, nor temporary files)."""
    from galtools.io.partitioned import partition_files

    if not os.path.isdir(dataset):
        return []
    return [path for path, values in partition_files(dataset) if "Npix" in values]
