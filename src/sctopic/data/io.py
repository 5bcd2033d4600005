"""Reading AnnData from memory or disk, and writing results atomically."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import anndata as ad

from sctopic.errors import InputError


def read_adata(data: "ad.AnnData | str | os.PathLike", backed: bool = False) -> ad.AnnData:
    """Return an AnnData given an AnnData or a path to an ``.h5ad`` file.

    Parameters
    ----------
    data
        An :class:`anndata.AnnData` (returned as is) or a path to an ``.h5ad`` file.
    backed
        Open the file in backed (read-only, on-disk) mode instead of loading ``X``.
    """
    if isinstance(data, ad.AnnData):
        return data
    if not isinstance(data, (str, os.PathLike)):
        raise InputError(f"expected an AnnData or a path to an .h5ad file, got {type(data).__name__}.")
    path = Path(data)
    if not path.exists():
        raise InputError(f"no such file: {path}")
    if path.is_dir():
        raise InputError(f"{path} is a directory; pass the .h5ad file inside it.")
    if path.suffix not in {".h5ad", ".h5"}:
        raise InputError(f"{path} is not an .h5ad file; convert it with anndata/scanpy first.")
    try:
        return ad.read_h5ad(path, backed="r" if backed else None)
    except OSError as exc:
        raise InputError(f"could not read {path} as h5ad: {exc}") from exc


def atomic_write(path: "str | os.PathLike", write) -> Path:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then rename it to ``path``.

    An interrupted write leaves no half-written file under the final name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def write_h5ad_atomic(adata: ad.AnnData, path: "str | os.PathLike") -> Path:
    """Write ``adata`` to ``path`` atomically (temporary file, then rename)."""
    return atomic_write(path, adata.write_h5ad)


def write_text_atomic(text: str, path: "str | os.PathLike") -> Path:
    """Write text to ``path`` atomically (temporary file, then rename)."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))
