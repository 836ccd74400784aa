"""The label-efficiency curve of the classifier: accuracy against the number of labels, on galtools.heads' curve
driver (one fixed test set, nested training subsets, the same for every arm).

``majority`` predicts the training subset's most frequent class: the floor any representation must beat.  With the
cutouts and a gal-train checkpoint, also the same classifier on the pixels and on the untrained architecture, the
encoder fine-tuned and the same network from scratch.  Every classifier is scored on the same test set against the
label (or the majority vote), and every training arm stops by the same rule.
"""
from __future__ import annotations

import numpy as np

from galtools.classify.fit import ClassifySettings, LabelledRows, fit_rows
from galtools.classify.metrics import classification_metrics
from galtools.heads.curve import Arm, chosen_by_validation, format_curve, make_split, plot_curve, run_curve

METRICS = [("accuracy", "accuracy", ".4f"), ("balanced_accuracy", "balanced", ".4f")]
PANELS = [("accuracy", "accuracy"), ("balanced_accuracy", "balanced accuracy")]
BASELINES = ("majority",)


def label_curve(rows: LabelledRows, fractions: list[float], settings: ClassifySettings,
                test_fraction: float = 0.2, images=None) -> list[dict]:
    """Rows of the curve: the majority-class baseline and the classifier, for each usable fraction; with
    ``images`` = (cutouts of the rows, checkpoint's EncoderSource, NetworkSettings), also the baselines on the
    cutouts (``image_arms``)."""
    classes = rows.labels.classes
    truth = rows.truth
    # at least one label per class (and two, so that one can validate)
    split = make_split(rows.count, fractions, test_fraction, settings.seed, max(len(classes), 2), "classes",
                       "use larger --fractions or more labelled rows")

    def majority(train, test):
        return np.full(len(test), int(np.argmax(np.bincount(truth[train], minlength=len(classes))))), None

    def classifier(train, test):
        model = fit_rows(rows.subset(train), settings)
        return np.argmax(model.predict_proba(rows.x[test]), axis=1), model.info["training"]

    arms = [Arm("majority", majority, baseline=True),
            Arm("linear" if settings.hidden is None else f"mlp{settings.hidden}", classifier)]
    if images is not None:
        arms += image_arms(rows, *images, settings)

    def score(predicted, test):
        metrics = classification_metrics(truth[test], predicted, classes)
        return {"n": metrics["n"], "accuracy": metrics["accuracy"],
                "balanced_accuracy": metrics["balanced_accuracy"]}

    return run_curve(split, arms, score)


def image_arms(rows: LabelledRows, cutouts: np.ndarray, source, network, settings: ClassifySettings) -> list[Arm]:
    """On the rows' cutouts: the same classifier on their pixels (PCA fitted without labels, to the number of
    components up to the representation's dimension that validates best) and on the checkpoint's architecture
    with random weights; the encoder fine-tuned, and the same network trained from scratch (``network``: their
    NetworkSettings)."""
    from dataclasses import replace

    from galtools.heads.baselines import pca_sizes, pixel_pca_features, random_encoder_features
    from galtools.finetune import LabelledCutouts, train_network

    def probe_on(x):
        features = rows.with_features(x)

        def run(train, test):
            model = fit_rows(features.subset(train), settings)
            return np.argmax(model.predict_proba(x[test]), axis=1), model.info["training"]

        return run

    data = LabelledCutouts(cutouts, rows.targets, rows.ids)

    def trained(from_scratch):
        def run(train, test):
            mode = replace(network, fit=replace(network.fit), from_scratch=from_scratch)
            model, record = train_network(data.subset(train), source, mode, len(rows.labels.classes))
            return np.argmax(model.predict_pdf(cutouts[test]), axis=1), record

        return run

    pixels = pixel_pca_features(cutouts, source, rows.x.shape[1])
    candidates = {k: probe_on(pixels[:, :k]) for k in pca_sizes(pixels.shape[1])}
    return [chosen_by_validation("pixels-pca", candidates, "components"),
            Arm("random-encoder", probe_on(random_encoder_features(cutouts, source, settings.seed))),
            Arm("finetune", trained(False)), Arm("scratch", trained(True))]


def format_classify_curve(rows: list[dict]) -> str:
    return format_curve(rows, METRICS)


def plot_classify_curve(rows: list[dict], path: str) -> None:
    plot_curve(rows, path, PANELS, BASELINES, ylim=(0, 1.02))
