"""Small helpers for torch sparse CSR minibatches (counts are 90-98% zeros)."""
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


def row_sums(x: torch.Tensor) -> torch.Tensor:
    """Per-row sums ``(B,)`` of a dense or sparse CSR tensor."""
    if x.layout == torch.sparse_csr:
        out = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        return out.index_add_(0, csr_row_ids(x), x.values())
    return x.sum(dim=1)


def csr_head(x: torch.Tensor, n: int) -> torch.Tensor:
    """The first ``n`` rows of a sparse CSR tensor (a cheap slice of its arrays)."""
    crow = x.crow_indices()[: n + 1]
    end = int(crow[-1])
    return csr_tensor(crow, x.col_indices()[:end], x.values()[:end], (n, x.shape[1]))

