"""Out-of-core PCA of log-normalised counts, for data read block by block (backed AnnData).

:func:`pca_blocks` gives the same scores as :func:`sctopic.data.counts.pca_embedding`
(scikit-learn's ``PCA(svd_solver="arpack")`` of :func:`~sctopic.data.counts.log_normalize`
counts, centred, not scaled) without ever holding more than one block of the data:

* **Gram path** (``n_genes <= GRAM_MAX_GENES``, the usual case: the paper keeps 5,000 HVGs).
  Pass 1 accumulates, in float64, the gene sums and the ``V x V`` Gram matrix of the
  log-normalised block, densified a sub-block at a time and shifted by the first block's gene
  means (so the centring at the end, ``G - n (mu - s)(mu - s)^T``, cancels nothing
  significant). The top ``n_comps`` eigenvectors of the covariance are taken with LAPACK
  (``scipy.linalg.eigh``, subset by index); pass 2 projects every block. Memory:
  ``O(block + V^2 + n * n_comps)``: the Gram matrix is ``8 V^2`` bytes (133 MB for 4,096
  genes, 288 MB for 6,000; eigh needs about as much again), the scores ``4 n n_comps``
  bytes (200 MB for 10^6 cells and 50 components). Time is one dense float64 GEMM of
  ``n V^2`` multiply-adds, BLAS-threaded.
* **Randomised path** (``n_genes > GRAM_MAX_GENES``). Randomised block Krylov iteration on
  the covariance (Musco & Musco 2015; Halko, Martinsson & Tropp 2011) with blocks of
  ``n_comps + oversamples`` columns: one pass for the gene means, then ``n_iter + 1`` passes
  each applying the covariance to one block (``X^T (X Q) - n mu (mu^T Q)``, sparse products,
  nothing ``V x V``); the Krylov basis is kept orthonormal, the covariance applied to it is
  kept, and a Rayleigh-Ritz step gives the components; then the projection pass. Memory
  ``O(block + 2 V (n_iter + 1)(n_comps + oversamples) + n n_comps)`` (106 MB of basis for
  10,000 genes with the defaults). It is approximate, but with the defaults (10 iterations,
  10 extra columns) all 50 components of the 10^4-cell Kang data agree with the exact ones to
  |corr| > 0.9998 and their variances to 1e-4 (measured; see ``tests/test_pca.py``).

Sign convention: the one scikit-learn uses for ``svd_solver="arpack"``
(``svd_flip(..., u_based_decision=False)``): in every component the loading of largest
absolute value is positive. :func:`pca_blocks` and :func:`~sctopic.data.counts.pca_embedding`
therefore give the same signs, not just the same components up to sign (checked on real data
for all 50 components of the Gram path; the approximate randomised path can differ in sign for
a trailing component whose two largest loadings are nearly equal in size).
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import scipy.linalg
import scipy.sparse as sp

from sctopic.data.counts import log_normalize, pca_embedding
from sctopic.errors import InputError

log = logging.getLogger(__name__)

#: Up to this many genes the exact Gram-matrix path is used (Gram matrix 8 V^2 bytes).
GRAM_MAX_GENES = 6000
#: Dense float64 sub-blocks of the Gram pass hold at most this many values (32 MB).
_DENSE_VALUES = 1 << 22


@dataclass
class PCAModel:
    """What :func:`pca_blocks` fitted, for reports or for projecting new cells.

    Attributes
    ----------
    mean
        ``(V,)`` gene means of the log-normalised data.
    components
        ``(n_comps, V)`` loadings (rows orthonormal), sign-fixed as described in the module.
    explained_variance
        ``(n_comps,)`` variance of each score (``ddof=1``, as scikit-learn).
    explained_variance_ratio
        ``explained_variance`` over the total variance of the log-normalised data.
    n_cells
        Number of rows seen.
    method
        ``"gram"`` or ``"randomized"``.
    """

    mean: np.ndarray
    components: np.ndarray
    explained_variance: np.ndarray
    explained_variance_ratio: np.ndarray
    n_cells: int
    method: str

    def transform(self, X_counts) -> np.ndarray:
        """Scores of a count block (log-normalised, centred, projected), float32."""
        return _project(_lognorm(X_counts), self.components.T, self.mean @ self.components.T)


def row_blocks(X, block_rows: int = 20_000) -> Callable[[], Iterator[sp.csr_matrix]]:
    """A ``blocks`` callable for :func:`pca_blocks` over anything sliceable by rows.

    ``X`` may be a scipy sparse matrix, a dense array, or a backed AnnData's ``X``
    (``anndata.read_h5ad(path, backed="r").X``), whose ``X[a:b]`` reads rows ``a..b`` only.
    """
    n = X.shape[0]
    block_rows = max(1, int(block_rows))

    def blocks() -> Iterator[sp.csr_matrix]:
        for a in range(0, n, block_rows):
            yield X[a : min(n, a + block_rows)]

    return blocks


def _lognorm(B) -> sp.csr_matrix:
    if not sp.issparse(B):
        B = sp.csr_matrix(np.asarray(B))
    return log_normalize(B)


def _project(Xl: sp.csr_matrix, W: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """``(Xl - mean) @ W`` without densifying ``Xl`` (``offset = mean @ W``)."""
    S = np.asarray(Xl @ W, dtype=np.float64)
    S -= offset
    return S.astype(np.float32)


def _sign_flip(components: np.ndarray) -> np.ndarray:
    """Make the largest-|loading| entry of every row positive (scikit-learn's svd_flip, v-based)."""
    idx = np.argmax(np.abs(components), axis=1)
    signs = np.sign(components[np.arange(components.shape[0]), idx])
    signs[signs == 0] = 1.0
    return components * signs[:, None]


def pca_blocks(
    blocks: Callable[[], Iterable],
    n_genes: int,
    n_comps: int = 50,
    seed: int = 0,
    method: str = "auto",
    n_iter: int = 10,
    oversamples: int = 10,
    return_model: bool = False,
):
    """Out-of-core PCA of log-normalised counts; the scores of every cell, in order.

    Parameters
    ----------
    blocks
        Callable returning a *fresh* iterator over count blocks (scipy sparse or dense, rows =
        cells in order, columns = the ``n_genes`` model genes); it is called two or more times
        (once per pass). :func:`row_blocks` makes one from a matrix or a backed AnnData's ``X``.
    n_genes
        Number of columns of every block.
    n_comps
        Number of components (capped at ``min(n_cells, n_genes) - 1`` as
        :func:`~sctopic.data.counts.pca_embedding` does).
    seed
        Seed of the random start of the randomised path (the Gram path is deterministic).
    method
        ``"gram"`` (exact), ``"randomized"``, or ``"auto"``: ``"gram"`` up to
        :data:`GRAM_MAX_GENES` genes.
    n_iter, oversamples
        Krylov iterations (data passes) and extra columns per block of the randomised path.
    return_model
        Also return the :class:`PCAModel`.

    Returns
    -------
    scores
        ``(n_cells, n_comps)`` float32 array; with ``return_model`` a ``(scores, model)`` pair.
    """
    V = int(n_genes)
    if V < 2:
        raise InputError("too few cells or genes to compute a PCA representation.")
    if method == "auto":
        method = "gram" if V <= GRAM_MAX_GENES else "randomized"
    if method not in ("gram", "randomized"):
        raise InputError(f"method must be 'auto', 'gram' or 'randomized', got {method!r}.")
    if method == "gram":
        mean, comps, ev, total, n = _fit_gram(blocks, V, n_comps)
    else:
        mean, comps, ev, total, n = _fit_randomized(blocks, V, n_comps, seed, n_iter, oversamples)
    comps = _sign_flip(comps)
    W = np.ascontiguousarray(comps.T)
    offset = mean @ W
    scores = np.empty((n, comps.shape[0]), dtype=np.float32)
    row = 0
    for B in blocks():
        Xl = _lognorm(B)
        scores[row : row + Xl.shape[0]] = _project(Xl, W, offset)
        row += Xl.shape[0]
        del Xl
    if row != n:
        raise InputError(f"the blocks gave {row} rows on the projection pass but {n} before.")
    if not return_model:
        return scores
    model = PCAModel(mean=mean, components=comps, explained_variance=ev,
                     explained_variance_ratio=ev / total if total > 0 else np.zeros_like(ev),
                     n_cells=n, method=method)
    return scores, model


def _check_block(Xl, V: int) -> None:
    if Xl.shape[1] != V:
        raise InputError(f"a block has {Xl.shape[1]} columns; n_genes is {V}.")


def _n_comps(n_comps: int, n: int, V: int) -> int:
    c = int(min(n_comps, min(n, V) - 1))
    if c < 1:
        raise InputError("too few cells or genes to compute a PCA representation.")
    return c


def _fit_gram(blocks, V: int, n_comps: int):
    """Exact covariance eigendecomposition from a shifted float64 Gram matrix (one data pass)."""
    G = np.zeros((V, V), dtype=np.float64)
    total = np.zeros(V, dtype=np.float64)
    shift = None
    n = 0
    sub = max(64, _DENSE_VALUES // V)
    for B in blocks():
        Xl = _lognorm(B)
        _check_block(Xl, V)
        if shift is None and Xl.shape[0] > 0:
            shift = np.asarray(Xl.mean(axis=0), dtype=np.float64).ravel()
        for a in range(0, Xl.shape[0], sub):
            D = Xl[a : a + sub].toarray().astype(np.float64)
            total += D.sum(axis=0)
            D -= shift
            G += D.T @ D
            del D
        n += Xl.shape[0]
        del Xl
    c = _n_comps(n_comps, n, V)
    mean = total / n
    d = mean - shift
    G -= n * np.outer(d, d)
    G /= n - 1  # the covariance, in place
    total_var = float(np.trace(G))
    evals, evecs = scipy.linalg.eigh(G, subset_by_index=[V - c, V - 1], overwrite_a=True,
                                     check_finite=False)
    del G
    order = np.argsort(evals)[::-1]
    comps = np.ascontiguousarray(evecs[:, order].T)
    return mean, comps, np.maximum(evals[order], 0.0), total_var, n


def _fit_randomized(blocks, V: int, n_comps: int, seed: int, n_iter: int, oversamples: int):
    """Block Krylov iteration on the covariance, one data pass per block, then Rayleigh-Ritz."""
    total = np.zeros(V, dtype=np.float64)
    sumsq = np.zeros(V, dtype=np.float64)
    n = 0
    for B in blocks():
        Xl = _lognorm(B)
        _check_block(Xl, V)
        total += np.asarray(Xl.sum(axis=0), dtype=np.float64).ravel()
        sq = Xl.copy()
        sq.data = sq.data.astype(np.float64) ** 2
        sumsq += np.asarray(sq.sum(axis=0)).ravel()
        n += Xl.shape[0]
        del Xl, sq
    c = _n_comps(n_comps, n, V)
    mean = total / n
    total_var = float((sumsq - n * mean**2).sum() / (n - 1))
    b = int(min(V, c + max(0, int(oversamples))))
    rng = np.random.default_rng(seed)

    def apply_cov(Q: np.ndarray) -> np.ndarray:
        Z = np.zeros((V, Q.shape[1]), dtype=np.float64)
        mQ = mean @ Q
        for B in blocks():
            Xl = _lognorm(B)
            Y = np.asarray(Xl @ Q) - mQ  # centred block times Q
            Z += np.asarray(Xl.T @ Y)
            Z -= np.outer(mean, Y.sum(axis=0))
            del Xl, Y
        return Z / (n - 1)

    # Block Krylov: basis [Q0, C Q0, C^2 Q0, ...] orthonormalised as it grows; the covariance
    # applied to every block but the last is kept, so Rayleigh-Ritz needs one more pass only.
    Qs = [np.linalg.qr(rng.standard_normal((V, b)))[0]]
    CQs = []
    for _ in range(max(0, int(n_iter))):
        if sum(q.shape[1] for q in Qs) >= V:
            break
        Z = apply_cov(Qs[-1])
        CQs.append(Z)
        P = np.hstack(Qs)
        Z = Z - P @ (P.T @ Z)
        Z = Z - P @ (P.T @ Z)  # twice is enough (Kahan)
        Qn = np.linalg.qr(Z)[0]
        Qs.append(Qn[:, : max(0, min(b, V - P.shape[1]))])
    CQs.append(apply_cov(Qs[-1]))
    Q = np.hstack(Qs)
    Bm = Q.T @ np.hstack(CQs)
    evals, U = np.linalg.eigh((Bm + Bm.T) / 2)
    order = np.argsort(evals)[::-1][:c]
    comps = (Q @ U[:, order]).T
    return mean, np.ascontiguousarray(comps), np.maximum(evals[order], 0.0), total_var, n


def pca_of_counts(X, n_comps: int = 50, seed: int = 0) -> np.ndarray:
    """``n_comps`` PCs of log-normalised counts: :func:`~sctopic.data.counts.pca_embedding` in
    memory, :func:`pca_blocks` in passes over a backed matrix (anything with ``iter_blocks``)."""
    if hasattr(X, "iter_blocks"):
        return pca_blocks(lambda: (b for _, _, b in X.iter_blocks()), X.shape[1], n_comps)
    return pca_embedding(X, n_comps, seed)
