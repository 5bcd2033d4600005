"""Reading what a plot needs from an AnnData (the ``adata, key=...`` form of the plotting
functions, as in ``scanpy.pl``): the model's topics, topic-gene matrix, embeddings, and result
tables stored in ``uns``.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from sctopic.errors import InputError


def is_anndata(obj: Any) -> bool:
    """True for an AnnData (duck-typed, so this module never imports anndata eagerly)."""
    return all(hasattr(obj, a) for a in ("obs", "obsm", "uns", "var_names", "n_obs"))


def model_name(adata, model: str | None = None) -> str:
    """The model key of ``adata`` (``"sce2tm"``); ``model`` may be the key or ``"X_<model>"``."""
    from sctopic.data.outputs import model_key

    name = model_key(adata) if model is None else str(model)
    if name is None:
        raise InputError("no sctopic model outputs in this AnnData: pass model='<key>' (e.g. 'sce2tm').")
    if name.startswith("X_") and name[2:] in adata.uns:
        name = name[2:]
    if f"X_{name}" not in adata.obsm:
        keys = ", ".join(map(str, adata.obsm.keys())) or "none"
        raise InputError(f"obsm['X_{name}'] not found (obsm keys: {keys}).")
    return name


def topics(adata, model: str | None = None) -> tuple[np.ndarray, list[str], str]:
    """``(theta, topic_names, model)`` of ``adata``."""
    from sctopic.analysis.inputs import topic_names_of

    name = model_name(adata, model)
    theta = adata.obsm[f"X_{name}"]
    theta = np.asarray(theta.toarray() if hasattr(theta, "toarray") else theta, dtype=np.float64)
    return theta, topic_names_of(adata, name, theta.shape[1]), name


def topic_gene(adata, model: str | None = None) -> tuple[np.ndarray, list[str]]:
    """``(topic_gene (K, V), genes)`` of the model in ``adata``."""
    from sctopic.data.outputs import model_outputs

    out = model_outputs(adata, model_name(adata, model))
    if out.topic_gene is None:
        raise InputError(f"uns[{out.model!r}]['topic_gene'] not found: this AnnData holds no topic-gene matrix.")
    return out.topic_gene, list(out.genes or map(str, adata.var_names))


def obs_values(adata, key: str, model: str | None = None) -> np.ndarray:
    """One value per cell: an ``obs`` column, a topic name (its theta), or ``"dominant_topic"``."""
    if key in adata.obs.columns:
        col = adata.obs[key]
        return col.to_numpy() if not hasattr(col, "cat") else col.astype(object).to_numpy()
    theta, names, _ = topics(adata, model)
    if key == "dominant_topic":
        return np.asarray(names, dtype=object)[np.argmax(theta, axis=1)]
    if key in names:
        return theta[:, names.index(key)]
    cols = ", ".join(map(str, list(adata.obs.columns)[:15]))
    raise InputError(f"{key!r} is neither an obs column ({cols}), a topic name nor 'dominant_topic'.")


def basis_coords(adata, basis: str | None, model: str | None = None, seed: int = 0) -> np.ndarray:
    """``(n, 2)`` coordinates from ``obsm[basis]`` (``"umap"`` means ``"X_umap"``).

    Without ``basis``: ``X_umap`` when present, else ``X_<model>_umap``, which is computed from the
    model's theta (:func:`~sctopic.plotting.umap_coords`) and stored there the first time.
    """
    if basis is not None:
        key = basis if basis in adata.obsm else f"X_{basis}"
        if key not in adata.obsm:
            keys = ", ".join(map(str, adata.obsm.keys())) or "none"
            raise InputError(f"obsm[{basis!r}] not found (obsm keys: {keys}).")
        return np.asarray(adata.obsm[key])[:, :2]
    if "X_umap" in adata.obsm:
        return np.asarray(adata.obsm["X_umap"])[:, :2]
    theta, _, name = topics(adata, model)
    key = f"X_{name}_umap"
    if key not in adata.obsm:
        adata.obsm[key] = umap_coords(theta, seed=seed)
    return np.asarray(adata.obsm[key])[:, :2]


def uns_entry(adata, key: str, what: str) -> Any:
    """``adata.uns[key]``, with an error that says what was expected and how to make it."""
    if key not in adata.uns:
        keys = ", ".join(map(str, adata.uns.keys())) or "none"
        raise InputError(f"uns[{key!r}] not found (uns keys: {keys}); {what}.")
    return adata.uns[key]


def umap_coords(x: np.ndarray, *, n_neighbors: int = 15, metric: str = "euclidean", seed: int = 0) -> np.ndarray:
    """Two-dimensional UMAP (umap-learn, one thread) of the rows of ``x``.

    Parameters
    ----------
    x
        Rows to embed (e.g. cells x topics theta).
    n_neighbors
        UMAP neighbourhood (reduced automatically for few rows).
    metric
        Distance (``"euclidean"``, ``"cosine"``...).
    seed
        Random state (same seed, same layout).

    Returns
    -------
    numpy.ndarray
        ``(n, 2)`` coordinates.
    """
    import umap

    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] < 4:
        raise InputError(f"need at least 4 rows to embed, got shape {x.shape}.")
    reducer = umap.UMAP(n_neighbors=int(min(n_neighbors, x.shape[0] - 1)), metric=metric,
                        random_state=seed, n_jobs=1)
    return np.asarray(reducer.fit_transform(x), dtype=np.float64)
