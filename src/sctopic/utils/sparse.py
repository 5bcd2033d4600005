"""Building, slicing, transposing and summing torch sparse CSR tensors (counts are 90-98% zeros).

Data-structure helpers shared by the minibatch loaders (:mod:`sctopic.data`) and the torch
modules (:mod:`sctopic.nn`); the sparse autograd ops live in :mod:`sctopic.nn.sparse`.
"""
from __future__ import annotations

import warnings

import torch


#: torch warns once per process that sparse CSR support is "beta"; it is noise for users here.
_BETA_WARNING = "Sparse (CSR tensor support is in beta|invariant checks)"


def csr_tensor(crow: torch.Tensor, col: torch.Tensor, val: torch.Tensor, size) -> torch.Tensor:
    """Build a sparse CSR tensor, without torch's once-per-process "beta" warning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_BETA_WARNING)
        return torch.sparse_csr_tensor(crow, col, val, size=tuple(size))


def dense_to_csr(x: torch.Tensor) -> torch.Tensor:
    """A dense tensor as sparse CSR, without torch's "beta" warning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_BETA_WARNING)
        return x.to_sparse_csr()


def csr_row_ids(x: torch.Tensor) -> torch.Tensor:
    """Row index of every stored entry of a sparse CSR tensor."""
    crow = x.crow_indices()
    return torch.repeat_interleave(torch.arange(x.shape[0], device=crow.device), crow[1:] - crow[:-1])


def csr_row_sums(x: torch.Tensor, values: torch.Tensor | None = None) -> torch.Tensor:
    """Per-row sums ``(B,)`` of a sparse CSR tensor, or of other ``values`` on its entries.

    A sparse matrix-vector product with ones: each row is summed by one thread, in order
    (deterministic), 0.06 ms for 177k entries in 512 rows against 0.53 ms for ``index_add_``,
    which serialises on the repeated row ids (2 cores).
    """
    vals = x.values() if values is None else values
    if vals.dtype not in (torch.float32, torch.float64):  # no sparse mv kernel for these
        out = torch.zeros(x.shape[0], dtype=vals.dtype, device=vals.device)
        return out.index_add_(0, csr_row_ids(x), vals)
    m = x if values is None else csr_tensor(x.crow_indices(), x.col_indices(), vals, x.shape)
    return torch.mv(m, torch.ones(x.shape[1], dtype=vals.dtype, device=vals.device))


def row_sums(x: torch.Tensor) -> torch.Tensor:
    """Per-row sums ``(B,)`` of a dense or sparse CSR tensor."""
    if x.layout == torch.sparse_csr:
        return csr_row_sums(x)
    return x.sum(dim=1)


def csr_head(x: torch.Tensor, n: int) -> torch.Tensor:
    """The first ``n`` rows of a sparse CSR tensor (a cheap slice of its arrays)."""
    crow = x.crow_indices()[: n + 1]
    end = int(crow[-1])
    return csr_tensor(crow, x.col_indices()[:end], x.values()[:end], (n, x.shape[1]))


def csr_transpose(x: torch.Tensor) -> torch.Tensor:
    """The transpose of a 2-D sparse CSR tensor, itself in CSR layout.

    On the CPU this goes through scipy's O(non-zeros) counting transpose on views of the
    tensor's arrays: 1.0 ms for a 1024 x 5000 batch with 355k entries, against 7.5 ms for
    torch's sort-based ``x.t().to_sparse_csr()`` on 2 cores. Elsewhere torch's own is used.
    """
    if x.device.type != "cpu" or x.values().dtype not in (torch.float32, torch.float64):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_BETA_WARNING)
            return x.t().to_sparse_csr()
    import scipy.sparse as sp

    crow, col, val = (t.numpy() for t in (x.crow_indices(), x.col_indices(), x.values()))
    m = sp.csr_matrix((val, col, crow), shape=tuple(x.shape)).T.tocsr()
    ind = torch.from_numpy(m.indices)
    ptr = torch.from_numpy(m.indptr.astype(m.indices.dtype, copy=False))
    return csr_tensor(ptr, ind, torch.from_numpy(m.data), (x.shape[1], x.shape[0]))
