"""Photometric redshifts from embeddings: binned classification, metrics, fitting, prediction, label curves.

``bins`` and ``metrics`` and ``model`` (prediction from saved weights) need numpy only; ``fit`` needs torch.
"""
from galtools.photoz.bins import RedshiftBins, summarise_pdf
from galtools.photoz.metrics import binned_metrics, normalised_residuals, photoz_metrics
from galtools.photoz.model import PhotozModel

__all__ = ["RedshiftBins", "summarise_pdf", "binned_metrics", "normalised_residuals", "photoz_metrics",
           "PhotozModel"]
