"""Make the figures of docs/tutorial.md (written to docs/figures/*.png).

Usage: OMP_NUM_THREADS=1 python docs/make_tutorial_figures.py [--epochs 40] [--n-topics 20]

The default run is deliberately small (scETM, 20 topics, 2,000 HVGs, 40 epochs; a few minutes on
one CPU thread), so the figures show what the tutorial's commands produce, not a converged model.
Needs ../shared/data/pbmc3k_seurat_labels.h5ad and ../shared/data/kang2018_pbmc_ifnb_vs_ctrl.h5ad.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import anndata as ad

import sctopic
from sctopic.analysis import differential_topics
from sctopic.genesets import load, ora
from sctopic.plotting import (
    cell_umap,
    dominant_topic,
    enrichment_manhattan,
    gene_topic_map,
    gsea_running_sum,
    topic_label_heatmap,
    umap_coords,
    volcano,
)

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data"
FIG = HERE / "figures"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--n-topics", type=int, default=20)
    ap.add_argument("--n-hvg", type=int, default=2000)
    args = ap.parse_args()
    FIG.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------ pbmc3k
    adata = ad.read_h5ad(DATA / "pbmc3k_seurat_labels.h5ad")
    model = sctopic.SCETM(adata, n_topics=args.n_topics, n_top_genes=args.n_hvg, seed=0)
    model.train(max_epochs=args.epochs, batch_size=512, device="cpu", seed=0, progress=False)
    theta = adata.obsm["X_scetm"]
    names = model.topic_names
    coords = umap_coords(theta, seed=0)
    cell_umap(coords, adata.obs["cell_type"].astype(str).to_numpy(), title="pbmc3k: cells by cell type",
              path=FIG / "pbmc3k_umap_celltype.png")
    cell_umap(coords, dominant_topic(theta, names), title="pbmc3k: cells by dominant topic", continuous=False,
              path=FIG / "pbmc3k_umap_topic.png")
    beta = model.get_topic_gene()
    genes = list(beta.columns)
    w = beta.to_numpy()
    gene_topic_map(model._gene_embedding(), model._topic_embedding(), genes, w, topic_names=names,
                   top_n=8, path=FIG / "pbmc3k_gene_topic_map.png")
    topic_label_heatmap(theta, adata.obs["cell_type"].astype(str).to_numpy(), names,
                        title="pbmc3k: topic use by cell type", path=FIG / "pbmc3k_topic_celltype_heatmap.png")
    lib = load("go_bp_human")
    tab = ora(w, genes, lib, top_n=20)
    enrichment_manhattan(tab, topic_names=names, path=FIG / "pbmc3k_ora_manhattan.png",
                         title="pbmc3k: ORA of each topic's top 20 genes in GO BP (coloured: FDR < 0.05)")
    best = tab.sort_values("p", kind="stable").iloc[0]
    t = int(best["topic"])
    gsea_running_sum(w[t], genes, lib.members(str(best["set"])), set_name=str(best["set"]), topic=names[t],
                     size=(6, 4), path=FIG / "pbmc3k_gsea_running_sum.png")

    # ------------------------------------------------------------ Kang IFN-beta
    kang = ad.read_h5ad(DATA / "kang2018_pbmc_ifnb_vs_ctrl.h5ad")
    km = sctopic.SCETM(kang, n_topics=args.n_topics, batch_key="donor", seed=0)
    km.train(max_epochs=args.epochs * 2, batch_size=512, device="cpu", seed=0, progress=False)
    table = differential_topics(km, "condition", groups="stim", reference="ctrl", n_permutations=1000)
    volcano(table, "stim", path=FIG / "kang_volcano.png", title="Kang: topics in stim vs ctrl cells")
    up = table[(table["p_bh"] < 0.05) & (table["cohens_d"] > 0)].sort_values("cohens_d", ascending=False)
    top = km.top_genes(10)
    lines = [f"{r.topic}\td={r.cohens_d:.2f}\t{' '.join(top.loc[r.topic])}" for r in up.head(5).itertuples()]
    (FIG / "kang_up_topics.txt").write_text("\n".join(lines) + "\n")
    print("topics up in stim:\n" + "\n".join(lines))
    print(f"wrote {sorted(p.name for p in FIG.glob('*.png'))}")


if __name__ == "__main__":
    main()
