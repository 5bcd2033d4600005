"""Tools in scanpy's ``tl`` spirit: functions that read and write an AnnData in place.

No torch: they work on a fitted model's ``result.h5ad`` as well as on the AnnData a model wrote
its outputs into (the contract of :mod:`sctopic.data.outputs`).
"""
from __future__ import annotations

import numpy as np

from sctopic.data.outputs import logits_key, model_key, theta_key
from sctopic.errors import InputError


def topics_to_obs(adata, key: str | None = None, *, logits: bool = False, prefix: str = "") -> list[str]:
    """Copy a model's per-cell topic values from ``obsm`` into named ``obs`` columns.

    scanpy's plotting functions colour by ``obs`` columns, so after this
    ``sc.pl.umap(adata, color="topic_3")`` works directly.

    Parameters
    ----------
    adata
        An AnnData holding a model's outputs (``obsm["X_<model>"]``).
    key
        The model (``"sce2tm"``) or its ``obsm`` key (``"X_sce2tm"``); default the model named
        by ``uns["sctopic"]["model"]``.
    logits
        Copy the topic logits (``obsm["X_<model>_logits"]``) instead of the proportions theta.
    prefix
        Prepended to each column name (e.g. ``"sce2tm_"`` when several models share the data).

    Returns
    -------
    list of str
        The ``obs`` columns written, one per topic, named after ``uns[<model>]["topic_names"]``
        (``topic_0``, ``topic_1``...). Existing columns of those names are replaced.
    """
    model = model_key(adata) if key is None else str(key)
    if model is None:
        raise InputError("no model outputs found: pass key='X_<model>' or an AnnData written by an sctopic model.")
    if model.startswith("X_") and model in adata.obsm:
        model = model[2:]
    if model.endswith("_logits"):
        model, logits = model[: -len("_logits")], True
    obsm_key = logits_key(model) if logits else theta_key(model)
    if obsm_key not in adata.obsm:
        keys = ", ".join(map(str, adata.obsm.keys())) or "none"
        raise InputError(f"obsm[{obsm_key!r}] not found (obsm keys: {keys}).")
    values = np.asarray(adata.obsm[obsm_key], dtype=np.float64)
    entry = adata.uns.get(model, {})
    names = entry.get("topic_names", None) if hasattr(entry, "get") else None
    names = [str(n) for n in names] if names is not None and len(names) == values.shape[1] \
        else [f"topic_{k}" for k in range(values.shape[1])]
    columns = [f"{prefix}{n}" for n in names]
    for j, col in enumerate(columns):
        adata.obs[col] = values[:, j]
    return columns


__all__ = ["topics_to_obs"]
