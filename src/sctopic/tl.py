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


def differential_topics(adata, groupby: str, *, key_added: str = "differential_topics", **kwargs):
    """:func:`sctopic.analysis.differential_topics` on ``adata``, the table stored in
    ``adata.uns[key_added]`` (read by :func:`sctopic.plotting.volcano` and
    :func:`~sctopic.plotting.topic_heatmap` in their ``adata, key=...`` form).

    Parameters
    ----------
    adata
        An AnnData holding a model's outputs.
    groupby
        ``obs`` column with the groups.
    key_added
        ``uns`` key of the table.
    kwargs
        Passed to :func:`sctopic.analysis.differential_topics` (``groups``, ``reference``...).

    Returns
    -------
    pandas.DataFrame
        The table (also in ``adata.uns[key_added]``).
    """
    from sctopic.analysis.differential import differential_topics as run

    table = run(adata, groupby, **kwargs)
    adata.uns[key_added] = table
    return table


def enrichment(adata, genesets="go_bp_human", *, method: str = "ora", model: str | None = None,
               top_n: int = 10, key_added: str = "enrichment", **kwargs):
    """ORA (or GSEA) of the topics of the model in ``adata``, the table stored in
    ``adata.uns[key_added]`` (read by :func:`sctopic.plotting.enrichment_manhattan`).

    Parameters
    ----------
    adata
        An AnnData holding a model's outputs.
    genesets
        Bundled library name, GMT path or a loaded library.
    method
        ``"ora"`` (top ``top_n`` genes per topic) or ``"gsea"``.
    model
        Model key (default ``uns["sctopic"]["model"]``).
    top_n
        ORA: top genes per topic (among the genes present in the library).
    key_added
        ``uns`` key of the table.
    kwargs
        Passed to :func:`sctopic.genesets.ora` or :func:`~sctopic.genesets.gsea`.

    Returns
    -------
    pandas.DataFrame
    """
    from sctopic import genesets as gs
    from sctopic.data.outputs import model_outputs

    if method not in ("ora", "gsea"):
        raise InputError(f"method must be 'ora' or 'gsea', got {method!r}.")
    out = model_outputs(adata, model)
    if out.topic_gene is None:
        raise InputError("no topic-gene matrix in this AnnData (uns['<model>']['topic_gene']).")
    lib = gs.load(genesets) if isinstance(genesets, (str, bytes)) or hasattr(genesets, "__fspath__") else genesets
    genes = out.genes or [str(g) for g in adata.var_names]
    if method == "ora":
        table = gs.ora(out.topic_gene, genes, lib, top_n=top_n, **kwargs)
    else:
        table = gs.gsea(out.topic_gene, genes, lib, **kwargs)
    adata.uns[key_added] = table
    return table


__all__ = ["differential_topics", "enrichment", "topics_to_obs"]


def topic_specificity(adata, groupby: str, *, key_added: str = "topic_specificity", **kwargs):
    """:func:`sctopic.analysis.topic_specificity` on ``adata`` (fold enrichment of each topic's
    use in each group over the other cells), the table stored in ``adata.uns[key_added]``.

    Parameters
    ----------
    adata
        An AnnData holding a model's outputs.
    groupby
        ``obs`` column with the groups (cell types).
    key_added
        ``uns`` key of the table.
    kwargs
        Passed to :func:`sctopic.analysis.topic_specificity` (``min_cells``).

    Returns
    -------
    pandas.DataFrame
        Topics x groups (also in ``adata.uns[key_added]``).
    """
    from sctopic.analysis.specificity import topic_specificity as run

    table = run(adata, groupby, **kwargs)
    adata.uns[key_added] = table
    return table
