"""gal-knn: the most (or least) similar galaxies to a query, for a list of queries or for every row; FAISS indexes.

``gal-knn EMB --query ID`` is short for ``gal-knn search EMB --query ID``; ``gal-knn index EMB`` builds an index.
"""
from __future__ import annotations

import os
import sys

import click

from galtools.cli.common import (device_option, galtools_group, input_argument, log, output_options, progress,
                                 shard_option, subcommand)

EXAMPLE = """gal-knn emb.parquet --query 1234 -k 8
gal-embed cutouts.fits --model encoder.onnx | gal-knn - --query 1234
gal-knn emb.parquet --query 1234 --montage similar.png --images cutouts.fits --label morphology
gal-knn emb.parquet --all -k 10 --shard 0/16 -o 'neighbours-{shard}.parquet'
gal-knn index emb.parquet --kind hnsw --recall && gal-knn emb.parquet --index emb.faiss --query 1234"""

SEARCH_EXAMPLE = """gal-knn search emb.parquet --query 1234 --query 5678 -k 5 -o nbrs.parquet
gal-knn emb.parquet --queries ids.csv --least -k 3
gal-knn emb.parquet --query-image new.fits --model encoder.onnx
gal-knn emb.parquet --all --shard 3/16 -o 'nbrs-{shard}.parquet'"""

INDEX_EXAMPLE = """gal-knn index emb.parquet --kind ivf --recall          # writes emb.faiss + emb.faiss.json
gal-knn index emb.parquet --kind hnsw --m 32 --ef 128 -o hnsw.faiss --recall"""

TERMINAL_ROWS = 1000       # neighbours shown on a terminal before pointing at -o
MONTAGE_ROWS = 50          # query rows drawn in one montage
QUERY_BLOCK = 2048         # queries searched (and written) at a time with --all


@galtools_group("gal-knn", example=EXAMPLE)
def cli():
    """Similarity search over an embedding table (cosine similarity of gal-embed's vectors).

    \b
    gal-knn EMB --query ID ...     the neighbours of objects (same as 'gal-knn search EMB ...')
    gal-knn index EMB --kind K     build a FAISS index (flat, ivf, hnsw) for faster repeated search

    Exact search holds the table in memory (N x D x 4 bytes: 512 MB per million 128-d vectors) and is
    blocked so the similarity matrix never is. Ties are ordered by object_id.
    """


# ------------------------------------------------------------------------------------------------------- search

@subcommand(cli, "search", example=SEARCH_EXAMPLE)
@input_argument("emb")
@click.option("--query", "query_ids", multiple=True, metavar="ID", help="object_id of a query (repeatable).")
@click.option("--queries", "queries_file", metavar="FILE", help="A table or CSV with an object_id column of queries.")
@click.option("--query-image", metavar="CUTOUTS", help="Embed these cutouts with --model and use them as queries.")
@click.option("--model", metavar="ONNX", help="encoder.onnx for --query-image (the model that made EMB).")
@click.option("--all", "all_rows", is_flag=True, help="Neighbours of every row (a catalogue-wide neighbour table).")
@click.option("-k", "k", type=click.IntRange(1), default=10, show_default=True, help="Neighbours per query.")
@click.option("--least", is_flag=True, help="Return the least similar objects instead (rank 1 = least similar).")
@click.option("--include-self", is_flag=True, help="Keep the query's own row among its neighbours.")
@click.option("--index", "index_path", metavar="FAISS", help="Search this gal-knn index instead of exact search "
              "(refused, exit 65, if it was built from other embeddings).")
@click.option("--nprobe", type=click.IntRange(1), default=None, help="IVF: lists to visit (more = better recall).")
@click.option("--ef", type=click.IntRange(1), default=None,
              help="HNSW: search breadth efSearch (more = better recall).")
@shard_option
@device_option
@click.option("--montage", metavar="PNG", help="Also draw each query and its neighbours as colour composites.")
@click.option("--images", metavar="CUTOUTS", help="Cutout table holding the images for --montage.")
@click.option("--label", metavar="COLUMN", help="Column printed under each picture of the montage.")
@output_options()
def search(emb, query_ids, queries_file, query_image, model, all_rows, k, least, include_self, index_path, nprobe,
           ef, shard, device, montage, images, label, output, fmt, overwrite):
    """The k most similar objects to each query in EMB (an embedding table, or '-').

    Queries are object_ids in EMB (--query, --queries; the query itself is left out), new cutouts embedded on
    the fly (--query-image with --model), or every row (--all, which --shard or a Slurm array splits). Output:
    query_id, rank, neighbor_id, similarity and the neighbour's columns prefixed neighbor_; a readable table on
    a terminal.
    """
    from galtools.errors import UsageProblem

    sources = sum([bool(query_ids or queries_file), bool(query_image), all_rows])
    if sources != 1:
        raise UsageProblem("give exactly one kind of query", "--query/--queries ID, --query-image CUTOUTS or --all")
    if query_image and not model:
        raise UsageProblem("--query-image needs --model", "the encoder.onnx that made EMB")
    if montage and not images:
        raise UsageProblem("--montage needs --images", "the cutout table holding the pictures")
    if (images or label) and not montage:
        raise UsageProblem("--images and --label are for --montage", "add --montage OUT.png, or drop them")
    if (nprobe or ef) and not index_path:
        raise UsageProblem("--nprobe and --ef tune a FAISS index", "pass --index FILE, or drop them")
    shard_of_queries = _shard_for(shard, all_rows)
    if shard_of_queries is not None and "{shard}" in output:
        output = shard_of_queries.format_path(output)
    to_terminal = output == "-" and sys.stdout.isatty() and fmt is None
    if not to_terminal:
        from galtools.io import check_output_path

        check_output_path(output, overwrite)
    if montage:
        check_output_path(montage, overwrite)

    # With an index the table's vectors are checked and checksummed but not kept: the index holds them.
    base = _load_base(emb, checksum=index_path is not None, keep_vectors=index_path is None)
    index = _load_index(index_path, base) if index_path else None
    plan = _plan_queries(base, index, query_ids, queries_file, query_image, model, all_rows, shard_of_queries,
                         include_self, device)
    blocks = _search_blocks(base, plan, k, least, index, nprobe, ef, device)
    settings = {"k": k, "least": least, "exact": index is None, "index": index_path, "nprobe": nprobe, "ef": ef,
                "shard": str(shard_of_queries) if shard_of_queries else None}
    kept_for_montage = _write_neighbours(blocks, base, output, fmt, overwrite, to_terminal, settings,
                                         keep=MONTAGE_ROWS if montage else 0)
    if montage:
        _draw_montage(kept_for_montage, base, plan, images, label, montage, least)


# ------------------------------------------------------------------------------------------- search: the pieces

def _shard_for(text, all_rows):
    """--shard splits any query list; the Slurm array default applies only to --all (one --query stays whole)."""
    from galtools.cli.common import resolve_shard
    from galtools.io import Shard

    if all_rows:
        return resolve_shard(text)
    return Shard.parse(text) if text else None




def _load_base(emb, checksum, keep_vectors=True):
    from galtools.io import check_unique_ids, open_table
    from galtools.search.table import load_embeddings

    with open_table(emb) as table:
        base = load_embeddings(table, checksum=checksum, keep_vectors=keep_vectors,
                               name="stdin" if emb == "-" else emb)
    check_unique_ids(base.ids, base.name)   # a repeated object would be its own nearest neighbour
    log.debug(f"{base.count} embeddings of dimension {base.dim} ({base.count * base.dim * 4 / 2**20:.0f} MiB)")
    return base


def _vectors_of_rows(base, index, rows):
    """Unit vectors of base rows: from the table in memory, or from the index when only it holds them."""
    import numpy as np

    if base.vectors is not None:
        return np.ascontiguousarray(base.vectors[rows])
    return index.vectors(rows)


def _load_index(index_path, base):
    from galtools.search import FaissIndex

    index = FaissIndex.load(index_path)
    index.check_matches(embeddings_checksum=base.checksum, model_sha256=base.model_sha256, count=base.count,
                        dim=base.dim, name=f"index {index_path}")
    return index


class _QueryPlan:
    """What to search for: either rows of the base (ids or --all) or new vectors (--query-image)."""

    def __init__(self, ids, vectors=None, rows=None, exclude=None, all_rows=None, images=None, bands=None):
        self.ids = ids                # pa.Array of query ids (None with all_rows: they are base.ids[rows])
        self.vectors = vectors        # (Q, D) unit vectors, or None with all_rows
        self.rows = rows              # base rows of the queries (None for new images)
        self.exclude = exclude        # base row to leave out per query, or None
        self.all_rows = all_rows      # range of base rows for --all
        self.images = images          # query images from --query-image, for the montage
        self.bands = bands


def _plan_queries(base, index, query_ids, queries_file, query_image, model, all_rows, shard, include_self, device):
    if all_rows:
        start, stop = shard.bounds(base.count) if shard else (0, base.count)
        return _QueryPlan(ids=None, all_rows=range(start, stop), exclude=not include_self)
    if query_image:
        return _embedded_queries(base, query_image, model, device, shard)
    wanted = list(query_ids) + (_ids_from_file(queries_file) if queries_file else [])
    if shard is not None:
        lo, hi = shard.bounds(len(wanted))
        wanted = wanted[lo:hi]
    rows = base.rows_of(wanted)
    exclude = None if include_self else rows
    return _QueryPlan(ids=base.ids.take(rows), vectors=_vectors_of_rows(base, index, rows), rows=rows,
                      exclude=exclude)


def _ids_from_file(path):
    """object_id values of a galtools table or a CSV file with an object_id column (or a plain list, one a line)."""
    from galtools.errors import BadData, InputMissing
    from galtools.io import open_table

    if path != "-" and not os.path.exists(path):
        raise InputMissing(f"--queries {path}: no such file", "check the path")
    try:
        with open_table(path) as table:
            if "object_id" not in table.schema.names:
                raise BadData(f"--queries {path} has no object_id column (columns: {', '.join(table.schema.names)})",
                              "name the id column object_id")
            return table.read_all(columns=["object_id"]).column("object_id").to_pylist()
    except BadData as exc:
        if "not a FITS, Parquet or Arrow table" not in exc.what:
            raise
    return _ids_from_text(path)


def _ids_from_text(path):
    import csv

    from galtools.errors import BadData

    with open(path, newline="") as handle:
        rows = [row for row in csv.reader(handle) if row and any(cell.strip() for cell in row)]
    if not rows:
        raise BadData(f"--queries {path} is empty", "list one object_id per line, or a CSV with an object_id column")
    header = [cell.strip() for cell in rows[0]]
    if "object_id" in header:
        column = header.index("object_id")
        return [row[column].strip() for row in rows[1:]]
    if len(header) == 1:
        return [row[0].strip() for row in rows]
    raise BadData(f"--queries {path}: CSV without an object_id column (columns: {', '.join(header)})",
                  "name the id column object_id")


def _embedded_queries(base, cutouts, model, device, shard):
    """Embed new cutouts with gal-embed's library and check they are comparable with the table."""
    from galtools.errors import BadData
    from galtools.search import unit_rows

    embedded = _embed_cutouts(cutouts, model, device, shard)
    if base.model_sha256 and embedded.model_sha256 != base.model_sha256:
        raise BadData(f"--model {model} is not the model that made the table (sha256 {embedded.model_sha256[:12]} vs "
                      f"{base.model_sha256[:12]})", "use the encoder.onnx that gal-embed used for EMB")
    if embedded.vectors.shape[1] != base.dim:
        raise BadData(f"--model {model} makes {embedded.vectors.shape[1]}-d embeddings, the table holds {base.dim}-d",
                      "use the encoder.onnx that gal-embed used for EMB")
    vectors = unit_rows(embedded.vectors)
    return _QueryPlan(ids=embedded.ids, vectors=vectors, images=embedded.images, bands=embedded.bands)


class _Embedded:
    def __init__(self, ids, vectors, model_sha256, images, bands):
        self.ids, self.vectors, self.model_sha256, self.images, self.bands = ids, vectors, model_sha256, images, bands


class _Collected:
    """An Output look-alike for gal-embed's embed_table that keeps ids and vectors in memory (queries are few)."""

    def __init__(self):
        self.ids, self.vectors = [], []

    def expect_schema(self, schema):
        """Nothing to check: the vectors stay in memory, whatever the schema."""

    def write(self, batch):
        from galtools.io import vectors_of

        self.ids.append(batch.column("object_id"))
        self.vectors.append(vectors_of(batch))


class _KeepFirstImages:
    """A table passed through to embed_table unchanged, keeping the first images it reads for the montage
    (so --query-image - works from a pipe, which cannot be read twice)."""

    def __init__(self, table, keep: int):
        self._table, self._keep, self.kept = table, keep, []

    def __getattr__(self, name):
        return getattr(self._table, name)

    def iter_batches(self, *args, **kwargs):
        from galtools.io import images_of

        for batch in self._table.iter_batches(*args, **kwargs):
            room = self._keep - sum(len(k) for k in self.kept)
            if room > 0:
                self.kept.append(images_of(batch.slice(0, room)).copy())
            yield batch


def _embed_cutouts(cutouts, model, device, shard):
    """Embed the query cutouts exactly as gal-embed does (bands, centre crop, the model's preprocessing)."""
    import numpy as np
    import pyarrow as pa

    from galtools.embed import EmbedSettings, embed_table, load_encoder
    from galtools.io import open_table

    encoder = load_encoder(model, EmbedSettings(device=device))
    for note in encoder.notes:
        log.info(note)
    collected = _Collected()
    with open_table(cutouts, shard=shard) as table:
        if "object_id" not in table.schema.names:
            from galtools.errors import BadData

            raise BadData(f"--query-image {cutouts} has no object_id column",
                          "give a cutout table from gal-pack or gal-sim")
        teed = _KeepFirstImages(table, MONTAGE_ROWS)
        embed_table(teed, encoder, collected)
        bands = table.bands
    if not collected.ids:
        from galtools.errors import BadData

        raise BadData(f"--query-image {cutouts} has no rows", "check the input and any --shard")
    ids = pa.concat_arrays([column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
                            for column in collected.ids])
    pictures = np.concatenate(teed.kept) if teed.kept else None
    return _Embedded(ids, np.concatenate(collected.vectors), encoder.info.sha256, pictures, bands)


def _search_blocks(base, plan, k, least, index, nprobe, ef, device):
    """Yield (query ids, TopK) per block of queries."""
    from galtools.search import all_rows_topk, exact_topk

    largest = not least
    if plan.all_rows is not None:
        rows = plan.all_rows
        total_blocks = -(-len(rows) // QUERY_BLOCK)
        if index is None:
            searched = all_rows_topk(base.vectors, k, rows=rows, tie_rank=base.tie_rank, largest=largest,
                                     normalized=True, query_block=QUERY_BLOCK, device=device,
                                     exclude_self=plan.exclude, check_base=False)  # checked on loading
        else:
            searched = _index_blocks(base, rows, index, k, largest, plan.exclude, nprobe, ef)
        for block_rows, topk in progress(searched, total=total_blocks, description="searching"):
            yield base.ids.slice(block_rows.start, len(block_rows)), topk
        return
    if index is not None:
        topk = index.search(plan.vectors, k, exclude=plan.exclude, largest=largest, normalized=True, nprobe=nprobe,
                            ef=ef, tie_rank=base.tie_rank)
    else:
        topk = exact_topk(plan.vectors, base.vectors, k, tie_rank=base.tie_rank, exclude=plan.exclude,
                          largest=largest, normalized=True, device=device, check_base=False)  # checked on loading
    yield plan.ids, topk


def _index_blocks(base, rows, index, k, largest, exclude_self, nprobe, ef):
    import numpy as np

    for begin in range(rows.start, rows.stop, QUERY_BLOCK):
        block_rows = range(begin, min(rows.stop, begin + QUERY_BLOCK))
        row_numbers = np.arange(block_rows.start, block_rows.stop, dtype=np.int64)
        queries = _vectors_of_rows(base, index, row_numbers)
        yield block_rows, index.search(queries, k, exclude=row_numbers if exclude_self else None, largest=largest,
                                       normalized=True, nprobe=nprobe, ef=ef, tie_rank=base.tie_rank)


def _write_neighbours(blocks, base, output, fmt, overwrite, to_terminal, settings, keep):
    """Write (or show) the neighbour table; return the first ``keep`` queries' (id, rows, scores) for a montage."""
    import json

    from galtools.search.table import neighbour_batch, neighbour_schema

    kept = []

    def remember(query_ids, topk):
        for i in range(min(len(query_ids), keep - len(kept))):
            kept.append((query_ids[i].as_py(), topk.indices[i], topk.scores[i]))

    if to_terminal:
        shown = []
        for query_ids, topk in blocks:
            remember(query_ids, topk)
            if sum(b.num_rows for b in shown) < TERMINAL_ROWS:
                shown.append(neighbour_batch(query_ids, topk, base))
        _print_table(shown, base)
        return kept
    from galtools.io import open_output

    metadata = dict(base.metadata)
    metadata["galtools.knn"] = json.dumps(settings, separators=(",", ":"))
    written = 0
    with open_output(output, overwrite=overwrite, fmt=fmt, metadata=metadata, tool="gal-knn") as out:
        out.expect_schema(neighbour_schema(base))  # an empty shard still writes a (empty) table
        for query_ids, topk in blocks:
            remember(query_ids, topk)
            batch = neighbour_batch(query_ids, topk, base)
            out.write(batch)
            written += batch.num_rows
    log.debug(f"wrote {written} neighbours to {'stdout' if output == '-' else output}")
    return kept


def _print_table(batches, base):
    """A readable table on the terminal: the id columns, similarity and the neighbour's scalar columns."""
    import pyarrow as pa
    from rich.console import Console
    from rich.table import Table as RichTable

    table = pa.Table.from_batches(batches) if batches else None
    console = Console(file=sys.stdout)
    if table is None or table.num_rows == 0:
        console.print("no neighbours")
        return
    shown_columns = [c for c in table.column_names
                     if not (pa.types.is_nested(table.schema.field(c).type)
                             or isinstance(table.schema.field(c).type, pa.ExtensionType))][:10]
    rich_table = RichTable(show_header=True, header_style="bold", box=None)
    for column in shown_columns:
        rich_table.add_column(column, justify="right" if column in ("rank", "similarity") else "left")
    rows = table.select(shown_columns).slice(0, TERMINAL_ROWS).to_pylist()
    previous = None
    for row in rows:
        if previous is not None and row["query_id"] != previous:
            rich_table.add_section()
        previous = row["query_id"]
        rich_table.add_row(*[_format_cell(row[c]) for c in shown_columns])
    console.print(rich_table)
    if table.num_rows > TERMINAL_ROWS:
        console.print(f"... first {TERMINAL_ROWS} neighbours shown; write them all with -o FILE", style="dim")


def _format_cell(value):
    if isinstance(value, float):
        return f"{value:.4f}"
    return "" if value is None else str(value)


# ----------------------------------------------------------------------------------------------------- montage

def _draw_montage(kept, base, plan, images_source, label, path, least):
    """Query then neighbours, one row per query, similarity and --label under each (cf. Stein et al. Fig. 1)."""
    import numpy as np

    from galtools.errors import BadData, UsageProblem
    from galtools.viz import rgb_composite, save_montage

    if not kept:
        log.info("no queries: no montage")
        return
    wanted = set()
    for query_id, rows, _ in kept:
        if plan.images is None:  # with --query-image the query pictures come with the queries
            wanted.add(query_id)
        wanted.update(base.ids.take(rows[rows >= 0]).to_pylist())
    pictures, labels_from_cutouts, bands = _pictures_of(images_source, wanted, label)
    if plan.images is not None:
        pictures.update({query_id: image for (query_id, _, _), image in zip(kept, plan.images)})
        bands = bands or plan.bands
    missing = [i for i in wanted if i not in pictures]
    if missing:
        raise BadData(f"{len(missing)} objects are not in --images {images_source} (e.g. object_id {missing[0]!r})",
                      "give the cutout table that EMB was embedded from")
    if label and label not in base.carried.column_names and labels_from_cutouts is None:
        raise UsageProblem(f"--label {label}: no such column in EMB or --images",
                           f"EMB columns: {', '.join(base.carried.column_names)}")

    def label_of(object_id, row=None):
        if not label:
            return ""
        if row is not None and label in base.carried.column_names:
            return _format_cell(base.carried.column(label)[int(row)].as_py())
        if labels_from_cutouts is not None:
            return _format_cell(labels_from_cutouts.get(object_id))
        return ""

    query_rows = dict(zip(plan.ids.to_pylist(), plan.rows)) if plan.rows is not None else {}
    grid, captions = [], []
    for query_id, rows, scores in kept:
        if plan.all_rows is not None:
            query_row = base.rows_of([query_id])[0]
        else:
            query_row = query_rows.get(query_id)
        order_ids = [query_id] + base.ids.take(rows[rows >= 0]).to_pylist()
        stack = np.stack([pictures[i] for i in order_ids])
        grid.append(list(rgb_composite(stack, bands)))
        captions.append([f"{query_id}\nquery\n{label_of(query_id, query_row)}"]
                        + [f"{nid}\n{score:.3f}\n{label_of(nid, row)}"
                           for nid, score, row in zip(order_ids[1:], scores[rows >= 0], rows[rows >= 0])])
    title = "least similar" if least else "most similar"
    folder, name = os.path.split(os.path.abspath(path))
    temporary = os.path.join(folder, f".{name}.{os.getpid()}.tmp.png")
    try:  # atomic, like the tables: a failed drawing leaves no half-written picture
        save_montage(grid, temporary, captions=captions, title=f"query, then its {title} (cosine similarity)")
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    log.info(f"wrote montage of {len(grid)} queries to {path}")


def _pictures_of(source, wanted, label):
    """Images (and --label values) of the wanted object_ids, read from a cutout table in bounded batches."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from galtools.io import images_of, open_table

    pictures, labels = {}, None
    with open_table(source) as table:
        table.require_images()
        columns = ["object_id", "image"] + ([label] if label and label in table.schema.names else [])
        if label and label in table.schema.names:
            labels = {}
        id_type = table.schema.field("object_id").type
        if pa.types.is_integer(id_type):
            wanted = [w for w in wanted if isinstance(w, int)]
        value_set = pa.array(sorted(wanted, key=str)).cast(id_type)
        for batch in table.iter_batches(columns=columns):
            chosen = pc.is_in(batch.column("object_id"), value_set=value_set)
            if not pc.any(chosen).as_py():
                continue
            picked = batch.filter(chosen)
            for object_id, image in zip(picked.column("object_id").to_pylist(), images_of(picked)):
                pictures.setdefault(object_id, image.copy())
            if labels is not None:
                for object_id, value in zip(picked.column("object_id").to_pylist(), picked.column(label).to_pylist()):
                    labels.setdefault(object_id, value)
        bands = table.bands
    return pictures, labels, bands


# -------------------------------------------------------------------------------------------------------- index

def _default_index_path(emb):
    from galtools.errors import UsageProblem

    if emb == "-" or any(ch in emb for ch in "*?["):
        raise UsageProblem("with EMB from stdin or a glob, name the index", "pass -o FILE.faiss")
    stem = emb.rstrip("/")
    for suffix in (".parquet", ".pq", ".arrow", ".feather", ".arrows", ".fits.gz", ".fits", ".fit"):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    return stem + ".faiss"


@subcommand(cli, "index", example=INDEX_EXAMPLE)
@input_argument("emb")
@click.option("--kind", type=click.Choice(["flat", "ivf", "hnsw"]), default="hnsw", show_default=True,
              help="flat: exact, N x D x 4 bytes; ivf: inverted lists, fast to build; hnsw: graph, fastest queries, "
                   "about N x (4D + 8M) bytes.")
@click.option("-o", "--output", default=None, metavar="FAISS",
              help="Index file (default: EMB with .faiss instead of its extension); the sidecar is FAISS.json.")
@click.option("--overwrite", is_flag=True, help="Replace the index if it exists.")
@click.option("--nlist", type=click.IntRange(1), default=None, help="IVF: number of lists (default ~4 sqrt(N)).")
@click.option("--nprobe", type=click.IntRange(1), default=None,
              help="IVF: lists visited by default (default max(8, nlist/16)).")
@click.option("--m", "hnsw_m", type=click.IntRange(2), default=32, show_default=True, help="HNSW: links per node.")
@click.option("--ef-construction", type=click.IntRange(1), default=200, show_default=True, help="HNSW: build breadth.")
@click.option("--ef", type=click.IntRange(1), default=128, show_default=True, help="HNSW: default search breadth.")
@click.option("--recall", is_flag=True, help="Measure recall@k against exact search on a sample and print it.")
@click.option("-k", "k", type=click.IntRange(1), default=10, show_default=True, help="k of the --recall measure.")
@click.option("--sample", type=click.IntRange(1), default=1000, show_default=True, help="Queries sampled for --recall.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of IVF training and the --recall sample.")
def index_command(emb, kind, output, overwrite, nlist, nprobe, hnsw_m, ef_construction, ef, recall, k, sample, seed):
    """Build a FAISS index of EMB for fast repeated search (search it with gal-knn EMB --index FILE).

    The sidecar FILE.json records the embeddings' checksum, the model's sha256, the metric (cosine) and the
    parameters; searching a table that differs from the one indexed is refused (exit 65).
    """
    from galtools.io import check_output_path
    from galtools.search import FaissIndex, recall_at_k

    output = output or _default_index_path(emb)
    for path in (output, f"{output}.json"):   # the index and its sidecar
        check_output_path(path, overwrite)
    base = _load_base(emb, checksum=True)
    index = FaissIndex.build(base.vectors, kind, normalized=True, nlist=nlist, nprobe=nprobe, hnsw_m=hnsw_m,
                             ef_construction=ef_construction, ef_search=ef, seed=seed)
    extra = {}
    if recall:
        measured = recall_at_k(index, base.vectors, k, sample=sample, seed=seed, normalized=True,
                               tie_rank=base.tie_rank)
        extra["recall"] = {"k": k, "value": measured, "sample": min(sample, base.count), "seed": seed}
        click.echo(f"recall@{k} = {measured:.4f} over {min(sample, base.count)} sampled queries "
                   f"({kind}{_params_text(index)})")
    index.save(output, embeddings_checksum=base.checksum, model_sha256=base.model_sha256,
               source=None if emb == "-" else os.path.abspath(emb), extra=extra, overwrite=overwrite)
    log.info(f"wrote {kind} index of {base.count} embeddings to {output} (+ {output}.json)")




def _params_text(index):
    params = index.params
    if index.kind == "ivf":
        return f", nlist={params['nlist']}, nprobe={params['nprobe']}"
    if index.kind == "hnsw":
        return f", M={params['M']}, ef={params['ef_search']}"
    return ""


def main(args=None) -> None:
    """Entry point: ``gal-knn EMB ...`` without a sub-command name means ``gal-knn search EMB ...``."""
    args = list(sys.argv[1:] if args is None else args)
    if args and args[0] not in cli.commands and args[0] not in ("-h", "--help", "--version"):
        args.insert(0, "search")
    cli.main(args=args)


if __name__ == "__main__":
    main()
