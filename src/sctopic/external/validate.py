"""Checks of an external view against where it is used: out-of-core training, new cells."""
from __future__ import annotations

import numpy as np

from sctopic.data.validate import check_embedding
from sctopic.errors import InputError

#: Views built by sctopic from the training data itself: they cannot be rebuilt for new cells.
BUILT_IN_KEYS = (None, "pca", "random", "array")


def check_backed_view(external_key) -> None:
    """Out of core, only views that need no pass of a foundation model over the data."""
    if isinstance(external_key, str) and (external_key in ("random", "go") or ":" in external_key):
        raise InputError(
            f"external view {external_key!r} is not available with backed=True; compute it once "
            "(e.g. `sctopic embed`), store it in adata.obsm and pass its key."
        )


def view_for_new_cells(data, key: str | None, n_external: int) -> np.ndarray:
    """The external view of new cells ``data`` for a model that concatenates it to its input:
    ``data.obsm[key]``, checked for cell names, finite values and the trained width."""
    if key in BUILT_IN_KEYS or key not in data.obsm:
        raise InputError(
            "this model concatenates an external view to its input (external_concat=True); "
            f"new data need the same view in adata.obsm[{key!r}] (built-in views cannot be "
            "transferred to new cells)."
        )
    mat = check_embedding(data.obsm[key], data.obs_names, f"adata.obsm[{key!r}]")
    if mat.shape[1] != n_external:
        raise InputError(
            f"adata.obsm[{key!r}] has {mat.shape[1]} columns; the model was trained with {n_external}."
        )
    return mat
