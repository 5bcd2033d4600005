"""A fingerprint of a count matrix: SHA-256 of its CSR arrays, plus cell and gene names.

Resuming a training run (:mod:`sctopic.train.checkpoint`) and a run's manifest
(:mod:`sctopic.data.rundir`) need to know that the data are exactly the same, not only of the
same shape and total: cells reordered, or counts moved between cells, leave shape, non-zeros
and totals unchanged. The hash covers, block of rows by block of rows,

* the row lengths (``diff(indptr)``, int64),
* the column indices (int64, sorted within each row),
* the values (float64; exact for integer counts and for float32 data),

each array in its own SHA-256 stream, the three digests hashed together at the end. An
in-memory CSR matrix, a dense array and the same matrix read from disk by a
:class:`~sctopic.data.backed.BackedCounts` therefore give the same digest, whatever the block
size. The cost is one pass over the
non-zeros (hashing runs at about 1 GB/s); the out-of-core path computes it in the pass that
also counts non-zeros and totals, and caches it.
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import scipy.sparse as sp

#: rows hashed per block of an in-memory matrix (bounds the float64/int64 copies)
BLOCK_ROWS = 16384


def names_sha256(names: Iterable[Any]) -> str:
    """SHA-256 of names joined by newlines (order matters)."""
    return hashlib.sha256("\n".join(str(n) for n in names).encode()).hexdigest()


class CountsHasher:
    """Accumulates ``nnz``, the total count and the SHA-256 of CSR row blocks, in row order."""

    def __init__(self) -> None:
        # one stream per array, combined at the end: the digest does not depend on the blocks
        self._lengths, self._indices, self._data = hashlib.sha256(), hashlib.sha256(), hashlib.sha256()
        self.nnz = 0
        self.total = 0.0

    def update(self, block: sp.csr_matrix) -> None:
        """Add the next rows (a CSR matrix; its index order is normalised on a copy if needed)."""
        if not block.has_sorted_indices:
            block = block.copy()
            block.sort_indices()
        lengths = np.diff(np.asarray(block.indptr, dtype=np.int64))
        first, last = int(block.indptr[0]), int(block.indptr[-1])
        indices = np.asarray(block.indices[first:last], dtype="<i8")
        data = np.asarray(block.data[first:last], dtype="<f8")
        self._lengths.update(lengths.astype("<i8").tobytes())
        self._indices.update(indices.tobytes())
        self._data.update(data.tobytes())
        self.nnz += int(data.size)
        self.total += float(data.sum(dtype=np.float64))

    def hexdigest(self) -> str:
        """SHA-256 over the three arrays' SHA-256 digests (row lengths, indices, values)."""
        parts = b"".join(h.digest() for h in (self._lengths, self._indices, self._data))
        return hashlib.sha256(parts).hexdigest()


def _blocks(X: Any, block_rows: int) -> Iterator[sp.csr_matrix]:
    if hasattr(X, "iter_blocks"):  # BackedCounts: contiguous reads from the file
        for _, _, B in X.iter_blocks():
            yield B
        return
    if sp.issparse(X):
        X = X.tocsr() if X.format != "csr" else X
        for i0 in range(0, X.shape[0], block_rows):
            yield X[i0:i0 + block_rows]
        return
    A = np.asarray(X)
    for i0 in range(0, A.shape[0], block_rows):
        yield sp.csr_matrix(A[i0:i0 + block_rows])


def counts_digest(X: Any, block_rows: int = BLOCK_ROWS) -> tuple[int, float, str]:
    """``(nnz, total count, sha256)`` of a cells x genes matrix (CSR, dense or BackedCounts).

    ``nnz`` counts stored values (as ``scipy.sparse``'s ``nnz``). A ``BackedCounts`` answers
    from its cached pass (:meth:`~sctopic.data.backed.BackedCounts.digest`).
    """
    if hasattr(X, "digest"):
        return X.digest()
    h = CountsHasher()
    for B in _blocks(X, block_rows):
        h.update(B)
    return h.nnz, h.total, h.hexdigest()


def data_fingerprint(X: Any, obs_names: Iterable[Any] | None = None,
                     var_names: Iterable[Any] | None = None) -> dict[str, Any]:
    """A JSON-able fingerprint of training data.

    Parameters
    ----------
    X
        Cells x genes counts (scipy sparse, dense, or ``BackedCounts``).
    obs_names, var_names
        Cell and gene names of the rows and columns, in order (None: not recorded).

    Returns
    -------
    dict
        ``n_cells``, ``n_genes``, ``nnz``, ``total_counts``, ``counts_sha256`` and, where
        given, ``obs_names_sha256`` and ``genes_sha256``.
    """
    nnz, total, digest = counts_digest(X)
    fp: dict[str, Any] = {"n_cells": int(X.shape[0]), "n_genes": int(X.shape[1]), "nnz": int(nnz),
                          "total_counts": float(total), "counts_sha256": digest}
    if obs_names is not None:
        fp["obs_names_sha256"] = names_sha256(obs_names)
    if var_names is not None:
        fp["genes_sha256"] = names_sha256(var_names)
    return fp


__all__ = ["CountsHasher", "counts_digest", "data_fingerprint", "names_sha256"]
