"""The steps of gal-knn search (cli/knn): usage checks, opening the table and the index, the checkpoint of
``--all``, writing or showing the neighbor table."""
from __future__ import annotations

import click

from galtools.cli.common import log

TERMINAL_ROWS = 1000       # neighbors shown on a terminal before pointing at -o


def open_base(emb: str, index_path: str | None, refine: int | None):
    """(base, index): the table in memory for exact search; with an index the table's vectors are checked and
    checksummed but not kept (the index holds them), and a compressed index leaves the table on disk, read by row."""
    from galtools.search import queries as q

    if not index_path:
        return q.load_base(emb), None
    base, index = q.load_for_index(emb, index_path)
    if refine is not None:
        index.refine = refine
    return base, index


def plan(base, index, emb: str, writing, wanted, all_rows: bool, include_self: bool):
    """The queries: those of cli/knn's options; over all rows into a HATS catalogue, the rows of the partitions
    this task writes (one partition is one shard)."""
    from galtools.search import queries as q

    if all_rows and writing.catalogue:
        from galtools.io.hats import Layout

        start, stop = Layout(emb).row_bounds(writing.shard)
        return q.QueryPlan(all_rows=range(start, stop), exclude=not include_self)
    return q.plan_queries(base, index, wanted, all_rows, writing.shard, include_self)


def checkpoint_for(writing, plan, index, measure_only: bool):
    """Where ``--all`` through a compressed index keeps its finished batches: OUTPUT.checkpoint/ beside a table
    file, FOLDER.checkpoint-I-of-N/ beside a HATS catalogue (a rerun after a crash continues from it); else
    nowhere."""
    from galtools.search.scale import ScaleIndex

    from galtools.search.batch import Checkpoint

    if plan.all_rows is None or not isinstance(index, ScaleIndex) or measure_only or not writing.table:
        return None
    if writing.catalogue:   # one folder for every task: a checkpoint beside it for each task
        shard = f"-{writing.shard.index}-of-{writing.shard.count}" if writing.shard else ""
        return Checkpoint(f"{writing.path.rstrip('/')}.checkpoint{shard}")
    from galtools.io.output import output_kind

    if writing.path == "-" or output_kind(writing.path) != "file":
        return None
    return Checkpoint(f"{writing.path}.checkpoint")


def check_search_options(query_ids, queries_file, query_image, model, all_rows, k, precision_k, query_columns,
                         index_path, nprobe, ef, refine, montage, images, label, output):
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
    if refine is not None and not index_path:
        raise UsageProblem("--refine tunes a compressed index", "pass --index FILE, or drop it")
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


def write_table(writing, blocks, base, query_columns, observers, settings, measure_only):
    """Write the neighbor table (or show it on a terminal, or only measure: no table); into a HATS catalogue, one
    row per object (galtools.search.objects)."""
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
        if writing.catalogue:
            from galtools.search.objects import write_objects

            written = write_objects(blocks, base, out, settings["k"], observers)
        else:
            written = nb.write_neighbors(blocks, base, out, query_columns, observers)
    log.debug(f"wrote {written} rows to {writing.name}")
