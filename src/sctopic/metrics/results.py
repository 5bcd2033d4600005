"""Reading a fitted model's ``result.h5ad`` (the contract the models write to).

Contract: ``adata.uns["sctopic"]["model"]`` names the model (e.g. ``"sce2tm"``); theta
(cells x topics, rows sum to 1) is ``adata.obsm["X_<model>"]``, the logits are
``adata.obsm["X_<model>_logits"]``; the K x V topic-gene matrix is
``adata.uns["<model>"]["topic_gene"]`` over ``adata.var_names``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from sctopic.errors import InputError

RESULT_FILE = "result.h5ad"


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


def model_outputs(adata, model: str | None = None) -> ModelOutputs:
    """Find the model name, theta and topic-gene matrix in a result AnnData.

    Parameters
    ----------
    adata
        The result AnnData.
    model
        Model name; default ``adata.uns["sctopic"]["model"]``, else the single ``X_<m>`` in
        ``obsm`` that has a ``uns[<m>]["topic_gene"]``.

    Returns
    -------
    ModelOutputs
        Fields are ``None`` when absent (e.g. a file with only an embedding).
    """
    if model is None:
        meta = adata.uns.get("sctopic", {})
        model = meta.get("model") if hasattr(meta, "get") else None
    if model is None:
        found = [
            key[2:] for key in adata.obsm.keys()
            if key.startswith("X_") and hasattr(adata.uns.get(key[2:], None), "get")
            and "topic_gene" in adata.uns[key[2:]]
        ]
        model = found[0] if len(found) == 1 else None
    if model is None:
        return ModelOutputs(None, None, None)
    model = str(model)
    theta = None
    key = f"X_{model}"
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
