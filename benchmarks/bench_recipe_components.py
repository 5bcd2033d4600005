"""Where the default SCE2TM recipe's time per epoch goes: depth augmentation and cell weighting.

Usage: python benchmarks/bench_recipe_components.py [--datasets kang8 pbmc3k] [--epochs 8] [--threads 2]

The default preset differs from the paper's in several options; two of them run on every
step: ``depth_augment`` (a binomial thinning of the encoder's input, one draw per non-zero
count) and ``recon_weighting`` (one row sum and one multiply). A third option,
``cve_neighbours=False``, drops the sampled expression neighbours that the relational CVE never
reads (the encoder then sees B rows instead of 2B, and no kNN graph is built; "graphs s" is the
set-up time that saves). Each variant is the default preset with one of them switched; the median of epochs 2-4 (the ECR is still off there, so the
Sinkhorn solve does not mix in) is compared. Run alone. Writes
benchmarks/results/recipe_components.json and .md.
"""
from __future__ import annotations

import anndata as ad
import numpy as np
import torch
from harness import DATASETS, load1, machine, make_parser, md_table, pin_threads, provenance, write_report

import sctopic
from sctopic.data.counts import select_genes

VARIANTS = [  # (name, depth_augment, recon_weighting, cve_neighbours); "neither" stays last
    ("default (thinning 0.2, cell weights)", 0.2, "cell", True),
    ("no thinning", 0.0, "cell", True),
    ("count weights", 0.2, "count", True),
    ("default without neighbour rows", 0.2, "cell", False),
    ("neither", 0.0, "count", True),
]


def main() -> None:
    ap = make_parser(__doc__, datasets=["kang8", "pbmc3k"], epochs=8, threads=2, results_dir=True)
    args = ap.parse_args()
    if args.epochs < 4:
        ap.error("--epochs must be >= 4 (epochs 2-4 are timed)")
    pin_threads(args.threads)
    torch.set_num_threads(args.threads)
    rows = []
    for name in args.datasets:
        ds = DATASETS[name]
        adata = ad.read_h5ad(ds.path)
        if ds.n_top_genes:
            adata = select_genes(adata, ds.n_top_genes)
        for label, thin, weighting, with_nb in VARIANTS:
            model = sctopic.SCE2TM(adata.copy(), batch_key=ds.batch_key, depth_augment=thin,
                                   recon_weighting=weighting, cve_neighbours=with_nb)
            model.train(max_epochs=args.epochs, seed=0, progress=False)
            sec = model.history["epoch_seconds"].to_numpy()
            rows.append({"dataset": name, "variant": label, "depth_augment": thin, "recon_weighting": weighting,
                         "cve_neighbours": with_nb, "graph_seconds": model.graph_stats_.get("seconds"),
                         "n_cells": adata.n_obs, "n_genes": adata.n_vars,
                         "seconds_per_epoch": float(np.median(sec[1:4])), "threads": torch.get_num_threads(),
                         "load1": load1()})
            print(rows[-1], flush=True)
    prov = provenance()
    base = {r["dataset"]: r["seconds_per_epoch"] for r in rows if r["variant"] == VARIANTS[-1][0]}
    lines = [f"# SCE2TM default recipe: cost of its per-step options ({args.threads} threads, median of epochs 2-4, "
             "ECR still off)", "",
             f"commit {prov['git_commit']}, {machine()}, load average at start {prov['loadavg_start']}, "
             f"at end {prov['loadavg_end']}.", "",
             *md_table(["dataset", "variant", "depth_augment", "recon_weighting", "neighbour rows", "graphs s",
                        "s/epoch", "x neither", "load"],
                       [[r["dataset"], r["variant"], r["depth_augment"], r["recon_weighting"], r["cve_neighbours"],
                         "-" if r["graph_seconds"] is None else f"{r['graph_seconds']:.1f}",
                         f"{r['seconds_per_epoch']:.3f}", f"{r['seconds_per_epoch'] / base[r['dataset']]:.2f}",
                         f"{r['load1']:.2f}"] for r in rows])]
    write_report(f"{args.results_dir}/recipe_components", {"rows": rows, "provenance": prov},
                 "\n".join(lines), indent=2)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
