"""gal-knn: the most (or least) similar galaxies to a query, for a list of queries or for every row; FAISS indexes.

``gal-knn EMB --query ID`` is short for ``gal-knn search EMB --query ID``; ``gal-knn index EMB`` builds an index.
The work is done by galtools.search (queries, neighbors, show, montage, precision); this module only reads the
command line, opens and closes.
"""
from __future__ import annotations

import os

import click

from galtools.cli.common import (device_option, galtools_group, input_argument, log, model_output_options,
                                 output_options, prepare_output, progress, shard_option, subcommand)

EXAMPLE = """gal-knn emb.parquet --query 1234 -k 8
gal-embed cutouts.fits --model encoder.onnx | gal-knn - --query 1234
gal-knn emb.parquet --query 1234 --montage similar.png --images cutouts.fits --label morphology
gal-knn emb.parquet --all -k 10 --shard 0/16 -o 'neighbors-{shard}.parquet'
gal-knn emb.parquet --all --precision-at 10 --label morph_class
gal-knn index emb.parquet --kind hnsw --recall && gal-knn emb.parquet --index emb.faiss --query 1234"""

SEARCH_EXAMPLE = """gal-knn search emb.parquet --query 1234 --query 5678 -k 5 -o nbrs.parquet
gal-knn emb.parquet --queries ids.csv --least -k 3
gal-knn emb.parquet --query-image new.fits --model encoder.onnx
gal-knn emb.parquet --all --query-columns ra,dec,morph_class -o nbrs.parquet
gal-knn emb.parquet --all --precision-at 10 --label morph_class > precision.json
gal-knn emb.parquet --all --shard 3/16 -o 'nbrs-{shard}.parquet'"""

INDEX_EXAMPLE = """gal-knn index emb.parquet --kind ivf --recall          # writes emb.faiss + emb.faiss.json
gal-knn index emb.parquet --kind hnsw --m 32 --ef 128 -o hnsw.faiss --recall
gal-knn index emb.parquet --kind ivfpq --recall        # + emb.faiss.refine.npy (float16 vectors)"""

TRAIN_EXAMPLE = """gal-knn index-train emb.parquet --kind ivfsq8 -o trained.faiss
sbatch --array=0-15 --wrap 'gal-knn index-add emb.parquet --trained trained.faiss'
gal-knn index-merge trained.faiss trained.part-*.faiss -o emb.faiss"""

def scale_options(func):
    """The options of the compressed kinds (ivfpq, ivfsq8)."""
    func = click.option("--train-size", type=click.IntRange(1), default=None,
                        help="ivfpq/ivfsq8: rows sampled for training (default max(40 nlist, 10240)).")(func)
    func = click.option("--refine", type=click.IntRange(0), default=None, metavar="K",
                        help="ivfpq/ivfsq8: candidates re-scored from the float16 vectors by default (ivfpq 1000, "
                             "ivfsq8 50).")(func)
    return click.option("--pq", "pq_m", type=click.IntRange(1), default=None,
                        help="ivfpq: bytes of code per vector (default D/4).")(func)


TERMINAL_ROWS = 1000       # neighbors shown on a terminal before pointing at -o
MONTAGE_ROWS = 50          # query rows drawn in one montage


@galtools_group("gal-knn", example=EXAMPLE, default="search")
def cli():
    """Similarity search over an embedding table (cosine similarity of gal-embed's vectors).

    \b
    gal-knn EMB --query ID ...     the neighbors of objects (same as 'gal-knn search EMB ...')
    gal-knn index EMB --kind K     build a FAISS index (flat, ivf, hnsw, ivfpq, ivfsq8) for faster repeated search
    gal-knn index-train/-add/-merge  build a compressed index in stages: one add per Slurm array task

    Exact search holds the table in memory (N x D x 4 bytes: 512 MB per million 128-d vectors) and is
    blocked so the similarity matrix never is. Ties are ordered by object_id.
    """


# ------------------------------------------------------------------------------------------------------- search

@subcommand(cli, "search", example=SEARCH_EXAMPLE)
@input_argument("emb")
@click.option("--query", "query_ids", multiple=True, metavar="ID", help="object_id of a query (repeatable).")
@click.option("--queries", "queries_file", metavar="FILE",
              help="A table, a CSV with an object_id column, or a list of ids one a line ('-': stdin).")
@click.option("--query-image", metavar="CUTOUTS", help="Embed these cutouts with --model and use them as queries.")
@click.option("--model", metavar="ONNX", help="encoder.onnx for --query-image (the model that made EMB).")
@click.option("--all", "all_rows", is_flag=True, help="Neighbors of every row (a catalogue-wide neighbor table).")
@click.option("-k", "k", type=click.IntRange(1), default=10, show_default=True, help="Neighbors per query.")
@click.option("--least", is_flag=True, help="Return the least similar objects instead (rank 1 = least similar).")
@click.option("--include-self", is_flag=True, help="Keep the query's own row among its neighbors.")
@click.option("--query-columns", metavar="COL,COL", default="",
              help="Also write these columns of each query (from EMB) as query_COL, e.g. ra,dec,morph_class.")
@click.option("--precision-at", "precision_k", type=click.IntRange(1), default=None, metavar="K",
              help="Print precision@K of --label as JSON on stdout: the share of each query's K nearest neighbors "
                   "with its label, per class and overall (-k defaults to K; the table is written only with -o FILE).")
@click.option("--index", "index_path", metavar="FAISS", help="Search this gal-knn index instead of exact search "
              "(refused, exit 65, if it was built from other embeddings).")
@click.option("--nprobe", type=click.IntRange(1), default=None, help="IVF: lists to visit (more = better recall).")
@click.option("--ef", type=click.IntRange(1), default=None,
              help="HNSW: search breadth efSearch (more = better recall).")
@click.option("--refine", type=click.IntRange(0), default=None, metavar="K",
              help="ivfpq/ivfsq8: candidates re-scored from the index's float16 vectors (0: none; default: the "
                   "index's).")
@shard_option
@device_option
@click.option("--montage", metavar="PNG", help="Also draw each query and its neighbors as colour composites.")
@click.option("--images", metavar="CUTOUTS", help="Cutout table holding the images for --montage.")
@click.option("--label", metavar="COLUMN", help="Column printed under each picture of the montage; the class "
              "column of --precision-at.")
@output_options()
def search(emb, query_ids, queries_file, query_image, model, all_rows, k, least, include_self, query_columns,
           precision_k, index_path, nprobe, ef, refine, shard, device, montage, images, label, output, fmt, overwrite):
    """The k most similar objects to each query in EMB (an embedding table, or '-').

    Queries are object_ids in EMB (--query, --queries; the query itself is left out), new cutouts embedded on
    the fly (--query-image with --model), or every row (--all, which --shard or a Slurm array splits). Output:
    query_id, any query_COL of --query-columns, rank, neighbor_id, similarity and the neighbor's columns prefixed
    neighbor_; a readable table on a terminal (whole column names; those that do not fit are named below it).
    """
    import json

    from galtools.io import read_ids
    from galtools.search import neighbors as nb
    from galtools.search import queries as q

    query_columns = [c.strip() for c in query_columns.split(",") if c.strip()]
    k = _check_search_options(query_ids, queries_file, query_image, model, all_rows, k, precision_k, query_columns,
                              index_path, nprobe, ef, montage, images, label, output)
    if refine is not None and not index_path:
        from galtools.errors import UsageProblem

        raise UsageProblem("--refine tunes a compressed index", "pass --index FILE, or drop it")
    measure_only = bool(precision_k) and output == "-"   # stdout carries the JSON: no table
    writing = prepare_output(output, fmt, overwrite, shard, pictures=[montage], slurm=all_rows, terminal="dash",
                             table=not measure_only)

    # With an index the table's vectors are checked and checksummed but not kept: the index holds them. A
    # compressed index leaves the table on disk and reads it by row.
    if index_path:
        base, index = q.load_for_index(emb, index_path)
        if refine is not None:
            index.refine = refine
    else:
        base, index = q.load_base(emb), None
    query_columns = nb.check_query_columns(base, query_columns)
    if query_image:
        plan = q.embed_queries(base, query_image, model, device, writing.shard, keep_images=MONTAGE_ROWS)
    else:
        wanted = list(query_ids) + (read_ids(queries_file, what=f"--queries {queries_file}") if queries_file else [])
        plan = q.plan_queries(base, index, wanted, all_rows, writing.shard, include_self)
    blocks = q.search_blocks(base, plan, k, least, index, nprobe, ef, device,
                             track=lambda items, total: progress(items, total=total, description="searching"))
    kept, observers = nb.Kept(MONTAGE_ROWS if montage else 0), []
    observers.append(kept)
    if precision_k:
        from galtools.search.precision import PrecisionAtK

        observers.append(PrecisionAtK(base, label, precision_k))
    settings = {"k": k, "least": least, "exact": index is None, "index": index_path, "nprobe": nprobe, "ef": ef,
                "shard": str(writing.shard) if writing.shard else None}
    _write(writing, blocks, base, query_columns, observers, settings, measure_only)
    if precision_k:
        click.echo(json.dumps(observers[-1].result(), indent=1))
    if montage:
        from galtools.search.montage import draw_neighbor_montage

        draw_neighbor_montage(kept.queries, base, plan, images, label, montage, least)


def _check_search_options(query_ids, queries_file, query_image, model, all_rows, k, precision_k, query_columns,
                          index_path, nprobe, ef, montage, images, label, output):
    """Usage errors (exit 2) before any work; returns k (--precision-at's K when -k was not given)."""
    from galtools.errors import UsageProblem

    if sum([bool(query_ids or queries_file), bool(query_image), all_rows]) != 1:
        raise UsageProblem("give exactly one kind of query", "--query/--queries ID, --query-image CUTOUTS or --all")
    if query_image and not model:
        raise UsageProblem("--query-image needs --model", "the encoder.onnx that made EMB")
    if montage and not images:
        raise UsageProblem("--montage needs --images", "the cutout table holding the pictures")
    if images and not montage:
        raise UsageProblem("--images is for --montage", "add --montage OUT.png, or drop it")
    if label and not (montage or precision_k):
        raise UsageProblem("--label is for --montage or --precision-at", "add one of them, or drop --label")
    if (nprobe or ef) and not index_path:
        raise UsageProblem("--nprobe and --ef tune a FAISS index", "pass --index FILE, or drop them")
    if query_image and (query_columns or precision_k):
        raise UsageProblem("--query-columns and --precision-at need queries from EMB", "use --all, --query or --queries")
    if precision_k:
        if not label:
            raise UsageProblem("--precision-at needs --label", "name the class column, e.g. --label morph_class")
        if click.get_current_context().get_parameter_source("output") != click.core.ParameterSource.DEFAULT \
                and output == "-":
            raise UsageProblem("--precision-at prints JSON on stdout", "write the neighbor table with -o FILE")
        if click.get_current_context().get_parameter_source("k") == click.core.ParameterSource.DEFAULT:
            return precision_k
        if k < precision_k:
            raise UsageProblem(f"-k {k} is below --precision-at {precision_k}", "raise -k, or drop it")
    return k


def _write(writing, blocks, base, query_columns, observers, settings, measure_only):
    """Write the neighbor table (or show it on a terminal, or only measure: no table)."""
    import json

    from galtools.search import neighbors as nb
    from galtools.search.show import print_neighbors

    if measure_only:
        nb.write_neighbors(blocks, base, nb.FirstRows(0), query_columns, observers)
        return
    if not writing.table:
        shown = nb.FirstRows(TERMINAL_ROWS)
        nb.write_neighbors(blocks, base, shown, query_columns, observers)
        print_neighbors(shown.table(), shown.rows)
        return
    metadata = dict(base.metadata)
    metadata["galtools.knn"] = json.dumps(settings, separators=(",", ":"))
    with writing.open(metadata) as out:
        written = nb.write_neighbors(blocks, base, out, query_columns, observers)
    log.debug(f"wrote {written} neighbors to {writing.name}")


# -------------------------------------------------------------------------------------------------------- index

@subcommand(cli, "index", example=INDEX_EXAMPLE)
@input_argument("emb")
@click.option("--kind", type=click.Choice(["flat", "ivf", "hnsw", "ivfpq", "ivfsq8"]), default="hnsw",
              show_default=True,
              help="flat: exact, N x D x 4 bytes; ivf: inverted lists, fast to build; hnsw: graph, fastest queries, "
                   "about N x (4D + 8M) bytes; ivfpq: product-quantised codes, D/4 + 8 bytes, re-scored from float16 "
                   "vectors in FILE.refine.npy (2D bytes, on disk); ivfsq8: 8-bit codes, D + 8 bytes.")
@model_output_options("FAISS", required=False,
                      help="Index file (default: EMB with .faiss instead of its extension); the sidecar is FAISS.json.")
@click.option("--nlist", type=click.IntRange(1), default=None, help="IVF: number of lists (default ~4 sqrt(N)).")
@click.option("--nprobe", type=click.IntRange(1), default=None,
              help="IVF: lists visited by default (default max(8, nlist/16); ivfpq, ivfsq8: max(8, nlist/64)).")
@click.option("--m", "hnsw_m", type=click.IntRange(2), default=32, show_default=True, help="HNSW: links per node.")
@click.option("--ef-construction", type=click.IntRange(1), default=200, show_default=True, help="HNSW: build breadth.")
@click.option("--ef", type=click.IntRange(1), default=128, show_default=True, help="HNSW: default search breadth.")
@scale_options
@click.option("--recall", is_flag=True, help="Measure recall@k against exact search on a sample and print it.")
@click.option("-k", "k", type=click.IntRange(1), default=10, show_default=True, help="k of the --recall measure.")
@click.option("--sample", type=click.IntRange(1), default=1000, show_default=True, help="Queries sampled for --recall.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of IVF training and the --recall sample.")
def index_command(emb, kind, output, overwrite, nlist, nprobe, hnsw_m, ef_construction, ef, pq_m, refine, train_size,
                  recall, k, sample, seed):
    """Build a FAISS index of EMB for fast repeated search (search it with gal-knn EMB --index FILE).

    The sidecar FILE.json records the embeddings' checksum, the model's sha256, the metric (cosine) and the
    parameters; searching a table that differs from the one indexed is refused (exit 65).
    """
    from galtools.io import check_output_path
    from galtools.search import FaissIndex, recall_at_k
    from galtools.search.faiss_index import default_index_path, params_text
    from galtools.search.queries import load_base

    output = output or default_index_path(emb)
    if kind in ("ivfpq", "ivfsq8"):
        _build_compressed(emb, kind, output, overwrite, dict(nlist=nlist, nprobe=nprobe, pq_m=pq_m, refine=refine,
                                                              train_size=train_size, seed=seed), recall, k, sample)
        return
    for path in (output, f"{output}.json"):   # the index and its sidecar
        check_output_path(path, overwrite)
    base = load_base(emb, checksum=True)
    index = FaissIndex.build(base.vectors, kind, normalized=True, nlist=nlist, nprobe=nprobe, hnsw_m=hnsw_m,
                             ef_construction=ef_construction, ef_search=ef, seed=seed)
    extra = {}
    if recall:
        measured = recall_at_k(index, base.vectors, k, sample=sample, seed=seed, normalized=True,
                               tie_rank=base.tie_rank)
        extra["recall"] = {"k": k, "value": measured, "sample": min(sample, base.count), "seed": seed}
        click.echo(f"recall@{k} = {measured:.4f} over {min(sample, base.count)} sampled queries "
                   f"({kind}{params_text(index)})")
    index.save(output, embeddings_checksum=base.checksum, model_sha256=base.model_sha256,
               source=None if emb == "-" else os.path.abspath(emb), extra=extra, overwrite=overwrite)
    log.info(f"wrote {kind} index of {base.count} embeddings to {output} (+ {output}.json)")


def _build_compressed(emb, kind, output, overwrite, train, recall, k, sample):
    from galtools.io import open_table
    from galtools.search.scale import build_scale, open_scale

    with open_table(emb) as table:
        build_scale(table, kind, output, overwrite=overwrite, source=os.path.abspath(emb), **train)
        if recall:
            _print_recall(table, open_scale(output), k, sample, train["seed"])
    log.info(f"wrote {kind} index to {output} (+ {output}.json, {output}.refine.npy)")


def _print_recall(table, index, k, sample, seed):
    from galtools.search.scale import scale_recall

    measured = scale_recall(table, index, k, sample=sample, seed=seed)
    params = index.params
    click.echo(f"recall@{k} = {measured:.4f} over {min(sample, index.meta['count'])} sampled queries "
               f"({index.kind}, {params['factory']}, nprobe={params['nprobe']}, refine={params['refine']})")


# --------------------------------------------------------------------------------- compressed index in stages

@subcommand(cli, "index-train", example=TRAIN_EXAMPLE)
@input_argument("emb")
@click.option("--kind", type=click.Choice(["ivfpq", "ivfsq8"]), default="ivfsq8", show_default=True,
              help="ivfsq8: 8-bit codes, D + 8 bytes a vector; ivfpq: product-quantised codes, D/4 + 8 bytes, with "
                   "lower recall on dense embeddings (see docs/search.md). Both re-score from float16 vectors.")
@model_output_options("TRAINED", required=True, help="The trained, empty index (+ TRAINED.json and "
                      "TRAINED.refine.npy, which the index-add tasks fill by row).")
@click.option("--nlist", type=click.IntRange(1), default=None, help="Number of lists (default ~4 sqrt(N)).")
@click.option("--nprobe", type=click.IntRange(1), default=None, help="Lists visited by default (default max(8, nlist/64)).")
@scale_options
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the training sample and k-means.")
def index_train(emb, kind, output, overwrite, nlist, nprobe, pq_m, refine, train_size, seed):
    """Train a compressed index of EMB on a sample of its rows: the first stage of a sharded build.

    Then one 'gal-knn index-add EMB --trained TRAINED --shard I/N' per task (a Slurm array gives --shard), then
    'gal-knn index-merge TRAINED PARTS... -o INDEX'. The result equals 'gal-knn index EMB --kind KIND'.
    """
    from galtools.io import open_table
    from galtools.search.scale import train_scale

    with open_table(emb) as table:
        trained = train_scale(table, kind, nlist=nlist, nprobe=nprobe, pq_m=pq_m, refine=refine,
                              train_size=train_size, seed=seed)
        trained.save_trained(output, overwrite=overwrite)
    log.info(f"trained {trained.meta['params']['factory']} on {trained.meta['params']['train_size']} rows: {output}")


@subcommand(cli, "index-add", example=TRAIN_EXAMPLE)
@input_argument("emb")
@click.option("--trained", "trained_path", required=True, metavar="TRAINED", help="The output of gal-knn index-train.")
@shard_option
@click.option("--overwrite", is_flag=True, help="Redo a part that is complete already (else it is kept).")
def index_add(emb, trained_path, shard, overwrite):
    """Add one shard of EMB's rows to the trained index: writes TRAINED.part-I-of-N.faiss (+ .json).

    A part is written whole or not at all; a complete part is kept when the task runs again (after a crash or a
    requeue), so rerunning the whole array redoes only what is missing.
    """
    from galtools.cli.common import resolve_shard
    from galtools.errors import UsageProblem
    from galtools.io import open_table
    from galtools.search.scale import add_part

    shard = resolve_shard(shard)
    if shard is None:
        raise UsageProblem("index-add needs --shard I/N (or a Slurm array task)", "e.g. --shard 0/1 for all rows")
    with open_table(emb) as table:
        out = add_part(table, trained_path, shard, overwrite=overwrite)
    log.info(f"wrote {out}")


@subcommand(cli, "index-merge", example=TRAIN_EXAMPLE)
@click.argument("trained_path", metavar="TRAINED")
@click.argument("parts", nargs=-1, required=True, metavar="PARTS...")
@model_output_options("FAISS", required=True, help="The merged index (its lists in FAISS.ivfdata, searched from disk).")
def index_merge(trained_path, parts, output, overwrite):
    """Merge the parts of a sharded build into one index whose lists stay on disk (FAISS.ivfdata).

    Every shard 0..N-1 must be given once; a missing, repeated or foreign part (from another index-train) is
    refused (exit 65) and named. Search it with gal-knn EMB --index FAISS.
    """
    from galtools.search.scale import merge_parts

    meta = merge_parts(trained_path, list(parts), output, overwrite=overwrite)
    log.info(f"merged {meta['parts']} parts ({meta['count']} rows) into {output}")


main = cli

if __name__ == "__main__":
    main()
