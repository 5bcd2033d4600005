"""Gene-ontology knowledge view: cells as expression-weighted means of GO gene vectors.

Gene vectors come from a truncated SVD of the bundled gene-by-term incidence of the GO
biological-process library (``go_bp_human``; ``go_bp_mouse`` when the data's genes match it
better): the incidence ``A`` (library genes x GO terms, 0/1) is factorised as
``A ~ U S V^T`` with ``n_components`` singular triplets (ARPACK with a fixed start vector, signs
fixed so that each component's largest entry is positive: deterministic), and a gene's vector
is its row of ``U S`` scaled to unit length, so that it encodes *which* processes the gene
takes part in rather than how heavily it is annotated. The SVD runs over the whole library, so
a gene's vector does not depend on the other genes of the dataset.

A cell's vector is the mean of the vectors of its genes weighted by log-normalised expression
(``log1p(count / total * 1e4)``, the total over all genes of the cell); genes without GO
annotation do not contribute, and cells that express none of the annotated genes get a zero
vector (with a warning).

What it brings: curated outside knowledge, but coarse (an annotation, not a model of cell
states). See :mod:`sctopic.external.views` for how it clusters against the ``"random"`` and
``"pca"`` views.
"""
from __future__ import annotations

import logging
import time
import warnings
from typing import Sequence

import anndata as ad
import numpy as np
import scipy.sparse as sp

from sctopic.data.counts import get_counts, log_normalize
from sctopic.errors import InputError
from sctopic.external.common import coverage_check, gene_names

log = logging.getLogger(__name__)

GO_LIBRARIES = ("go_bp_human", "go_bp_mouse")


def _pick_library(genes: Sequence[str], library) -> tuple:
    """The GO library to use (``"auto"``: human unless the mouse library matches more genes)."""
    from sctopic.genesets import GeneSetLibrary, load

    if isinstance(library, GeneSetLibrary):
        return library
    if library != "auto":
        return load(library)
    human = load("go_bp_human")
    names = set(genes)
    n_h = len(names.intersection(human.genes.tolist()))
    if n_h >= 0.5 * len(names):
        return human
    mouse = load("go_bp_mouse")
    n_m = len(names.intersection(mouse.genes.tolist()))
    return mouse if n_m > n_h else human


def go_gene_vectors(
    genes: Sequence[str],
    library="auto",
    n_components: int = 50,
) -> tuple[np.ndarray, np.ndarray, str]:
    """GO gene vectors of ``genes`` (unit rows of ``U S`` from an SVD of the gene-by-term incidence).

    Parameters
    ----------
    genes
        Gene symbols.
    library
        ``"auto"`` (``go_bp_human``, or ``go_bp_mouse`` when it matches more genes), a bundled
        name, a GMT path or a :class:`~sctopic.genesets.GeneSetLibrary`.
    n_components
        Dimension of the vectors.

    Returns
    -------
    vectors, found, library_name
        ``(len(genes), n_components)`` float32 (zero rows for genes not in the library), a
        boolean mask of the genes found, and the library's name.
    """
    from scipy.sparse.linalg import svds

    genes = [str(g) for g in genes]
    lib = _pick_library(genes, library)
    A = sp.csr_matrix(lib.incidence.T, dtype=np.float64)  # library genes x terms
    k = int(n_components)
    if k < 1 or k >= min(A.shape):
        raise InputError(f"n_components must be in 1..{min(A.shape) - 1}, got {n_components}.")
    v0 = np.random.default_rng(0).standard_normal(min(A.shape))
    u, s, _ = svds(A, k=k, v0=v0, solver="arpack")
    order = np.argsort(-s)
    u, s = u[:, order], s[order]
    # Fix each component's sign: its largest-magnitude gene loading is positive.
    sign = np.sign(u[np.argmax(np.abs(u), axis=0), np.arange(k)])
    sign[sign == 0] = 1.0
    G = u * s * sign
    norms = np.linalg.norm(G, axis=1, keepdims=True)
    G = G / np.where(norms > 0, norms, 1.0)
    index = {g: i for i, g in enumerate(lib.genes.tolist())}
    pos = np.array([index.get(g, -1) for g in genes], dtype=np.int64)
    found = pos >= 0
    out = np.zeros((len(genes), k), dtype=np.float32)
    out[found] = G[pos[found]]
    return out, found, lib.name


def go_embed(
    adata: ad.AnnData,
    *,
    layer: str | None = None,
    gene_key: str | None = None,
    library="auto",
    n_components: int = 50,
    min_coverage: float = 0.02,
    return_info: bool = False,
) -> np.ndarray | tuple[np.ndarray, dict]:
    """The GO knowledge view of every cell of ``adata``.

    A cell's view is the mean of its GO-annotated genes' vectors (:func:`go_gene_vectors`),
    weighted by its log-normalised expression; a cell without annotated genes gets zeros.

    Parameters
    ----------
    adata
        Cells x genes with raw counts (gene symbols as ``var_names`` or in ``gene_key``).
    layer
        Layer with the raw counts (default ``X``).
    gene_key
        ``adata.var`` column with gene symbols (default ``var_names``).
    library
        See :func:`go_gene_vectors`.
    n_components
        Dimension of the view (50).
    min_coverage
        Raise when fewer than this fraction of the genes have a GO annotation (e.g. Ensembl
        IDs); a warning is given below 20 %.
    return_info
        Also return a dict with the library, gene coverage and cells without annotated genes.

    Returns
    -------
    numpy.ndarray
        ``(n_cells, n_components)`` float32 (plus the info dict if asked). Deterministic.
    """
    t0 = time.perf_counter()
    X = get_counts(adata, layer)
    genes = gene_names(adata, gene_key)
    G, found, lib_name = go_gene_vectors(genes, library, n_components)
    coverage = coverage_check(genes, found, f"GO library {lib_name!r}", min_coverage,
                              "gene symbols", warn_below=0.2,
                              hint=" (pass gene_key= for a var column of symbols)")
    Xl = log_normalize(X)  # totals over all genes of the cell
    W = sp.csr_matrix(Xl[:, np.flatnonzero(found)])
    num = np.asarray(W @ G[found], dtype=np.float64)
    den = np.asarray(W.sum(axis=1)).ravel()
    empty = den <= 0
    out = np.zeros((X.shape[0], G.shape[1]), dtype=np.float32)
    out[~empty] = (num[~empty] / den[~empty, None]).astype(np.float32)
    if empty.any():
        warnings.warn(
            f"{int(empty.sum())} of {X.shape[0]} cells express no GO-annotated gene; their GO "
            "view is zero.", UserWarning, stacklevel=2,
        )
    info = {
        "model": "go",
        "library": lib_name,
        "n_components": int(G.shape[1]),
        "n_genes": len(genes),
        "n_genes_annotated": int(found.sum()),
        "gene_coverage": coverage,
        "cells_without_annotated_genes": int(empty.sum()),
        "seconds": time.perf_counter() - t0,
    }
    log.info("GO view: %s", info)
    return (out, info) if return_info else out
