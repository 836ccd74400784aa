"""Out-of-distribution scores over embeddings: distance to a labelled reference (k-th neighbour via galtools.search,
or a density model), calibrated to percentiles on held-out reference rows; detection metrics and trust curves."""
from galtools.ood.metrics import auroc, average_precision, detection_report, tpr_at_fpr, trust_curve
from galtools.ood.model import OodModel

__all__ = ["OodModel", "auroc", "average_precision", "detection_report", "tpr_at_fpr", "trust_curve"]
