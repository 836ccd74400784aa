"""One library for "a small model fitted on labelled embeddings": gal-photoz, gal-classify and gal-ood build on it.

    task     the head-task interface (``HeadTask``: labels, loss, metrics, report) that gal-photoz and gal-classify
             implement, and what every task shares: reading labelled rows, fitting (in memory or streamed), the
             probe arms of the label curve, the evaluation's shape, a model class for tasks without their own
    format   the head file (npz + JSON, no pickle): stacked linear layers, the task's own keys under ``task``
    source   opening an embedding table once: its column, dimension, single encoder; finite vectors per batch
    rows     labelled rows (``LabelledRows``, in memory or streamed) and the validation / test splits
    train    the one training loop and early-stopping rule (torch, imported only when fitting)
    apply    the one batch loop of predict and score, written through a sink (numpy only); its ``Task`` says what
             a head adds to each batch
    curve    the label-efficiency driver, its rows, table and plot
    baselines  pixel-PCA and random-encoder features for the curves' baseline arms

Networks fine-tuned (or trained from scratch) on cutouts under a head are one layer up, in galtools.finetune.
Only ``train`` and ``baselines`` need torch, and import it inside their functions; gal-ood uses ``format``,
``source`` and ``apply``.
"""
from galtools.heads.format import Head, LinearModel, StackedLinear, check_head_output, load_head, save_head, softmax

__all__ = ["Head", "LinearModel", "StackedLinear", "check_head_output", "load_head", "save_head", "softmax"]
