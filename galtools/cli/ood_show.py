"""What gal-ood prints and draws (cli/ood, cli/ood_rank): the strangest or the proposed objects as a table or a
montage."""
from __future__ import annotations

import click

from galtools.cli.common import log

TOP_COLUMNS = ("object_id", "ood_score", "ood_raw", "trusted", "nearest_reference_id", "nearest_reference_distance")
PROPOSED_COLUMNS = ("object_id", "score", "spread", "nearest_positive_id", "nearest_positive_similarity")
MONTAGE_COLUMNS = 8
DEFAULT_MONTAGE_COUNT = 16


def montage_count(montage, images, count, output):
    """(how many objects are listed or drawn, the output): --montage needs --images and draws 16 unless told;
    a list without -o goes to the terminal instead of a table on stdout."""
    from galtools.errors import UsageProblem

    if montage and not images:
        raise UsageProblem("--montage needs --images", "the cutout table holding the pictures")
    if montage:
        count = count or DEFAULT_MONTAGE_COUNT
    if output is None:
        output = None if count else "-"
    return count, output



def print_top(strangest, show_columns, to_stderr=False):
    from galtools.ood.score import format_top

    click.echo(format_top(strangest, TOP_COLUMNS, show_columns), err=to_stderr)



def draw_montage(strangest, images, path):
    from galtools.errors import BadData
    from galtools.ood.montage import images_for
    from galtools.viz import rgb_composite, save_montage

    if strangest is None or strangest.num_rows == 0:
        raise BadData("nothing to draw: no objects were scored", "check the input")
    ids = strangest.column("object_id").to_pylist()
    pictures, bands = images_for(images, ids)
    rgb = rgb_composite(pictures, bands)
    scores = strangest.column("ood_score").to_pylist()
    raws = strangest.column("ood_raw").to_pylist()
    captions = [f"{i}\nscore {s:.3f}\nraw {r:.3g}" for i, s, r in zip(ids, scores, raws)]
    grid = [list(rgb[i:i + MONTAGE_COLUMNS]) for i in range(0, len(rgb), MONTAGE_COLUMNS)]
    caption_grid = [captions[i:i + MONTAGE_COLUMNS] for i in range(0, len(captions), MONTAGE_COLUMNS)]
    save_montage(grid, path, captions=caption_grid, title=f"the {len(ids)} strangest objects, strangest first")



def print_proposed(ranked, to_stderr=False):
    import pyarrow.compute as pc

    from galtools.ood.score import format_top

    proposed = ranked.filter(pc.is_valid(ranked.column("proposed")))
    proposed = proposed.take(pc.sort_indices(proposed, sort_keys=[("proposed", "ascending")]))
    click.echo(format_top(proposed, PROPOSED_COLUMNS), err=to_stderr)



def draw_proposed(summary, images, path):
    from galtools.errors import BadData
    from galtools.ood.montage import draw_objects

    ids = summary["proposed_ids"]
    if not ids:
        raise BadData("nothing to draw: every object is labelled already", "label another table")
    captions = [f"{i}\nnext #{n}" for n, i in enumerate(ids, start=1)]
    draw_objects(images, ids, captions, path, title=f"the {len(ids)} objects to label next, in order")


def report_scored(rows: int, untrusted: int, coverage: float, writing) -> None:
    """The summary of gal-ood score: on stderr when a file was written, else only with -v."""
    summary = (f"{rows} objects scored, {untrusted} ({100 * untrusted / max(rows, 1):.1f}%) not trusted "
               f"(ood_score >= {coverage:g})")
    if writing.table and writing.path != "-":   # a file: say what it holds (stdout carries the table itself)
        log.info(f"wrote {writing.name}: {summary}")
    else:
        log.debug(summary)
