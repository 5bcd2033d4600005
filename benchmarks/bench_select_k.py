"""Choosing the number of topics on pbmc3k: topic stability across seeds, TD, TC and ARI per K.

Usage: OMP_NUM_THREADS=1 python benchmarks/bench_select_k.py [--ks 10 20 50 100] [--seeds 0 1 2]
       [--epochs 200] [--n-hvg 2000] [--batch-size 512]

Settings (the defaults): scETM (:class:`sctopic.SCETM`) on ../shared/data/pbmc3k_seurat_labels.h5ad
(2,638 cells; 2,000 highly variable genes), K in {10, 20, 50, 100}, seeds 0, 1, 2, 200 epochs,
512 cells per minibatch, Adam lr 5e-3 (scETM's), CPU with one thread. For each K, topics of each
pair of seeds are matched by Hungarian matching on the cosine similarity of their (row-centred)
topic-gene logits; stability is the mean matched similarity, averaged over the 3 seed pairs.
TD and TC use the top 10 genes (TC: NPMI over the bundled GO BP human library); ARI is the best
over a Leiden resolution sweep of theta against the Seurat cell types (``ari_oracle``).
The suggested K is the largest K whose mean stability is within 0.05 of the best.

Writes benchmarks/results/select_k_pbmc3k.{json,md,png}.
"""
from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import anndata as ad
from harness import DATASETS, RESULTS, make_parser, md_table, write_report

from sctopic.analysis import suggest_k, topic_stability
from sctopic.plotting.stability import stability_curves

DATA = DATASETS["pbmc3k"].path


def main() -> None:
    ap = make_parser(__doc__, seeds=[0, 1, 2], epochs=200, out=RESULTS / "select_k_pbmc3k")
    ap.add_argument("--ks", type=int, nargs="+", default=[10, 20, 50, 100])
    ap.add_argument("--n-hvg", type=int, default=2000)
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--genesets", default="go_bp_human")
    args = ap.parse_args()

    adata = ad.read_h5ad(DATA)
    t0 = time.perf_counter()
    res = topic_stability(
        adata, args.ks, seeds=args.seeds, model="scetm",
        model_kwargs={"n_top_genes": args.n_hvg},
        train_kwargs={"max_epochs": args.epochs, "batch_size": args.batch_size, "device": "cpu"},
        labels="cell_type", genesets=args.genesets, progress=True,
    )
    seconds = time.perf_counter() - t0
    k_prod, reason_prod = suggest_k(res.table, rule="product")
    out = Path(args.out)  # without suffix
    out.parent.mkdir(parents=True, exist_ok=True)
    data = res.to_dict()
    data.update(
        data=str(DATA.name), seconds_total=seconds, product_rule={"suggested_k": k_prod, "reason": reason_prod},
        threads={k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")},
        machine=platform.platform(),
    )
    stability_curves(res, path=out.with_suffix(".png"),
                     title=f"pbmc3k, scETM, {args.n_hvg} HVGs, {args.epochs} epochs, seeds {args.seeds}: "
                           f"suggested K = {res.suggested_k}")
    t = res.table
    lines = [
        "# Choosing K on pbmc3k (scETM)",
        "",
        f"Data: {DATA.name} ({adata.n_obs} cells, {args.n_hvg} HVGs). scETM, {args.epochs} epochs, "
        f"batch {args.batch_size}, lr 5e-3, CPU, seeds {', '.join(map(str, args.seeds))}. "
        f"Total {seconds / 60:.1f} min (`benchmarks/bench_select_k.py`).",
        "",
        "Stability: mean cosine similarity of Hungarian-matched topics (row-centred topic-gene logits) "
        "between two seeds, mean +/- sd over the seed pairs; stable share: matched topics with similarity "
        ">= 0.5. TD/TC: top 10 genes (TC on GO BP human). ARI: best Leiden resolution vs Seurat cell types.",
        "",
        *md_table(["K", "stability", "stable share", "TD", "TC", "ARI", "s / fit"], [
            [int(r.k), f"{r.stability_mean:.3f} +/- {r.stability_sd:.3f}", f"{r.stable_fraction_mean:.2f}",
             f"{r.td_mean:.3f} +/- {r.td_sd:.3f}", f"{r.tc_mean:.3f} +/- {r.tc_sd:.3f}",
             f"{r.ari_mean:.3f} +/- {r.ari_sd:.3f}", f"{r.seconds_mean:.0f}"] for _, r in t.iterrows()]),
    ]
    lines += ["", f"**Suggested K = {res.suggested_k}** (rule: tolerance 0.05): {res.reason}", "",
              f"Product rule (stability x TD): K = {k_prod}. {reason_prod}", "",
              "![stability curves](select_k_pbmc3k.png)", ""]
    write_report(out, data, "\n".join(lines), indent=2, nan_as_null=True)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
