"""Options of the commands that search embeddings (gal-knn, gal-ood score, gal-view), as decorators.

Kept light on imports (click only), like cli/common: ``--help`` never imports numpy, pyarrow or faiss.
"""
from __future__ import annotations

import click


def options(*decorators):
    """One decorator applying click options in the order listed (the order --help shows them in)."""
    def decorator(func):
        for option in reversed(decorators):
            func = option(func)
        return func

    return decorator


query_options = options(
    click.option("--query", "query_ids", multiple=True, metavar="ID", help="object_id of a query (repeatable)."),
    click.option("--queries", "queries_file", metavar="FILE",
                 help="A table, a CSV with an object_id column, or a list of ids one a line ('-': stdin)."),
    click.option("--query-image", metavar="CUTOUTS", help="Embed these cutouts with --model and use them as queries."),
    click.option("--model", metavar="ONNX", help="encoder.onnx for --query-image (the model that made EMB)."),
    click.option("--all", "all_rows", is_flag=True, help="Neighbors of every row (a catalogue-wide neighbor table)."),
    click.option("-k", "k", type=click.IntRange(1), default=10, show_default=True, help="Neighbors per query."),
    click.option("--least", is_flag=True, help="Return the least similar objects instead (rank 1 = least similar)."),
    click.option("--include-self", is_flag=True, help="Keep the query's own row among its neighbors."),
    click.option("--query-columns", metavar="COL,COL", default="",
                 help="Also write these columns of each query (from EMB) as query_COL, e.g. ra,dec,morph_class."),
    click.option("--precision-at", "precision_k", type=click.IntRange(1), default=None, metavar="K",
                 help="Print precision@K of --label as JSON on stdout: the share of each query's K nearest neighbors "
                      "with its label, per class and overall (-k defaults to K; the table is written only with -o "
                      "FILE)."),
)

index_search_options = options(
    click.option("--index", "index_path", metavar="FAISS", help="Search this gal-knn index instead of exact search "
                 "(refused, exit 65, if it was built from other embeddings)."),
    click.option("--nprobe", type=click.IntRange(1), default=None, help="IVF: lists to visit (more = better recall)."),
    click.option("--ef", type=click.IntRange(1), default=None,
                 help="HNSW: search breadth efSearch (more = better recall)."),
    click.option("--refine", type=click.IntRange(0), default=None, metavar="K",
                 help="ivfpq/ivfsq8: candidates re-scored from the index's float16 vectors (0: none; default: the "
                      "index's)."),
    click.option("--buffer", "buffer_mib", type=click.IntRange(1), default=256, show_default=True, metavar="MIB",
                 help="--all through ivfpq/ivfsq8: memory for a batch of queries (searched list by list; finished "
                      "batches are kept in OUTPUT.checkpoint/ so that a rerun after a crash continues)."),
)

knn_montage_options = options(
    click.option("--montage", metavar="PNG", help="Also draw each query and its neighbors as colour composites."),
    click.option("--images", metavar="CUTOUTS", help="Cutout table holding the images for --montage."),
    click.option("--label", metavar="COLUMN", help="Column printed under each picture of the montage; the class "
                 "column of --precision-at."),
)

scale_options = options(
    click.option("--pq", "pq_m", type=click.IntRange(1), default=None,
                 help="ivfpq: bytes of code per vector (default D/4)."),
    click.option("--refine", type=click.IntRange(0), default=None, metavar="K",
                 help="ivfpq/ivfsq8: candidates re-scored from the float16 vectors by default (ivfpq 1000, "
                      "ivfsq8 50)."),
    click.option("--train-size", type=click.IntRange(1), default=None,
                 help="ivfpq/ivfsq8: rows sampled for training (default max(40 nlist, 10240))."),
)
scale_options.__doc__ = "The options of the compressed kinds (ivfpq, ivfsq8)."


def reference_index_option(help: str):
    """--reference-index FAISS of gal-ood fit and score: a reference searched through a compressed gal-knn index."""
    return click.option("--reference-index", metavar="FAISS", help=help)
