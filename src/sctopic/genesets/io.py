"""Reading a fitted model's topic-gene matrix from its ``result.h5ad`` (anndata/h5py, no torch)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from sctopic.errors import InputError

RESULT_FILE = "result.h5ad"


def _read_elem(group):
    try:  # anndata >= 0.11
        from anndata.io import read_elem
    except ImportError:  # pragma: no cover - older anndata
        from anndata.experimental import read_elem
    return read_elem(group)


def result_path(dir_or_h5ad: str | os.PathLike) -> Path:
    """The ``result.h5ad`` of a model output directory (or the given ``.h5ad`` itself)."""
    path = Path(dir_or_h5ad).expanduser()
    if path.is_dir():
        path = path / RESULT_FILE
        if not path.is_file():
            raise InputError(f"{str(path.parent)!r} has no {RESULT_FILE}; is it a fitted-model output directory?")
        return path
    if not path.exists():
        raise InputError(f"{str(path)!r} does not exist (expected a fitted-model directory or .h5ad)")
    if path.suffix != ".h5ad":
        raise InputError(f"{str(path)!r} is neither a directory nor an .h5ad file")
    return path


def read_topic_gene(dir_or_h5ad: str | os.PathLike) -> tuple[np.ndarray, list[str], str]:
    """Read the topic-gene matrix written by ``sctopic fit``.

    Only ``uns`` and ``var`` are read (not the expression matrix). The model name is
    ``uns["sctopic"]["model"]`` and the matrix ``uns[<model>]["topic_gene"]``, a
    ``(K, V)`` array over ``var_names`` (a ``(V, K)`` array is transposed).

    Parameters
    ----------
    dir_or_h5ad
        Fitted-model output directory containing ``result.h5ad``, or the file itself.

    Returns
    -------
    topic_gene : numpy.ndarray
        ``(K, V)`` float64.
    genes : list of str
        The ``V`` gene names (``var_names``).
    model : str
        The model name (e.g. ``"sce2tm"``).
    """
    import h5py

    path = result_path(dir_or_h5ad)
    try:
        with h5py.File(path, "r") as f:
            if "uns" not in f or "sctopic" not in f["uns"]:
                raise InputError(f"{path} has no uns['sctopic']; was it written by 'sctopic fit'?")
            meta = _read_elem(f["uns/sctopic"])
            model = meta.get("model") if isinstance(meta, dict) else None
            if model is None:
                raise InputError(f"{path}: uns['sctopic'] has no 'model' entry")
            model = str(model)
            key = f"uns/{model}/topic_gene"
            if key not in f:
                raise InputError(f"{path} has no uns[{model!r}]['topic_gene'] matrix")
            topic_gene = np.asarray(_read_elem(f[key]), dtype=np.float64)
            var = _read_elem(f["var"])
    except OSError as exc:
        raise InputError(f"cannot read {path} as HDF5 ({exc})") from exc
    genes = [str(g) for g in var.index]
    if topic_gene.ndim != 2:
        raise InputError(f"{path}: topic_gene has shape {topic_gene.shape}, expected (topics, genes)")
    if topic_gene.shape[1] != len(genes):
        if topic_gene.shape[0] == len(genes):
            topic_gene = topic_gene.T
        else:
            raise InputError(
                f"{path}: topic_gene has shape {topic_gene.shape} but the data has {len(genes)} genes"
            )
    return topic_gene, genes, model
