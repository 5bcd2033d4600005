"""Time per epoch and projected training time of SCE2TM's presets (default vs paper), run alone.

Usage: python benchmarks/bench_recipe_time.py [--datasets pbmc3k kang8] [--epochs 40] [--threads 2]

The default preset skips the ECR solve while its weight is 0 (the first half of training) and
computes a different CVE loss, so its epochs cost differently in each phase. Each preset trains
``--epochs`` epochs with its own schedule scaled to that length; the median epoch time of each
phase (ECR off / on) is projected onto 500 epochs (the paper's schedule and both presets'
default). Writes benchmarks/results/recipe_time.json and .md.
"""
from __future__ import annotations

import anndata as ad
import numpy as np
import torch
from harness import DATASETS, load1, make_parser, md_table, pin_threads, write_report

import sctopic
from sctopic.data.counts import select_genes

FULL = 500


def main() -> None:
    ap = make_parser(__doc__, datasets=["pbmc3k", "kang8"], epochs=40, threads=2, results_dir=True)
    args = ap.parse_args()
    pin_threads(args.threads)
    torch.set_num_threads(args.threads)
    rows = []
    for name in args.datasets:
        ds = DATASETS[name]
        adata = ad.read_h5ad(ds.path)
        if ds.n_top_genes:
            adata = select_genes(adata, ds.n_top_genes)
        for preset in ("paper", "default"):
            model = sctopic.SCE2TM(adata.copy(), preset=preset, batch_key=ds.batch_key)
            model.train(max_epochs=args.epochs, seed=0, progress=False)
            hist = model.history
            sec = hist["epoch_seconds"].to_numpy()
            ecr_on = np.isfinite(hist["ecr"].to_numpy(dtype=float)) if "ecr" in hist else np.zeros(len(sec), bool)
            off = float(np.median(sec[~ecr_on])) if (~ecr_on).any() else None
            on = float(np.median(sec[ecr_on])) if ecr_on.any() else None
            frac_on = ecr_on.mean()
            projected = FULL * ((on or 0.0) * frac_on + (off or 0.0) * (1 - frac_on))
            rows.append({"dataset": name, "preset": preset, "epochs": args.epochs, "n_cells": adata.n_obs,
                         "seconds_per_epoch_ecr_off": off, "seconds_per_epoch_ecr_on": on,
                         "fraction_ecr_on": float(frac_on), "projected_seconds_500_epochs": projected,
                         "threads": torch.get_num_threads(), "load1": load1()})
            print(rows[-1], flush=True)
    lines = [f"# SCE2TM presets: time per epoch ({args.epochs} epochs measured, {args.threads} threads) "
             f"and projected 500-epoch training", "",
             *md_table(["dataset", "preset", "s/epoch ECR off", "s/epoch ECR on", "share of epochs with ECR",
                        "projected 500 epochs (s)", "load"],
                       [[r["dataset"], r["preset"],
                         "-" if r["seconds_per_epoch_ecr_off"] is None else f"{r['seconds_per_epoch_ecr_off']:.3f}",
                         "-" if r["seconds_per_epoch_ecr_on"] is None else f"{r['seconds_per_epoch_ecr_on']:.3f}",
                         f"{r['fraction_ecr_on']:.2f}", f"{r['projected_seconds_500_epochs']:.0f}",
                         f"{r['load1']:.2f}"] for r in rows])]
    write_report(f"{args.results_dir}/recipe_time", rows, "\n".join(lines), indent=2)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
