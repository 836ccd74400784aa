"""Photometric redshifts from embeddings: binned classification, metrics, fitting, prediction, label curves.

``task`` is photo-z as a galtools.heads head task (labels, loss, metrics, report): fitting, fine-tuning and the
label curve are the shared code of galtools.heads.task and galtools.finetune.task run with it. ``bins``,
``metrics`` and ``model`` (prediction from saved weights) need numpy only; fitting needs torch.
"""
from galtools.photoz.bins import RedshiftBins, summarise_pdf
from galtools.photoz.metrics import binned_metrics, normalised_residuals, photoz_metrics
from galtools.photoz.model import PhotozModel

__all__ = ["RedshiftBins", "summarise_pdf", "binned_metrics", "normalised_residuals", "photoz_metrics",
           "PhotozModel"]
