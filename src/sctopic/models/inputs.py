"""A model's input data: training counts over the chosen genes, new data aligned to a model's
genes, and batch codes. AnnData in, arrays out; no torch."""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from sctopic.data.counts import get_counts, select_genes
from sctopic.data.io import read_adata
from sctopic.data.validate import nonzero_masks
from sctopic.errors import InputError


@dataclass
class TrainingCounts:
    """The data a model trains on.

    Attributes
    ----------
    adata
        The AnnData (in memory, or opened ``backed="r"`` out of core).
    X
        Counts of all cells over the model's genes (scipy CSR, or a ``BackedCounts``).
    genes
        The model's genes, in the columns' order.
    train_cells
        Positions of the cells with non-zero counts (the ones trained on).
    mean_library
        Mean total count of the trained cells over the model's genes (the reconstruction's
        scale: loss weights that must not depend on sequencing depth are set from it).
    """

    adata: ad.AnnData
    X: object
    genes: list[str]
    train_cells: np.ndarray
    mean_library: float = float("nan")


def training_counts(adata, layer: str | None, n_top_genes: int | None, backed: bool = False) -> TrainingCounts:
    """Read, check and gene-select the training data (see the models' ``n_top_genes``, ``backed``).

    Genes without counts are dropped (with a warning); cells without counts are left out of
    training (with a warning) but keep their place in ``X``.
    """
    if n_top_genes is not None and n_top_genes < 0:
        raise InputError(f"n_top_genes must be >= 0 (0 keeps all genes), got {n_top_genes}.")
    if backed:
        return _backed_counts(adata, layer, n_top_genes)
    adata = read_adata(adata)
    if getattr(adata, "isbacked", False):
        adata = adata.to_memory()
    data = select_genes(adata, n_top_genes, layer) if n_top_genes else adata
    X = get_counts(data, layer)
    cells, genes = nonzero_masks(X)
    if not genes.all():
        _warn_zero_genes(genes)
        X = X[:, genes]
    _check_training_cells(cells)
    X = sp.csr_matrix(X)
    train = np.flatnonzero(cells)
    return TrainingCounts(adata, X, [str(g) for g in data.var_names[genes]], train,
                          float(X.sum() / len(train)))


def _backed_counts(adata, layer: str | None, n_top_genes: int | None) -> TrainingCounts:
    """Out-of-core data: ``X`` stays on disk; one pass validates it and ranks the genes."""
    from sctopic.data.backed import BackedCounts, scan_counts, select_genes_backed
    from sctopic.data.validate import check_unique_names

    path = _backed_path(adata)
    adata = read_adata(path, backed=True)
    check_unique_names(adata.var_names, "gene")
    check_unique_names(adata.obs_names, "cell")
    full = BackedCounts(path, layer)
    if full.shape[0] == 0 or full.shape[1] == 0:
        raise InputError(f"the data are empty ({full.shape[0]} cells x {full.shape[1]} genes).")
    stats = scan_counts(full)
    if n_top_genes and n_top_genes < full.shape[1]:
        cols = select_genes_backed(stats, int(n_top_genes))
    else:
        cols = np.arange(full.shape[1])
    keep = stats.gene_totals[cols] > 0
    if not keep.all():
        _warn_zero_genes(keep)
        cols = cols[keep]
    X = full.subset(cols=cols)
    totals = stats.cell_totals if len(cols) == full.shape[1] else _row_totals(X)
    cells = totals > 0
    _check_training_cells(cells)
    return TrainingCounts(adata, X, [str(g) for g in adata.var_names[cols]], np.flatnonzero(cells),
                          float(totals[cells].mean()))


def aligned_counts(adata: ad.AnnData, genes: list[str], layer: str | None, allow_missing_genes: bool):
    """Counts of ``adata`` over ``genes``, in that order (a ``BackedCounts`` view for a backed
    AnnData). Missing genes raise, or with ``allow_missing_genes`` are zeros (with a warning)."""
    names = pd.Index(adata.var_names.astype(str))
    if not names.is_unique:
        raise InputError("the data have duplicate gene names; run adata.var_names_make_unique().")
    pos = names.get_indexer(genes)
    missing = int((pos < 0).sum())
    if getattr(adata, "isbacked", False) and not missing:
        from sctopic.data.backed import BackedCounts

        return BackedCounts(adata.filename, layer, cols=pos)
    if missing:
        frac = missing / len(genes)
        eg = ", ".join(g for g, p in zip(genes, pos) if p < 0)[:200]
        if not allow_missing_genes:
            raise InputError(
                f"{missing} of the model's {len(genes)} genes ({frac:.1%}) are missing from "
                f"the data (e.g. {eg}). Use data with the same genes, or pass "
                "allow_missing_genes=True to fill them with zeros."
            )
        warnings.warn(
            f"{missing} of the model's {len(genes)} genes ({frac:.1%}) are missing from "
            "the data and are filled with zeros.", UserWarning, stacklevel=4,
        )
    X = get_counts(adata, layer)
    present = np.flatnonzero(pos >= 0)
    # A 0/1 selection matrix maps data columns to model columns in one sparse product.
    S = sp.csr_matrix(
        (np.ones(len(present), np.float32), (pos[present], present)),
        shape=(X.shape[1], len(genes)),
    )
    out = sp.csr_matrix(X @ S)
    out.sort_indices()  # a fixed summation order: same input, bit-identical output
    return out


def batch_codes(adata: ad.AnnData, batch_key: str | None) -> tuple[list[str], np.ndarray | None]:
    """Batch categories and each cell's code from ``adata.obs[batch_key]`` (None: no batches)."""
    if batch_key is None:
        return [], None
    if batch_key not in adata.obs.columns:
        cols = ", ".join(map(str, adata.obs.columns[:20]))
        raise InputError(f"batch_key {batch_key!r} is not a column of adata.obs (columns: {cols}).")
    col = adata.obs[batch_key]
    if col.isna().any():
        raise InputError(
            f"adata.obs[{batch_key!r}] has {int(col.isna().sum())} missing values; fill or drop "
            "those cells first."
        )
    cat = pd.Categorical(col.astype(str))
    categories = [str(c) for c in cat.categories]
    sizes = np.bincount(np.asarray(cat.codes), minlength=len(categories))
    if len(categories) > 1 and (sizes < 2).any():
        lone = [c for c, s in zip(categories, sizes) if s < 2]
        raise InputError(
            f"batch {lone[0]!r} of adata.obs[{batch_key!r}] has only 1 cell ({len(lone)} such batches): its "
            "gene intercepts would be fitted to that cell alone; merge it with a similar batch or drop it."
        )
    if len(categories) < 2:
        warnings.warn(f"adata.obs[{batch_key!r}] holds a single batch; batch terms have no effect.",
                      UserWarning, stacklevel=4)
    return categories, np.asarray(cat.codes, dtype=np.int64)


def pathway_matrix(genes, gene_sets, min_size: int = 5, max_size: int = 500) -> tuple[np.ndarray, list[str], Any]:
    """Standardised pathway-by-gene matrix for p-scETM.

    Each kept set (``min_size``..``max_size`` genes overlapping ``genes``) becomes a row of its
    0/1 membership over ``genes``, standardised to mean 0 and standard deviation 1 across
    genes (scETM's p-scETM input).

    Parameters
    ----------
    genes
        The model's genes, in order.
    gene_sets
        Bundled library name (``"go_bp_human"``...), GMT path, or a
        :class:`~sctopic.genesets.GeneSetLibrary`.
    min_size, max_size
        Overlap bounds of kept sets.

    Returns
    -------
    matrix, names, report
        ``(P, V)`` float32 matrix, the P set names, and the match report (coverage).
    """
    from sctopic.genesets import load

    matched = load(gene_sets).match(list(genes), min_size=min_size, max_size=max_size)
    inc = matched.incidence.toarray().astype(np.float64)
    mean = inc.mean(1, keepdims=True)
    sd = inc.std(1, keepdims=True)
    sd[sd == 0] = 1.0
    return ((inc - mean) / sd).astype(np.float32), list(matched.set_names), matched.report


def _warn_zero_genes(keep: np.ndarray) -> None:
    warnings.warn(
        f"dropping {int((~keep).sum())} of {len(keep)} genes with zero counts from the "
        "model (they carry no information).", UserWarning, stacklevel=5,
    )


def _check_training_cells(cells: np.ndarray) -> None:
    """Refuse fewer than 2 cells with counts; warn about the cells left out of training."""
    if cells.sum() < 2:
        raise InputError("fewer than 2 cells have non-zero counts; nothing to train on.")
    if not cells.all():
        warnings.warn(
            f"{int((~cells).sum())} of {len(cells)} cells have zero counts over the model's "
            "genes; they are left out of training (their outputs are still computed).",
            UserWarning, stacklevel=5,
        )


def _backed_path(adata) -> str:
    """The file behind ``backed=True`` input: a path, or an AnnData opened with backed='r'."""
    if isinstance(adata, (str, os.PathLike)):
        return str(adata)  # read_adata checks it (existence, suffix, HDF5) with clear messages
    if isinstance(adata, ad.AnnData) and getattr(adata, "isbacked", False):
        return str(adata.filename)
    raise InputError(
        "backed=True trains from a file on disk: pass the .h5ad path (or an AnnData opened "
        "with anndata.read_h5ad(path, backed='r')), not an in-memory AnnData."
    )


def _row_totals(X) -> np.ndarray:
    """Per-row totals of a backed matrix (one pass)."""
    out = np.zeros(X.shape[0], dtype=np.float64)
    for i0, i1, B in X.iter_blocks():
        out[i0:i1] = np.asarray(B.sum(axis=1)).ravel()
    return out


__all__ = ["TrainingCounts", "aligned_counts", "batch_codes", "pathway_matrix", "training_counts"]
