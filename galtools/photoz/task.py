"""Photo-z as a galtools.heads head task: a redshift column for labels, cross-entropy over redshift bins (optionally
smoothed) for loss, sigma_MAD / eta / bias for metrics, the pdf's mean as the prediction, the training median as
the floor (Hayat et al. 2021; Pasquet et al. 2019)."""
from __future__ import annotations

import numpy as np

from galtools.heads.rows import LabelledRows
from galtools.heads.source import check_numeric_column
from galtools.heads.task import Evaluation, HeadTask
from galtools.photoz.bins import summarise_pdf
from galtools.photoz.fit import Z_FIX, FitSettings, bin_labels, check_label_count, labels_of
from galtools.photoz.model import TOOL, PhotozModel


class PhotozTask(HeadTask):
    name = "photoz"
    tool = TOOL
    outputs = "bins"
    floor_method = "median"
    curve_fix = "use larger --fractions, fewer --bins, or more labelled rows"
    curve_metrics = (("sigma_mad", "sigma_MAD", ".5f"), ("eta", "eta %", ".2f"), ("bias", "bias", "+.5f"))
    curve_panels = (("sigma_mad", "sigma_MAD"), ("eta", "eta (% with |dz| > 0.05)"))
    streams = True

    def __init__(self, z_column: str = "z_spec", settings: FitSettings | None = None):
        self.z_column = z_column
        self.settings = settings or FitSettings()

    # -- labels: finite values of the redshift column
    @property
    def label_columns(self) -> list[str]:
        return [self.z_column]

    def check_columns(self, schema, name: str) -> None:
        check_numeric_column(schema, self.z_column, name, Z_FIX)

    def labels_of(self, batch, name: str):
        z = labels_of(batch, self.z_column)
        keep = np.flatnonzero(np.isfinite(z))
        return keep, z[keep]

    def label_info(self):
        return self.z_column

    def check_count(self, rows: LabelledRows) -> None:
        check_label_count(rows.count, rows.n_rows if rows.n_rows else rows.count, self.z_column, rows.name,
                          self.settings.n_bins)

    # -- loss: the bin of each redshift (clipped into the first or last bin), smoothed by the kernel
    def n_outputs(self, rows=None) -> int:
        return self.settings.n_bins

    def min_labels(self, rows=None) -> int:
        return self.settings.n_bins

    def encode(self, rows, val=None):
        y, above, below = bin_labels(rows.targets, self.settings.bins, self.z_column,
                                     self.settings.clip_labels)
        return y, {"n_clipped_above_zmax": above, "n_clipped_below_zero": below}

    @property
    def kernel(self):
        return self.settings.kernel

    # -- metrics
    def point(self, pdf):
        return summarise_pdf(pdf, self.settings.bins.centres)[0].astype(np.float32)

    def floor(self, truth, count):
        return np.full(count, float(np.median(truth)))

    def metrics(self, predicted, truth) -> dict:
        from galtools.photoz.metrics import photoz_metrics

        found = photoz_metrics(predicted, truth)
        return {key: found[key] for key in ("n", "sigma_mad", "eta", "bias")}

    # -- report
    def curve_header(self) -> dict:
        return {"z_column": self.z_column}

    def fit_info(self, rows) -> dict:
        return {"z_column": self.z_column}

    def finish(self, model, path: str) -> None:
        """The fingerprints of the (object_id, redshift) pairs fitted on: eval warns when it scores them."""
        from galtools.photoz.fit import training_fingerprints

        model.training_ids = training_fingerprints(path, self.z_column)

    def model(self, linear, rows, info, model_sha256, encoder_onnx=None):
        return PhotozModel(linear, self.settings.bins, model_sha256, info, encoder_onnx=encoder_onnx)

    def predictions(self, model, **options):
        from galtools.photoz.predict import prediction_task

        return prediction_task(model, **options)

    def evaluate(self, path: str, truth: str = "z_spec", pred_column: str = "z_phot", mag_column: str | None = None,
                 z_bins: int = 8, mag_bins: int = 5) -> Evaluation:
        from galtools.photoz.evaluate import evaluate_table

        arrays, report, zmax = evaluate_table(path, truth, pred_column, mag_column, z_bins, mag_bins)
        return Evaluation(self, {"task": self.name, **report}, (arrays, zmax, mag_column))

    def format_report(self, evaluation) -> str:
        from galtools.photoz.evaluate import format_report

        return format_report(evaluation.report, evaluation.data[2])

    def plot_report(self, evaluation, path: str) -> None:
        from galtools.photoz.evaluate import plot_report

        arrays, zmax, _ = evaluation.data
        plot_report(arrays["pred_column"], arrays["truth"], evaluation.report, path, zmax)
