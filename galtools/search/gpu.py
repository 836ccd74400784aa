"""The GPU backend of exact search: similarity tiles computed by torch on a CUDA device (or, for the tests, on the
CPU with ``device="torch-cpu"``).  Candidates come back to the host, where galtools.search.exact re-scores, merges
and breaks ties in numpy, so both backends give the same neighbors and similarities.

This is the only module of galtools.search that imports torch (pyproject.toml's import-linter contract "torch in
search only in its GPU backend"); galtools.search.exact imports it only when a search runs on torch.
"""
from __future__ import annotations

import numpy as np
import torch

from galtools.search.exact import FLOAT32_UNIT, unit_rows


class TorchTiles:
    """Similarity tiles on a CUDA GPU; candidates come back to the host for the numpy merge."""

    name = "torch"

    def __init__(self, base: np.ndarray, normalize_base: bool, device: str):
        self.torch = torch
        self.device = torch.device(device)
        # reduced-precision float32 products (TF32, bfloat16) round far more coarsely: widen the margin
        reduced = (torch.get_float32_matmul_precision() != "highest"
                   or (self.device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32))
        self.unit = 2.0**-8 if reduced else FLOAT32_UNIT
        self.base = base
        self.normalize_base = normalize_base
        self.resident = None
        if self.device.type == "cuda":
            free_bytes, _ = torch.cuda.mem_get_info(self.device)
            if base.nbytes < free_bytes // 2:  # keep the whole base on the GPU when it fits comfortably
                self.resident = self._upload(base)
        else:
            self.resident = self._upload(base)

    def _upload(self, block: np.ndarray):
        tensor = self.torch.from_numpy(np.ascontiguousarray(block, dtype=np.float32)).to(self.device)
        if self.normalize_base:
            # same float64 norm as unit_rows, so a row gives the same unit vector on either backend
            norms = self.torch.sqrt((tensor.double() ** 2).sum(dim=1)).float()
            if bool((norms == 0).any()):
                unit_rows(block)  # raises the BadData naming the zero rows
            tensor = tensor / norms[:, None]
        return tensor

    def prepare_queries(self, queries: np.ndarray):
        return self.torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32)).to(self.device)

    def tiles(self, queries, first_cols: int, block_cols: int):
        n_base = self.base.shape[0]
        start, width = 0, first_cols
        while start < n_base:
            stop = min(n_base, start + width)
            block = self.resident[start:stop] if self.resident is not None else self._upload(self.base[start:stop])
            yield start, queries @ block.T
            start, width = stop, block_cols

    def candidates(self, tile, threshold, margin, kth, first):
        torch = self.torch
        margin = torch.from_numpy(np.ascontiguousarray(margin, dtype=np.float32)).to(self.device)
        floor = torch.from_numpy(np.ascontiguousarray(threshold, dtype=np.float32)).to(self.device) - margin
        if first and tile.shape[1] > kth:
            floor = torch.maximum(floor, torch.topk(tile, kth + 1, dim=1).values[:, -1] - 2 * margin)
        mask = tile >= floor[:, None]
        max_candidates = max(tile.shape[0] * (kth + 1) * 4, tile.numel() // 64)
        if not first and int(mask.sum()) > max_candidates and tile.shape[1] > kth:
            floor = torch.maximum(floor, torch.topk(tile, kth + 1, dim=1).values[:, -1] - 2 * margin)
            mask = tile >= floor[:, None]
        query, column = mask.nonzero(as_tuple=True)
        return query.cpu().numpy(), column.cpu().numpy()
