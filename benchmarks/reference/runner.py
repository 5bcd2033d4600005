"""Helpers shared by the benchmark runners (run_sce2tm.py, run_scetm.py, run_sctopic.py,
run_sctopic_scetm.py), on top of ``benchmarks/harness.py``.

Each runner runs in its own virtual environment (the authors' packages need their own), so
this module and the harness use only the standard library and numpy (torch once the runner
has pinned the threads); neither imports sctopic. From the harness: the input format written
by ``benchmarks/bench_vs_reference.py`` (``load_input``: one ``input.npz``, no pickled
objects), thread pinning, peak and current RSS, atomic writes. Here: the runners' common
options and start (:func:`runner_parser`, :func:`start`), per-epoch timing summaries, the
``.npy``/``timings.json`` writers, the versions of the packages a runner used.
"""
from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: the harness
from harness import (  # noqa: E402,F401  (re-exported for the runners)
    atomic_write,
    current_rss_mib,
    load_input,
    make_parser,
    peak_rss_mib,
    pin_threads,
    write_json,
)


def runner_parser(doc: str, *, epochs: int = 200, batch_size: int = 512, batch_help: str | None = None):
    """The options every runner takes: --input --out --epochs --seed --threads --n-topics --batch-size."""
    p = make_parser(doc, epochs=epochs, seed=0, threads=2, n_topics=100)
    p.add_argument("--input", required=True, help="input.npz (harness.save_input)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--batch-size", type=int, default=batch_size, help=batch_help)
    return p


def start(args) -> tuple[Path, dict]:
    """Pin the thread variables and torch's threads to ``args.threads``, make ``args.out`` and
    read ``args.input`` (:func:`load_input`)."""
    pin_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    import torch

    torch.set_num_threads(args.threads)
    return out, load_input(args.input)


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


def run_settings(contender: str, args, n_cells: int, n_genes: int) -> dict:
    """The timings.json entries that say what ran."""
    return {"contender": contender, "n_cells": n_cells, "n_genes": n_genes, "epochs": args.epochs,
            "batch_size": args.batch_size, "n_topics": args.n_topics, "seed": args.seed,
            "threads": args.threads}


def train_summary(epoch_secs: list[float], cells_per_second: float | None, peak_before_train: float,
                  peak_after_train: float | None = None, rss_before_train: float | None = None) -> dict:
    """The timings.json entries every runner writes after training (seconds, rate, memory)."""
    out = {
        "epoch_seconds": epoch_secs,
        **epoch_summary(epoch_secs),
        "cells_per_second": cells_per_second,
        "peak_rss_mb": peak_rss_mib(),
        "peak_rss_mb_before_train": peak_before_train,
    }
    if peak_after_train is not None:
        out.update(peak_rss_mb_after_train=peak_after_train, rss_mb_before_train=rss_before_train)
    return out


def save_npy(path: Path, arr: np.ndarray) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.save(fh, np.ascontiguousarray(arr))

    atomic_write(path, write)


def save_json(path: Path, obj: dict) -> None:
    write_json(path, obj, with_provenance=False)


def finish(out: Path, timings: dict, packages: list[str], message: str) -> int:
    """Add the versions of ``packages`` (:func:`environment`) to ``timings``, write
    ``out/timings.json``, print the one-line summary (``message``, peak RSS, ``out``); the exit status."""
    timings["env"] = environment(packages)
    save_json(out / "timings.json", timings)
    print(f"{message}, peak RSS {timings['peak_rss_mb']:.0f} MiB -> {out}")
    return 0


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
