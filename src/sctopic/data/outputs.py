"""The AnnData output contract: what a fitted model writes, and how every reader finds it.

One place for the keys, imported by the models (writing), metrics, analysis, report, bench
and the CLI (reading). For a model key ``m`` (the model's ``model_name``, e.g. ``"sce2tm"``,
or the ``key_added`` the user chose):

* ``obsm["X_m"]``: theta, cells x topics, rows sum to 1;
* ``obsm["X_m_logits"]``: the topic logits delta (posterior means);
* ``varm["m_topic_gene"]``: the topic-gene matrix over ``var_names`` (genes x topics; NaN
  rows for genes the model does not use), and ``varm["m_gene_embedding"]`` likewise;
* ``uns["m"]``: ``topic_gene`` (K x V over ``uns["m"]["genes"]``), ``genes``,
  ``topic_names``, ``params`` (a JSON string of the model's settings) and, for embedded
  models, ``topic_embedding``;
* ``uns["sctopic"]["model"] = "m"``: which model the file's outputs belong to, and
  ``uns["sctopic"]["clustering_key"]``: the ``obsm`` key of the representation the model
  recommends for neighbours, clustering and UMAP (``X_m`` or ``X_m_logits``; see
  :func:`clustering_key`). ``sctopic evaluate`` and the benchmark cluster it by default.

``sctopic fit`` writes the AnnData as ``result.h5ad`` (:data:`RESULT_FILE`) in its output
directory. No torch here: the evaluation layers read results without it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from sctopic.errors import InputError

RESULT_FILE = "result.h5ad"
#: Representations a model may recommend for clustering: theta or the logits delta.
CLUSTERING_REPRESENTATIONS = ("theta", "logits")
#: ``uns`` entry naming the model whose outputs the AnnData holds.
META_KEY = "sctopic"


def theta_key(model: str) -> str:
    """``obsm`` key of theta."""
    return f"X_{model}"


def logits_key(model: str) -> str:
    """``obsm`` key of the topic logits delta."""
    return f"X_{model}_logits"


def write_outputs(adata, model: str, *, logits: np.ndarray, theta: np.ndarray, topic_gene: np.ndarray,
                  genes: list[str], topic_names: list[str], params: str,
                  gene_embedding: np.ndarray | None = None,
                  topic_embedding: np.ndarray | None = None, clustering: str = "theta"):
    """Write a model's outputs into ``adata`` under the key ``model`` (see the module docstring).

    Parameters
    ----------
    adata
        The cells the outputs belong to (theta and logits have one row per cell); its
        ``var_names`` may differ from ``genes`` (genes are aligned by name).
    model
        The key (``"sce2tm"``, ``"scetm"``, or the user's ``key_added``).
    logits, theta
        ``(n_cells, K)``.
    topic_gene
        ``(K, V)`` over ``genes``.
    genes, topic_names
        The model's V genes and K topic names.
    params
        JSON string of the model's settings.
    gene_embedding, topic_embedding
        ``(V, L)`` and ``(K, L)`` for embedded models, else None.
    clustering
        The representation the model recommends for clustering, ``"theta"`` or ``"logits"``:
        its key is written to ``uns["sctopic"]["clustering_key"]``.

    Returns
    -------
    AnnData
        ``adata``, written in place.
    """
    if clustering not in CLUSTERING_REPRESENTATIONS:
        raise ValueError(f"clustering must be one of {CLUSTERING_REPRESENTATIONS}, got {clustering!r}")
    adata.obsm[logits_key(model)] = logits
    adata.obsm[theta_key(model)] = theta
    pos = _positions(adata.var_names, genes)
    if gene_embedding is not None:
        adata.varm[f"{model}_gene_embedding"] = _over_var(gene_embedding, pos, adata.n_vars)
    adata.varm[f"{model}_topic_gene"] = _over_var(topic_gene.T, pos, adata.n_vars)
    uns = {
        "topic_gene": topic_gene.astype(np.float32),
        "genes": np.asarray(genes, dtype=object),
        "topic_names": np.asarray(topic_names, dtype=object),
        "params": params,
    }
    if topic_embedding is not None:
        uns["topic_embedding"] = topic_embedding
    adata.uns[model] = uns
    adata.uns[META_KEY] = {"model": model,
                           "clustering_key": logits_key(model) if clustering == "logits" else theta_key(model)}
    return adata


def clustering_key(adata, model: str | None = None) -> str | None:
    """``obsm`` key of the representation to cluster: ``uns["sctopic"]["clustering_key"]`` when
    it names a present ``obsm`` entry (and ``model`` is the file's model or None), else theta's
    key ``X_<model>`` when present, else None. Files written before the key existed get theta."""
    file_model = model_key(adata)
    model = file_model if model is None else str(model)
    if model is None:
        return None
    meta = adata.uns.get(META_KEY, {})
    key = meta.get("clustering_key") if hasattr(meta, "get") and model == file_model else None
    if key is not None and str(key) in adata.obsm:
        return str(key)
    return theta_key(model) if theta_key(model) in adata.obsm else None


def _positions(var_names, genes: list[str]) -> np.ndarray:
    import pandas as pd

    return pd.Index(var_names.astype(str)).get_indexer(genes)


def _over_var(rows: np.ndarray, pos: np.ndarray, n_vars: int) -> np.ndarray:
    """Rows of the model's genes placed at their ``var_names`` positions; NaN elsewhere."""
    ok = pos >= 0
    out = np.full((n_vars, rows.shape[1]), np.nan, dtype=np.float32)
    out[pos[ok]] = rows[ok]
    return out


def read_result(adata_or_dir):
    """AnnData from an AnnData, an ``.h5ad`` path, or a model output directory.

    A directory must hold ``result.h5ad``.
    """
    import anndata as ad

    from sctopic.data.io import read_adata

    if isinstance(adata_or_dir, ad.AnnData):
        return adata_or_dir
    if not isinstance(adata_or_dir, (str, os.PathLike)):
        raise InputError(
            f"expected an AnnData, an .h5ad file or a model output directory, got {type(adata_or_dir).__name__}."
        )
    path = Path(adata_or_dir)
    if not path.exists():
        raise InputError(f"no such file or directory: {path}")
    if path.is_dir():
        inner = path / RESULT_FILE
        if not inner.is_file():
            raise InputError(f"{path} holds no {RESULT_FILE}; pass a model output directory or an .h5ad file.")
        path = inner
    return read_adata(path)


@dataclass
class ModelOutputs:
    """What evaluation needs from a result: model name, theta, topic-gene matrix."""

    model: str | None
    theta: np.ndarray | None
    topic_gene: np.ndarray | None
    #: Gene names of the topic-gene columns (``uns[<model>]['genes']`` when the model used a
    #: subset of ``var_names``, e.g. highly variable genes; otherwise ``var_names``).
    genes: list[str] | None = None


def _dense(x) -> np.ndarray:
    return np.asarray(x.toarray() if sp.issparse(x) else x, dtype=np.float64)


def model_key(adata) -> str | None:
    """The model key of a result: ``uns["sctopic"]["model"]``, else the single ``X_<m>`` in
    ``obsm`` that has a ``uns[<m>]["topic_gene"]``, else None."""
    meta = adata.uns.get(META_KEY, {})
    model = meta.get("model") if hasattr(meta, "get") else None
    if model is None:
        found = [
            key[2:] for key in adata.obsm.keys()
            if key.startswith("X_") and hasattr(adata.uns.get(key[2:], None), "get")
            and "topic_gene" in adata.uns[key[2:]]
        ]
        model = found[0] if len(found) == 1 else None
    return None if model is None else str(model)


def model_outputs(adata, model: str | None = None) -> ModelOutputs:
    """Find the model name, theta and topic-gene matrix in a result AnnData.

    Parameters
    ----------
    adata
        The result AnnData.
    model
        Model key; default :func:`model_key`.

    Returns
    -------
    ModelOutputs
        Fields are ``None`` when absent (e.g. a file with only an embedding).
    """
    model = model_key(adata) if model is None else str(model)
    if model is None:
        return ModelOutputs(None, None, None)
    theta = None
    key = theta_key(model)
    if key in adata.obsm:
        theta = _dense(adata.obsm[key])
    topic_gene = None
    entry = adata.uns.get(model, None)
    if hasattr(entry, "get") and entry.get("topic_gene", None) is not None:
        topic_gene = _dense(entry["topic_gene"])
        if not np.isfinite(topic_gene).all():
            raise InputError(f"uns['{model}']['topic_gene'] contains NaN or infinite values")
        genes = entry.get("genes", None)
        if genes is not None and topic_gene.ndim == 2 and len(genes) == topic_gene.shape[1] != adata.n_vars:
            # Models trained on a gene subset store their genes: score over those.
            return ModelOutputs(model, theta, topic_gene, [str(g) for g in genes])
        if topic_gene.ndim == 2 and topic_gene.shape[0] == adata.n_vars != topic_gene.shape[1]:
            topic_gene = topic_gene.T  # stored genes x topics: accept, as genesets does
        if topic_gene.ndim != 2 or topic_gene.shape[1] != adata.n_vars:
            raise InputError(
                f"uns['{model}']['topic_gene'] has shape {topic_gene.shape}; expected "
                f"topics x {adata.n_vars} genes (one column per var_name)."
            )
        if theta is not None and theta.shape[1] != topic_gene.shape[0]:
            raise InputError(
                f"obsm['{key}'] has {theta.shape[1]} topics but uns['{model}']['topic_gene'] "
                f"has {topic_gene.shape[0]}."
            )
    return ModelOutputs(model, theta, topic_gene, list(map(str, adata.var_names)))


__all__ = ["META_KEY", "RESULT_FILE", "ModelOutputs", "logits_key", "model_key", "model_outputs",
           "read_result", "theta_key", "write_outputs"]
