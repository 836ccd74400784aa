"""``gal-knn index``: build a FAISS index in one process (the staged build is in cli/knn_stages).

gal-knn adds the commands of both modules to its group (:func:`add_commands`)."""
from __future__ import annotations

import os

import click

from galtools.cli.common import input_argument, log, model_output_options, subcommand
from galtools.cli.search_options import scale_options

INDEX_EXAMPLE = """gal-knn index emb.parquet --kind ivf --recall          # writes emb.faiss + emb.faiss.json
gal-knn index emb.parquet --kind hnsw --m 32 --ef 128 -o hnsw.faiss --recall
gal-knn index emb.parquet --kind ivfpq --recall        # + emb.faiss.refine.npy (float16 vectors)"""

COMMANDS = click.Group("index")   # only a holder: add_commands moves its commands into gal-knn's group


def add_commands(group: click.Group) -> None:
    """Add gal-knn index, index-train, index-add and index-merge to ``group``."""
    from galtools.cli import knn_stages

    for holder in (COMMANDS, knn_stages.COMMANDS):
        for name, command in holder.commands.items():
            group.add_command(command, name)


# -------------------------------------------------------------------------------------------------------- index

@subcommand(COMMANDS, "index", example=INDEX_EXAMPLE)
@input_argument("emb")
@click.option("--kind", type=click.Choice(["flat", "ivf", "hnsw", "ivfpq", "ivfsq8"]), default="hnsw",
              show_default=True,
              help="flat: exact, N x D x 4 bytes; ivf: inverted lists, fast to build; hnsw: graph, fastest queries, "
                   "about N x (4D + 8M) bytes; ivfpq: product-quantised codes, D/4 + 8 bytes, re-scored from float16 "
                   "vectors in FILE.refine.npy (2D + 4 bytes, on disk); ivfsq8: 8-bit codes, D + 8 bytes.")
@model_output_options("FAISS", required=False,
                      help="Index file (default: EMB with .faiss instead of its extension); the sidecar is FAISS.json.")
@click.option("--nlist", type=click.IntRange(1), default=None, help="IVF: number of lists (default ~4 sqrt(N)).")
@click.option("--nprobe", type=click.IntRange(1), default=None,
              help="IVF: lists visited by default (default max(8, nlist/16); ivfpq, ivfsq8: max(16, nlist/128)).")
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
