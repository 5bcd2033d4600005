"""Data-parallel (DDP, gloo) CPU training: N processes vs 1 process with the same thread budget.

Usage (from the repository root, on a quiet machine):

    OMP_NUM_THREADS=1 python benchmarks/bench_ddp.py --epochs 20

trains SCE2TM (100 topics, defaults otherwise) on Kang 2018 (8 control donors, 12,261 cells x
1,287 genes) twice with the same seed and the same *global* batch size:

* ``1proc``: one process with ``--threads`` torch threads (default 2);
* ``2proc``: ``python -m torch.distributed.run --standalone --nproc-per-node 2``, each process
  with ``threads / 2`` threads (gloo backend; see :mod:`sctopic.train.distributed`).

Reported per run: seconds per epoch (mean and median over epochs 2..E; epoch 1 includes
warm-up), cells per second (cells / median epoch), setup seconds (data loading, PCA and kNN
graphs, which every process does for itself), peak RSS of each process, final loss, the
largest parameter difference between ranks, and clustering quality of theta: Leiden on a
k=15 graph over resolutions 0.1..2.0 (``sctopic.metrics.cluster_sweep``), ARI/NMI at the best
resolution (oracle protocol, labelled as such) and at resolution 1.0.

Writes ``benchmarks/results/ddp_cpu_<tag>.json`` and ``.md`` (tag ``kang8`` by default).
``--epochs 2 --tag smoke`` is a quick check that everything runs.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness import BENCH, DATASETS, RESULTS, make_parser, md_table, peak_rss_mib, write_report


# ---------------------------------------------------------------------------- worker
def worker(args) -> None:
    """Train once (in this process; under torchrun, as one rank) and write this rank's JSON."""
    import anndata as ad
    import numpy as np
    import torch

    import sctopic
    from sctopic.data.counts import select_genes

    torch.set_num_threads(args.threads)
    rank = int(os.environ.get("RANK", 0))
    t0 = time.perf_counter()
    adata = ad.read_h5ad(DATASETS[args.dataset].path)
    if args.n_hvg:
        adata = select_genes(adata, args.n_hvg)
    model = sctopic.SCE2TM(adata, n_topics=args.n_topics, seed=args.seed, n_top_genes=None)  # selected above
    t_model = time.perf_counter() - t0
    model.train(max_epochs=args.epochs, batch_size=args.batch_size, seed=args.seed, progress=False,
                device="cpu", write_results=False)
    hist = model.history
    ep = hist["epoch_seconds"].to_numpy()
    steady = ep[1:] if len(ep) > 1 else ep
    row = {
        "rank": rank,
        "threads": torch.get_num_threads(),
        "n_cells": int(adata.n_obs),
        "n_genes": len(model.genes),
        "seconds_model_setup": t_model,
        "seconds_train_total": model.train_seconds_,
        "seconds_per_epoch_mean": float(steady.mean()),
        "seconds_per_epoch_median": float(np.median(steady)),
        "epoch_seconds": [float(x) for x in ep],
        "peak_rss_mb": peak_rss_mib(),
        "final_loss": float(hist["loss"].iloc[-1]),
        "world_size": int(model.train_settings_.get("world_size", 1)),
        "distributed": model.train_settings_.get("distributed"),
    }
    if rank == 0:
        from sctopic import metrics

        theta = model.get_cell_topics()
        labels = adata.obs[DATASETS[args.dataset].label_key].to_numpy()
        sweep = metrics.cluster_sweep(theta, labels, seed=0)
        beta = model.get_topic_gene().to_numpy()
        row.update(ari_oracle=sweep["ari_oracle"], nmi_oracle=sweep["nmi_oracle"],
                   resolution_oracle=sweep["resolution_oracle"], ari_fixed=sweep["ari_fixed"],
                   nmi_fixed=sweep["nmi_fixed"], td=metrics.topic_diversity(beta, 10))
    Path(args.worker_out).mkdir(parents=True, exist_ok=True)
    (Path(args.worker_out) / f"rank{rank}.json").write_text(json.dumps(row, default=float))


# ---------------------------------------------------------------------------- driver
def _launch(n_procs: int, threads: int, args, out: Path) -> tuple[list[dict], float]:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = str(threads)
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    worker_args = [str(BENCH / "bench_ddp.py"), "--worker", "--worker-out", str(out),
                   "--threads", str(threads), "--epochs", str(args.epochs),
                   "--batch-size", str(args.batch_size), "--n-topics", str(args.n_topics),
                   "--dataset", args.dataset, "--n-hvg", str(args.n_hvg), "--seed", str(args.seed)]
    if n_procs == 1:
        cmd = [sys.executable, *worker_args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={n_procs}", *worker_args]
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True)
    wall = time.perf_counter() - t0
    rows = [json.loads((out / f"rank{r}.json").read_text()) for r in range(n_procs)]
    return rows, wall


def summarise(name: str, n_procs: int, threads: int, rows: list[dict], wall: float) -> dict:
    r0 = rows[0]
    return {
        "run": name, "processes": n_procs, "threads_per_process": threads,
        "n_cells": r0["n_cells"], "n_genes": r0["n_genes"],
        "seconds_per_epoch_mean": max(r["seconds_per_epoch_mean"] for r in rows),
        "seconds_per_epoch_median": max(r["seconds_per_epoch_median"] for r in rows),
        "cells_per_second": r0["n_cells"] / max(r["seconds_per_epoch_median"] for r in rows),
        "seconds_setup_per_process": max(r["seconds_model_setup"] for r in rows),
        "seconds_wall_total": wall,
        "peak_rss_mb_per_process": [round(r["peak_rss_mb"], 1) for r in rows],
        "peak_rss_mb_total": round(sum(r["peak_rss_mb"] for r in rows), 1),
        "final_loss": r0["final_loss"],
        "max_param_diff_across_ranks": (r0.get("distributed") or {}).get("max_param_diff_across_ranks", 0.0),
        **{k: r0[k] for k in ("ari_oracle", "nmi_oracle", "resolution_oracle", "ari_fixed",
                              "nmi_fixed", "td")},
        "per_rank": rows,
    }


def main() -> None:
    ap = make_parser(__doc__, dataset="kang8", choices=("kang8", "pbmc3k"), seed=0, epochs=20, n_topics=100,
                     threads=2)
    ap.add_argument("--batch-size", type=int, default=512, help="global minibatch (default 512)")
    ap.add_argument("--n-hvg", type=int, default=0, help="HVGs to keep (0: all genes; kang8 has 1,287)")
    ap.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--tag", default=None, help="output name (default: the dataset)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    tag = args.tag or args.dataset
    runs = []
    for n in args.procs:
        threads = max(1, args.threads // n)
        with tempfile.TemporaryDirectory() as tmp:
            rows, wall = _launch(n, threads, args, Path(tmp))
        runs.append(summarise(f"{n}proc", n, threads, rows, wall))
        print(json.dumps({k: v for k, v in runs[-1].items() if k != "per_rank"}), flush=True)
    meta = {"dataset": args.dataset, "epochs": args.epochs, "global_batch_size": args.batch_size,
            "n_topics": args.n_topics, "seed": args.seed, "total_threads": args.threads,
            "cpu_count": os.cpu_count(), "machine": platform.machine(),
            "python": platform.python_version()}
    import torch

    meta["torch"] = torch.__version__
    lines = [
        f"# SCE2TM data-parallel CPU training ({args.dataset}; {args.epochs} epochs, {args.n_topics} "
        f"topics, global batch {args.batch_size}, {args.threads} threads in total, "
        f"{os.cpu_count()} CPUs)", "",
        "Same seed and global minibatches in both runs; the 2-process run uses DDP with gloo "
        "(each process trains on half of every minibatch; batch norm per process). Epoch times "
        "exclude the first epoch; cells/s = cells / median epoch. ARI: Leiden on theta, best "
        "resolution of 0.1..2.0 (oracle) and resolution 1.0.", "",
        *md_table(["run", "processes x threads", "s/epoch (median)", "s/epoch (mean)", "cells/s", "setup s/process",
                   "peak RSS MB per process", "final loss", "ARI oracle", "ARI res=1", "NMI oracle", "TD",
                   "max param diff"],
                  [[r["run"], f"{r['processes']} x {r['threads_per_process']}", f"{r['seconds_per_epoch_median']:.3f}",
                    f"{r['seconds_per_epoch_mean']:.3f}", f"{r['cells_per_second']:.0f}",
                    f"{r['seconds_setup_per_process']:.1f}",
                    ", ".join(f"{x:.0f}" for x in r["peak_rss_mb_per_process"]), f"{r['final_loss']:.2f}",
                    f"{r['ari_oracle']:.3f}", f"{r['ari_fixed']:.3f}", f"{r['nmi_oracle']:.3f}", f"{r['td']:.3f}",
                    f"{r['max_param_diff_across_ranks']:.1g}"] for r in runs]),
    ]
    if len(runs) >= 2:
        base = runs[0]["seconds_per_epoch_median"]
        for r in runs[1:]:
            lines.append("")
            lines.append(f"Speed-up of {r['run']} over {runs[0]['run']}: "
                         f"{base / r['seconds_per_epoch_median']:.2f}x per epoch.")
    write_report(RESULTS / f"ddp_cpu_{tag}", {"meta": meta, "runs": runs}, "\n".join(lines), indent=2)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
