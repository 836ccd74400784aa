"""One library for "a small model fitted on labelled embeddings": gal-photoz, gal-classify and gal-ood build on it.

    format   the head file (npz + JSON, no pickle): stacked linear layers, the task's own keys under ``task``
    source   opening an embedding table once: its column, dimension, single encoder; finite vectors per batch
    rows     labelled rows (in memory or streamed) and the validation / test splits
    train    the one training loop and early-stopping rule (torch, imported only when fitting)
    network  the same loop and rule for an encoder fine-tuned (or trained from scratch) on labelled cutouts
    apply    the one batch loop of predict and score (numpy only)
    curve    the label-efficiency driver, its rows, table and plot
    baselines  pixel-PCA and random-encoder features for the curves' baseline arms

Only ``train``, ``network`` and ``baselines`` need torch, and import it inside their functions; gal-ood uses
``format``, ``source`` and ``apply``.
"""
from galtools.heads.format import Head, LinearModel, StackedLinear, check_head_output, load_head, save_head, softmax

__all__ = ["Head", "LinearModel", "StackedLinear", "check_head_output", "load_head", "save_head", "softmax"]
