"""Resolving the external view: a precomputed ``obsm`` matrix, a built-in offline view, a
gene-ontology knowledge view, or a foundation-model embedding computed from a local checkpoint.

What each view brings (read this before choosing one)
-----------------------------------------------------
scE2TM's Cross-view Encoder (CVE) is only as good as its external view. The paper's setting is
a **foundation-model embedding** (scGPT's 512-d cell embedding): knowledge learnt from tens of
millions of cells that the expression data alone do not hold. Everything else is weaker.

``"scgpt:DIR"`` -- scGPT cell embedding (:func:`sctopic.external.scgpt_embed`)
    The paper's setting. ``DIR`` is a standard scGPT checkpoint folder (``vocab.json``,
    ``args.json``, ``best_model.pt``); the forward pass is implemented here in pure torch, with
    every tensor of the embedding path checked by name and shape. Genes are matched by symbol.
    Slow on CPU (a 12-layer, 512-d model: see the timings in :mod:`sctopic.external.scgpt`);
    compute it once with ``sctopic embed`` and reuse the stored ``obsm`` key. A real embedding
    is no guarantee either: the scGPT embedding of the Wang 2016 pancreas cells made by the
    scE2TM authors clusters to ARI 0.29 / NMI 0.34 at the best Leiden resolution (457 cells,
    7 types; ``benchmarks/results/wang_scgpt_view.md``).
``"geneformer:DIR"`` -- Geneformer cell embedding (:func:`sctopic.external.geneformer_embed`)
    Needs the optional ``transformers`` package (``pip install sctopic[geneformer]``). ``DIR``
    holds the Hugging Face model (``config.json`` plus ``model.safetensors`` or
    ``pytorch_model.bin``) **and** the two Geneformer dictionaries, found by name:
    ``token_dictionary*.pkl|json`` and ``gene_median_dictionary*.pkl|json`` (``*`` may be e.g.
    ``_gc104M``). Genes are matched by Ensembl ID (``adata.var['gene_id']``, or ``var_names``
    when they are Ensembl IDs).
``"go"`` -- gene-ontology knowledge view (:func:`sctopic.external.go_embed`)
    Gene vectors from a truncated SVD of the bundled GO biological-process gene-by-term
    incidence; each cell is the expression-weighted mean of its genes' vectors. It brings
    curated outside knowledge, but little of it shows in clustering. Measured on the bundled
    pbmc68k_reduced (700 cells, 765 genes, 10 types; Leiden on a k = 15 graph of the view over
    resolutions 0.1..2.0, ARI/NMI at the best resolution; ``benchmarks/bench_wang_view.py``):
    GO view ARI 0.468 / NMI 0.555; ``"random"`` 0.464 +- 0.033 / 0.510 +- 0.050 (5 seeds);
    random unit gene vectors with the GO view's weighting 0.467 +- 0.008 / 0.522 +- 0.010;
    ``"pca"`` 0.530 / 0.663. The GO view clusters no better than random gene vectors and worse
    than PCA (other reasonable SVD weightings gave ARI 0.33 to 0.52: the choice matters more
    than the knowledge does).
``"pca"`` (the default when nothing is given)
    50 principal components of log-normalised expression. With it, the CVE becomes a
    self-distillation between the topic head and a cluster head on a denoised view of the same
    data: still useful (it pulls neighbours' topic mixtures together), but not the paper's
    setting.
``"random"``
    A Gaussian random projection of log-normalised expression to 50 dimensions: an honest
    baseline that keeps coarse distances but no learned structure or outside knowledge.
any ``adata.obsm`` key, or a ``(cells, d)`` array / DataFrame indexed by cell names
    A precomputed embedding of any width (e.g. written by ``sctopic embed``, or by scGPT's own
    code); it is checked for shape, cell order and finite values.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import anndata as ad
import numpy as np
import scipy.sparse as sp

from sctopic.data.counts import log_normalize, pca_embedding
from sctopic.data.validate import check_embedding
from sctopic.errors import InputError

#: views computed from the expression data alone (no outside knowledge)
BUILTIN_VIEWS = ("pca", "random")
#: offline knowledge views (bundled gene annotations)
KNOWLEDGE_VIEWS = ("go",)
#: foundation-model views, given as ``"<prefix>:DIR"``
MODEL_PREFIXES = ("scgpt", "geneformer")
N_COMPONENTS = 50


@dataclass
class ExternalView:
    """A resolved external view.

    Attributes
    ----------
    matrix
        ``(n_cells, d)`` float32 array aligned with the data's cells.
    name
        ``obsm`` key, built-in name (``"pca"``, ``"random"``, ``"go"``) or ``"scgpt:DIR"`` /
        ``"geneformer:DIR"``.
    builtin
        Whether it was computed from the expression data alone (no outside knowledge).
    info
        What the view was computed from: gene coverage, ignored checkpoint tensors, seconds...
    """

    matrix: np.ndarray
    name: str
    builtin: bool
    info: dict = field(default_factory=dict)


def random_projection(X_counts: sp.spmatrix, n_comps: int = N_COMPONENTS, seed: int = 0) -> np.ndarray:
    """Gaussian random projection of log-normalised counts to ``n_comps`` dimensions."""
    Xl = log_normalize(X_counts)
    rng = np.random.default_rng(seed)
    R = rng.standard_normal((Xl.shape[1], n_comps)).astype(np.float32) / np.sqrt(n_comps)
    return np.asarray(Xl @ R, dtype=np.float32)


def parse_view_spec(external: str) -> tuple[str, str | None]:
    """Split ``"scgpt:DIR"`` into ``("scgpt", "DIR")``; other strings give ``(name, None)``."""
    head, sep, rest = external.partition(":")
    if sep and head.lower() in MODEL_PREFIXES:
        if not rest:
            raise InputError(f"external view {external!r}: give the model folder, e.g. '{head}:/path/to/model'.")
        return head.lower(), rest
    return external, None


def resolve_view(
    adata: ad.AnnData,
    external,
    X_counts: sp.spmatrix,
    seed: int = 0,
    pca: np.ndarray | None = None,
    *,
    layer: str | None = None,
    gene_key: str | None = None,
    device: str = "cpu",
    progress: bool = False,
) -> ExternalView:
    """Return the external view asked for.

    Parameters
    ----------
    adata
        The data (cells must match ``X_counts`` rows).
    external
        ``None`` or ``"pca"`` (default view), ``"random"``, ``"go"``, ``"scgpt:DIR"``,
        ``"geneformer:DIR"``, the name of an ``adata.obsm`` key, or a ``(n_cells, d)`` array /
        DataFrame indexed by cell names. See the module documentation for what each brings.
    X_counts
        Raw counts of the model's genes (used for ``"pca"`` and ``"random"``).
    seed
        Seed of the random view, the PCA solver and the foundation models' gene sampling.
    pca
        Precomputed PCA of log-normalised counts, reused for the ``"pca"`` view.
    layer
        Layer of ``adata`` holding the expression used by ``"go"`` (raw counts) and the
        foundation models (counts; scGPT also accepts log-normalised values). These views use
        all genes of ``adata``, not only the model's.
    gene_key
        ``adata.var`` column with the gene identifiers the view needs (symbols for ``"go"`` and
        scGPT, Ensembl IDs for Geneformer); default ``var_names`` (Geneformer: ``var['gene_id']``
        when present).
    device
        Torch device of the foundation models (``"cpu"``, ``"cuda"``, ``"auto"``).
    progress
        Show a progress bar while a foundation model embeds the cells.

    Returns
    -------
    ExternalView
    """
    if external is None or (isinstance(external, str) and external == "pca"):
        mat = pca if pca is not None else pca_embedding(X_counts, N_COMPONENTS, seed)
        return ExternalView(mat.astype(np.float32), "pca", True)
    if isinstance(external, str) and external == "random":
        return ExternalView(random_projection(X_counts, N_COMPONENTS, seed), "random", True)
    # The adapters are imported on first use: scGPT and Geneformer load torch (and transformers),
    # the GO view loads sctopic.genesets; resolving "pca" or an obsm key needs none of them.
    if isinstance(external, str) and external == "go":
        from sctopic.external.go import go_embed

        mat, info = go_embed(adata, layer=layer, gene_key=gene_key, return_info=True)
        return ExternalView(mat, "go", False, info)
    if isinstance(external, str):
        kind, path = parse_view_spec(external)
        if kind == "scgpt":
            from sctopic.external.scgpt import scgpt_embed

            mat, info = scgpt_embed(adata, path, layer=layer, gene_key=gene_key, device=device,
                                    seed=seed, progress=progress, return_info=True)
            return ExternalView(mat, external, False, info)
        if kind == "geneformer":
            from sctopic.external.geneformer import geneformer_embed

            mat, info = geneformer_embed(adata, path, layer=layer, gene_id_key=gene_key,
                                         device=device, seed=seed, progress=progress,
                                         return_info=True)
            return ExternalView(mat, external, False, info)
        if external not in adata.obsm:
            avail = ", ".join(map(repr, adata.obsm.keys())) or "none"
            raise InputError(
                f"external view {external!r} is not in adata.obsm (available: {avail}); "
                f"or use a built-in view ({', '.join(BUILTIN_VIEWS + KNOWLEDGE_VIEWS)}) or a "
                "foundation model ('scgpt:DIR', 'geneformer:DIR')."
            )
        mat = check_embedding(adata.obsm[external], adata.obs_names, f"adata.obsm[{external!r}]")
        return ExternalView(mat, external, False)
    mat = check_embedding(external, adata.obs_names, "external embedding")
    return ExternalView(mat, "array", False)
