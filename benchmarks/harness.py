"""What the benchmark scripts share: data paths, result writers, common options, timing.

The scripts run as files (``python benchmarks/bench_x.py``), so this folder is ``sys.path[0]``
and they import ``from harness import ...``. A module that is also imported from elsewhere
(``make_scaled.py`` by the tests, ``reference/runner.py`` by the runners) puts this folder on
``sys.path`` itself. Only the standard library is imported at module level (numpy, scipy and
matplotlib inside the functions that need them, torch never), so the reference runners, which
run in the authors' environments without sctopic, use it too.

* Data: :data:`DATASETS` (name -> :class:`Dataset`: file, label key, batch key, the genes the
  benchmarks keep) under :data:`DATA`, the shared data folder (``../shared/data`` from the
  repository root, or ``$SCTOPIC_SHARED_DATA`` / ``$SCTOPIC_DATA``); :func:`data_path` for
  other files there (gene-set libraries).
* Results: :func:`write_report` (``<stem>.json`` + ``<stem>.md``), :func:`write_json`,
  :func:`write_text`, :func:`atomic_write` (all atomic: temporary file, then rename). Every JSON
  result gets a ``provenance`` entry (:func:`provenance`: git commit, torch version, CPU count,
  load average at start and at the end, command line). :func:`md_table` and :func:`fmt` build
  the markdown (figures: :mod:`sctopic.plotting.figure`).
* Options: :func:`make_parser` (``--dataset(s)``, ``--seed(s)``, ``--epochs``, ``--n-topics``,
  ``--threads``, ``--out``, ``--results-dir``, ``--work-dir``, each with the script's default).
* Timing and resources: :func:`timed`, :func:`time_fn`, :func:`load1`, :func:`peak_rss_mib`,
  :func:`current_rss_mib`, thread pinning (:data:`THREAD_VARS`, :func:`pin_threads`,
  :func:`thread_env`) and :func:`run_logged` for a contender in its own process.
* The ``input.npz`` format of the reference comparison: :func:`save_input`, :func:`load_input`.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
RESULTS = BENCH / "results"
WORK = BENCH / "work"
SCALE = WORK / "scale"  # make_scaled.py's files (kang_<N>.h5ad)
ENVS = BENCH / "envs"  # the reference packages' environments (setup_reference_envs.sh)
REFERENCE = BENCH / "reference"
DATA_ENV_VARS = ("SCTOPIC_SHARED_DATA", "SCTOPIC_DATA")
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS")

LOADAVG_AT_START = os.getloadavg()
STARTED = time.strftime("%Y-%m-%d %H:%M:%S")


# ----------------------------------------------------------------------------- data
def data_dir() -> Path:
    """The shared data folder: ``$SCTOPIC_SHARED_DATA``, ``$SCTOPIC_DATA``, else ``../shared/data``."""
    for var in DATA_ENV_VARS:
        if os.environ.get(var):
            return Path(os.environ[var])
    return REPO.parent / "shared" / "data"


DATA = data_dir()


def data_path(file: str) -> Path:
    """A file of the shared data folder (e.g. a gene-set library)."""
    return DATA / file


def scaled_path(n_cells: int, folder: str | os.PathLike = SCALE) -> Path:
    """``make_scaled.py``'s file of ``n_cells`` cells: ``<folder>/kang_<n_cells>.h5ad``."""
    return Path(folder) / f"kang_{int(n_cells)}.h5ad"


@dataclass(frozen=True)
class Dataset:
    """One data set of the shared folder (see its README.md)."""

    file: str
    label_key: str | None = "cell_type"  # obs column of the published labels
    batch_key: str | None = None  # obs column of donors / mice
    n_top_genes: int = 0  # genes the benchmarks keep (0: all)
    species: str = "human"  # of the gene symbols: which GO-BP library scores the topics

    @property
    def path(self) -> Path:
        return DATA / self.file


DATASETS: dict[str, Dataset] = {
    "pbmc3k": Dataset("pbmc3k_seurat_labels.h5ad", n_top_genes=5000),
    "kang8": Dataset("kang2018_pbmc_ctrl_8donors.h5ad", batch_key="batch"),
    "kang5": Dataset("kang2018_pbmc_ctrl_5donors_2511genes.h5ad", batch_key="batch"),
    "kang_ifnb": Dataset("kang2018_pbmc_ifnb_vs_ctrl.h5ad", batch_key="batch"),  # obs: condition ctrl/stim
    "baron": Dataset("baron_mouse_pancreas.h5ad", batch_key="batch", n_top_genes=5000, species="mouse"),
    "pbmc68k": Dataset("pbmc68k_reduced_counts.h5ad"),
    "tcga_skcm": Dataset("tcga_skcm_bulk_survival.h5ad", label_key="sample_type"),  # bulk, log2
    "wang_scgpt": Dataset("wang2016_pancreas_scgpt_embedding.csv.gz"),  # embedding only
}


# ----------------------------------------------------------------------------- provenance
def git_commit() -> tuple[str | None, bool | None]:
    """HEAD of the repository and whether tracked files differ from it (None outside git)."""
    try:
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None, None
    if head.returncode != 0:
        return None, None
    return head.stdout.strip(), bool(dirty.stdout.strip()) if dirty.returncode == 0 else None


def torch_version() -> str | None:
    if "torch" in sys.modules:
        return str(sys.modules["torch"].__version__)
    from importlib import metadata

    try:
        return metadata.version("torch")
    except metadata.PackageNotFoundError:
        return None


def provenance() -> dict:
    """What every result records: commit, torch, CPUs, load average at start and now, command."""
    commit, dirty = git_commit()
    return {
        "git_commit": commit, "git_dirty": dirty, "torch": torch_version(),
        "python": platform.python_version(), "cpu_count": os.cpu_count(),
        "machine": platform.machine(), "platform": platform.platform(),
        "loadavg_start": [round(x, 2) for x in LOADAVG_AT_START],
        "loadavg_end": [round(x, 2) for x in os.getloadavg()],
        "started": STARTED, "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }


def machine(detail: bool = False) -> str:
    """``"x86_64, 2 logical CPUs"`` (``detail``: and the platform string)."""
    out = f"{platform.machine()}, {os.cpu_count()} logical CPUs"
    return f"{out}, {platform.platform()}" if detail else out


# ----------------------------------------------------------------------------- writing
def atomic_write(path: str | os.PathLike, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp)`` on a temporary name beside ``path`` (same suffix), then rename it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def jsonable(obj: Any, nan_as_null: bool = False) -> Any:
    """numpy scalars and arrays, paths and tuples as JSON types (NaN -> null if asked)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v, nan_as_null) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v, nan_as_null) for v in obj]
    if hasattr(obj, "tolist") and type(obj).__module__ == "numpy":  # numpy scalar or array
        return jsonable(obj.tolist(), nan_as_null)
    if isinstance(obj, os.PathLike):
        return str(obj)
    if nan_as_null and isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json(path: str | os.PathLike, payload: Any, *, indent: int = 1, nan_as_null: bool = False,
               with_provenance: bool = True) -> Path:
    """JSON, atomically. A dict payload gets a ``provenance`` entry (:func:`provenance`, of this
    write: it replaces one read back from an earlier file), and so does every dict row of a list
    payload (one row per run); anything else is written as it is."""
    payload = jsonable(payload, nan_as_null)
    if with_provenance:
        prov = provenance()
        if isinstance(payload, dict):
            payload["provenance"] = prov
        elif isinstance(payload, list):
            payload = [{**r, "provenance": prov} if isinstance(r, dict) else r for r in payload]
    return write_text(path, json.dumps(payload, indent=indent, default=str) + "\n")


def write_report(stem: str | os.PathLike, payload: Any, markdown: str | None = None, **json_kw) -> Path:
    """``<stem>.json`` (:func:`write_json`) and, given the text, ``<stem>.md``; returns ``stem``."""
    stem = Path(stem)
    write_json(stem.with_name(stem.name + ".json"), payload, **json_kw)
    if markdown is not None:
        write_text(stem.with_name(stem.name + ".md"), markdown if markdown.endswith("\n") else markdown + "\n")
    return stem


def fmt(x: Any, nd: int = 3) -> str:
    """A table cell: ``-`` for None, floats with ``nd`` decimals, anything else as ``str``."""
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{nd}f}"
    return str(x)


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]], align: Sequence[str] | None = None) -> list[str]:
    """Lines of a markdown table; cells are written with ``str`` (format them first).
    ``align``: one of ``"---"``, ``"---:"``, ... per column (default left)."""
    sep = align or ["---"] * len(header)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(sep) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


# ----------------------------------------------------------------------------- options
def make_parser(doc: str | None, *, choices: Sequence[str] | None = None, dataset: str | None = None,
                datasets: Sequence[str] | None = None, seed: int | None = None,
                seeds: Sequence[int] | None = None, epochs: int | None = None,
                n_topics: int | None = None, threads: int | None = None, out: str | os.PathLike | None = None,
                results_dir: bool = False, work_dir: bool = False, **parser_kw) -> argparse.ArgumentParser:
    """An ArgumentParser (description: the docstring's first line) with the common options a
    script asks for, each with the script's own default: ``--dataset`` / ``--datasets`` (names
    of :data:`DATASETS`, or ``choices``), ``--seed`` / ``--seeds``, ``--epochs``,
    ``--n-topics``, ``--threads``, ``--out``, ``--results-dir`` (:data:`RESULTS`) and
    ``--work-dir`` (:data:`WORK`)."""
    p = argparse.ArgumentParser(description=(doc or "").strip().split("\n")[0], **parser_kw)
    names = sorted(choices or DATASETS)
    if dataset is not None:
        p.add_argument("--dataset", choices=names, default=dataset)
    if datasets is not None:
        p.add_argument("--datasets", nargs="+", choices=names, default=list(datasets))
    if seed is not None:
        p.add_argument("--seed", type=int, default=seed)
    if seeds is not None:
        p.add_argument("--seeds", type=int, nargs="+", default=list(seeds))
    if epochs is not None:
        p.add_argument("--epochs", type=int, default=epochs)
    if n_topics is not None:
        p.add_argument("--n-topics", type=int, default=n_topics)
    if threads is not None:
        p.add_argument("--threads", type=int, default=threads, help=f"torch threads (default {threads})")
    if out is not None:
        p.add_argument("--out", default=str(out), help=f"output (default {out})")
    if results_dir:
        p.add_argument("--results-dir", default=str(RESULTS))
    if work_dir:
        p.add_argument("--work-dir", default=str(WORK))
    return p


# ----------------------------------------------------------------------------- timing, resources
def timed(fn: Callable, *args, **kwargs) -> tuple[Any, float]:
    """``fn(*args, **kwargs)`` and its wall seconds."""
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def time_fn(fn: Callable, repeats: int, warmup: int = 2, stat: str = "min", device="cpu") -> float:
    """Best (``min``, for floors) or ``median`` wall seconds of ``fn()`` over ``repeats`` calls
    after ``warmup`` calls. On a CUDA ``device`` the queue is drained before and after each
    call, so the wall time is the device time of the call."""
    import statistics

    if str(device).startswith("cuda"):
        import torch

        sync = torch.cuda.synchronize
    else:
        def sync():
            return None
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeats):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        ts.append(time.perf_counter() - t)
    return float(min(ts) if stat == "min" else statistics.median(ts))


def load1() -> float:
    """The 1-minute load average, rounded to 2 decimals."""
    return round(os.getloadavg()[0], 2)


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, MiB (``ru_maxrss``; Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def current_rss_mib() -> float:
    """Resident set size now, MiB (``/proc/self/statm``; NaN elsewhere)."""
    try:
        with open("/proc/self/statm") as fh:
            pages = int(fh.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:  # pragma: no cover - non-Linux
        return float("nan")


def thread_env(n: int, names: Sequence[str] = THREAD_VARS, base: dict | None = None) -> dict:
    """A copy of ``base`` (default ``os.environ``) with the thread variables ``names`` set to ``n``."""
    env = dict(os.environ if base is None else base)
    env.update({var: str(n) for var in names})
    return env


def pin_threads(n: int, names: Sequence[str] = THREAD_VARS, override: bool = True) -> None:
    """Set the thread variables in ``os.environ`` (before numpy/torch start their pools);
    ``override=False`` keeps values already set."""
    for var in names:
        if override:
            os.environ[var] = str(n)
        else:
            os.environ.setdefault(var, str(n))


def run_logged(cmd: Sequence[str], log: str | os.PathLike, *, threads: int, cwd=None,
               timeout: float | None = None) -> tuple[subprocess.CompletedProcess, float]:
    """Run ``cmd`` with stdout and stderr into ``log``, the thread variables set to ``threads``
    and no ``PYTHONPATH`` (a reference environment must not see this one); its wall seconds."""
    env = thread_env(threads)
    env.pop("PYTHONPATH", None)
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.run(list(cmd), stdout=fh, stderr=subprocess.STDOUT, env=env,
                              cwd=None if cwd is None else str(cwd), timeout=timeout)
    return proc, time.perf_counter() - t0


# ----------------------------------------------------------------------------- input.npz
def save_input(path: str | os.PathLike, X, embedding, genes, cells, labels, batches=None) -> Path:
    """The reference runners' input: raw counts as CSR arrays (int32 values), the external
    embedding, gene / cell names, labels and optionally batches; no pickled objects."""
    import numpy as np
    import scipy.sparse as sp

    X = sp.csr_matrix(X).astype(np.int32)
    arrays = dict(
        X_data=X.data, X_indices=X.indices.astype(np.int32), X_indptr=X.indptr.astype(np.int64),
        X_shape=np.array(X.shape, dtype=np.int64), embedding=np.asarray(embedding, dtype=np.float32),
        genes=np.array([str(g) for g in genes], dtype=str), cells=np.array([str(c) for c in cells], dtype=str),
        labels=np.array([str(x) for x in labels], dtype=str),
    )
    if batches is not None:
        arrays["batches"] = np.array([str(x) for x in batches], dtype=str)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)

    return atomic_write(path, write)


def load_input(path: str | os.PathLike) -> dict:
    """Read :func:`save_input`'s file: ``X`` (scipy CSR float32 counts), ``embedding``,
    ``genes``, ``cells``, ``labels`` and ``batches`` when present."""
    import numpy as np
    import scipy.sparse as sp

    z = np.load(path, allow_pickle=False)
    X = sp.csr_matrix((z["X_data"].astype(np.float32), z["X_indices"], z["X_indptr"]),
                      shape=tuple(int(s) for s in z["X_shape"]))
    out = {
        "X": X, "embedding": np.asarray(z["embedding"], dtype=np.float32),
        "genes": [str(g) for g in z["genes"]], "cells": [str(c) for c in z["cells"]],
        "labels": [str(c) for c in z["labels"]],
    }
    if "batches" in z.files:
        out["batches"] = [str(b) for b in z["batches"]]
    if out["embedding"].shape[0] != X.shape[0]:
        raise ValueError("embedding and counts have different numbers of cells")
    return out


if __name__ == "__main__":
    make_parser(__doc__).parse_args()
    print(f"shared data: {DATA}")
    for name, ds in DATASETS.items():
        print(f"  {name:11s} {'ok     ' if ds.path.exists() else 'MISSING'} {ds.file}  labels={ds.label_key} "
              f"batch={ds.batch_key} genes={ds.n_top_genes or 'all'}")
    print(f"results: {RESULTS}\nwork:    {WORK}")
