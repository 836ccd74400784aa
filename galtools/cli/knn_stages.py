"""``gal-knn index-train``, ``index-add``, ``index-merge``: a compressed index built in stages, one add per Slurm
array task (added to gal-knn's group by cli/knn_index.add_commands)."""
from __future__ import annotations

import click

from galtools.cli.common import input_argument, log, model_output_options, shard_option, subcommand
from galtools.cli.search_options import scale_options

TRAIN_EXAMPLE = """gal-knn index-train emb.parquet --kind ivfsq8 -o trained.faiss
sbatch --array=0-15 --wrap 'gal-knn index-add emb.parquet --trained trained.faiss'
gal-knn index-merge trained.faiss trained.part-*.faiss -o emb.faiss"""

COMMANDS = click.Group("stages")   # only a holder (see cli/knn_index.add_commands)


# --------------------------------------------------------------------------------- compressed index in stages

@subcommand(COMMANDS, "index-train", example=TRAIN_EXAMPLE)
@input_argument("emb")
@click.option("--kind", type=click.Choice(["ivfpq", "ivfsq8"]), default="ivfsq8", show_default=True,
              help="ivfsq8: 8-bit codes, D + 8 bytes a vector; ivfpq: product-quantised codes, D/4 + 8 bytes a vector "
                   "(see docs/search.md). Both re-score from float16 vectors.")
@model_output_options("TRAINED", required=True, help="The trained, empty index (+ TRAINED.json and "
                      "TRAINED.refine.npy, which the index-add tasks fill by row).")
@click.option("--nlist", type=click.IntRange(1), default=None, help="Number of lists (default ~4 sqrt(N)).")
@click.option("--nprobe", type=click.IntRange(1), default=None, help="Lists visited by default (default max(16, nlist/128)).")
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


@subcommand(COMMANDS, "index-add", example=TRAIN_EXAMPLE)
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


@subcommand(COMMANDS, "index-merge", example=TRAIN_EXAMPLE)
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
