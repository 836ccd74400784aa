"""gal-map: a 2-D map of the representation (PCA or UMAP), a scatter coloured by a column, and the tiled image map."""
from __future__ import annotations

import click

from galtools.cli.common import galtools_command, input_argument, log, output_options, prepare_output, seed_option

EXAMPLE = """gal-map emb.parquet --method umap -o map.parquet --color morph_class --plot map.png
gal-map emb.parquet --method pca -o map.parquet --color z_true --plot map-z.png --images cutouts.fits --tiles tiles.png"""


@galtools_command("gal-map", example=EXAMPLE)
@input_argument("emb")
@click.option("--method", type=click.Choice(["pca", "umap"]), default="pca", show_default=True,
              help="pca: the two principal axes (fast, linear); umap: UMAP's neighbor-preserving layout.")
@click.option("--neighbors", "n_neighbors", type=click.IntRange(2), default=15, show_default=True,
              help="UMAP: size of the neighborhood it preserves.")
@click.option("--min-dist", type=click.FloatRange(0, 1), default=0.1, show_default=True,
              help="UMAP: how tightly it packs points.")
@seed_option
@click.option("--color", "--colour", "colour", default=None, metavar="COLUMN",
              help="Colour the --plot by this column: categories get a legend, numbers a colour bar.")
@click.option("--plot", metavar="PNG", help="Draw the map's points.")
@click.option("--images", metavar="CUTOUTS", help="The cutout table the embeddings came from (for --tiles).")
@click.option("--tiles", metavar="PNG", help="Draw the tiled image map: the galaxy nearest each grid cell's centre.")
@click.option("--grid", type=click.IntRange(1, 200), default=20, show_default=True,
              help="--tiles: cells along each side.")
@click.option("--tile-size", type=click.IntRange(4, 512), default=48, show_default=True,
              help="--tiles: pixels per thumbnail (the PNG is grid x tile-size pixels square).")
@output_options()
def cli(emb, method, n_neighbors, min_dist, seed, colour, plot, images, tiles, grid, tile_size, output, fmt,
        overwrite):
    """Map the embeddings of EMB (from gal-embed, or '-') to two dimensions and write object_id, the carried
    columns and map_x, map_y.

    The map is of the unit-normalised embeddings (the cosine geometry gal-knn searches). PCA is computed with
    numpy; UMAP with umap-learn, single-threaded so that a --seed gives the same map every time. All rows are
    held in memory.
    """
    from galtools.errors import UsageProblem
    from galtools.io import atomic_file

    if bool(images) != bool(tiles):
        raise UsageProblem("--images CUTOUTS and --tiles PNG go together", "give both, or neither")
    if colour and not plot:
        raise UsageProblem("--color colours the --plot picture", "add --plot map.png")
    if images == "-" and emb == "-":
        raise UsageProblem("EMB and --images cannot both be read from stdin", "write one of them to a file")
    writing = prepare_output(output, fmt, overwrite, pictures=[plot, tiles], slurm=False)

    from galtools.maps.table import make_map, map_metadata, write_map

    result = make_map(emb, method, seed, colour, n_neighbors, min_dist)
    if tiles:   # read the cutouts before writing anything, so a bad CUTOUTS leaves no output behind
        from galtools.io import check_unique_ids
        from galtools.maps.tiles import tile_map

        check_unique_ids(result.ids, "stdin" if emb == "-" else emb)

        picture, filled = tile_map(result.xy, result.ids, images, grid, tile_size)
    if plot:
        from galtools.maps.plot import plot_map

        column = None
        if colour:
            column = result.ids if colour == "object_id" else result.carried.column(colour)
        title = f"{method.upper()} map of {len(result.xy)} objects" + (f", coloured by {colour}" if colour else "")
        with atomic_file(plot, named=True) as path:   # named: matplotlib picks the format by extension
            plot_map(result.xy, path, column, colour, seed, title)
    if tiles:
        from PIL import Image

        with atomic_file(tiles) as path:
            Image.fromarray(picture).save(path, format="PNG")
        log.info(f"wrote {tiles}: {filled} of {grid * grid} cells hold a galaxy")
    with writing.open(map_metadata(result), seed=seed) as out:
        write_map(result, out)
    log.debug(f"{out.rows} map rows written to {writing.name}")


main = cli

if __name__ == "__main__":
    main()
