"""Resolving the external view: a precomputed ``obsm`` matrix, or a built-in offline view.

Built-in views (computed from the expression data itself, so they bring no outside knowledge):

``"pca"`` (the default when no key is given)
    50 principal components of log-normalised expression. With it, the Cross-view Encoder
    becomes a self-distillation between the topic head and a cluster head on a denoised view of
    the same data: still useful (it pulls neighbours' topic mixtures together), but it is not
    the paper's setting, which needs a foundation-model embedding (scGPT and the like).
``"random"``
    A Gaussian random projection of log-normalised expression to 50 dimensions: an honest
    baseline that keeps coarse distances but no learned structure.

Adapters for foundation models plug in here later (an issue of their own): anything returning a
cells x d matrix aligned with ``obs_names``.
"""
from __future__ import annotations

from dataclasses import dataclass

import anndata as ad
import numpy as np
import scipy.sparse as sp

from sctopic.data.counts import log_normalize, pca_embedding
from sctopic.data.validate import check_embedding
from sctopic.errors import InputError

BUILTIN_VIEWS = ("pca", "random")
N_COMPONENTS = 50


@dataclass
class ExternalView:
    """A resolved external view.

    Attributes
    ----------
    matrix
        ``(n_cells, d)`` float32 array aligned with the data's cells.
    name
        ``obsm`` key or built-in name.
    builtin
        Whether it was computed from the expression data (no outside knowledge).
    """

    matrix: np.ndarray
    name: str
    builtin: bool


def random_projection(X_counts: sp.spmatrix, n_comps: int = N_COMPONENTS, seed: int = 0) -> np.ndarray:
    """Gaussian random projection of log-normalised counts to ``n_comps`` dimensions."""
    Xl = log_normalize(X_counts)
    rng = np.random.default_rng(seed)
    R = rng.standard_normal((Xl.shape[1], n_comps)).astype(np.float32) / np.sqrt(n_comps)
    return np.asarray(Xl @ R, dtype=np.float32)


def resolve_view(
    adata: ad.AnnData,
    external,
    X_counts: sp.spmatrix,
    seed: int = 0,
    pca: np.ndarray | None = None,
) -> ExternalView:
    """Return the external view asked for.

    Parameters
    ----------
    adata
        The data (cells must match ``X_counts`` rows).
    external
        ``None`` or ``"pca"`` (default view), ``"random"``, the name of an ``adata.obsm`` key,
        or a ``(n_cells, d)`` array / DataFrame indexed by cell names.
    X_counts
        Raw counts of the model's genes (used for built-in views).
    seed
        Seed of the random view and of the PCA solver.
    pca
        Precomputed PCA of log-normalised counts, reused for the ``"pca"`` view.
    """
    if external is None or (isinstance(external, str) and external == "pca"):
        mat = pca if pca is not None else pca_embedding(X_counts, N_COMPONENTS, seed)
        return ExternalView(mat.astype(np.float32), "pca", True)
    if isinstance(external, str) and external == "random":
        return ExternalView(random_projection(X_counts, N_COMPONENTS, seed), "random", True)
    if isinstance(external, str):
        if external not in adata.obsm:
            avail = ", ".join(map(repr, adata.obsm.keys())) or "none"
            raise InputError(
                f"external view {external!r} is not in adata.obsm (available: {avail}); "
                f"or use a built-in view: {', '.join(BUILTIN_VIEWS)}."
            )
        mat = check_embedding(adata.obsm[external], adata.obs_names, f"adata.obsm[{external!r}]")
        return ExternalView(mat, external, False)
    mat = check_embedding(external, adata.obs_names, "external embedding")
    return ExternalView(mat, "array", False)
