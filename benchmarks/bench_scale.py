"""Scale: seconds per epoch and peak memory from 10^4 to 10^6 cells, in memory and out of core.

For every size N and mode (``memory``: the AnnData is read whole and trained as usual;
``backed``: ``backed=True``, the count matrix stays on disk), a fresh Python process builds
the model, trains it for a few epochs and embeds every cell; it reports:

* setup seconds (reading, the validation/gene-selection pass, the expression PCA and, for
  SCE2TM, the neighbour graphs, whose build time is also given alone),
* seconds per epoch (median of the epochs after the first) and cells per second,
* inference seconds (theta of every cell),
* peak RSS of the whole process (``ru_maxrss``).

Data: ``make_scaled.py`` files (real Kang PBMCs resampled with binomial thinning; the source
has 1,287 genes, so every size uses those 1,287 genes, not 5,000). Timings use 2 threads
(this machine's cores); run it alone.

The FLOP floor (cells per second a step could reach at the machine's measured matmul rate) is
counted on one step of the benchmarked model (see :func:`floor_rate`); the ratio measured /
floor is reported per size.

Usage::

    .venv/bin/python benchmarks/make_scaled.py --n-cells 1000000 --out benchmarks/work/scale/kang_1000000.h5ad
    .venv/bin/python benchmarks/bench_scale.py --model sce2tm
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
from harness import RESULTS, SCALE, make_parser, peak_rss_mib, scaled_path, thread_env, time_fn, write_report

SIZES = (10_000, 100_000, 1_000_000)
EPOCHS = {10_000: 6, 100_000: 3, 1_000_000: 2}


def worker(args) -> dict:
    """Runs in its own process: one (size, mode) measurement."""
    import warnings

    import torch

    import sctopic

    torch.set_num_threads(args.threads)
    path = Path(args.path)
    children: dict[str, int] = {}
    threading.Thread(target=_watch_children, args=(children,), daemon=True).start()
    t0 = time.perf_counter()
    Model = sctopic.SCE2TM if args.model == "sce2tm" else sctopic.SCETM
    kw = dict(n_topics=args.n_topics, n_top_genes=args.n_hvg, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if args.mode == "backed":
            model = Model(path, backed=True, **kw)
        else:
            import anndata as ad

            model = Model(ad.read_h5ad(path), **kw)
        t_init = time.perf_counter() - t0
        rss_init = peak_rss_mib()
        train_kw = dict(max_epochs=args.epochs, progress=False, write_results=False, device=args.device,
                        precision=args.precision)
        if args.batch_size:
            train_kw["batch_size"] = args.batch_size
        t1 = time.perf_counter()
        model.train(**train_kw)
        t_train = time.perf_counter() - t1
        t2 = time.perf_counter()
        theta = model.get_cell_topics()
        t_infer = time.perf_counter() - t2
    ep = model.history["epoch_seconds"].to_numpy()
    steady = ep[1:] if len(ep) > 1 else ep
    s_epoch = float(np.median(steady))
    n = int(model.train_settings_["n_cells"])
    graphs = getattr(model, "graph_stats_", {}) or {}
    return {
        "n_cells": n, "n_genes": len(model.genes), "mode": args.mode, "model": args.model,
        "epochs": args.epochs, "batch_size": model.train_settings_["batch_size"],
        "epoch_seconds": [float(x) for x in ep],
        "seconds_per_epoch": s_epoch, "cells_per_second": n / s_epoch,
        "setup_seconds": t_init, "graph_seconds": float(graphs.get("seconds", 0.0)),
        "train_seconds_total": t_train, "inference_seconds": t_infer,
        "peak_rss_mib": peak_rss_mib(),
        # the out-of-core row-reader process: its own peak, sampled while it ran
        "peak_rss_children_mib": max(children.values(), default=0) / 1024,
        "peak_rss_after_setup_mib": rss_init,
        "theta_rows_sum_to_1": bool(np.allclose(theta.sum(1), 1.0, atol=1e-4)),
        "graph_stats": {k: v for k, v in graphs.items() if k != "seconds"},
        "device": args.device, "precision": args.precision,
        "peak_gpu_mib": (torch.cuda.max_memory_allocated() / 2**20
                         if args.device.startswith("cuda") else None),
    }


def _watch_children(peaks: dict) -> None:
    """Peak RSS (VmHWM, KiB) of this process's child processes, sampled every 0.2 s.

    ``getrusage(RUSAGE_CHILDREN)`` is no use here: a child's high-water mark includes the
    parent's pages it shared between fork and exec."""
    me = os.getpid()
    while True:
        try:
            tids = os.listdir(f"/proc/{me}/task")
        except OSError:
            return
        for tid in tids:
            try:
                kids = open(f"/proc/{me}/task/{tid}/children").read().split()
            except OSError:
                continue
            for k in kids:
                try:
                    with open(f"/proc/{k}/status") as fh:
                        for line in fh:
                            if line.startswith("VmHWM"):
                                peaks[k] = max(peaks.get(k, 0), int(line.split()[1]))
                except OSError:
                    pass
        time.sleep(0.2)


def run_one(path: Path, mode: str, args, epochs: int) -> dict:
    env = thread_env(args.threads, names=("OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"))
    cmd = [sys.executable, __file__, "--worker", "--path", str(path), "--mode", mode,
           "--model", args.model, "--epochs", str(epochs), "--threads", str(args.threads),
           "--n-topics", str(args.n_topics), "--n-hvg", str(args.n_hvg), "--device", args.device,
           "--precision", args.precision]
    if args.batch_size:
        cmd += ["--batch-size", str(args.batch_size)]
    load0 = os.getloadavg()[0]
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        return {"mode": mode, "error": r.stderr[-2000:], "wall_seconds": time.perf_counter() - t}
    row = json.loads(r.stdout.strip().splitlines()[-1])
    row["wall_seconds"] = time.perf_counter() - t
    row["load_before"], row["load_after"] = load0, os.getloadavg()[0]
    return row


def floor_rate(model: str, path: Path, threads: int, device: str = "cpu") -> dict | None:
    """Cells per second at the FLOP floor for the benchmarked configuration (SCE2TM only).

    One training step of the very model the benchmark trains (defaults: the 50-PC view; 512
    anchors + 512 sampled neighbours, dense counts) is counted with ``bench_flops``'s dispatch
    counter (matmul FLOPs, forward + backward) and each of its matmuls is timed in isolation on
    this machine (``bench_flops.matmul_rates``): the floor is the sum of those times, plus the
    Sinkhorn solve at the measured matrix-vector rate."""
    if model != "sce2tm":
        return None
    import warnings

    import anndata as ad
    import bench_flops as F
    import torch

    import sctopic

    torch.set_num_threads(threads)
    adata = ad.read_h5ad(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = sctopic.SCE2TM(adata, n_topics=100, n_top_genes=5000, seed=0)
    X = F.model_counts(m, adata)
    m.module.to(device)
    mod, fwd_bwd, full_step, opt, kw = F.make_step(m, X, m.external_.matrix, 512, 0, "dense",
                                                   device=device)
    for _ in range(5):
        full_step()
    counter = F.make_counter()
    ecr = mod.ecr
    hooks = [ecr.register_forward_pre_hook(lambda *_: setattr(counter, "excluded", True)),
             ecr.register_forward_hook(lambda *_: setattr(counter, "excluded", False))]
    with counter:
        fwd_bwd()
        opt.step()
    for h in hooks:
        h.remove()
    K, V = 100, X.shape[1]
    sk = F.sinkhorn_flops(K, V, int(ecr.last_iterations))
    rows = F.matmul_rates(counter.matmuls, device=device)
    mm_floor = sum(r["seconds_per_call"] * r["calls"] for r in rows)
    floor = mm_floor + sk["flops"] / (F.matvec_rate(K, V, device=device) * 1e9)
    mm_flops = sum(f for _, f in counter.matmuls.values())
    step = time_fn(full_step, 20, warmup=2, stat="median", device=device)
    return {"config": f"SCE2TM defaults (50-PC view), {V} genes, batch 512 (+512 neighbours), dense",
            "matmul_gflop_per_step": mm_flops / 1e9, "sinkhorn_gflop_per_step": sk["flops"] / 1e9,
            "matmul_gflops_on_step_shapes": mm_flops / mm_floor / 1e9,
            "floor_seconds_per_step": floor, "batch_size": 512,
            "floor_cells_per_second": 512 / floor,
            "isolated_step_seconds_median": step, "isolated_step_cells_per_second": 512 / step}


def markdown(res: dict) -> str:
    rows = [r for r in res["runs"] if "error" not in r]
    lines = [f"# Scale benchmark: {res['model']} on resampled Kang PBMCs", "",
             f"{res['machine']}, {res['threads']} threads, torch {res['torch']}, {res['date']}, "
             f"device {res.get('device', 'cpu')}, precision {res.get('precision', '32')}. "
             f"{res['genes_note']}" + (f" {res['update_note']}" if res.get("update_note") else ""), "",
             "| cells | mode | s/epoch | cells/s | s/epoch per 10^4 cells | setup s | graph s | "
             "inference s | peak RSS MiB | load before/after |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['n_cells']:,} | {r['mode']} | {r['seconds_per_epoch']:.2f} | "
            f"{r['cells_per_second']:,.0f} | {1e4 * r['seconds_per_epoch'] / r['n_cells']:.3f} | "
            f"{r['setup_seconds']:.1f} | {r['graph_seconds']:.1f} | {r['inference_seconds']:.1f} | "
            f"{r['peak_rss_mib']:,.0f}"
            + (f" + reader {r['peak_rss_children_mib']:,.0f}" if r.get("peak_rss_children_mib") else "")
            + (f" (GPU {r['peak_gpu_mib']:,.0f})" if r.get("peak_gpu_mib") else "")
            + f" | {r['load_before']:.1f}/{r['load_after']:.1f} |")
    for r in res["runs"]:
        if "error" in r:
            lines.append(f"\nFAILED {r['mode']}: {r['error'][-500:]}")
    on_cpu = res.get("device", "cpu") == "cpu"
    lines += ["", "Notes:", ""] + ([] if on_cpu else [
              "- Peak RSS is host memory; the figure in brackets is the peak GPU memory allocated "
              "by torch."]) + ([] if not on_cpu else [
              "- s/epoch is the median of the epochs after the first; setup = model creation (reading, "
              "the validation and gene-selection pass, the expression PCA); graph = kNN graphs inside "
              "train(); inference = theta of every cell; peak RSS = the whole process (ru_maxrss).",
              "- Out of core, each SCE2TM step also needs the counts of 512 sampled neighbours, which "
              "lie anywhere in the file: once the data outgrow one pool of blocks (4 x 8192 cells) "
              "they are scattered reads, started two steps ahead and done by a row-reader process "
              "(`sctopic.data.rowreader`; on the uncompressed file concurrent preadv calls). Through "
              "h5py in a thread the same reads cost 9.8 s/epoch at 10^5 and 205 s/epoch at 10^6 "
              "cells (GIL hand-overs stalled both threads). What remains at 10^6 cells: 97% of the "
              "neighbours lie outside the pool, and this VM's page cache does not keep the 2.7 GB "
              "file (proactive reclaim), so each 512-row read fetches about 2-4 MB of random pages "
              "from storage (through the page cache about 20-35 ms and 20-25 ms of the machine's CPU "
              "per step: `row_reads_kang_1000000.md`; O_DIRECT reads cut that CPU but not the time "
              "per epoch, `direct_reads_ab.md`, and were removed) on the same 2 "
              "cores that train. SCETM has no neighbours and reads only contiguous blocks.",
              "- Peak RSS 'N + reader M' is the training process plus the row-reader process (its "
              "VmHWM sampled while it ran).",
              "- In memory at 10^6 cells the peak (12.6 GiB) comes from the CSR copies of the data "
              "(scipy + torch); backed stays under 3 GiB (PCs, graph, theta and logits of 10^6 cells).",
              ])
    if res.get("backed_repeats"):
        sizes = sorted({int(n) for rep in res["backed_repeats"] for n in rep["seconds_per_epoch"]})
        lines += ["", "## Backed training, repeated (one run after another)", "",
                  "| run | neighbour reads | " + " | ".join(f"{n:,} cells s/epoch (per 10^4)" for n in sizes)
                  + " |", "|---|---|" + "---|" * len(sizes)]
        for rep in res["backed_repeats"]:
            v = rep["seconds_per_epoch"]
            lines.append(f"| {rep['run']} ({rep.get('started', '')}) | {rep.get('reads', '')} | " + " | ".join(
                f"{v[str(n)]:.2f} ({1e4 * v[str(n)] / n:.3f})" if str(n) in v else "" for n in sizes) + " |")
        lines += ["", "On this VM the 10^6-cell epochs vary by about 20% from run to run (how much of "
                  "the file the page cache still holds), and a 10^4-cell run by up to 30%: the targets "
                  "below judge linearity on the median of every listed run per size."]
    lines += ["", "## Targets", ""]
    for t in res["targets"]:
        lines.append(f"- {t}")
    if res.get("graph_scale_all"):
        lines += ["", "## Neighbour graph build alone (`bench_graph_scale.py`, "
                  "`results/graph_scale.md`)", "",
                  "| cells | out-of-core PCA s | numba compile s | kNN s | kNN..padded lists s | "
                  "total s | peak RSS MiB | recall@15 |", "|---|---|---|---|---|---|---|---|"]
        for g in res["graph_scale_all"]:
            lines.append(f"| {g.get('n_cells', 0):,} | {g.get('pca_s', float('nan')):.1f} | "
                         f"{g.get('jit_s', 0):.1f} | {g.get('knn_s', float('nan')):.1f} | "
                         f"{g.get('graph_s', float('nan')):.1f} | {g.get('total_s', float('nan')):.1f} | "
                         f"{g.get('peak_rss_mib', float('nan')):,.0f} | {g.get('knn_recall', float('nan'))} |")
    if res.get("floor"):
        f = res["floor"]
        lines += ["", "## FLOP floor", "",
                  f"{f['config']}: {f['matmul_gflop_per_step']:.2f} GFLOP of matmuls per step "
                  f"(forward + backward) + {f['sinkhorn_gflop_per_step'] * 1e3:.1f} MFLOP Sinkhorn; "
                  f"at this machine's measured rate on the step's own shapes "
                  f"({f['matmul_gflops_on_step_shapes']:.0f} GFLOP/s) the floor is "
                  f"{f['floor_seconds_per_step'] * 1e3:.1f} ms per step, i.e. "
                  f"{f['floor_cells_per_second']:,.0f} cells/s. One isolated step measured "
                  f"{f['isolated_step_seconds_median'] * 1e3:.1f} ms "
                  f"({f['isolated_step_cells_per_second']:,.0f} cells/s)."]
        for r in rows:
            lines.append(f"- {r['n_cells']:,} cells, {r['mode']}: {r['cells_per_second']:,.0f} cells/s = "
                         f"{r['cells_per_second'] / f['floor_cells_per_second']:.2f} of the floor rate")
    return "\n".join(lines) + "\n"


def targets(res: dict) -> list[str]:
    out = []
    rows = [r for r in res["runs"] if "error" not in r]
    for mode in ("memory", "backed"):
        rs = sorted([r for r in rows if r["mode"] == mode], key=lambda r: r["n_cells"])
        if len(rs) >= 2:
            per = [r["seconds_per_epoch"] / r["n_cells"] for r in rs]
            dev = max(per) / min(per) - 1
            label = f"{mode} (the main table's run)" if mode == "backed" and res.get("backed_repeats") else mode
            out.append(f"{label}: time per epoch per cell varies by {dev:.0%} from "
                       f"{rs[0]['n_cells']:,} to {rs[-1]['n_cells']:,} cells (target: within 20%): "
                       f"{'met' if dev <= 0.20 else 'NOT met'}")
    reps = res.get("backed_repeats") or []
    if reps:
        spreads = []
        for rep in reps:
            per = [v / int(n) for n, v in rep["seconds_per_epoch"].items()]
            if len(per) >= 2:
                spreads.append(max(per) / min(per) - 1)
        n_met = sum(d <= 0.20 for d in spreads)
        out.append(f"backed, {len(spreads)} repeat runs over all sizes: spreads "
                   f"{', '.join(f'{d:.0%}' for d in spreads)}; within 20% in {n_met} of {len(spreads)}: "
                   f"{'met' if n_met == len(spreads) else 'NOT met reliably'}")
        # One run's 10^4 epoch can be off by 30% on this VM: the verdict uses every run's epochs.
        by_size: dict[int, list[float]] = {}
        for rep in reps:
            for n, v in rep["seconds_per_epoch"].items():
                by_size.setdefault(int(n), []).append(v)
        med = {n: float(np.median(v)) * 1e4 / n for n, v in sorted(by_size.items())}
        if len(med) >= 2:
            dev = max(med.values()) / min(med.values()) - 1
            out.append("backed, median over all listed runs per size: "
                       + ", ".join(f"{n:,} cells {m:.3f} s per 10^4 ({len(by_size[n])} runs)" for n, m in med.items())
                       + f"; varies by {dev:.0%} (target: within 20%): {'met' if dev <= 0.20 else 'NOT met'}")
    big = [r for r in rows if r["mode"] == "backed" and r["n_cells"] >= 900_000]
    for r in big:
        gib = (r["peak_rss_mib"] + (r.get("peak_rss_children_mib") or 0)) / 1024
        out.append(f"backed at {r['n_cells']:,} cells peaks at {gib:.2f} GiB RSS, row-reader process "
                   f"included (target < 4 GiB): "
                   f"{'met' if gib < 4 else 'NOT met'}")
    g = res.get("graph_scale") or {}
    if g.get("n_cells", 0) >= 900_000 and "graph_seconds" in g:
        out.append(f"neighbour graph at {g['n_cells']:,} cells (bench_graph_scale.py): "
                   f"{g['graph_seconds'] / 60:.1f} min for the kNN search (incl. numba compilation) "
                   f"through the padded lists, {g.get('total_s', 0) / 60:.1f} min with the out-of-core "
                   f"PCA (target < 15 min): {'met' if g.get('total_s', g['graph_seconds']) < 900 else 'NOT met'}")
    for r in rows:
        if r["n_cells"] >= 900_000 and r.get("graph_seconds"):
            out.append(f"inside training ({r['mode']}, {r['n_cells']:,} cells): both views' graphs "
                       f"(one when the view is the PCA) built in {r['graph_seconds'] / 60:.1f} min")
    return out


def add_graph_scale(res: dict, out: Path) -> None:
    """The graph-alone rows of ``bench_graph_scale.py``'s own run, when this run has none."""
    gfile = out / "graph_scale.json"
    if not res.get("graph_scale") and gfile.exists():
        rows = json.loads(gfile.read_text()).get("rows", [])
        if rows:
            res["graph_scale_all"] = rows
            res["graph_scale"] = max(rows, key=lambda r: r.get("n_cells", 0))


def main(argv=None) -> int:
    p = make_parser(__doc__, threads=2, n_topics=100)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--path")
    p.add_argument("--mode", choices=["memory", "backed"])
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--model", choices=["sce2tm", "scetm"], default="sce2tm")
    p.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    p.add_argument("--modes", nargs="+", default=["memory", "backed"])
    p.add_argument("--device", default="cpu", help="torch device of training (cpu, cuda)")
    p.add_argument("--precision", default="32", choices=["32", "bf16", "auto"])
    p.add_argument("--out-dir", default=str(RESULTS))
    p.add_argument("--n-hvg", type=int, default=5000, help="genes to keep (the data have 1,287)")
    p.add_argument("--batch-size", type=int, default=0, help="0: the model's default")
    p.add_argument("--data-dir", default=str(SCALE))
    p.add_argument("--graph", action="store_true", help="also time the graph build alone per size")
    p.add_argument("--tag", default="")
    p.add_argument("--update", action="store_true",
                   help="replace only the rows of --sizes x --modes in an existing result file")
    p.add_argument("--floor-only", action="store_true",
                   help="recompute the FLOP floor and the report of an existing result file")
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return 0
    name = f"scale_{args.model}{args.tag}"
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if args.floor_only:
        res = json.loads((out / f"{name}.json").read_text())
        res["floor"] = floor_rate(args.model, scaled_path(min(args.sizes), args.data_dir),
                                  args.threads, args.device)
        return write_results(res, out, name)
    import torch

    runs, graph_rows, update_note = [], [], None
    if args.update and (out / f"{name}.json").exists():
        # Keep the earlier rows of the sizes/modes not rerun now.
        earlier = json.loads((out / f"{name}.json").read_text())
        runs = [r for r in earlier["runs"]
                if not (r.get("mode") in args.modes and r.get("n_cells") in args.sizes)]
        if runs:
            update_note = (f"Only the {'/'.join(args.modes)} rows were rerun at this date; the others "
                           f"are from the run of {earlier.get('date', 'an earlier date')}.")
    for n in args.sizes:
        path = scaled_path(n, args.data_dir)
        if not path.exists():
            print(f"missing {path}: run make_scaled.py --n-cells {n} --out {path}", file=sys.stderr)
            return 2
        for mode in args.modes:
            row = run_one(path, mode, args, EPOCHS.get(n, 2))
            print(json.dumps({k: v for k, v in row.items() if k not in ("graph_stats", "epoch_seconds")}),
                  flush=True)
            runs.append(row)
        if args.graph:
            from bench_graph_scale import graph_scale_row

            graph_rows.append(graph_scale_row(str(path)))
    res = {
        "model": args.model, "threads": args.threads, "torch": torch.__version__,
        "machine": f"{platform.machine()}, {os.cpu_count()} logical CPUs"
                   + (f", {torch.cuda.get_device_name()}" if args.device.startswith("cuda") else ""),
        "device": args.device, "precision": args.precision,
        "date": time.strftime("%Y-%m-%d %H:%M"), "update_note": update_note,
        "genes_note": "The generator resamples Kang 8-donor PBMCs, which have 1,287 genes: every "
                      "size uses those 1,287 genes (5,000 were not available).",
        "runs": sorted(runs, key=lambda r: (r.get("n_cells", 0), r.get("mode", ""))),
        "floor": floor_rate(args.model, scaled_path(min(args.sizes), args.data_dir), args.threads,
                            args.device),
        "graph_scale": graph_rows[-1] if graph_rows else None, "graph_scale_all": graph_rows,
    }
    return write_results(res, out, name)


def write_results(res: dict, out: Path, name: str) -> int:
    add_graph_scale(res, out)
    res["targets"] = targets(res)
    md = markdown(res)
    write_report(out / name, res, md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
