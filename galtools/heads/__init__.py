"""One library for "a small model fitted on labelled embeddings": gal-photoz, gal-classify and gal-ood build on it.

    format   the head file (npz + JSON, no pickle): stacked linear layers, the task's own keys under ``task``
    source   opening an embedding table once: its column, dimension, single encoder; finite vectors per batch
    rows     labelled rows (in memory or streamed) and the validation / test splits
    train    the one training loop and early-stopping rule (torch, imported only here, only when fitting)
    apply    the one batch loop of predict and score (numpy only)
    curve    the label-efficiency driver, its rows, table and plot

Only ``train`` needs torch; gal-ood uses ``format``, ``source`` and ``apply``.
"""
from galtools.heads.format import Head, LinearModel, StackedLinear, check_head_output, load_head, save_head, softmax

__all__ = ["Head", "LinearModel", "StackedLinear", "check_head_output", "load_head", "save_head", "softmax"]
