"""Reading cell-topic activities and topic-gene matrices from a model or a result AnnData."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from sctopic.errors import InputError

USES = ("theta", "logits")


@dataclass
class TopicActivity:
    """Cell-topic activities of one AnnData: what the downstream analyses work on."""

    adata: object
    values: np.ndarray  # cells x topics
    topic_names: list[str]
    model: str | None


def is_model(obj) -> bool:
    # Duck-typed so that this module never imports torch.
    return hasattr(obj, "get_cell_topics") and hasattr(obj, "model_name") and hasattr(obj, "module")


def topic_names_of(adata, model: str, n_topics: int) -> list[str]:
    """Topic names stored in ``uns[model]['topic_names']``, else ``topic_0..topic_{K-1}``."""
    entry = adata.uns.get(model, None) if model is not None else None
    names = entry.get("topic_names", None) if hasattr(entry, "get") else None
    if names is not None and len(names) == n_topics:
        return [str(n) for n in names]
    return [f"topic_{k}" for k in range(n_topics)]


def topic_activity(model_or_adata, use: str = "theta") -> TopicActivity:
    """Cell-topic activities of a fitted model (its training data) or of a result AnnData.

    Parameters
    ----------
    model_or_adata
        A trained :class:`~sctopic.SCE2TM` / :class:`~sctopic.SCETM` with data attached, an
        AnnData holding ``obsm['X_<model>']`` (as written by ``write_results``; the model
        name is read from ``uns['sctopic']['model']``), an ``.h5ad`` path or a ``sctopic fit``
        output directory.
    use
        ``"theta"`` (topic proportions, rows sum to 1) or ``"logits"`` (the topic logits
        delta, ``obsm['X_<model>_logits']``).
    """
    from sctopic.data.outputs import model_outputs, read_result

    if use not in USES:
        raise InputError(f"use must be one of {USES}, got {use!r}.")
    if is_model(model_or_adata):
        model = model_or_adata
        adata = model.adata
        if adata is None:
            raise InputError("the model has no data attached; pass an AnnData with its outputs, or load the model with adata=...")
        key = f"X_{model.model_name}" + ("_logits" if use == "logits" else "")
        if key in adata.obsm and adata.obsm[key].shape == (adata.n_obs, model.n_topics):
            values = np.asarray(adata.obsm[key], dtype=np.float64)
        else:
            values = model.get_cell_topics(None, logits=use == "logits").astype(np.float64)
        return TopicActivity(adata, values, list(model.topic_names), model.model_name)
    adata = read_result(model_or_adata)
    out = model_outputs(adata)
    if out.model is None:
        keys = ", ".join(map(str, adata.obsm.keys())) or "none"
        raise InputError(
            "no topics found in this AnnData: expected uns['sctopic']['model'] naming the model "
            f"and obsm['X_<model>'] (obsm keys: {keys}). Pass a fitted model or its result.h5ad."
        )
    key = f"X_{out.model}" + ("_logits" if use == "logits" else "")
    if key not in adata.obsm:
        raise InputError(f"obsm[{key!r}] not found; the AnnData holds no {use} of model {out.model!r}.")
    values = np.asarray(adata.obsm[key], dtype=np.float64)
    if values.ndim != 2 or values.shape[0] != adata.n_obs:
        raise InputError(f"obsm[{key!r}] has shape {values.shape}; expected cells x topics.")
    if not np.isfinite(values).all():
        raise InputError(f"obsm[{key!r}] contains NaN or infinite values.")
    return TopicActivity(adata, values, topic_names_of(adata, out.model, values.shape[1]), out.model)


def resolve_topics(topics, names: list[str]) -> list[int]:
    """Topic indices from names (``"topic_3"``), integers, or integer strings (``"3"``)."""
    if topics is None:
        return []
    if isinstance(topics, (str, int, np.integer)):
        topics = [topics]
    lookup = {n: i for i, n in enumerate(names)}
    out, missing = [], []
    for t in topics:
        if isinstance(t, (int, np.integer)) and not isinstance(t, bool):
            if 0 <= int(t) < len(names):
                out.append(int(t))
            else:
                missing.append(str(t))
        elif str(t) in lookup:
            out.append(lookup[str(t)])
        elif str(t).isdigit() and int(t) < len(names):
            out.append(int(t))
        else:
            missing.append(str(t))
    if missing:
        raise InputError(
            f"topics not present in the model: {', '.join(missing[:10])} (the model has "
            f"{len(names)} topics, {names[0]}..{names[-1]}; give names or indices 0..{len(names) - 1})."
        )
    return list(dict.fromkeys(out))


def obs_labels(adata, key: str, what: str = "groupby") -> pd.Series:
    """``adata.obs[key]`` as strings (NaN kept as NaN), with a clear error when it is missing."""
    if key not in adata.obs.columns:
        cols = ", ".join(map(str, adata.obs.columns[:30])) or "none"
        raise InputError(f"{what} column {key!r} is not in adata.obs (columns: {cols}).")
    col = adata.obs[key]
    from sctopic.data.validate import check_label_column

    check_label_column(col, key, what)
    return col.astype(object).where(col.notna(), None).map(lambda v: None if v is None else str(v))
