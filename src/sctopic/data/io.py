"""Reading AnnData from memory or disk, and writing results atomically."""
from __future__ import annotations

import errno
import math
import os
import re
import shutil
import tempfile
from pathlib import Path

import anndata as ad
import numpy as np

from sctopic.errors import InputError, OutputError


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


def _umask() -> int:
    """The process's umask, read without changing it where the system says it (Linux)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore (the only portable way to read it)
    os.umask(mask)
    return mask


#: fsync errors that only mean "not supported here" (some file systems, folders on some systems)
_FSYNC_UNSUPPORTED = {errno.EINVAL, errno.EBADF, getattr(errno, "ENOTSUP", errno.EINVAL),
                      getattr(errno, "EOPNOTSUPP", errno.EINVAL)}


def fsync_path(path: "str | os.PathLike", strict: bool = False) -> None:
    """Flush a file or folder to disk (a no-op where the system does not allow it).

    With ``strict``, a failed flush (EIO, ENOSPC: the data may not be on disk) raises the
    :class:`OSError` instead of passing silently; "not supported here" still passes.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        if strict:
            raise
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        if strict and exc.errno not in _FSYNC_UNSUPPORTED:
            raise
    finally:
        os.close(fd)


_fsync = fsync_path


def _existing_ancestor(path: Path) -> Path:
    p = Path(os.path.abspath(path))
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def free_space(path: "str | os.PathLike") -> str:
    """Free space of the file system holding ``path`` (or its nearest existing folder), as text."""
    try:
        free = shutil.disk_usage(_existing_ancestor(Path(path))).free
    except OSError:
        return "unknown space"
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if free < 1024 or unit == "TiB":
            return f"{free:.0f} {unit}" if unit == "bytes" else f"{free:.1f} {unit}"
        free /= 1024
    return f"{free:.1f} TiB"  # pragma: no cover


#: errno values that mean "the destination is full", "read-only" or "not allowed"
_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG}
_READONLY = {errno.EROFS, errno.EACCES, errno.EPERM}


def _errno_of(exc: OSError) -> "int | None":
    """The errno of ``exc``, also where h5py only names it in the message (``errno = 28``)."""
    if exc.errno:
        return exc.errno
    m = re.search(r"errno\s*=\s*(\d+)", str(exc))
    if m:
        return int(m.group(1))
    if "No space left" in str(exc):
        return errno.ENOSPC
    return None


#: how torch's and other C++ writers word a failed write (they raise RuntimeError, not OSError)
_IO_WORDS = ("iostream error", "unexpected pos", "PytorchStreamWriter", "file write failed", "No space left",
             "write failed", "Input/output error")
#: below this much free space, a failed write is reported as a full disk
_NEARLY_FULL = 1 << 20


def _looks_like_io(exc: BaseException) -> bool:
    return any(w in str(exc) for w in _IO_WORDS)


def _as_os_error(exc: BaseException, path: Path) -> OSError:
    """An OSError standing for a writer's RuntimeError: ENOSPC when (almost) no space is left."""
    try:
        free = shutil.disk_usage(_existing_ancestor(Path(path).parent)).free
    except OSError:
        free = None
    if "No space left" in str(exc) or (free is not None and free < _NEARLY_FULL):
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return OSError(errno.EIO, str(exc).strip().splitlines()[0][:200] if str(exc).strip() else "I/O error")


def output_error(exc: OSError, path: "str | os.PathLike") -> OutputError:
    """One-line :class:`~sctopic.errors.OutputError` for a failed write of ``path``: the path,
    the cause, the free space when the disk is full, and what to do."""
    if isinstance(exc, OutputError):
        return exc
    path = Path(path)
    code = _errno_of(exc)
    if code in _FULL:
        msg = (f"no space left to write {path} ({free_space(path.parent)} free on its file system); "
               "free some space or write to another location. Nothing was written under that name.")
    elif code in _READONLY:
        msg = (f"cannot write {path}: {os.strerror(code)} (the destination is read-only or not "
               "yours); choose a writable location.")
    elif code == errno.ENOTDIR or (code == errno.EEXIST and not path.parent.is_dir()):
        msg = f"cannot write {path}: a part of its folder path is a file, not a folder; choose another location."
    else:
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        why = exc.strerror or text
        msg = f"could not write {path}: {why}; check the destination and retry."
    err = OutputError(msg)
    err.errno = code  # (no filename/strerror: str(err) stays the one-line message)
    err.path = str(path)
    return err


def describe_os_error(exc: OSError, out: "str | os.PathLike | None" = None) -> str:
    """One line for an :class:`OSError` that reached the command line: a full disk or a failed
    write as :func:`output_error` words it, any other (a file that cannot be read, say) with its
    cause and path."""
    if isinstance(exc, OutputError):
        return str(exc)
    code = _errno_of(exc)
    if code in _FULL or (exc.filename is None and out is not None):
        return str(output_error(exc, exc.filename or out))
    what = exc.strerror or (str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    where = f": {exc.filename}" if exc.filename else ""
    return f"{what}{where}; check the path and its permissions."


def check_writable(path: "str | os.PathLike") -> Path:
    """Fail now, naming the path, if ``path`` cannot be written (its folder is missing and cannot
    be made, is a file, or is read-only): before minutes of work, not after.

    Raises
    ------
    InputError
        ``path`` is a directory.
    OutputError
        Its folder cannot be made or written (the message names the cause and the fix).
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path} is a directory; give a file name.")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        os.close(fd)
        os.remove(probe)
    except OSError as exc:
        raise output_error(exc, path) from None
    return path


def check_writable_dir(path: "str | os.PathLike") -> Path:
    """:func:`check_writable` for a folder that will receive files (``--plots DIR``)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"{path} is a file; give a folder name.")
    check_writable(path / ".sctopic-probe")
    return path


def jsonable(obj):
    """``obj`` as plain Python data for :func:`json.dumps`.

    Dict keys become strings, tuples and arrays lists, numpy scalars Python scalars, and NaN
    and infinities ``None``; anything else is returned as it is.
    """
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def atomic_write(path: "str | os.PathLike", write) -> Path:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then rename it to ``path``.

    An interrupted write leaves no half-written file under the final name: the temporary file
    is flushed to disk before the rename, and the folder after it. The file gets the mode any
    new file would (0666 less the umask), not the temporary file's private 0600.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        os.close(fd)
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        _fsync(tmp, strict=True)  # a failed flush means the bytes may not be on disk: fail
        os.replace(tmp, path)
        _fsync(path.parent)
    except OSError as exc:
        # Disk full, read-only, I/O error (h5py reports them as OSError too): one clear error
        # naming the path and the space left; the temporary file is removed below.
        raise output_error(exc, path) from exc
    except RuntimeError as exc:
        # torch.save on a full disk raises RuntimeError ("iostream error", "unexpected pos"):
        # measured here, while the temporary file still holds the space it took
        if tmp is None or not _looks_like_io(exc):
            raise
        raise output_error(_as_os_error(exc, path), path) from exc
    finally:
        if tmp is not None and os.path.exists(tmp):
            try:
                os.remove(tmp)
            except OSError:
                pass
    return path


def write_h5ad_atomic(adata: ad.AnnData, path: "str | os.PathLike") -> Path:
    """Write ``adata`` to ``path`` atomically (temporary file, then rename)."""
    return atomic_write(path, adata.write_h5ad)


def write_text_atomic(text: str, path: "str | os.PathLike") -> Path:
    """Write text to ``path`` atomically (temporary file, then rename)."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def write_backed_result(adata: ad.AnnData, genes: "list[str]", path: "str | os.PathLike",
                        block_size: int = 8192) -> Path:
    """Write a backed AnnData restricted to ``genes`` to ``path``, streaming the matrices.

    The out-of-core counterpart of ``adata[:, genes].copy().write_h5ad(path)``: ``obs``,
    ``obsm``, ``uns`` and ``var``/``varm`` (the genes' rows) come from memory (where the model
    wrote its outputs), while ``X`` and each CSR or dense layer are copied from the file behind
    ``adata`` block by block as CSR float32, so memory stays bounded. ``obsp``/``varp`` are not
    copied. The file appears atomically.
    """
    import h5py
    import numpy as np
    import pandas as pd

    try:
        from anndata.io import write_elem
    except ImportError:  # anndata < 0.11
        from anndata.experimental import write_elem

    from sctopic.data.backed import BackedCounts

    src = Path(adata.filename)
    cols = pd.Index(adata.var_names.astype(str)).get_indexer(list(genes))
    if (cols < 0).any():
        raise InputError("some model genes are not in the data; cannot write the result.")
    with h5py.File(src, "r") as f:
        layers = list(f["layers"].keys()) if "layers" in f else []
        has_x = "X" in f

    def write(tmp: str) -> None:
        with h5py.File(tmp, "w") as f:
            f.attrs["encoding-type"] = "anndata"
            f.attrs["encoding-version"] = "0.1.0"
            write_elem(f, "obs", adata.obs)
            write_elem(f, "var", adata.var.iloc[cols])
            write_elem(f, "obsm", {k: np.asarray(v) for k, v in adata.obsm.items()})
            write_elem(f, "varm", {k: np.asarray(v)[cols] for k, v in adata.varm.items()})
            write_elem(f, "uns", dict(adata.uns))
            write_elem(f, "obsp", {})
            write_elem(f, "varp", {})
            if has_x:
                _stream_csr(f, "X", BackedCounts(src, None, cols=cols), block_size)
            lay = f.create_group("layers")
            lay.attrs["encoding-type"] = "dict"
            lay.attrs["encoding-version"] = "0.1.0"
            for name in layers:
                _stream_csr(lay, name, BackedCounts(src, name, cols=cols), block_size)

    return atomic_write(path, write)


def _stream_csr(parent, name: str, X, block_size: int) -> None:
    """Write ``X`` (a BackedCounts view) as an anndata CSR group, one block at a time."""
    import numpy as np

    n, V = X.shape
    g = parent.create_group(name)
    g.attrs["encoding-type"] = "csr_matrix"
    g.attrs["encoding-version"] = "0.1.0"
    g.attrs["shape"] = np.array([n, V], dtype=np.int64)
    kw = {"maxshape": (None,), "chunks": (1 << 18,)}
    d_data = g.create_dataset("data", shape=(0,), dtype=np.float32, **kw)
    d_ind = g.create_dataset("indices", shape=(0,), dtype=np.int32, **kw)
    d_ptr = g.create_dataset("indptr", shape=(n + 1,), dtype=np.int64)
    d_ptr[0] = 0
    total = 0
    for i0, i1, B in X.iter_blocks(block_size):
        k = int(B.nnz)
        d_data.resize((total + k,))
        d_ind.resize((total + k,))
        d_data[total:total + k] = B.data
        d_ind[total:total + k] = B.indices.astype(np.int32)
        d_ptr[i0 + 1:i1 + 1] = B.indptr[1:].astype(np.int64) + total
        total += k
