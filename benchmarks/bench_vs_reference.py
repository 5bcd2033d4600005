"""sctopic against the authors' packages, in one run: scE2TM (sce2tm 1.2.3) and scETM (scetm 0.5.0).

Runs in the project environment (``/work/main/.venv``); the reference packages run in their
own environments, made by ``benchmarks/setup_reference_envs.sh``::

    bash benchmarks/setup_reference_envs.sh                 # once
    .venv/bin/python benchmarks/bench_vs_reference.py --dataset pbmc3k --epochs 200
    .venv/bin/python benchmarks/bench_vs_reference.py --dataset kang8
    .venv/bin/python benchmarks/bench_vs_reference.py --dataset pbmc3k --epochs 5   # smoke run

Data (the issue's protocol):

* ``pbmc3k``: ``pbmc3k_seurat_labels.h5ad`` (2,638 cells), 5,000 highly variable genes
  (log1p of library-normalised counts, scanpy ``highly_variable_genes`` flavour "seurat",
  via ``sctopic.data.select_genes``), raw counts kept;
* ``kang8``: ``kang2018_pbmc_ctrl_8donors.h5ad`` (12,261 cells), all 1,287 genes;
* external view standing in for scGPT: a 512-d ``TruncatedSVD`` (scikit-learn, randomised,
  ``random_state=seed``) of the log-normalised expression of the selected genes,
  ``obsm["X_svd512"]``.

Every contender runs in its own subprocess (so peak RSS is per contender and comparable),
with the same thread settings (``torch.set_num_threads(T)`` and ``OMP/MKL/OPENBLAS/NUMBA``
= T, default T = 2), 100 topics, E epochs:

* ``sce2tm``: ``benchmarks/reference/run_sce2tm.py`` in ``benchmarks/envs/sce2tm``, batch 512;
* ``scetm``:  ``benchmarks/reference/run_scetm.py`` in ``benchmarks/envs/scetm``, batch 2000
  (scETM's default; ``--scetm-batch-size`` to change);
* ``sctopic``: ``benchmarks/reference/run_sctopic.py`` in this environment, batch 512.

Each writes theta, the topic logits and the topic-gene matrix; this script then scores them
all the same way: Leiden on a k = 15 kNN graph of theta over resolutions 0.1..2.0, ARI/NMI at
the best-ARI resolution (ORACLE: chosen with the labels, the scE2TM paper's protocol) and at
the fixed resolution 1.0 (label-free); the same on the logits; topic diversity of the top-10
genes (distinct / (K*10) and exclusive / (K*10)); interpretability purity; seconds per
epoch, cells per second, peak RSS; and ratios sctopic vs each reference.

Results: ``benchmarks/results/vs_reference_<dataset>.json`` and ``.md`` (a run with a
non-default epoch count gets the suffix ``_e<E>`` so it never overwrites the real one).
Intermediate files: ``benchmarks/work/<dataset>_s<seed>/`` (git-ignored).
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from harness import (
    DATASETS,
    ENVS,
    REFERENCE,
    atomic_write,
    fmt,
    make_parser,
    run_logged,
    save_input,
    write_json,
    write_report,
)

DEFAULT_EPOCHS = 200

# sctopic_scetm_batch: sctopic at scetm's batch size (--scetm-batch-size), so that cells per
# second are also compared at equal batch size (the per-step fixed cost of ECR is amortised).
CONTENDERS = ("sce2tm", "scetm", "sctopic", "sctopic_bf16", "sctopic_scetm_batch")


def parse_args(argv=None):
    p = make_parser(__doc__, dataset="pbmc3k", choices=("pbmc3k", "kang8"), epochs=DEFAULT_EPOCHS, seed=0,
                    threads=2, n_topics=100, work_dir=True, results_dir=True)
    p.add_argument("--n-top-genes", type=int, default=None,
                   help="override the dataset's gene selection (0 = all genes)")
    p.add_argument("--skip-reference", action="store_true",
                   help="run only sctopic; reuse reference outputs of an earlier run with the "
                        "same dataset/seed/epochs when present")
    p.add_argument("--contenders", default=",".join(CONTENDERS),
                   help="comma-separated subset of " + ",".join(CONTENDERS))
    p.add_argument("--reuse", action="store_true",
                   help="reuse any contender output already in the work dir for these settings")
    p.add_argument("--scetm-batch-size", type=int, default=2000)
    p.add_argument("--timeout", type=float, default=None, help="seconds per contender")
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- data
def _select_genes(adata, n_top_genes: int):
    """sctopic.data.counts.select_genes (scanpy's "seurat" flavour), or all genes."""
    if n_top_genes == 0 or n_top_genes >= adata.n_vars:
        return adata, "all genes"
    from sctopic.data.counts import select_genes

    return select_genes(adata, n_top_genes=n_top_genes), "sctopic.data.select_genes(flavor='seurat')"


def prepare(dataset: str, seed: int, work: Path, n_top_genes: int | None = None) -> tuple[Path, dict]:
    """Write ``work/input.npz`` (+ ``prep.json``); reuse it when the settings match."""
    import anndata as ad
    import scipy.sparse as sp
    from sklearn.decomposition import TruncatedSVD

    from sctopic.data.counts import log_normalize

    spec = DATASETS[dataset]
    ntg = spec.n_top_genes if n_top_genes is None else n_top_genes
    work.mkdir(parents=True, exist_ok=True)
    npz, meta_path = work / "input.npz", work / "prep.json"
    want = {"dataset": dataset, "file": str(spec.path), "seed": seed, "n_top_genes": ntg,
            "svd_dims": 512}
    if npz.exists() and meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if all(meta.get(k) == v for k, v in want.items()):
            return npz, meta

    t0 = time.perf_counter()
    adata = ad.read_h5ad(spec.path)
    adata.X = sp.csr_matrix(adata.X)
    sel, how = _select_genes(adata, ntg)
    X = sp.csr_matrix(sel.X)
    if X.dtype.kind == "f" and not np.allclose(X.data, np.round(X.data)):
        raise ValueError("expected raw integer counts")
    keep = np.asarray(X.sum(axis=1)).ravel() > 0
    if not keep.all():
        print(f"[prepare] dropping {int((~keep).sum())} cells with no counts in the selected genes")
        sel = sel[keep].copy()
        X = sp.csr_matrix(sel.X)
    n_comp = int(min(512, min(X.shape) - 1))
    svd = TruncatedSVD(n_components=n_comp, algorithm="randomized", random_state=seed)
    emb = svd.fit_transform(log_normalize(X)).astype(np.float32)
    if n_comp < 512:  # the reference cluster head is hard-wired to 512 inputs
        emb = np.hstack([emb, np.zeros((emb.shape[0], 512 - n_comp), np.float32)])
    labels = sel.obs[spec.label_key].astype(str).to_numpy()
    save_input(npz, X, emb, sel.var_names, sel.obs_names, labels)
    meta = dict(want)
    meta.update({
        "n_cells": int(X.shape[0]), "n_genes": int(X.shape[1]), "gene_selection": how,
        "n_labels": int(len(set(labels))),
        "svd_explained_variance_ratio_sum": float(svd.explained_variance_ratio_.sum()),
        "svd_input": "log1p(counts / library * 1e4) of the selected genes",
        "seconds": time.perf_counter() - t0,
    })
    write_json(meta_path, meta, with_provenance=False)
    return npz, meta


# ----------------------------------------------------------------------------- running
def contender_cmd(name: str, args, npz: Path, out: Path) -> list[str]:
    common = ["--input", str(npz), "--out", str(out), "--epochs", str(args.epochs),
              "--seed", str(args.seed), "--threads", str(args.threads),
              "--n-topics", str(args.n_topics)]
    if name == "sce2tm":
        return [str(ENVS / "sce2tm" / "bin" / "python"), str(REFERENCE / "run_sce2tm.py"), *common,
                "--batch-size", "512", "--quiet"]
    if name == "scetm":
        return [str(ENVS / "scetm" / "bin" / "python"), str(REFERENCE / "run_scetm.py"), *common,
                "--batch-size", str(args.scetm_batch_size)]
    if name in ("sctopic", "sctopic_bf16", "sctopic_scetm_batch"):
        prec = ["--precision", "bf16"] if name == "sctopic_bf16" else []
        bs = args.scetm_batch_size if name == "sctopic_scetm_batch" else 512
        return [sys.executable, str(REFERENCE / "run_sctopic.py"), *common, "--batch-size", str(bs), *prec]
    raise ValueError(name)


def calibrate(threads: int, seconds: float = 1.0) -> float:
    """GFLOP/s of a fixed float32 matmul (1024x5000 @ 5000x200, the encoder's first layer)
    with ``threads`` threads: a stamp of how fast the machine is right now.  On a shared
    machine it can swing by several times; compare contenders only at similar stamps."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a, b = torch.randn(1024, 5000), torch.randn(5000, 200)
        a @ b
        n, t0 = 0, time.perf_counter()
        best = float("inf")
        while time.perf_counter() - t0 < seconds:
            t = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - t)
            n += 1
        return 2 * 1024 * 5000 * 200 / best / 1e9
    finally:
        torch.set_num_threads(old)


def run_contender(name: str, args, npz: Path, out: Path, reuse: bool, allow_run: bool = True) -> dict | None:
    tfile = out / "timings.json"
    if reuse and tfile.exists():
        t = json.loads(tfile.read_text())
        if t.get("epochs") == args.epochs and t.get("seed") == args.seed:
            t["reused_from_earlier_run"] = True
            print(f"[{name}] reusing {tfile}")
            return t
    if not allow_run:
        return None
    if name in ("sce2tm", "scetm") and not (ENVS / name / "bin" / "python").exists():
        print(f"[{name}] environment missing: run benchmarks/setup_reference_envs.sh", file=sys.stderr)
        return None
    out.mkdir(parents=True, exist_ok=True)
    if tfile.exists():
        tfile.unlink()  # never mistake an old result for this run's
    cmd = contender_cmd(name, args, npz, out)
    print(f"[{name}] {' '.join(cmd)}", flush=True)
    load0 = os.getloadavg()[0]
    cal0 = calibrate(args.threads)
    proc, wall = run_logged(cmd, out / "stdout.log", threads=args.threads, cwd=out, timeout=args.timeout)
    tail = (out / "stdout.log").read_text().splitlines()[-15:]
    if proc.returncode != 0 or not tfile.exists():
        print(f"[{name}] FAILED (exit {proc.returncode}); last lines:\n  " + "\n  ".join(tail),
              file=sys.stderr)
        return None
    print("  " + (tail[-1] if tail else ""), flush=True)
    t = json.loads(tfile.read_text())
    t["process_wall_seconds"] = wall
    # 1-minute load average before and after: > threads means the cores were shared
    t["loadavg_1min_before_after"] = [round(load0, 2), round(os.getloadavg()[0], 2)]
    # matmul GFLOP/s before and after: a drop means other work slowed this contender down
    t["calibration_gflops_before_after"] = [round(cal0, 1), round(calibrate(args.threads), 1)]
    t["epochs_requested"] = args.epochs
    write_json(tfile, t, with_provenance=False)
    return t


# ----------------------------------------------------------------------------- scoring
def _cluster_sweep(emb, labels, seed: int = 0) -> dict:
    from sctopic.metrics import cluster_sweep

    r = cluster_sweep(emb, labels, k=15, seed=seed)
    r.pop("table", None)
    r["implementation"] = "sctopic.metrics.cluster_sweep"
    return r


def score(out: Path, labels, seed: int) -> dict:
    from sctopic.metrics import interpretability_purity, topic_diversity, topic_diversity_exclusive

    res: dict = {}
    theta = np.load(out / "theta.npy")
    tg = np.load(out / "topic_gene.npy")
    s = _cluster_sweep(theta, labels, seed)
    res["theta"] = {k: s.get(k) for k in ("ari_oracle", "nmi_oracle", "resolution_oracle",
                                          "n_clusters_oracle", "ari_fixed", "nmi_fixed",
                                          "n_clusters_fixed", "implementation")}
    if (out / "logits.npy").exists():
        s = _cluster_sweep(np.load(out / "logits.npy"), labels, seed)
        res["logits"] = {k: s.get(k) for k in ("ari_oracle", "nmi_oracle", "resolution_oracle",
                                               "n_clusters_oracle", "ari_fixed", "nmi_fixed",
                                               "n_clusters_fixed")}
    res["topic_diversity"] = topic_diversity(tg, 10)
    res["topic_diversity_exclusive"] = topic_diversity_exclusive(tg, 10)
    res["interpretability_purity"] = float(interpretability_purity(theta, labels))
    res["n_topics_used"] = int(np.unique(np.argmax(theta, axis=1)).size)
    return res


TIMING_KEYS = ("loadavg_1min_before_after", "calibration_gflops_before_after", "train_seconds", "seconds_per_epoch_mean", "seconds_per_epoch_median",
               "seconds_per_epoch_first140", "seconds_per_epoch_after140",
               "seconds_per_epoch_mean_excl_first", "cells_per_second", "peak_rss_mb",
               "setup_seconds", "batch_size", "epochs", "process_wall_seconds")


def ratios(rows: dict) -> dict:
    out = {}
    for mine, ref in (("sctopic", "sce2tm"), ("sctopic", "scetm"), ("sctopic_bf16", "sce2tm"),
                      ("sctopic_bf16", "scetm"), ("sctopic_scetm_batch", "scetm")):
        s, r = rows.get(mine), rows.get(ref)
        if not s or not r:
            continue

        def div(a, b):
            return None if a in (None, 0) or b in (None, 0) else a / b

        out[f"{mine}_vs_{ref}"] = {
            "speedup_seconds_per_epoch": div(r["seconds_per_epoch_mean"], s["seconds_per_epoch_mean"]),
            "speedup_cells_per_second": div(s["cells_per_second"], r["cells_per_second"]),
            "speedup_train_seconds": div(r["train_seconds"], s["train_seconds"]),
            "peak_rss_ratio": div(s["peak_rss_mb"], r["peak_rss_mb"]),
            "ari_oracle_ratio": div(s["theta"]["ari_oracle"], r["theta"]["ari_oracle"]),
            "ari_oracle_diff": s["theta"]["ari_oracle"] - r["theta"]["ari_oracle"],
            "nmi_oracle_diff": s["theta"]["nmi_oracle"] - r["theta"]["nmi_oracle"],
            "td_ratio": div(s["topic_diversity"], r["topic_diversity"]),
            "td_exclusive_ratio": div(s["topic_diversity_exclusive"], r["topic_diversity_exclusive"]),
        }
    return out


def markdown(report: dict) -> str:
    p, rows = report["prep"], report["contenders"]
    L = [f"# sctopic vs reference packages: {report['dataset']}", "",
         f"{p['n_cells']} cells x {p['n_genes']} genes ({p['gene_selection']}), "
         f"{report['n_topics']} topics, {report['epochs']} epochs, seed {report['seed']}, "
         f"{report['threads']} threads per contender, external view: 512-d TruncatedSVD of "
         "log-normalised expression (stand-in for scGPT).", "",
         f"Run {report['started']}, {report['machine']}.", "",
         "| contender | batch | s/epoch (mean) | first 140 | after 140 | cells/s | train s | setup s "
         "| peak RSS MiB | ARI oracle | NMI oracle | ARI res 1.0 | ARI logits (oracle) | TD | TD excl | IP "
         "| load before/after | GFLOP/s before/after |",
         "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name in CONTENDERS:
        r = rows.get(name)
        if not r:
            L.append(f"| {name} | (not run / failed) |" + " |" * 16)
            continue
        th, lg = r["theta"], r.get("logits") or {}
        L.append("| " + " | ".join([
            name + (" (reused)" if r.get("reused_from_earlier_run") else ""), fmt(r.get("batch_size")),
            fmt(r["seconds_per_epoch_mean"]), fmt(r.get("seconds_per_epoch_first140")),
            fmt(r.get("seconds_per_epoch_after140")), fmt(r["cells_per_second"], 0),
            fmt(r["train_seconds"], 1), fmt(r.get("setup_seconds"), 1), fmt(r["peak_rss_mb"], 0),
            fmt(th["ari_oracle"]), fmt(th["nmi_oracle"]), fmt(th.get("ari_fixed")),
            fmt(lg.get("ari_oracle")), fmt(r["topic_diversity"]), fmt(r["topic_diversity_exclusive"]),
            fmt(r["interpretability_purity"]),
            "/".join(fmt(x, 1) for x in (r.get("loadavg_1min_before_after") or [])) or "-",
            "/".join(fmt(x, 0) for x in (r.get("calibration_gflops_before_after") or [])) or "-",
        ]) + " |")
    if report.get("ratios"):
        L += ["", "Ratios (sctopic vs reference; speedup > 1 means sctopic is faster):", "",
              "| pair | speedup s/epoch | speedup cells/s | speedup train s | RSS ratio | ARI ratio "
              "| ARI diff | NMI diff | TD ratio | TD excl ratio |", "|---|---|---|---|---|---|---|---|---|---|"]
        for pair, q in report["ratios"].items():
            L.append("| " + " | ".join([pair] + [fmt(q[k]) for k in (
                "speedup_seconds_per_epoch", "speedup_cells_per_second", "speedup_train_seconds",
                "peak_rss_ratio", "ari_oracle_ratio", "ari_oracle_diff", "nmi_oracle_diff",
                "td_ratio", "td_exclusive_ratio")]) + " |")
    L += ["", "Notes:", "",
          "- ARI/NMI oracle: Leiden on a k=15 kNN graph of theta, best-ARI resolution in 0.1..2.0 "
          "(chosen WITH the labels, the scE2TM paper's protocol); 'ARI res 1.0' is label-free.",
          "- theta for sce2tm is softmax of what the package saves as its cell-topic matrix (the "
          "batch-normalised encoder mean); 'ARI logits' clusters that saved matrix itself.",
          "- TD = distinct top-10 genes / (K*10); TD excl = genes in exactly one topic's top-10 / (K*10). "
          "IP = purity of argmax topic vs cell type.",
          "- Training seconds exclude data loading, kNN/graph building and the packages' periodic "
          "evaluation (setup s is reported separately). Peak RSS is the whole contender process "
          "(resource.getrusage ru_maxrss).",
          "- The machine's 2 cores may be shared with other work. The last two columns are the "
          "1-minute load average and a calibration matmul rate (1024x5000 @ 5000x200, float32) "
          "measured just before and after each contender: compare timings only where these are "
          "similar (on this machine the rate was seen to swing 10x with other users' load).",
          "- scETM counts an epoch as n_cells/batch_size steps of its resampling stream (batch 2000 "
          "by default); sce2tm and sctopic use batch 512, sctopic_scetm_batch uses scetm's batch size "
          "(cells per second at equal batch size; its ARI is not tuned for that batch size)."]
    for name in CONTENDERS:
        r = rows.get(name)
        if r and r.get("shims"):
            L.append(f"- {name} shims: " + "; ".join(r["shims"]) + ".")
    sink = (rows.get("sce2tm") or {}).get("sinkhorn_iterations_per_epoch_mean")
    if sink:
        idx = sorted({0, len(sink) // 4, len(sink) // 2, 3 * len(sink) // 4, len(sink) - 1})
        L.append("- sce2tm Sinkhorn iterations per step (epoch: mean): " +
                 ", ".join(f"{i + 1}: {sink[i]:.0f}" for i in idx) + ".")
    ns = (rows.get("sce2tm") or {}).get("neighbour_sampling")
    if ns:
        L.append("- sce2tm neighbour graphs (" + str(ns.get("note", "")) + "): " + "; ".join(
            f"{v}: mutual-kNN components before joining {d.get('mutual_knn_components_before_mst', '?')}, "
            f"{d['mean_candidates_incl_self']:.1f} candidates per cell incl. itself, "
            f"P(sampled neighbour = the cell itself) averages {d['p_sample_self_mean']:.2f}"
            for v, d in ns.items() if isinstance(d, dict)) + ".")
    gi = (rows.get("sctopic") or {}).get("graph_info")
    if isinstance(gi, dict):
        parts = []
        for v, d in gi.items():
            if isinstance(d, dict):
                parts.append(f"{v}: " + ", ".join(f"{k} {val if not isinstance(val, float) else round(val, 2)}"
                                                  for k, val in d.items()))
        if parts:
            L.append("- sctopic neighbour graphs: " + "; ".join(parts) + ".")
    return "\n".join(L) + "\n"


def plot_epochs(rows: dict, path: Path, args) -> Path | None:
    """Seconds per epoch against epoch for every contender (shows sce2tm's late slowdown)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover
        return None
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    for name, r in rows.items():
        e = r.get("epoch_seconds") or []
        if e:
            ax.plot(np.arange(1, len(e) + 1), e, label=f"{name} (batch {r.get('batch_size')})", lw=1)
    ax.set_xlabel("epoch")
    ax.set_ylabel("seconds per epoch")
    ax.set_yscale("log")
    ax.set_title(f"{args.dataset}: {args.n_topics} topics, {args.threads} threads")
    ax.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120))
    plt.close(fig)
    return path


def main(argv=None) -> int:
    args = parse_args(argv)
    names = [c.strip() for c in args.contenders.split(",") if c.strip()]
    bad = set(names) - set(CONTENDERS)
    if bad:
        raise SystemExit(f"unknown contenders: {sorted(bad)}")
    work = Path(args.work_dir) / f"{args.dataset}_s{args.seed}"
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    npz, prep = prepare(args.dataset, args.seed, work, args.n_top_genes)
    print(f"[prepare] {prep['n_cells']} cells x {prep['n_genes']} genes -> {npz}", flush=True)
    labels = [str(x) for x in np.load(npz, allow_pickle=False)["labels"]]

    rows: dict = {}
    for name in names:
        out = work / f"{name}_e{args.epochs}_t{args.n_topics}"
        is_ref = not name.startswith("sctopic")
        if is_ref and args.skip_reference:
            t = run_contender(name, args, npz, out, reuse=True, allow_run=False)
            if t is None:
                print(f"[{name}] skipped (--skip-reference, no earlier output)")
                continue
        else:
            t = run_contender(name, args, npz, out, reuse=args.reuse)
        if t is None:
            continue
        row = {k: t.get(k) for k in TIMING_KEYS}
        row.update({k: t[k] for k in ("shims", "sinkhorn_iterations_per_epoch_mean",
                                      "neighbour_sampling", "reused_from_earlier_run", "env",
                                      "outputs", "notes", "graph_info", "history_sinkhorn_iterations")
                    if k in t})
        row["epoch_seconds"] = t.get("epoch_seconds")
        t_s = time.perf_counter()
        row.update(score(out, labels, args.seed))
        row["scoring_seconds"] = time.perf_counter() - t_s
        rows[name] = row
        print(f"[{name}] {row['seconds_per_epoch_mean']:.3f} s/epoch, ARI(oracle) "
              f"{row['theta']['ari_oracle']:.3f}, TD {row['topic_diversity']:.3f}/"
              f"{row['topic_diversity_exclusive']:.3f}, peak RSS {row['peak_rss_mb']:.0f} MiB", flush=True)

    import platform

    report = {
        "dataset": args.dataset, "epochs": args.epochs, "seed": args.seed, "threads": args.threads,
        "n_topics": args.n_topics, "started": started,
        "machine": f"{platform.machine()}, {os.cpu_count()} logical CPUs, {platform.platform()}",
        "prep": prep, "contenders": rows, "ratios": ratios(rows),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }
    suffix = "" if args.epochs == DEFAULT_EPOCHS else f"_e{args.epochs}"
    stem = write_report(Path(args.results_dir) / f"vs_reference_{args.dataset}{suffix}", report, markdown(report))
    png = plot_epochs(rows, stem.with_name(stem.name + "_epochs.png"), args)
    print(markdown(report))
    print(f"wrote {stem}.json and {stem}.md" + (f" and {png.name}" if png else ""))
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
