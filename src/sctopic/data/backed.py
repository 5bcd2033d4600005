"""Counts of an on-disk ``.h5ad`` read by row blocks: out-of-core training and inference.

A backed AnnData (``anndata.read_h5ad(path, backed="r")``) keeps ``X`` on disk. anndata's own
backed CSR supports row slices but reads a list of rows one row at a time; training needs two
kinds of reads, both written here against h5py directly:

* **contiguous row blocks** (one ``indptr`` lookup and two slice reads), for the anchor cells of
  every minibatch, for inference and for the statistics passes;
* **scattered rows** (the mutual neighbours the Cross-view Encoder samples anywhere in the
  data). Here they are read one union of hyperslabs per read with HDF5's chunk cache off
  (20-30 ms for 512 random rows of the 10^6-cell benchmark file, against 0.4-0.85 s with the
  default 1 MB chunk cache, which pulls a whole storage chunk per row). During training they
  go through a helper process instead (:mod:`sctopic.data.rowreader`): in a thread, h5py's
  many GIL hand-overs slowed both the read and the training loop several-fold.

Randomness of out-of-core minibatches
-------------------------------------
In memory, every epoch is a fresh permutation of all cells. Out of core, cells are read in
contiguous blocks of ``block_size`` cells (file order); each epoch visits the blocks in a fresh
random order, pools ``pool_blocks`` of them, shuffles the cells of the pool and cuts it into
minibatches. A minibatch therefore draws from ``pool_blocks * block_size`` cells that are
neighbours in the file, not from all cells. Files sorted by sample or cell type give
minibatches less mixed than in memory: raise ``pool_blocks`` (memory grows with it) or shuffle
the file's rows once beforehand. The order is a deterministic function of the seed.
"""
from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import scipy.sparse as sp
import torch

from sctopic.data.rowreader import RowReaderProcess
from sctopic.data.rowreader import read_ranges as _read_ranges
from sctopic.data.validate import check_counts
from sctopic.errors import InputError
from sctopic.utils.sparse import csr_tensor

#: Cells per contiguous read (about 8192 x nnz-per-cell x 8 bytes: 23 MB for Kang PBMCs).
DEFAULT_BLOCK_SIZE = 8192
#: Blocks pooled and shuffled together to form minibatches.
DEFAULT_POOL_BLOCKS = 4


class BackedCounts:
    """A cells x genes count matrix in an ``.h5ad`` file, restricted to some rows and columns.

    Parameters
    ----------
    path
        The ``.h5ad`` file.
    layer
        ``None`` for ``X``, else the name of a layer.
    rows
        Increasing file rows this object exposes (``None``: all).
    cols
        File columns exposed, in order (``None``: all).

    Notes
    -----
    Each process (and each object) opens its own read-only h5py handle; reads are serialised
    by a lock so prefetch threads can share it.
    """

    def __init__(self, path: str | os.PathLike, layer: str | None = None,
                 rows: np.ndarray | None = None, cols: np.ndarray | None = None, *, _shared=None):
        self.path = Path(path)
        self.layer = layer
        if _shared is None:
            _shared = _open(self.path, layer)
        self._shared = _shared
        n_file, v_file = _shared.shape
        self.rows = None if rows is None else np.asarray(rows, dtype=np.int64)
        self.cols = None if cols is None else np.asarray(cols, dtype=np.int64)
        if self.cols is not None and len(self.cols) == v_file and \
                np.array_equal(self.cols, np.arange(v_file)):
            self.cols = None  # every column in order: skip the (O(nnz)) column selection
        if self.rows is not None and len(self.rows) and (
                np.any(np.diff(self.rows) <= 0) or self.rows[0] < 0 or self.rows[-1] >= n_file):
            raise ValueError("rows must be increasing file rows")
        self.shape = (n_file if self.rows is None else len(self.rows),
                      v_file if self.cols is None else len(self.cols))
        self._digest: tuple[int, float, str] | None = None

    # ------------------------------------------------------------------ views
    @property
    def where(self) -> str:
        return self._shared.where

    @property
    def file_shape(self) -> tuple[int, int]:
        return self._shared.shape

    def subset(self, rows: np.ndarray | None = None, cols: np.ndarray | None = None) -> "BackedCounts":
        """A view on some of this object's rows (positions) and/or columns (positions)."""
        new_rows = self.rows if rows is None else (
            np.asarray(rows, np.int64) if self.rows is None else self.rows[np.asarray(rows, np.int64)])
        new_cols = self.cols if cols is None else (
            np.asarray(cols, np.int64) if self.cols is None else self.cols[np.asarray(cols, np.int64)])
        return BackedCounts(self.path, self.layer, new_rows, new_cols, _shared=self._shared)

    def __getitem__(self, rows) -> "BackedCounts":
        """``X[cells]`` with an integer array or boolean mask of rows (a view, nothing read)."""
        rows = np.asarray(rows)
        if rows.dtype == bool:
            rows = np.flatnonzero(rows)
        return self.subset(rows=rows)

    # ------------------------------------------------------------------ reads
    def _file_rows(self, i0: int, i1: int) -> np.ndarray | slice:
        if self.rows is None:
            return slice(i0, i1)
        return self.rows[i0:i1]

    def _select_cols(self, X: sp.csr_matrix) -> sp.csr_matrix:
        if self.cols is not None:
            X = X[:, self.cols]
        X = sp.csr_matrix(X, dtype=np.float32)
        X.sort_indices()
        return X

    def block(self, i0: int, i1: int) -> sp.csr_matrix:
        """Rows ``i0:i1`` (positions in this view) as a float32 CSR matrix."""
        sel = self._file_rows(i0, i1)
        if isinstance(sel, slice):
            X = self._shared.read_slice(sel.start, sel.stop)
        elif len(sel) == 0:
            X = sp.csr_matrix((0, self._shared.shape[1]), dtype=np.float32)
        else:
            lo, hi = int(sel[0]), int(sel[-1]) + 1
            if hi - lo == len(sel):
                X = self._shared.read_slice(lo, hi)
            elif hi - lo <= 2 * len(sel):  # few gaps: one contiguous read, then drop rows
                X = self._shared.read_slice(lo, hi)[sel - lo]
            else:
                X = self._shared.read_rows(sel)
        return self._select_cols(X)

    def take(self, idx: np.ndarray, reader: RowReaderProcess | None = None) -> sp.csr_matrix:
        """Rows at increasing, unique positions ``idx`` (scattered reads).

        ``reader`` (from :meth:`row_reader`) reads them in a helper process instead of this
        one (for reads running beside a busy training loop; see :mod:`sctopic.data.rowreader`).
        """
        idx = np.asarray(idx, dtype=np.int64)
        rows = idx if self.rows is None else self.rows[idx]
        if reader is not None and self._shared.kind == "csr" and len(rows):
            lens, data, ind = reader.read(rows)
            X = _csr_from_lengths(lens, data, ind, self._shared.shape[1])
        else:
            X = self._shared.read_rows(rows)
        return self._select_cols(X)

    def row_reader(self) -> RowReaderProcess | None:
        """A helper process for :meth:`take` (CSR files only; None for a dense matrix)."""
        if self._shared.kind != "csr":
            return None
        return RowReaderProcess(self.path, self._shared.key, self._shared.dtype,
                                self._shared._indices.dtype)

    def iter_blocks(self, block_size: int = DEFAULT_BLOCK_SIZE) -> Iterator[tuple[int, int, sp.csr_matrix]]:
        """``(i0, i1, block)`` over all rows in order."""
        n = self.shape[0]
        for i0 in range(0, n, block_size):
            i1 = min(i0 + block_size, n)
            yield i0, i1, self.block(i0, i1)

    def to_memory(self) -> sp.csr_matrix:
        """The whole view as one CSR matrix (for small data and tests)."""
        parts = [b for _, _, b in self.iter_blocks()]
        if not parts:
            return sp.csr_matrix(self.shape, dtype=np.float32)
        return sp.csr_matrix(sp.vstack(parts, format="csr"), dtype=np.float32)

    # ------------------------------------------------------------------ summaries
    def digest(self) -> tuple[int, float, str]:
        """``(nnz, total count, sha256 of the CSR arrays)`` of the view: one pass, cached (the
        checkpoint's and the manifest's data fingerprint; see :mod:`sctopic.data.fingerprint`)."""
        if self._digest is None:
            from sctopic.data.fingerprint import CountsHasher

            h = CountsHasher()
            for _, _, b in self.iter_blocks():
                h.update(b)
            self._digest = (h.nnz, h.total, h.hexdigest())
        return self._digest

    def count_summary(self) -> tuple[int, float]:
        """``(nnz, total count)`` of the view (from the cached pass of :meth:`digest`)."""
        nnz, total, _ = self.digest()
        return nnz, total

    @property
    def nnz(self) -> int:
        return self.count_summary()[0]

    def __repr__(self) -> str:
        return f"BackedCounts({self.path.name}:{self.where}, {self.shape[0]} x {self.shape[1]})"


class _SharedFile:
    """One open h5py handle on a CSR or dense matrix, with a lock for reader threads."""

    def __init__(self, path: Path, where: str, f: h5py.File, node):
        self.path, self.where, self._f, self._node = path, where, f, node
        self.key = node.name
        self.lock = threading.Lock()
        if isinstance(node, h5py.Group):
            enc = node.attrs.get("encoding-type", "")
            enc = enc.decode() if isinstance(enc, bytes) else str(enc)
            if enc == "csc_matrix":
                raise InputError(
                    f"{where} in {path} is stored as CSC (by gene); out-of-core training reads "
                    "cells, so it needs CSR. Rewrite it once: adata = anndata.read_h5ad(path); "
                    "adata.X = adata.X.tocsr(); adata.write_h5ad(path)."
                )
            if enc != "csr_matrix":
                raise InputError(f"{where} in {path} has encoding {enc!r}; a CSR or dense matrix is expected.")
            self.kind = "csr"
            self.shape = tuple(int(s) for s in node.attrs["shape"])
            self.indptr = np.asarray(node["indptr"][:], dtype=np.int64)
            self._data, self._indices = node["data"], node["indices"]
            self.dtype = self._data.dtype
        elif isinstance(node, h5py.Dataset) and node.ndim == 2:
            self.kind = "dense"
            self.shape = tuple(int(s) for s in node.shape)
            self.dtype = node.dtype
        else:
            raise InputError(f"{where} in {path} is not a matrix.")

    def read_slice(self, a: int, b: int) -> sp.csr_matrix:
        with self.lock:
            if self.kind == "dense":
                return sp.csr_matrix(np.asarray(self._node[a:b]))
            p0, p1 = int(self.indptr[a]), int(self.indptr[b])
            data = self._data[p0:p1]
            ind = self._indices[p0:p1]
        return sp.csr_matrix((data, ind, self.indptr[a:b + 1] - p0), shape=(b - a, self.shape[1]))

    def read_rows(self, rows: np.ndarray) -> sp.csr_matrix:
        """Increasing file rows, read as one union of hyperslabs per array."""
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) == 0:
            return sp.csr_matrix((0, self.shape[1]), dtype=np.float32)
        with self.lock:
            if self.kind == "dense":
                return sp.csr_matrix(np.asarray(self._node[rows]))
            starts, ends = self.indptr[rows], self.indptr[rows + 1]
            lens = ends - starts
            data = _read_ranges(self._data, starts, lens)
            ind = _read_ranges(self._indices, starts, lens)
        return _csr_from_lengths(lens, data, ind, self.shape[1])


def _csr_from_lengths(lens: np.ndarray, data: np.ndarray, ind: np.ndarray, n_cols: int) -> sp.csr_matrix:
    """CSR rows from their stored-entry counts and the concatenated entries."""
    indptr = np.zeros(len(lens) + 1, dtype=np.int64)
    np.cumsum(lens, out=indptr[1:])
    return sp.csr_matrix((data, ind, indptr), shape=(len(lens), n_cols))


def _open(path: Path, layer: str | None) -> _SharedFile:
    if not path.exists():
        raise InputError(f"no such file: {path}")
    try:
        # No HDF5 chunk cache: with one, every scattered row read pulls its whole storage
        # chunk (1 MB in the benchmark files) through the cache; without, HDF5 reads just the
        # selection. 512 scattered rows of the 10^6-cell file: 0.4-0.85 s vs 20-30 ms.
        f = h5py.File(path, "r", rdcc_nbytes=0)
    except OSError as exc:
        raise InputError(f"could not open {path} as an .h5ad (HDF5) file: {exc}") from exc
    if layer is None:
        where, key = "X", "X"
    else:
        where, key = f"layers[{layer!r}]", f"layers/{layer}"
    if key not in f:
        avail = ", ".join(map(repr, f["layers"].keys())) if "layers" in f else "none"
        f.close()
        if layer is None:
            raise InputError(f"{path} has no X matrix; pass layer=... (layers: {avail}).")
        raise InputError(f"layer {layer!r} not found in {path} (available: {avail}).")
    return _SharedFile(path, where, f, f[key])


# ---------------------------------------------------------------------- statistics pass
@dataclass
class CountStats:
    """Per-cell and per-gene summaries from one pass over a backed count matrix."""

    n_cells: int
    cell_totals: np.ndarray  # float64 (n,)
    gene_totals: np.ndarray  # float64 (V,)
    #: Mean and variance (ddof=1) of counts normalised to ``target_sum`` per cell (genes).
    norm_mean: np.ndarray
    norm_var: np.ndarray


def scan_counts(X: BackedCounts, target_sum: float = 1e4, block_size: int = DEFAULT_BLOCK_SIZE,
                progress: bool = False) -> CountStats:
    """Validate every block as raw counts and gather the statistics gene selection needs.

    Normalisation is scanpy's ``normalize_total(target_sum)`` over all columns of ``X``.
    """
    from tqdm.auto import tqdm

    n, V = X.shape
    cell_totals = np.zeros(n, dtype=np.float64)
    gene_totals = np.zeros(V, dtype=np.float64)
    s1 = np.zeros(V, dtype=np.float64)
    s2 = np.zeros(V, dtype=np.float64)
    where = f"{X.where} of {X.path.name}"
    bar = tqdm(total=n, disable=not progress, desc="scanning counts", unit="cell")
    for i0, i1, B in X.iter_blocks(block_size):
        check_counts(B, where)
        lib = np.asarray(B.sum(axis=1), dtype=np.float64).ravel()
        cell_totals[i0:i1] = lib
        gene_totals += np.asarray(B.sum(axis=0), dtype=np.float64).ravel()
        scale = np.where(lib > 0, target_sum / np.where(lib > 0, lib, 1.0), 0.0)
        # Normalised in float32 as scanpy does, accumulated in float64.
        Bn = sp.csr_matrix(sp.diags(scale.astype(np.float32)) @ B, dtype=np.float32)
        vals = Bn.data.astype(np.float64)
        s1 += np.bincount(Bn.indices, weights=vals, minlength=V)
        s2 += np.bincount(Bn.indices, weights=vals * vals, minlength=V)
        bar.update(i1 - i0)
    bar.close()
    mean = s1 / max(n, 1)
    var = (s2 / max(n, 1) - mean**2) * (n / max(n - 1, 1))
    return CountStats(n, cell_totals, gene_totals, mean, np.maximum(var, 0.0))


def seurat_dispersion_norm(mean: np.ndarray, var: np.ndarray, n_bins: int = 20) -> np.ndarray:
    """Normalised dispersions of Seurat's ``FindVariableGenes`` (scanpy ``flavor="seurat"``).

    ``mean``/``var`` are per-gene moments of the normalised (not logged) counts. Written here
    because scanpy computes them only from an in-memory matrix; the result matches
    :func:`scanpy.pp.highly_variable_genes` (tested).
    """
    import pandas as pd

    mean = np.asarray(mean, dtype=np.float64).copy()
    mean[mean == 0] = 1e-12
    disp = np.asarray(var, dtype=np.float64) / mean
    disp[disp == 0] = np.nan
    disp = np.log(disp)
    logmean = np.log1p(mean)
    df = pd.DataFrame({"means": logmean, "dispersions": disp})
    df["mean_bin"] = pd.cut(df["means"], bins=n_bins)
    grouped = df.groupby("mean_bin", observed=True)["dispersions"]
    bin_mean = grouped.mean()
    bin_std = grouped.std(ddof=1)
    single = bin_std.isnull()
    bin_std[single] = bin_mean[single]
    bin_mean[single] = 0
    b = df["mean_bin"]
    norm = (df["dispersions"].to_numpy() - bin_mean.reindex(b).to_numpy()) / bin_std.reindex(b).to_numpy()
    return norm


def select_genes_backed(stats: CountStats, n_top_genes: int) -> np.ndarray:
    """Column positions of the ``n_top_genes`` most variable genes (Seurat dispersion),
    in file order, the out-of-core twin of :func:`sctopic.data.counts.select_genes`."""
    disp = seurat_dispersion_norm(stats.norm_mean, stats.norm_var)
    disp = np.where(np.isfinite(disp), disp, -np.inf)
    order = np.argsort(-disp, kind="stable")[:n_top_genes]
    return np.sort(order)


# ---------------------------------------------------------------------- minibatches
def to_torch(X: sp.csr_matrix, layout: str, device: torch.device) -> torch.Tensor:
    """A scipy CSR block as a dense or sparse CSR float32 tensor on ``device``."""
    if layout == "dense":
        return torch.as_tensor(X.toarray(), device=device)
    return csr_tensor(torch.as_tensor(X.indptr.astype(np.int64), device=device),
                      torch.as_tensor(X.indices.astype(np.int64), device=device),
                      torch.as_tensor(X.data, device=device), X.shape)


class BackedMinibatches:
    """Minibatches of an out-of-core matrix: shuffled blocks, pooled, prefetched in threads.

    ``batches(batch_size, generator)`` yields index tensors (positions among the rows of ``X``)
    and ``rows(idx)`` returns their counts: rows of the current pool from memory, any others
    (sampled neighbours) read from disk. See the module docstring for the randomness.

    Parameters
    ----------
    X
        The training rows.
    layout
        ``"dense"`` or ``"csr"`` minibatch tensors.
    device
        Torch device of the minibatches.
    block_size, pool_blocks
        Cells per contiguous read, and blocks shuffled together.
    num_workers
        Reader threads; each prefetches one pool ahead (>= 1; the h5py reads themselves are
        serialised, so more than 2 rarely helps).
    """

    def __init__(self, X: BackedCounts, layout: str, device: torch.device,
                 block_size: int = DEFAULT_BLOCK_SIZE, pool_blocks: int = DEFAULT_POOL_BLOCKS,
                 num_workers: int = 1):
        if block_size < 2 or pool_blocks < 1 or num_workers < 1:
            raise InputError("block_size must be >= 2, pool_blocks >= 1 and num_workers >= 1.")
        self.X, self.layout, self.device = X, layout, torch.device(device)
        self.n = X.shape[0]
        n_blocks = max(1, -(-self.n // block_size))
        # Near-equal blocks: none is tiny (batch norm needs at least 2 cells).
        bounds = np.linspace(0, self.n, n_blocks + 1).round().astype(np.int64)
        self.bounds = bounds
        self.pool_blocks = int(pool_blocks)
        self.num_workers = int(num_workers)
        self._where = np.full(self.n, -1, dtype=np.int64)
        self._pool: sp.csr_matrix | None = None
        self._pool_ids: np.ndarray | None = None
        self._far_reader: ThreadPoolExecutor | None = None
        # Scattered (neighbour) rows are read by a helper process, started at the first such
        # read and ended with the reader object (see sctopic.data.rowreader for why).
        self._row_reader = X.row_reader()

    def _read_pool(self, blocks: np.ndarray) -> tuple[np.ndarray, sp.csr_matrix]:
        ids, parts = [], []
        for b in np.sort(blocks):
            i0, i1 = int(self.bounds[b]), int(self.bounds[b + 1])
            ids.append(np.arange(i0, i1))
            parts.append(self.X.block(i0, i1))
        return np.concatenate(ids), sp.csr_matrix(sp.vstack(parts, format="csr"))

    def batches(self, batch_size: int, generator: torch.Generator | None) -> Iterator[torch.Tensor]:
        """One epoch of minibatch index tensors (a new block order and shuffle per call)."""
        n_blocks = len(self.bounds) - 1
        order = torch.randperm(n_blocks, generator=generator).numpy()
        pools = [order[i:i + self.pool_blocks] for i in range(0, n_blocks, self.pool_blocks)]
        with ThreadPoolExecutor(max_workers=self.num_workers, thread_name_prefix="sctopic-read") as ex, \
                ThreadPoolExecutor(max_workers=1, thread_name_prefix="sctopic-far") as far:
            self._far_reader = far
            ahead = [ex.submit(self._read_pool, p) for p in pools[: self.num_workers]]
            for j in range(len(pools)):
                ids, pool = ahead.pop(0).result()
                if j + self.num_workers < len(pools):
                    ahead.append(ex.submit(self._read_pool, pools[j + self.num_workers]))
                self._pool, self._pool_ids = pool, ids
                self._where[ids] = np.arange(len(ids))
                perm = torch.randperm(len(ids), generator=generator).numpy()
                n_b = max(1, -(-len(ids) // batch_size))
                for part in np.array_split(perm, n_b):
                    yield torch.as_tensor(ids[part], device=self.device)
                self._where[ids] = -1
                self._pool = self._pool_ids = None
            self._far_reader = None

    def count_batches(self, batch_size: int) -> int:
        """Minibatches per epoch, estimated with the blocks pooled in file order (the shuffled
        pools of an epoch hold the same blocks in other groupings, so the count may differ by
        one per pool)."""
        n_blocks = len(self.bounds) - 1
        total = 0
        for i in range(0, n_blocks, self.pool_blocks):
            size = int(self.bounds[min(i + self.pool_blocks, n_blocks)] - self.bounds[i])
            total += max(1, -(-size // batch_size))
        return total

    def rows(self, idx: torch.Tensor) -> torch.Tensor:
        """Counts of rows ``idx`` as a minibatch tensor in the chosen layout."""
        return self.fetch(idx)()

    def fetch(self, idx: torch.Tensor):
        """Start gathering rows ``idx``; returns a callable that gives the minibatch tensor.

        Rows of the current pool are copied at once (the pool changes as :meth:`batches`
        advances); rows elsewhere in the file (sampled neighbours) are read by a background
        thread while the caller trains on the previous minibatch (see
        :func:`sctopic.data.loader.resolve_ahead`).
        """
        ids = idx.detach().cpu().numpy().astype(np.int64)
        pos = self._where[ids]
        here = pos >= 0
        if self._pool is not None and here.all():
            X = to_torch(self._pool[pos], self.layout, self.device)
            return lambda: X
        near = self._pool[pos[here]] if self._pool is not None and here.any() else None
        far = np.unique(ids[~here])

        def assemble() -> torch.Tensor:
            far_rows = self.X.take(far, reader=self._row_reader)
            if near is None:
                X = far_rows[np.searchsorted(far, ids)]
            else:
                both = sp.vstack([near, far_rows], format="csr")
                order = np.empty(len(ids), dtype=np.int64)
                order[np.flatnonzero(here)] = np.arange(int(here.sum()))
                order[np.flatnonzero(~here)] = here.sum() + np.searchsorted(far, ids[~here])
                X = both[order]
            return to_torch(sp.csr_matrix(X, dtype=np.float32), self.layout, self.device)

        if self._far_reader is None:
            return assemble
        return self._far_reader.submit(assemble).result
