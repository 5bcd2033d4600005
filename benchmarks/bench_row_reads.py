"""What a scattered neighbour read costs out of core: cold (from storage) vs hot (page cache).

Backed SCE2TM training reads, every step, the counts of 512 sampled neighbours that lie
anywhere in the ``.h5ad`` (``sctopic.data.backed``; the row-reader process of
``sctopic.data.rowreader``). This script times that read alone, through the same code
(:class:`sctopic.data.rowreader.RawRanges`, the same thread count and ``POSIX_FADV_RANDOM``),
in two conditions on the same rows:

* ``cold``: random rows after ``POSIX_FADV_DONTNEED`` has evicted the file's pages from the
  page cache: the storage read, as at 10^6 cells during training on this VM;
* ``hot``: the same rows read again at once, so their pages are cached: what the read costs
  when the file stays in memory.

(A third condition, ``direct``: ``O_DIRECT`` reads in one native-AIO submission, timed the row
reader's direct path; that path was removed after ``results/direct_reads_ab.md`` showed no
change per epoch, and the condition with it. Its numbers stay in
``results/row_reads_kang_1000000.md``.)

Per read: wall time, user and system CPU time of this process (``getrusage``; the reading
threads' time included), the whole machine's busy CPU time (``/proc/stat``: user, system,
interrupts; completions of block I/O are handled in interrupt context, which ``getrusage``
may not charge to the reader), bytes requested and distinct 4 KiB pages
touched. The gap between cold and hot system time is the kernel's work to fetch pages from
storage; at 10^6 cells that CPU time is spent on the same 2 cores as the training step. Run
it alone: the machine-wide figures count every process.

Also records whether DAMON-based proactive reclaim is running (``/sys/kernel/mm/damon``):
on this VM it evicts the scaled file's pages between epochs.

Usage (after ``make_scaled.py``)::

    .venv/bin/python benchmarks/bench_row_reads.py --path benchmarks/work/scale/kang_1000000.h5ad

Writes ``benchmarks/results/row_reads_<stem>.{json,md}``.
"""
from __future__ import annotations

import os
import resource
import time
from pathlib import Path

import numpy as np
from harness import machine, make_parser, md_table, scaled_path, write_report


def parse_args(argv=None):
    p = make_parser(__doc__, seed=0, results_dir=True)
    p.add_argument("--path", default=str(scaled_path(1_000_000)))
    p.add_argument("--rows", type=int, default=512, help="rows per read (one step's neighbours)")
    p.add_argument("--reads", type=int, default=40)
    p.add_argument("--threads", default="4,16,32",
                   help="comma-separated counts of concurrent preadv threads (the reader uses 4)")
    return p.parse_args(argv)


def _cpu() -> tuple[float, float]:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime, r.ru_stime


def _machine_cpu() -> float:
    """Busy CPU seconds of the whole machine so far (user, nice, system, irq, softirq)."""
    try:
        v = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return float("nan")
    return (v[0] + v[1] + v[2] + v[5] + v[6]) / os.sysconf("SC_CLK_TCK")


def damon_state() -> str:
    """'on' / 'off' for each kdamond, or 'absent' (no DAMON sysfs interface)."""
    root = Path("/sys/kernel/mm/damon/admin/kdamonds")
    try:
        states = [(d / "state").read_text().strip() for d in sorted(root.iterdir()) if (d / "state").exists()]
    except OSError:
        return "absent"
    return ", ".join(states) if states else "absent"


def _timed(fn) -> tuple[float, float, float, float]:
    """Run ``fn()``: (wall, user, system, machine CPU) seconds it took."""
    u0, s0, m0 = *_cpu(), _machine_cpu()
    t0 = time.perf_counter()
    fn()
    wall = time.perf_counter() - t0
    u1, s1, m1 = *_cpu(), _machine_cpu()
    return wall, u1 - u0, s1 - s0, m1 - m0


def main(argv=None) -> int:
    args = parse_args(argv)
    import h5py

    from sctopic.data.rowreader import RawRanges

    path = Path(args.path)
    if not path.exists():
        raise SystemExit(f"{path} not found: build it with benchmarks/make_scaled.py")
    f = h5py.File(path, "r", rdcc_nbytes=0)
    X = f["X"]
    indptr = np.asarray(X["indptr"][:], dtype=np.int64)
    n = indptr.size - 1
    fd = os.open(path, os.O_RDONLY)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
    thread_counts = [int(t) for t in str(args.threads).split(",") if t.strip()]
    rng = np.random.default_rng(args.seed)
    summary, pages, requested = {}, [], []
    for th in thread_counts:
        readers = [RawRanges.open(fd, X[k], threads=th) for k in ("data", "indices")]
        if any(r is None for r in readers):
            raise SystemExit("the file's X is compressed or filtered: RawRanges does not read it")
        res = {"cold": [], "hot": []}
        for _ in range(args.reads):  # fresh rows for every read and thread count: cold pages
            rows = np.sort(rng.choice(n, size=args.rows, replace=False))
            starts, lens = indptr[rows], indptr[rows + 1] - indptr[rows]
            touched = 0
            for r in readers:
                fo, nb, _ = r.segments(starts, lens)
                first, last = fo // 4096, (fo + nb - 1) // 4096
                touched += int(np.unique(np.concatenate([first, last])).size)  # a range spans <= 2 pages
            pages.append(touched)
            requested.append(sum(int(lens.sum()) * r.dtype.itemsize for r in readers))
            # evict the file's (clean) pages first: "cold" must not find rows of earlier reads
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
            for cond in ("cold", "hot"):
                res[cond].append(_timed(lambda: [r.read(starts, lens) for r in readers]))
        for cond, v in res.items():
            a = np.array(v) * 1e3
            summary[f"{cond}_threads{th}"] = {
                "condition": cond, "threads": th,
                "wall_ms_median": float(np.median(a[:, 0])),
                "wall_ms_mean": float(a[:, 0].mean()), "user_ms_mean": float(a[:, 1].mean()),
                "sys_ms_mean": float(a[:, 2].mean()), "machine_cpu_ms_mean": float(a[:, 3].mean())}
    nbytes = float(np.mean(requested))
    meta = {"file": path.name, "file_bytes": path.stat().st_size, "cells": n, "rows_per_read": args.rows,
            "reads_per_thread_count": args.reads, "thread_counts": thread_counts,
            "bytes_requested_per_read_mean": nbytes, "pages_touched_per_read_mean": float(np.mean(pages)),
            "damon": damon_state(),
            "machine": machine(detail=True),
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    out = Path(args.results_dir) / f"row_reads_{path.stem}"
    lines = [f"# Scattered row reads out of core: {path.name}", "",
             f"{n:,} cells, file {meta['file_bytes'] / 1e9:.2f} GB; {args.reads} reads of {args.rows} random rows "
             f"per thread count (data + indices, `RawRanges`, POSIX_FADV_RANDOM); {nbytes / 1e6:.2f} MB requested "
             f"and {meta['pages_touched_per_read_mean']:.0f} distinct 4 KiB pages "
             f"({meta['pages_touched_per_read_mean'] * 4096 / 1e6:.1f} MB) touched per read. DAMON kdamonds: "
             f"{meta['damon']}. {meta['machine']}, {meta['date']}.", ""]
    labels = {"cold": "cold (pages from storage)", "hot": "hot (same rows again, page cache)"}
    lines += md_table(["threads", "condition", "wall ms (median)", "wall ms (mean)", "user CPU ms",
                       "system CPU ms", "machine busy CPU ms"],
                      [[r["threads"], labels[r["condition"]]] + [f"{r[k]:.1f}" for k in (
                          "wall_ms_median", "wall_ms_mean", "user_ms_mean", "sys_ms_mean", "machine_cpu_ms_mean")]
                       for r in summary.values()])
    th0 = thread_counts[0]
    c, h = summary[f"cold_threads{th0}"], summary[f"hot_threads{th0}"]
    lines += ["", f"With {th0} preadv threads, fetching the pages costs {c['sys_ms_mean'] - h['sys_ms_mean']:.1f} ms "
              f"of system CPU and {c['wall_ms_median'] - h['wall_ms_median']:.1f} ms of wall time per read (median) "
              "more than reading them from the page cache. Backed training does one such read per step, two steps "
              "ahead, in the row-reader process, on the same cores as the step itself."]
    write_report(out, {"meta": meta, "summary": summary}, "\n".join(lines), indent=2)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
