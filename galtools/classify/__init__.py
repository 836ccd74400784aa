"""Morphology classification from a frozen representation (gal-classify): a linear probe or small MLP trained with
cross-entropy against hard labels or crowd vote fractions (Galaxy Zoo), predictions, metrics and the
label-efficiency curve.

    labels    the label specification (--label / --classes / --soft-labels), vote fractions -> soft targets
    fit       reading the labelled rows, fitting (gal-photoz's training loop), the model file
    model     the fitted head as numpy arrays (predicting needs no torch)
    predict   prediction tables; evaluate/metrics: accuracy, balanced accuracy, confusion, calibration
    curve     accuracy against the number of labels
"""
