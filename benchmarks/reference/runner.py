"""Helpers shared by the benchmark runners (run_sce2tm.py, run_scetm.py, run_sctopic.py,
run_sctopic_scetm.py), on top of ``benchmarks/harness.py``.

Each runner runs in its own virtual environment (the authors' packages need their own), so
this module and the harness use only the standard library and numpy (torch once the runner
has pinned the threads); neither imports sctopic (only :func:`hook_sctopic_epoch_ends`
does, when the sctopic runners call it). From the harness: the input format written
by ``benchmarks/bench_vs_reference.py`` (``load_input``: one ``input.npz``, no pickled
objects), thread pinning, peak and current RSS, atomic writes. Here: the runners' common
options and start (:func:`runner_parser`, :func:`start`), per-epoch timing summaries, the
``.npy``/``timings.json`` writers, the versions of the packages a runner used, and the
checkpoint dumps of ``bench_time_to_quality.py`` (:func:`add_dump_options`, :class:`Snapshots`).
"""
from __future__ import annotations

import os
import platform
import shutil
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

#: wall clock (``time.time()``) when this module was imported: the origin of the dumps' clock
#: unless the caller passes ``--clock-start`` (its clock just before it started the process)
IMPORTED_AT = time.time()


def runner_parser(doc: str, *, epochs: int = 200, batch_size: int = 512, batch_help: str | None = None):
    """The options every runner takes: --input --out --epochs --seed --threads --n-topics --batch-size."""
    p = make_parser(doc, epochs=epochs, seed=0, threads=2, n_topics=100)
    p.add_argument("--input", required=True, help="input.npz (harness.save_input)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--batch-size", type=int, default=batch_size, help=batch_help)
    return p


def add_dump_options(p) -> None:
    """``--dump-every``, ``--dump-at`` and ``--clock-start`` (see :class:`Snapshots`)."""
    p.add_argument("--dump-every", type=int, default=0,
                   help="keep the model's state every N epochs (and at the last epoch); after training, "
                        "write theta/logits/topic-gene of each under OUT/checkpoints/e<EPOCH>/ (0: never)")
    p.add_argument("--dump-at", default="",
                   help="comma-separated epochs at which to keep the state as well (e.g. 10,25,50)")
    p.add_argument("--clock-start", type=float, default=None,
                   help="time.time() when the caller started this process: the origin of the dumps' "
                        "wall clock (default: when the runner's helper module was imported)")


def dump_epochs(epochs: int, every: int = 0, at: str | list = "") -> list[int]:
    """The epochs (1-based, <= ``epochs``) at which to dump: multiples of ``every`` plus the last
    one, and those listed in ``at``."""
    chosen = set()
    if every and every > 0:
        chosen.update(range(every, epochs + 1, every))
        chosen.add(epochs)
    items = at.split(",") if isinstance(at, str) else list(at)
    for item in items:
        if str(item).strip():
            e = int(item)
            if not 1 <= e <= epochs:
                raise SystemExit(f"--dump-at epoch {e} is outside 1..{epochs}")
            chosen.add(e)
    return sorted(chosen)


class Snapshots:
    """Checkpoint dumps for time-to-quality, with no file I/O during training.

    At each chosen epoch end the runner calls :meth:`take` with the model's ``state_dict``: a
    copy is kept in memory together with the wall-clock seconds since the start
    (``--clock-start``) minus everything :meth:`exclude`-d so far (the copies themselves, the
    input conversion of a reference package, its periodic evaluation). After training,
    :meth:`write` loads each state back into the model and writes its outputs
    (``theta.npy``, ``logits.npy``, ``topic_gene.npy``) under ``out/checkpoints/e<EPOCH>/``
    and a list of them in ``out/checkpoints.json``.
    """

    def __init__(self, args) -> None:
        self.epochs = dump_epochs(args.epochs, getattr(args, "dump_every", 0), getattr(args, "dump_at", ""))
        start = getattr(args, "clock_start", None)
        self.clock_start = IMPORTED_AT if start is None else float(start)
        self.clock_origin = "--clock-start (the caller, just before it started this process)" \
            if start is not None else "import of the runner's helper module"
        self.excluded: dict[str, float] = {}
        self.items: list[dict] = []
        self.windows: list[tuple[float, float]] = []  # perf_counter windows of the copies

    @property
    def enabled(self) -> bool:
        return bool(self.epochs)

    def exclude(self, what: str, seconds: float) -> None:
        """Leave ``seconds`` of ``what`` out of the wall clock from now on."""
        self.excluded[what] = self.excluded.get(what, 0.0) + float(seconds)

    def elapsed(self) -> float:
        """Wall seconds since the start, less what was excluded so far."""
        return time.time() - self.clock_start - sum(self.excluded.values())

    def take(self, epoch: int, state_dict, **extra) -> bool:
        """Keep a copy of ``state_dict()`` if ``epoch`` is a dump epoch (once per epoch)."""
        if epoch not in self.epochs or any(it["epoch"] == epoch for it in self.items):
            return False
        t0 = time.perf_counter()
        wall = self.elapsed()
        state = {k: v.detach().clone() for k, v in state_dict().items()}
        self.items.append({"epoch": int(epoch), "wall_seconds": wall, "state": state, **extra})
        t1 = time.perf_counter()
        self.windows.append((t0, t1))
        self.exclude("state copies", t1 - t0)
        return True

    def write(self, out: Path, outputs, restore=None) -> list[dict]:
        """For each kept state: ``outputs(state) -> {name: array}`` written as ``<name>.npy`` into
        ``out/checkpoints/e<EPOCH>/``; ``restore()`` afterwards (e.g. reload the final weights).
        Writes ``out/checkpoints.json`` and returns its entries."""
        rows = []
        t0 = time.perf_counter()
        shutil.rmtree(out / "checkpoints", ignore_errors=True)  # never mix with an earlier run's
        for it in self.items:
            d = out / "checkpoints" / f"e{it['epoch']:05d}"
            d.mkdir(parents=True, exist_ok=True)
            files = {}
            for name, arr in outputs(it["state"]).items():
                save_npy(d / f"{name}.npy", np.asarray(arr, dtype=np.float32))
                files[name] = f"{d.name}/{name}.npy"
            rows.append({k: v for k, v in it.items() if k != "state"} | {"files": files})
        if restore is not None:
            restore()
        meta = {"clock_origin": self.clock_origin, "clock_start": self.clock_start,
                "excluded_seconds": self.excluded, "dump_epochs": self.epochs,
                "write_seconds": time.perf_counter() - t0, "checkpoints": rows,
                "note": "wall_seconds: from the clock origin to the end of that epoch, less the "
                        "excluded seconds accumulated until then (state copies, input conversion, "
                        "a package's periodic evaluation); the outputs were computed after training "
                        "from the copied state"}
        save_json(out / "checkpoints.json", meta)
        return rows


def write_sctopic_snapshots(snaps: Snapshots, model, out: Path) -> None:
    """sctopic runners: write each kept state's theta, logits and topic-gene matrix (through the
    model's own methods), then reload the final weights."""
    if not snaps.enabled:
        return
    final = {k: v.detach().clone() for k, v in model.module.state_dict().items()}

    def outputs(state):
        model.module.load_state_dict(state)
        return {"theta": model.get_cell_topics(), "logits": model.get_cell_topics(logits=True),
                "topic_gene": model.get_topic_gene().to_numpy()}

    snaps.write(out, outputs, restore=lambda: model.module.load_state_dict(final))


def hook_sctopic_epoch_ends(callback) -> None:
    """sctopic runners: chain ``callback(epoch)`` after the ``on_epoch_end`` hook that
    :meth:`sctopic.train.Trainer.fit` is given (the checkpoint writer), changing nothing else of
    the training; torch's random stream is saved and restored around the callback."""
    import torch
    from sctopic.train import Trainer

    fit = Trainer.fit

    def fit_with_hook(self, epoch_batches, max_epochs, step_kwargs=None, progress=True, on_epoch_end=None,
                      extra_stats=None):
        def chained(epoch):
            if on_epoch_end is not None:
                on_epoch_end(epoch)
            rng = torch.get_rng_state()
            callback(epoch)
            torch.set_rng_state(rng)

        return fit(self, epoch_batches, max_epochs, step_kwargs=step_kwargs, progress=progress,
                   on_epoch_end=chained, extra_stats=extra_stats)

    Trainer.fit = fit_with_hook


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
