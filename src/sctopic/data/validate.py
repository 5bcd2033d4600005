"""Checks on user input: counts, gene names, external embeddings.

Every check raises :class:`sctopic.errors.InputError` with a message that names the problem
and the fix, so that bad input never reaches torch as a confusing traceback.
"""
from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

from sctopic.errors import InputError

log = logging.getLogger(__name__)


def _values(X) -> np.ndarray:
    """The stored values of a dense or sparse matrix (only non-zeros for sparse)."""
    if sp.issparse(X):
        return np.asarray(X.data)
    return np.asarray(X).ravel()


def check_nonnegative(
    X,
    where: str,
    expected: str = "raw counts or log-normalised expression",
    fix: str = "raw counts or log-normalised (non-negative) expression, e.g. layer='counts'",
) -> None:
    """Raise unless ``X`` stores values and every one is finite and non-negative.

    Parameters
    ----------
    X
        Dense array or scipy sparse matrix (for sparse, its stored values are checked).
    where
        How to name the matrix in the error messages (e.g. ``"adata.layers['counts']"``).
    expected, fix
        What the caller needs and how to pass it, for the error messages.
    """
    vals = _values(X)
    if vals.size == 0:
        raise InputError(f"{where} holds no non-zero values.")
    bad = ~np.isfinite(vals)
    if bad.any():
        raise InputError(f"{where} holds {int(bad.sum())} NaN or infinite values; pass {expected} "
                         "without missing values.")
    vmin = float(vals.min())
    if vmin < 0:
        raise InputError(f"{where} holds negative values (min {vmin:.3g}): it looks scaled or centred, "
                         f"not {expected}. Pass {fix}.")


def check_counts(X, where: str = "adata.X") -> None:
    """Raise if ``X`` does not look like raw counts (finite, non-negative integers).

    Parameters
    ----------
    X
        Dense array or scipy sparse matrix, cells x genes.
    where
        How to name the matrix in the error message (e.g. ``"adata.layers['counts']"``).
    """
    vals = _values(X)
    if vals.size == 0:
        return
    if not np.issubdtype(vals.dtype, np.number):
        raise InputError(f"{where} has non-numeric dtype {vals.dtype}; raw counts are expected.")
    if np.issubdtype(vals.dtype, np.integer):
        if vals.min() < 0:
            raise InputError(
                f"{where} holds negative values (min {vals.min()}); raw counts are expected. "
                "Pass the raw count matrix, e.g. layer='counts'."
            )
        return
    check_nonnegative(vals, where, expected="raw counts",
                      fix="the raw count matrix, e.g. layer='counts' or the unscaled adata.raw")
    frac = np.abs(vals - np.rint(vals))
    if frac.max() > 1e-3:
        n_bad = int((frac > 1e-3).sum())
        raise InputError(
            f"{where} holds non-integer values ({n_bad} of {vals.size} stored entries, e.g. "
            f"{vals[np.argmax(frac)]:.4g}): it looks normalised or log-transformed. Topic models "
            "need raw counts: pass them with layer='counts' (or the layer holding them), or "
            "rebuild the AnnData from the raw count matrix."
        )


def check_unique_names(names: Sequence[str], what: str = "gene") -> None:
    """Raise if ``names`` has duplicates, naming a few and the fix."""
    idx = pd.Index(names)
    if idx.is_unique:
        return
    dups = [n for n, c in Counter(idx).items() if c > 1]
    fix = "adata.var_names_make_unique()" if what == "gene" else "adata.obs_names_make_unique()"
    raise InputError(
        f"{len(dups)} duplicate {what} names (e.g. {', '.join(map(str, dups[:5]))}); "
        f"make them unique first, e.g. with {fix}."
    )


def nonzero_masks(X) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks of cells and genes with a non-zero total count."""
    cell_tot = np.asarray(X.sum(axis=1)).ravel()
    gene_tot = np.asarray(X.sum(axis=0)).ravel()
    return cell_tot > 0, gene_tot > 0


def check_embedding(emb, obs_names: Sequence[str], name: str = "external embedding") -> np.ndarray:
    """Validate an external cell embedding and return it as a float32 array in ``obs_names`` order.

    Parameters
    ----------
    emb
        ``(n_cells, d)`` array, or a :class:`pandas.DataFrame` indexed by cell names (it is then
        reordered to ``obs_names``; every cell must be present).
    obs_names
        The cells of the expression data, in order.
    name
        How to call the embedding in error messages.
    """
    n = len(obs_names)
    if isinstance(emb, pd.DataFrame):
        index = emb.index.astype(str)
        missing = pd.Index(obs_names).difference(index)
        if len(missing):
            raise InputError(
                f"{name}: {len(missing)} of {n} cells of the data have no row in the embedding "
                f"(e.g. {', '.join(missing[:3])}). Its index must hold the data's obs_names."
            )
        emb = emb.set_axis(index).loc[list(obs_names)].to_numpy()
    if sp.issparse(emb):
        emb = emb.toarray()
    emb = np.asarray(emb)
    if emb.ndim != 2:
        raise InputError(f"{name} must be 2-dimensional (cells x dims), got shape {emb.shape}.")
    if emb.shape[0] != n:
        raise InputError(
            f"{name} has {emb.shape[0]} rows but the data has {n} cells; its rows must match "
            "obs_names one to one (store it in adata.obsm so it stays aligned)."
        )
    if emb.shape[1] == 0:
        raise InputError(f"{name} has no columns.")
    if not np.issubdtype(emb.dtype, np.number):
        raise InputError(f"{name} has non-numeric dtype {emb.dtype}.")
    emb = emb.astype(np.float32, copy=False)
    bad = ~np.isfinite(emb)
    if bad.any():
        rows = np.flatnonzero(bad.any(axis=1))
        raise InputError(
            f"{name} holds NaN or infinite values in {len(rows)} cells (e.g. rows "
            f"{', '.join(map(str, rows[:3]))}); recompute it or drop those cells."
        )
    if n > 1 and float(np.ptp(emb, axis=0).max()) == 0.0:
        raise InputError(
            f"{name} is constant (every cell has the same {emb.shape[1]} values): it carries nothing about "
            "the cells; recompute it, or train without an external view (cross_view=False, --no-cross-view)."
        )
    return emb


def check_label_column(col, key: str, what: str = "labels") -> None:
    """Refuse a column of continuous numbers given as labels (cell types, conditions, batches).

    A float column whose values are not all whole numbers (e.g. ``percent_mito``) would make every
    cell its own class; integer codes (``0.0, 1.0...``), text and categories pass.

    Raises
    ------
    InputError
        ``col`` holds non-integer floats, naming the column and the fix.
    """
    values = pd.Series(col)
    if not pd.api.types.is_float_dtype(values.dtype):
        return
    v = values.to_numpy(dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size and not np.all(v == np.round(v)):
        eg = ", ".join(f"{x:.4g}" for x in v[:3])
        raise InputError(
            f"{what} column {key!r} holds continuous numbers (e.g. {eg}; {len(np.unique(v))} distinct values), "
            "not categories: pass a column of cell types or conditions (text or categorical), or bin it "
            "first (pd.cut)."
        )
