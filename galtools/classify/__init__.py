"""Morphology classification from a frozen representation (gal-classify): a linear probe or small MLP trained with
cross-entropy against hard labels or crowd vote fractions (Galaxy Zoo), predictions, metrics and the
label-efficiency curve.

    task      the morphology head task (galtools.heads.task.HeadTask): labels, loss, metrics, report
    labels    the label specification (--label / --classes / --soft-labels), vote fractions -> soft targets
    fit       the settings, and fitting through galtools.heads.task with the task
    model     the fitted head as numpy arrays (predicting needs no torch)
    predict   prediction tables; evaluate/metrics: accuracy, balanced accuracy, confusion, calibration

The label curve and the baselines on cutouts are galtools.finetune.task's, run with this task.
"""
