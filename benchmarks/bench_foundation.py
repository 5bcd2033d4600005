"""Train SCE2TM with defaults on real data and report clustering, topic diversity and speed.

Usage: python benchmarks/bench_foundation.py [--datasets pbmc3k kang8] [--epochs 500] [--seeds 0]
       [--set key=value ...]  (extra SCE2TM or SCE2TM.train keyword arguments, for comparing
       options, e.g. --set precision=bf16)

pbmc3k: 5000 HVGs of pbmc3k_seurat_labels (raw counts); kang8: kang2018_pbmc_ctrl_8donors with
all 1,287 genes. Clustering: Leiden on a k=15 graph of theta over resolutions 0.1..2.0, ARI/NMI
at the best resolution (oracle protocol, labelled as such) and at resolution 1.0.
Writes benchmarks/results/foundation_<tag>.json and .md.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import anndata as ad
import numpy as np
import torch

import sctopic
from sctopic import metrics
from sctopic.data.counts import select_genes

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data"
DATASETS = {
    "pbmc3k": ("pbmc3k_seurat_labels.h5ad", 5000),
    "kang8": ("kang2018_pbmc_ctrl_8donors.h5ad", 0),
    "pbmc68k": ("pbmc68k_reduced_counts.h5ad", 0),
}


def _parse_value(v: str):
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return {"true": True, "false": False, "none": None}.get(v.lower(), v)


def run_one(name: str, epochs: int, seed: int, extra: dict, n_topics: int) -> dict:
    fname, n_hvg = DATASETS[name]
    adata = ad.read_h5ad(DATA / fname)
    if n_hvg:
        adata = select_genes(adata, n_hvg)
    import inspect

    train_keys = set(inspect.signature(sctopic.SCE2TM.train).parameters)
    train_kw = {k: v for k, v in extra.items() if k in train_keys}
    model = sctopic.SCE2TM(adata, n_topics=n_topics, seed=seed,
                           **{k: v for k, v in extra.items() if k not in train_keys})
    t0 = time.perf_counter()
    model.train(max_epochs=epochs, seed=seed, progress=False, **train_kw)
    train_s = time.perf_counter() - t0
    theta = model.get_cell_topics()
    beta = model.get_topic_gene().to_numpy()
    labels = adata.obs["cell_type"].to_numpy()
    sweep = metrics.cluster_sweep(theta, labels, seed=0)
    ep = np.asarray(model.history_["epoch_seconds"])
    return {
        "dataset": name, "n_cells": adata.n_obs, "n_genes": len(model.genes), "seed": seed,
        "epochs": epochs, "options": extra,
        "ari_oracle": sweep["ari_oracle"], "nmi_oracle": sweep["nmi_oracle"],
        "resolution_oracle": sweep["resolution_oracle"],
        "ari_fixed": sweep["ari_fixed"], "nmi_fixed": sweep["nmi_fixed"],
        "td": metrics.topic_diversity(beta, 10), "td_exclusive": metrics.topic_diversity_exclusive(beta, 10),
        "ip": metrics.interpretability_purity(theta, labels),
        "seconds_per_epoch": float(ep.mean()), "seconds_per_epoch_median": float(np.median(ep)),
        "cells_per_second": float(adata.n_obs / np.median(ep)),
        "train_seconds": train_s,
        "sinkhorn_iterations_mean": float(np.mean(model.history_.get("sinkhorn_iterations", [0]))),
        "graph_stats": model.graph_stats_,
        "final_losses": {k: v[-1] for k, v in model.history_.items() if k not in ("epoch_seconds", "lr")},
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", nargs="+", default=["pbmc3k", "kang8"], choices=sorted(DATASETS))
    ap.add_argument("--epochs", type=int, default=500)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--n-topics", type=int, default=100)
    ap.add_argument("--set", nargs="*", default=[], help="extra SCE2TM options key=value")
    ap.add_argument("--tag", default="defaults")
    args = ap.parse_args()
    extra = {k: _parse_value(v) for k, v in (s.split("=", 1) for s in args.set)}
    rows = []
    for name in args.datasets:
        for seed in args.seeds:
            r = run_one(name, args.epochs, seed, extra, args.n_topics)
            rows.append(r)
            print(json.dumps({k: r[k] for k in ("dataset", "seed", "ari_oracle", "nmi_oracle", "ari_fixed",
                                                "td", "td_exclusive", "ip", "seconds_per_epoch_median",
                                                "cells_per_second")}), flush=True)
    out = HERE / "results" / f"foundation_{args.tag}"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(rows, indent=2, default=float) + "\n")
    lines = [f"# SCE2TM on real data ({args.tag}; {args.epochs} epochs, {args.n_topics} topics, options {extra})", "",
             "| dataset | cells | genes | seed | ARI oracle | NMI oracle | ARI res=1 | NMI res=1 | TD | TD excl. | IP | s/epoch (median) | cells/s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['dataset']} | {r['n_cells']} | {r['n_genes']} | {r['seed']} | {r['ari_oracle']:.3f} | "
                     f"{r['nmi_oracle']:.3f} | {r['ari_fixed']:.3f} | {r['nmi_fixed']:.3f} | {r['td']:.3f} | "
                     f"{r['td_exclusive']:.3f} | {r['ip']:.3f} | {r['seconds_per_epoch_median']:.3f} | {r['cells_per_second']:.0f} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
