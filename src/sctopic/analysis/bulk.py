"""Scoring bulk samples (e.g. TCGA tumours) by each topic's gene program."""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import scipy.sparse as sp

from sctopic.analysis.inputs import is_model, topic_names_of
from sctopic.errors import InputError

METHODS = ("weighted_zscore",)
BETA_SCALES = ("auto", "weights", "logits")


def topic_gene_matrix(model_or_topic_gene) -> tuple[pd.DataFrame, str]:
    """The topic-gene matrix (topics x genes) and its scale, ``"weights"`` or ``"logits"``.

    Accepts a trained model (SCETM's ``alpha rho`` are logits, SCE2TM's beta are
    non-negative weights), a result AnnData / ``.h5ad`` / ``sctopic fit`` directory, or a
    DataFrame (topics x genes; its scale is ``"logits"`` when it holds a negative value).
    """
    if isinstance(model_or_topic_gene, pd.DataFrame):
        frame = model_or_topic_gene
        scale = "logits" if (frame.to_numpy(dtype=float) < 0).any() else "weights"
    elif is_model(model_or_topic_gene):
        frame = model_or_topic_gene.get_topic_gene()
        scale = "logits" if model_or_topic_gene.model_name == "scetm" else "weights"
    else:
        from sctopic.data.outputs import model_outputs, read_result

        adata = read_result(model_or_topic_gene)
        out = model_outputs(adata)
        if out.topic_gene is None:
            raise InputError("no topic-gene matrix found (uns['<model>']['topic_gene']); pass a fitted "
                             "model, its result.h5ad or a topics x genes DataFrame.")
        names = topic_names_of(adata, out.model, out.topic_gene.shape[0])
        frame = pd.DataFrame(out.topic_gene, index=names, columns=out.genes)
        scale = "logits" if out.model == "scetm" or (out.topic_gene < 0).any() else "weights"
    frame = frame.astype(np.float64)
    if frame.shape[0] < 1 or frame.shape[1] < 1:
        raise InputError(f"the topic-gene matrix is empty ({frame.shape}).")
    if not np.isfinite(frame.to_numpy()).all():
        raise InputError("the topic-gene matrix holds NaN or infinite values.")
    frame.columns = frame.columns.astype(str)
    frame.index = frame.index.astype(str)
    return frame, scale


def _bulk_matrix(bulk_adata, layer: str | None) -> tuple[np.ndarray, list[str], list[str]]:
    from sctopic.data.io import read_adata

    bulk = read_adata(bulk_adata)
    if layer is None:
        X = bulk.X
    elif layer in bulk.layers:
        X = bulk.layers[layer]
    else:
        raise InputError(f"layer {layer!r} not found in the bulk data (layers: {', '.join(bulk.layers.keys()) or 'none'}).")
    X = np.asarray(X.toarray() if sp.issparse(X) else X, dtype=np.float64)
    if not np.isfinite(X).all():
        raise InputError("the bulk expression holds NaN or infinite values; impute or drop them first.")
    names = pd.Index(bulk.var_names.astype(str))
    if not names.is_unique:
        raise InputError("the bulk data have duplicate gene names; run var_names_make_unique() or aggregate them.")
    return X, list(names), [str(s) for s in bulk.obs_names]


def score_bulk(
    model_or_topic_gene,
    bulk_adata,
    *,
    n_top: int = 50,
    method: str = "weighted_zscore",
    layer: str | None = None,
    beta_scale: str = "auto",
) -> pd.DataFrame:
    """Score each bulk sample by each topic's gene program (weighted z-score).

    Method (``"weighted_zscore"``): every gene is z-scored across the bulk samples (mean 0,
    standard deviation 1, ``ddof=1``); each topic's score of a sample is the weighted mean of
    the z-scores of the topic's ``n_top`` highest-weighted genes that are present (and not
    constant) in the bulk data. Weights are the topic's beta values of those genes,
    normalised to sum 1; when beta holds logits (SCETM's ``alpha rho``), the weights are the
    softmax of the logits within those genes. Bulk expression should be on a log scale
    (e.g. log2 TPM or log counts); z-scoring makes genes of different levels comparable.

    Parameters
    ----------
    model_or_topic_gene
        A trained model, a result AnnData / ``.h5ad`` / ``sctopic fit`` directory, or a
        topics x genes DataFrame.
    bulk_adata
        Samples x genes AnnData (or ``.h5ad`` path) of log-scale bulk expression; genes are
        matched by name.
    n_top
        Top genes per topic taken from the model (before intersecting with the bulk genes).
    method
        ``"weighted_zscore"`` (the only method so far).
    layer
        Layer of the bulk data to use (default ``X``).
    beta_scale
        ``"auto"`` (logits for SCETM or a matrix with negative values, else weights),
        ``"weights"`` or ``"logits"``.

    Returns
    -------
    pandas.DataFrame
        Samples x topics scores. ``attrs["genes_used"]`` maps each topic to the genes used
        (in order of weight), ``attrs["weights"]`` to their weights; topics with no gene in
        the bulk data score NaN (with a warning).

    Raises
    ------
    InputError
        No model gene is in the bulk data, the bulk data hold NaN, or an option is unknown.
    """
    if method not in METHODS:
        raise InputError(f"method must be one of {METHODS}, got {method!r}.")
    if beta_scale not in BETA_SCALES:
        raise InputError(f"beta_scale must be one of {BETA_SCALES}, got {beta_scale!r}.")
    if int(n_top) < 1:
        raise InputError(f"n_top must be >= 1, got {n_top}.")
    frame, scale = topic_gene_matrix(model_or_topic_gene)
    if beta_scale != "auto":
        scale = beta_scale
    X, bulk_genes, samples = _bulk_matrix(bulk_adata, layer)
    if X.shape[0] < 2:
        raise InputError("at least 2 bulk samples are needed to z-score genes.")
    pos = pd.Index(bulk_genes).get_indexer(frame.columns)
    if not (pos >= 0).any():
        raise InputError(
            f"no gene of the model ({frame.shape[1]} genes, e.g. {', '.join(frame.columns[:5])}) is in the "
            f"bulk data ({len(bulk_genes)} genes, e.g. {', '.join(bulk_genes[:5])}); check that both use the "
            "same identifiers (symbols vs Ensembl IDs) and species."
        )
    sd = X.std(0, ddof=1)
    Z = (X - X.mean(0)) / np.where(sd > 0, sd, 1.0)
    usable = np.zeros(len(bulk_genes) + 1, dtype=bool)  # last slot: "absent"
    usable[:-1] = sd > 0
    beta = frame.to_numpy()
    n_top = int(min(n_top, beta.shape[1]))
    order = np.argsort(-beta, axis=1, kind="stable")[:, :n_top]
    K = beta.shape[0]
    W = np.zeros((len(bulk_genes), K))
    genes_used, weights, empty = {}, {}, []
    for k in range(K):
        cols = order[k]
        p = pos[cols]
        ok = usable[np.where(p >= 0, p, len(bulk_genes))]
        cols, p = cols[ok], p[ok]
        name = frame.index[k]
        if len(cols) == 0:
            genes_used[name], weights[name] = [], []
            empty.append(name)
            continue
        b = beta[k, cols]
        if scale == "logits":
            w = np.exp(b - b.max())
        else:
            if (b < 0).any():
                raise InputError("beta_scale='weights' needs non-negative topic-gene values; use 'logits'.")
            w = b if b.sum() > 0 else np.ones_like(b)
        w = w / w.sum()
        W[p, k] = w
        genes_used[name] = [str(frame.columns[c]) for c in cols]
        weights[name] = [float(v) for v in w]
    scores = Z @ W
    if empty:
        scores[:, [frame.index.get_loc(t) for t in empty]] = np.nan
        warnings.warn(f"{len(empty)} topics have none of their top {n_top} genes in the bulk data and score "
                      f"NaN: {', '.join(empty[:10])}.", UserWarning, stacklevel=2)
    out = pd.DataFrame(scores, index=pd.Index(samples, name="sample"), columns=list(frame.index))
    out.attrs.update(genes_used=genes_used, weights=weights, n_top=n_top, method=method, beta_scale=scale,
                     n_shared_genes=int((pos >= 0).sum()))
    return out
