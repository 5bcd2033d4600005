"""Getting a validated raw-count matrix out of an AnnData, and simple transforms of it."""
from __future__ import annotations

import logging
import warnings

import anndata as ad
import numpy as np
import scipy.sparse as sp

from sctopic.data.validate import check_counts, check_unique_names, nonzero_masks
from sctopic.errors import InputError

log = logging.getLogger(__name__)


def layer_matrix(adata: ad.AnnData, layer: str | None):
    """``adata.X`` or ``adata.layers[layer]`` (loaded when backed) and its name for messages.

    Raises a clear error for a missing layer, an empty matrix, or data with no cells or genes;
    the values are not checked.
    """
    if layer is None:
        X, where = adata.X, "adata.X"
    else:
        if layer not in adata.layers:
            avail = ", ".join(map(repr, adata.layers.keys())) or "none"
            raise InputError(f"layer {layer!r} not found in adata.layers (available: {avail}).")
        X, where = adata.layers[layer], f"adata.layers[{layer!r}]"
    if X is None:
        raise InputError(f"{where} is empty; expression values are expected.")
    if getattr(adata, "isbacked", False) and layer is None:
        X = X[:]  # load a backed matrix (the out-of-core path is separate)
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise InputError(f"the data are empty ({adata.n_obs} cells x {adata.n_vars} genes).")
    return X, where


def get_counts(adata: ad.AnnData, layer: str | None = None) -> sp.csr_matrix:
    """Return the raw counts of ``adata`` as a float32 CSR matrix, after validation.

    Parameters
    ----------
    adata
        Cells x genes AnnData.
    layer
        ``None`` for ``adata.X``, otherwise the name of a layer of ``adata.layers``.
    """
    X, where = layer_matrix(adata, layer)
    check_counts(X, where)
    check_unique_names(adata.var_names, "gene")
    check_unique_names(adata.obs_names, "cell")
    X = sp.csr_matrix(X, dtype=np.float32)
    X.sort_indices()
    return X


def drop_empty(adata: ad.AnnData, layer: str | None = None) -> ad.AnnData:
    """Return ``adata`` without cells and genes of zero total count, warning with the numbers.

    Returns the same object when nothing is dropped, otherwise a copy.
    """
    X = adata.X if layer is None else adata.layers[layer]
    cells, genes = nonzero_masks(X)
    n_c, n_g = int((~cells).sum()), int((~genes).sum())
    if n_c == 0 and n_g == 0:
        return adata
    if cells.sum() == 0:
        raise InputError("every cell has zero counts; check that the right layer was passed.")
    warnings.warn(
        f"dropping {n_c} of {adata.n_obs} cells and {n_g} of {adata.n_vars} genes with zero "
        "counts (they carry no information for the model).",
        UserWarning,
        stacklevel=3,
    )
    return adata[cells, genes].copy()


def log_normalize(X: sp.spmatrix, target_sum: float = 1e4) -> sp.csr_matrix:
    """log1p of counts scaled to ``target_sum`` per cell (scanpy's normalize_total + log1p)."""
    X = sp.csr_matrix(X, dtype=np.float32, copy=True)
    lib = np.asarray(X.sum(axis=1)).ravel()
    lib[lib == 0] = 1.0
    X = sp.diags((target_sum / lib).astype(np.float32)) @ X
    X.data = np.log1p(X.data)
    return sp.csr_matrix(X)


def select_genes(
    adata: ad.AnnData,
    n_top_genes: int = 5000,
    layer: str | None = None,
    flavor: str = "seurat",
) -> ad.AnnData:
    """Keep the ``n_top_genes`` most variable genes, as the scE2TM paper does.

    Counts are library-normalised and log1p-transformed on a copy, highly variable genes are
    ranked with :func:`scanpy.pp.highly_variable_genes` (``flavor="seurat"`` by default), and the
    AnnData subset to them is returned with its raw counts unchanged. ``n_top_genes=0`` or a
    number at least the gene count keeps every gene.

    Parameters
    ----------
    adata
        AnnData with raw counts in ``X`` or ``layer``.
    n_top_genes
        Number of genes to keep; 0 keeps all.
    layer
        Layer holding the raw counts (``None`` for ``X``).
    flavor
        scanpy flavour for the dispersion ranking.

    Returns
    -------
    AnnData
        A copy restricted to the selected genes (``var['highly_variable_rank']`` added), or
        ``adata`` itself if all genes are kept.
    """
    import scanpy as sc

    if n_top_genes < 0:
        raise InputError(f"n_top_genes must be >= 0 (0 keeps all genes), got {n_top_genes}.")
    if n_top_genes == 0 or n_top_genes >= adata.n_vars:
        return adata
    X = get_counts(adata, layer)
    tmp = ad.AnnData(X=log_normalize(X), obs=adata.obs[[]], var=adata.var[[]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sc.pp.highly_variable_genes(tmp, n_top_genes=n_top_genes, flavor=flavor, subset=False)
    disp = tmp.var["dispersions_norm"].to_numpy()
    disp = np.where(np.isfinite(disp), disp, -np.inf)
    order = np.argsort(-disp, kind="stable")[:n_top_genes]
    keep = np.zeros(adata.n_vars, dtype=bool)
    keep[order] = True
    out = adata[:, keep].copy()
    rank = np.empty(adata.n_vars, dtype=np.int64)
    rank[order] = np.arange(n_top_genes)
    out.var["highly_variable_rank"] = rank[keep]
    return out


def pca_embedding(X_counts: sp.spmatrix, n_comps: int = 50, seed: int = 0) -> np.ndarray:
    """PCA of log-normalised counts (the representation the expression graph is built on).

    scikit-learn's ``PCA(svd_solver="arpack")``: a truncated SVD of the centred data by ARPACK's
    Lanczos iterations (:func:`scipy.sparse.linalg.svds`), centring the sparse matrix implicitly
    instead of densifying it; ``seed`` sets ARPACK's random start vector.
    """
    from sklearn.decomposition import PCA

    Xl = log_normalize(X_counts)
    n_comps = int(min(n_comps, min(Xl.shape) - 1))
    if n_comps < 1:
        raise InputError("too few cells or genes to compute a PCA representation.")
    pca = PCA(n_components=n_comps, svd_solver="arpack", random_state=seed)
    return pca.fit_transform(Xl).astype(np.float32)
