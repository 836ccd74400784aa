"""gal-ood: which predictions to trust, and which objects are anomalies (distance to the labelled reference)."""
from __future__ import annotations

import click

from galtools.cli.common import (galtools_group, input_argument, output_options, progress_bar, seed_option,
                                 shard_option, subcommand)
from galtools.cli.heads_options import model_option, model_output, score_prologue
from galtools.cli.ood_rank import add_commands
from galtools.cli.ood_show import draw_montage, montage_count, print_top, report_scored
from galtools.cli.search_options import reference_index_option

EXAMPLE = """gal-ood fit labelled-emb.parquet -k 10 -o ood.model
gal-ood score survey-emb.parquet --model ood.model -o scored.parquet
gal-ood score survey-emb.parquet --model ood.model --top 20 --montage strange.png --images cutouts.fits
gal-ood eval scored.parquet --truth is_anomaly --error-column abs_dz --plot ood.png"""

FIT_EXAMPLE = """gal-ood fit labelled-emb.parquet -o ood.model                    # k-th neighbor cosine distance
gal-ood fit labelled-emb.parquet --method gmm --pca 32 --components 8 -o gmm.model
gal-ood fit labelled-emb.parquet --search hnsw -k 50 -o big.model"""

SCORE_EXAMPLE = """gal-ood score emb.parquet --model ood.model -o scored.parquet
gal-ood score survey_emb/ --model ood.model --shard 3/16 -o survey_ood/        # HATS catalogue in and out
gal-photoz predict emb.parquet --model photoz.model --truth z_spec | gal-ood score - --model ood.model -o both.parquet
gal-ood score emb.parquet --model ood.model --top 16 --montage strange.png --images cutouts.fits"""



@galtools_group("gal-ood", example=EXAMPLE)
def cli():
    """Out-of-distribution scores: how unlike a labelled reference set each object is.

    \b
    gal-ood fit REFERENCE -o MODEL     learn the reference (k-th neighbor distance, or --method gmm/iforest),
                                       calibrated on held-out reference rows
    gal-ood score TARGET --model M     ood_score (a percentile of the reference), trusted, nearest reference
    gal-ood eval SCORED                AUROC / average precision / TPR at 5% FPR; the trust curve of an error
    gal-ood rank EMB --labels LABELS   rank objects like the labelled positives; --propose the next to label

    Objects far from every labelled one get predictions that should not be trusted; the same scores rank
    anomalies. Scoring needs numpy (and faiss-cpu for --search flat/ivf/hnsw); fitting gmm/iforest needs
    scikit-learn.
    """


@subcommand(cli, "fit", example=FIT_EXAMPLE)
@input_argument("reference")
@click.option("--method", type=click.Choice(["knn", "gmm", "iforest"]), default="knn", show_default=True,
              help="knn: cosine distance to the k-th nearest reference row; gmm: -log density of a Gaussian "
                   "mixture on a PCA projection; iforest: isolation-forest score on the same projection.")
@click.option("-k", "k", type=int, default=10, show_default=True, help="Which neighbor's distance (knn).")
@click.option("--search", type=click.Choice(["exact", "flat", "ivf", "hnsw"]), default="exact", show_default=True,
              help="How neighbors are found (gal-knn's backends): exact blocked search, or a FAISS index.")
@click.option("--calibration-fraction", type=float, default=0.2, show_default=True,
              help="Reference rows held out of the fit to calibrate the scores on.")
@click.option("--pca", type=int, default=32, show_default=True, help="PCA components (gmm, iforest).")
@click.option("--components", type=int, default=8, show_default=True, help="Gaussian mixture components (gmm).")
@click.option("--trees", type=int, default=200, show_default=True, help="Isolation-forest trees (iforest).")
@reference_index_option("knn: find the reference neighbors through this ivfpq/ivfsq8 index of REFERENCE ('gal-knn "
                        "index REFERENCE --kind ivfsq8'): REFERENCE is read by row, never whole, and the model keeps "
                        "no vectors but the index's and the table's paths; calibrated on held-out rows, each left out "
                        "of its own search.")
@seed_option
@model_output
def fit(reference, method, k, search, calibration_fraction, pca, components, trees, reference_index, seed, output,
        overwrite):
    """Learn the reference distribution from REFERENCE (e.g. the labelled objects' embeddings).

    A fraction of the reference rows is held out; the statistic of those rows calibrates the scores, so that
    ood_score is the fraction of in-distribution objects less strange than a given one. The model keeps the
    other reference rows (their unit vectors and object_ids) and the encoder's sha256.
    """
    from galtools.heads import check_head_output
    from galtools.io import check_unique_ids, display_name, open_table
    from galtools.ood.fit import OodSettings, fit_reference
    from galtools.search.table import load_embeddings

    settings = OodSettings(method=method, k=k, search=search, calibration_fraction=calibration_fraction, pca=pca,
                           components=components, trees=trees, seed=seed).validate()
    check_head_output(output, overwrite)
    name = display_name(reference)
    if reference_index:
        from galtools.ood.reference import fit_through_index

        fit_through_index(reference, reference_index, settings, source=name).save(output, overwrite=overwrite)
        return
    with open_table(reference) as table:
        embeddings = load_embeddings(table, name=name)
    check_unique_ids(embeddings.ids, name)
    model = fit_reference(embeddings.vectors, embeddings.ids, settings, embeddings.model_sha256, source=name)
    model.save(output, overwrite=overwrite)


@subcommand(cli, "score", example=SCORE_EXAMPLE)
@input_argument("target")
@model_option("gal-ood")
@click.option("--coverage", type=float, default=0.95, show_default=True,
              help="trusted = ood_score < COVERAGE: this fraction of in-distribution objects is trusted.")
@click.option("--top", type=click.IntRange(0), default=0, metavar="N",
              help="Print the N strangest objects as a table (on stdout unless it carries the scored table).")
@click.option("--show", "show_columns", multiple=True, metavar="COLUMN", help="Extra column in the --top table.")
@click.option("--montage", metavar="PNG", help="Draw the strangest objects (--top N, default 16) from --images.")
@click.option("--images", metavar="CUTOUTS", help="Cutout table holding the pictures for --montage.")
@reference_index_option("A model fitted with --reference-index: search this index instead of the one it names (its "
                        "table is the one the index's sidecar names); refused (65) if it indexes another table.")
@shard_option
@output_options(default=None)
def score(target, model_path, coverage, top, show_columns, montage, images, reference_index, shard, output, fmt,
          overwrite):
    """Score every row of TARGET (an embedding table, or '-') against the model's reference.

    Adds ood_score (0-1: the fraction of held-out reference rows less strange than this object), ood_raw (the
    statistic itself: k-th neighbor cosine distance, -log density or isolation score; it keeps ordering objects
    beyond the reference's range), trusted (ood_score < --coverage), nearest_reference_id and
    nearest_reference_distance (cosine); other columns are carried. With --top N and no -o, only the table of
    the N strangest is printed (with -o -, it goes to stderr). A HATS catalogue TARGET (e.g. gal-embed's) with a
    folder as OUTPUT makes a HATS catalogue with the same partitions, as gal-embed does.
    """
    from galtools.errors import UsageProblem
    from galtools.ood.model import KINDS, TOOL, OodModel
    from galtools.ood.score import score_table

    if not 0 < coverage < 1:
        raise UsageProblem(f"--coverage must be between 0 and 1, got {coverage}")
    top, output = montage_count(montage, images, top, output)
    head, writing = score_prologue(model_path, TOOL, KINDS, output, fmt, overwrite, shard, pictures=[montage],
                                   source=target)
    counts, model = {}, OodModel.from_head(head)
    if reference_index:
        model.use_index(reference_index)
    with progress_bar(None, "scoring") as bar:
        rows, strangest = score_table(target, model, head, writing.path if writing.table else None,
                                      coverage=coverage, fmt=fmt, overwrite=overwrite, shard=writing.shard, top=top,
                                      progress=bar.advance, counts=counts)
    report_scored(rows, counts["untrusted"], coverage, writing)
    if top:
        print_top(strangest, show_columns, to_stderr=output == "-")   # stdout may carry the scored table
    if montage:
        draw_montage(strangest, images, montage)


add_commands(cli)

main = cli

if __name__ == "__main__":
    main()
