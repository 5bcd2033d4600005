"""Minibatches of cells sliced a whole batch at a time, with the data kept on the device.

Two storages give the same rows:

* ``dense``: the matrix as one dense tensor (fastest; used when it fits the memory budget);
* ``csr``: the CSR arrays as tensors; a batch is gathered with vectorised index arithmetic
  (``repeat_interleave`` of row offsets), then scattered into a dense ``(B, V)`` tensor. No
  per-cell Python loop in either case, and both work on GPU.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Iterator

import numpy as np
import scipy.sparse as sp
import torch

from sctopic.utils.sparse import csr_tensor, dense_to_csr

#: Keep the count matrix dense on the device up to this many bytes.
DENSE_BYTES_MAX = 1 << 30


class RowStore:
    """A cells x genes matrix held on ``device``, from which row batches are taken.

    Parameters
    ----------
    X
        scipy sparse or dense ``(n, V)`` matrix.
    device
        Torch device holding the data.
    storage
        ``"dense"``, ``"csr"`` or ``"auto"`` (dense if it takes at most :data:`DENSE_BYTES_MAX`).
    """

    def __init__(self, X, device: torch.device | str = "cpu", storage: str = "auto"):
        self.shape = tuple(X.shape)
        self.device = torch.device(device)
        n, V = self.shape
        if storage == "auto":
            storage = "dense" if n * V * 4 <= DENSE_BYTES_MAX else "csr"
        if storage not in {"dense", "csr"}:
            raise ValueError(f"storage must be 'dense', 'csr' or 'auto', got {storage!r}")
        self.storage = storage
        if storage == "dense":
            dense = X.toarray() if sp.issparse(X) else np.asarray(X)
            self._dense = torch.as_tensor(np.ascontiguousarray(dense, dtype=np.float32), device=self.device)
        else:
            X = sp.csr_matrix(X, dtype=np.float32)
            self._indptr = torch.as_tensor(X.indptr.astype(np.int64), device=self.device)
            self._indices = torch.as_tensor(X.indices.astype(np.int64), device=self.device)
            self._data = torch.as_tensor(X.data, device=self.device)

    def __len__(self) -> int:
        return self.shape[0]

    def rows_csr(self, idx: torch.Tensor) -> torch.Tensor:
        """Rows ``idx`` as a torch sparse CSR tensor (only the ``csr`` storage gathers sparsely).

        Sparse batches make the encoder's first layer and the reconstruction term cost
        O(non-zeros) instead of O(cells x genes); count matrices are 90-98% zeros.
        """
        if self.storage == "dense":
            return dense_to_csr(self.rows(idx))
        start = self._indptr.index_select(0, idx)
        lens = self._indptr.index_select(0, idx + 1) - start
        total = int(lens.sum())
        crow = torch.zeros(idx.shape[0] + 1, dtype=torch.int64, device=self.device)
        torch.cumsum(lens, 0, out=crow[1:])
        src = torch.repeat_interleave(start - crow[:-1], lens) + torch.arange(total, device=self.device)
        return csr_tensor(
            crow, self._indices.index_select(0, src), self._data.index_select(0, src),
            (idx.shape[0], self.shape[1]),
        )

    def rows(self, idx: torch.Tensor) -> torch.Tensor:
        """Dense float32 ``(len(idx), V)`` tensor of the rows ``idx`` (a long tensor on device)."""
        if self.storage == "dense":
            return self._dense.index_select(0, idx)
        start = self._indptr.index_select(0, idx)
        lens = self._indptr.index_select(0, idx + 1) - start
        total = int(lens.sum())
        out = torch.zeros((idx.shape[0], self.shape[1]), dtype=torch.float32, device=self.device)
        if total == 0:
            return out
        row = torch.repeat_interleave(torch.arange(idx.shape[0], device=self.device), lens)
        # Position of each gathered entry in the CSR arrays: its row's start plus its rank.
        first = torch.cumsum(lens, 0) - lens
        src = torch.repeat_interleave(start - first, lens) + torch.arange(total, device=self.device)
        out[row, self._indices.index_select(0, src)] = self._data.index_select(0, src)
        return out


#: Minibatches are dense when at least this fraction of the counts is non-zero.
DENSE_BATCH_DENSITY = 0.10


def minibatch_layout(X, storage: str = "auto") -> str:
    """``"dense"`` or ``"csr"`` minibatches for a count matrix.

    ``"auto"`` picks dense batches when at least :data:`DENSE_BATCH_DENSITY` of the entries
    are non-zero (for an out-of-core matrix, those of its first block), sparse CSR batches
    otherwise. Dense work grows with the number of genes, sparse work with the stored entries
    (:func:`sctopic.nn.sparse.sparse_linear`), so sparse batches win on sparse data. Timings of
    a whole training step in each layout (pbmc3k) are in ``benchmarks/results/flops_csr.md``
    and ``flops_dense.md`` (``benchmarks/bench_flops.py --layout csr|dense``).
    """
    if storage in ("dense", "csr"):
        return storage
    if storage != "auto":
        raise ValueError(f"storage must be 'auto', 'dense' or 'csr', got {storage!r}")
    n, V = X.shape
    if hasattr(X, "iter_blocks"):  # out of core: the first block's density stands for all
        first = next(iter(X.iter_blocks(4096)))[2]
        n, nnz = first.shape[0], first.nnz
    else:
        nnz = X.nnz if sp.issparse(X) else int(np.count_nonzero(X))
    return "dense" if nnz >= DENSE_BATCH_DENSITY * max(n * V, 1) else "csr"


def batch_indices(
    n: int, batch_size: int, shuffle: bool, generator: torch.Generator | None, device, drop_last: bool = False
) -> Iterator[torch.Tensor]:
    """Yield index tensors covering ``range(n)`` in batches (a new permutation per call).

    A final batch of a single cell is merged into the previous one (batch norm needs >= 2).
    """
    if shuffle:
        order = torch.randperm(n, generator=generator).to(device)
    else:
        order = torch.arange(n, device=device)
    starts = list(range(0, n, batch_size))
    if len(starts) > 1 and n - starts[-1] < 2:
        starts.pop()
    for j, s in enumerate(starts):
        e = starts[j + 1] if j + 1 < len(starts) else n
        if drop_last and e - s < batch_size and j > 0:
            return
        yield order[s:e]


def count_batches(n: int, batch_size: int, min_size: int = 1) -> int:
    """Number of minibatches :func:`batch_indices` yields for ``n`` cells (``drop_last=False``),
    not counting a last one smaller than ``min_size`` (which distributed training skips)."""
    starts = list(range(0, n, batch_size))
    if len(starts) > 1 and n - starts[-1] < 2:
        starts.pop()
    if not starts:
        return 0
    last = n - starts[-1]
    return len(starts) - (1 if last < min_size else 0)


def sample_neighbours(
    neighbours: torch.Tensor, degree: torch.Tensor, idx: torch.Tensor, generator: torch.Generator | None
) -> torch.Tensor:
    """One uniformly drawn neighbour for each cell in ``idx`` (vectorised).

    Parameters
    ----------
    neighbours
        ``(n, m)`` long tensor of neighbour lists padded with -1.
    degree
        ``(n,)`` number of valid entries per row (>= 1).
    idx
        ``(B,)`` cells to draw for.
    generator
        Torch generator (on the CPU) for reproducible draws.
    """
    u = torch.rand(idx.shape[0], generator=generator).to(neighbours.device)
    deg = degree.index_select(0, idx)
    col = torch.clamp((u * deg).long(), max=neighbours.shape[1] - 1)
    col = torch.minimum(col, deg - 1)
    return neighbours[idx, col]


def resolve_ahead(items, depth: int = 1):
    """Yield ``(n, batch)`` items ``depth`` steps late, calling any callable value of ``batch`` then.

    A batch value may be a zero-argument callable (a read started in a background thread,
    e.g. :meth:`sctopic.data.backed.BackedMinibatches.fetch`): holding ``depth`` items back
    lets the reads of steps t+1..t+depth run while step t trains, so one slow read does not
    stall the loop. The items, their order and every random draw are the same as without
    look-ahead.
    """
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    pending: deque = deque()
    for item in items:
        if len(pending) == depth:
            yield _resolved(pending.popleft())
        pending.append(item)
    while pending:
        yield _resolved(pending.popleft())


def _resolved(item):
    n, batch = item
    return n, {k: (v() if callable(v) else v) for k, v in batch.items()}
