#!/usr/bin/env python
"""Check the parts of a sharded gal-embed run against its input: every part present, each with the rows of its
shard, made by the same model, and together every input row exactly once in the input's order.  --merge also
writes the parts as one table.

    python examples/check-embed-parts.py cutouts.parquet emb/                    # exit 0, or 65 naming the problem
    python examples/check-embed-parts.py cutouts.parquet emb/ --merge emb.parquet

The object_id columns are compared batch by batch, so memory stays small however many rows there are.
"""
from __future__ import annotations

import os
import re
import sys
from itertools import zip_longest

import click

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from galtools.cli.common import galtools_command, log  # noqa: E402

PART = re.compile(r"-(\d+)-of-(\d+)\.[^/]+$")
EXAMPLE = "python examples/check-embed-parts.py cutouts.parquet emb/ --merge emb.parquet"


def _parts(folder: str) -> tuple[list[str], int]:
    """The part files of ``folder`` and the shard count their names give; BadData when one is missing or foreign."""
    from galtools.errors import BadData, InputMissing

    if not os.path.isdir(folder):
        raise InputMissing(f"{folder}: no such folder of parts", "give the OUT_FOLDER of slurm-embed.sh")
    names = sorted(n for n in os.listdir(folder) if not n.startswith("."))
    found = {}
    for name in names:
        match = PART.search(name)
        if not match:
            raise BadData(f"{folder}/{name} is not named like a part (NAME-i-of-n.EXT)", "move it out of the folder")
        found.setdefault(int(match.group(2)), {})[int(match.group(1))] = os.path.join(folder, name)
    if len(found) != 1:
        raise BadData(f"{folder} mixes parts of {len(found) or 'no'} different shard counts {sorted(found)}",
                      "keep the parts of one run only")
    count, by_index = next(iter(found.items()))
    missing = [i for i in range(count) if i not in by_index]
    if missing:
        raise BadData(f"{len(missing)} of {count} parts are missing (shard(s) {', '.join(map(str, missing[:10]))})",
                      "rerun those array tasks, e.g. sbatch --array=" + ",".join(map(str, missing[:10])))
    return [by_index[i] for i in range(count)], count


def _ids(table):
    for batch in table.iter_batches(columns=["object_id"]):
        yield from batch.column(0).to_pylist()


@galtools_command("check-embed-parts", example=EXAMPLE)
@click.argument("cutouts")
@click.argument("folder")
@click.option("--merge", default=None, metavar="OUT", help="Also write the parts as one table (e.g. emb.parquet).")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
def cli(cutouts, folder, merge, overwrite):
    """Check that the parts in FOLDER hold every row of CUTOUTS exactly once, in order."""
    from galtools.errors import BadData
    from galtools.io import MODEL_SHA256, Shard, open_output, open_table

    paths, count = _parts(folder)
    with open_table(cutouts) as source:
        total = source.num_rows
        models = set()
        for index, path in enumerate(paths):
            with open_table(path) as part:
                lo, hi = Shard(index, count).bounds(total)
                if part.num_rows != hi - lo:
                    raise BadData(f"{path} has {part.num_rows} rows, shard {index}/{count} of {total} rows has "
                                  f"{hi - lo}", f"rerun array task {index}")
                models.add(part.metadata.get(MODEL_SHA256))
        if len(models) != 1:
            raise BadData(f"the parts were made by {len(models)} different models", "rerun with one encoder.onnx")
        with open_table(folder) as parts:
            for row, (want, got) in enumerate(zip_longest(_ids(source), _ids(parts))):
                if want != got:
                    raise BadData(f"row {row}: the input has object_id {want}, the parts {got}",
                                  "the parts do not come from this input; rerun the array")
            if merge:
                with open_output(merge, overwrite=overwrite, metadata=parts.metadata, tool="check-embed-parts") as out:
                    for batch in parts.iter_batches():
                        out.write(batch)
    log.info(f"{count} parts, {total} rows: every input row exactly once, in order"
             + (f"; merged into {merge}" if merge else ""))


if __name__ == "__main__":
    cli()
