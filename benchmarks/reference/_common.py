"""Helpers shared by the benchmark runners (run_sce2tm.py, run_scetm.py, run_sctopic.py).

Each runner runs in its own virtual environment (the authors' packages need their own), so
this module uses only the standard library and numpy.  It defines:

* the input format written by ``benchmarks/bench_vs_reference.py``: one ``input.npz``
  (raw counts as CSR arrays, the 512-d external embedding, gene / cell names, labels),
  saved without pickled objects;
* thread pinning (the same settings for every contender);
* peak memory (``resource.getrusage(...).ru_maxrss``);
* per-epoch timing summaries;
* atomic writes of the outputs (temporary name, then rename).
"""
from __future__ import annotations

import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np

THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS")


def pin_threads_env(n: int) -> None:
    """Set the BLAS/OpenMP/numba thread variables; call before importing numpy users."""
    for var in THREAD_ENV:
        os.environ[var] = str(n)


def pin_torch_threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)


def load_input(path: str | os.PathLike) -> dict:
    """Read ``input.npz``: returns dict with X (scipy CSR float32 counts) and the arrays."""
    import scipy.sparse as sp

    z = np.load(path, allow_pickle=False)
    X = sp.csr_matrix(
        (z["X_data"].astype(np.float32), z["X_indices"], z["X_indptr"]),
        shape=tuple(int(s) for s in z["X_shape"]),
    )
    out = {
        "X": X,
        "embedding": np.asarray(z["embedding"], dtype=np.float32),
        "genes": [str(g) for g in z["genes"]],
        "cells": [str(c) for c in z["cells"]],
        "labels": [str(c) for c in z["labels"]],
    }
    if "batches" in z.files:
        out["batches"] = [str(b) for b in z["batches"]]
    if out["embedding"].shape[0] != X.shape[0]:
        raise ValueError("embedding and counts have different numbers of cells")
    return out


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, MiB (Linux reports KiB)."""
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024.0


def current_rss_mb() -> float:
    try:
        with open("/proc/self/statm") as fh:
            pages = int(fh.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:  # pragma: no cover - non-Linux
        return float("nan")


def epoch_summary(epoch_seconds: list[float], split: int = 140) -> dict:
    """Mean seconds per epoch overall, for the first ``split`` epochs and for the rest."""
    e = np.asarray(epoch_seconds, dtype=float)
    out = {
        "n_epochs_timed": int(e.size),
        "seconds_per_epoch_mean": float(e.mean()) if e.size else None,
        "seconds_per_epoch_median": float(np.median(e)) if e.size else None,
        f"seconds_per_epoch_first{split}": float(e[:split].mean()) if e.size else None,
        f"seconds_per_epoch_after{split}": float(e[split:].mean()) if e.size > split else None,
    }
    # the first epoch pays one-off costs (allocations, lazy init); report the rest too
    out["seconds_per_epoch_mean_excl_first"] = float(e[1:].mean()) if e.size > 1 else None
    return out


def save_npy(path: Path, arr: np.ndarray) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp.npy")
    np.save(tmp, np.ascontiguousarray(arr))
    os.replace(tmp, path)


def save_json(path: Path, obj: dict) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as fh:
        json.dump(obj, fh, indent=1, default=_jsonable)
    os.replace(tmp, path)


def _jsonable(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def softmax_rows(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    a = a - a.max(axis=1, keepdims=True)
    np.exp(a, out=a)
    a /= a.sum(axis=1, keepdims=True)
    return a.astype(np.float32)


def environment(packages: list[str]) -> dict:
    """Versions of Python, torch and the named packages (for the result JSON)."""
    from importlib import metadata

    vers = {}
    for p in packages:
        try:
            vers[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            vers[p] = None
    import torch

    return {
        "python": sys.version.split()[0],
        "executable": sys.executable,
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "packages": vers,
    }


class Clock:
    """perf_counter stopwatch with named laps."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.laps: dict[str, float] = {}

    def lap(self, name: str, since: float | None = None) -> float:
        now = time.perf_counter()
        self.laps[name] = now - (self.t0 if since is None else since)
        return now
