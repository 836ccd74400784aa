"""gal-knn: the most (or least) similar galaxies to a query, for a list of queries or for every row; FAISS indexes.

``gal-knn EMB --query ID`` is short for ``gal-knn search EMB --query ID``; ``gal-knn index EMB`` builds an index
(cli/knn_index, cli/knn_stages). The work is done by galtools.search (queries, neighbors, batch, show, montage,
precision); this module only reads the command line, opens and closes (helpers in cli/knn_search).
"""
from __future__ import annotations

import click

from galtools.cli.common import (device_option, galtools_group, input_argument, output_options, prepare_output,
                                 progress, shard_option, subcommand)
from galtools.cli.knn_index import add_commands
from galtools.cli.search_options import index_search_options, knn_montage_options, query_options

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


add_commands(cli)


@subcommand(cli, "search", example=SEARCH_EXAMPLE)
@input_argument("emb")
@query_options
@index_search_options
@shard_option
@device_option
@knn_montage_options
@output_options()
def search(emb, query_ids, queries_file, query_image, model, all_rows, k, least, include_self, query_columns,
           precision_k, index_path, nprobe, ef, refine, buffer_mib, shard, device, montage, images, label, output, fmt,
           overwrite):
    """The k most similar objects to each query in EMB (an embedding table, or '-').

    Queries are object_ids in EMB (--query, --queries; the query itself is left out), new cutouts embedded on
    the fly (--query-image with --model), or every row (--all, which --shard or a Slurm array splits). Output:
    query_id, any query_COL of --query-columns, rank, neighbor_id, similarity and the neighbor's columns prefixed
    neighbor_; a readable table on a terminal (whole column names; those that do not fit are named below it).
    """
    import json

    from galtools.cli import knn_search as ks
    from galtools.io import read_ids
    from galtools.search import neighbors as nb
    from galtools.search import queries as q

    query_columns = [c.strip() for c in query_columns.split(",") if c.strip()]
    k = ks.check_search_options(query_ids, queries_file, query_image, model, all_rows, k, precision_k, query_columns,
                                index_path, nprobe, ef, refine, montage, images, label, output)
    measure_only = bool(precision_k) and output == "-"   # stdout carries the JSON: no table
    writing = prepare_output(output, fmt, overwrite, shard, pictures=[montage], slurm=all_rows, terminal="dash",
                             table=not measure_only, source=emb if all_rows else None)
    base, index = ks.open_base(emb, index_path, refine)
    query_columns = nb.check_query_columns(base, query_columns)
    if query_image:
        plan = q.embed_queries(base, query_image, model, device, writing.shard, keep_images=MONTAGE_ROWS)
    else:
        wanted = list(query_ids) + (read_ids(queries_file, what=f"--queries {queries_file}") if queries_file else [])
        plan = ks.plan(base, index, emb, writing, wanted, all_rows, include_self)
    checkpoint = ks.checkpoint_for(writing, plan, index, measure_only)
    blocks = q.search_blocks(base, plan, k, least, index, nprobe, ef, device,
                             track=lambda items, total: progress(items, total=total, description="searching"),
                             checkpoint=checkpoint, buffer_mib=buffer_mib)
    kept, observers = nb.Kept(MONTAGE_ROWS if montage else 0), []
    observers.append(kept)
    if precision_k:
        from galtools.search.precision import PrecisionAtK

        observers.append(PrecisionAtK(base, label, precision_k))
    settings = {"k": k, "least": least, "exact": index is None, "index": index_path, "nprobe": nprobe, "ef": ef,
                "shard": str(writing.shard) if writing.shard and not writing.catalogue else None}  # a catalogue is one
    ks.write_table(writing, blocks, base, query_columns, observers, settings, measure_only)
    if checkpoint is not None:
        checkpoint.clear()   # the table is complete
    if precision_k:
        click.echo(json.dumps(observers[-1].result(), indent=1))
    if montage:
        from galtools.search.montage import draw_neighbor_montage

        draw_neighbor_montage(kept.queries, base, plan, images, label, montage, least)


main = cli

if __name__ == "__main__":
    main()
