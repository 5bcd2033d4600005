"""Run docs/tutorial.md end to end, as written, and make its figures (docs/figures/tutorial_*).

Usage: python docs/make_tutorial_figures.py [--threads 2] [--out docs/figures]

Every model setting here is the tutorial's own (scE2TM defaults; pbmc3k: 10 topics, 2,000
HVGs, 200 epochs; Kang: 10 topics, donor intercepts, 200 epochs), so the figures and numbers
in the tutorial are what a reader gets. The checks the tutorial states are computed and
written to ``<out>/tutorial_checks.json`` with the time of each step and the machine's load:

* the fraction of pbmc3k topics with an ORA-enriched GO-BP term (FDR < 0.05, top 20 genes);
* each pbmc3k cell type's marker topic and its fold enrichment (mean use in the type over mean
  use elsewhere, :func:`sctopic.analysis.topic_specificity`);
* clustering agreement with the Seurat labels, the Kang topics up in stimulated cells and the
  perturbation's overlap with the observed IFN-beta response.

Not part of the test suite (about 3 minutes on 2 CPU cores). Needs
../shared/data/pbmc3k_seurat_labels.h5ad and ../shared/data/kang2018_pbmc_ifnb_vs_ctrl.h5ad.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = Path(os.environ.get("SCTOPIC_SHARED_DATA", HERE.parent.parent / "shared" / "data"))

#: The tutorial's settings (section 1 and 5 of docs/tutorial.md).
PBMC = {"n_topics": 10, "n_top_genes": 2000, "max_epochs": 200, "seed": 0}
KANG = {"n_topics": 10, "max_epochs": 200, "seed": 0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=HERE / "figures")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    import anndata as ad
    import numpy as np
    import scanpy as sc

    import sctopic
    from sctopic.analysis import marker_topics, perturb_topics
    from sctopic.genesets import load
    from sctopic.plotting import (
        cell_umap,
        enrichment_manhattan,
        gene_topic_map,
        gsea_running_sum,
        lfc_scatter,
        topic_label_heatmap,
        volcano,
    )

    fig = args.out
    fig.mkdir(parents=True, exist_ok=True)
    checks: dict = {"load_average_start": list(os.getloadavg()), "threads": args.threads, "seconds": {}}
    t_all = time.perf_counter()

    def step(name: str, t0: float) -> None:
        checks["seconds"][name] = round(time.perf_counter() - t0, 1)
        print(f"[{time.perf_counter() - t_all:7.1f} s] {name} done ({checks['seconds'][name]} s)", flush=True)

    # ------------------------------------------------------------ 1. fit (pbmc3k)
    t0 = time.perf_counter()
    adata = ad.read_h5ad(DATA / "pbmc3k_seurat_labels.h5ad")
    model = sctopic.SCE2TM(adata, n_topics=PBMC["n_topics"], n_top_genes=PBMC["n_top_genes"], seed=PBMC["seed"])
    model.train(max_epochs=PBMC["max_epochs"], seed=PBMC["seed"], progress=False)
    step("pbmc3k_fit", t0)
    top = model.top_genes(10)
    checks["pbmc3k_top_genes"] = {t: " ".join(top.loc[t]) for t in top.index}

    # ------------------------------------------------------------ 2. cells and topics
    t0 = time.perf_counter()
    sc.pp.neighbors(adata, use_rep=adata.uns["sctopic"]["clustering_key"], random_state=0)
    sc.tl.umap(adata, random_state=0)
    sctopic.tl.topics_to_obs(adata)
    cell_umap(adata, key="cell_type", save=fig / "tutorial_pbmc3k_umap_celltype.png")
    cell_umap(adata, key="dominant_topic", save=fig / "tutorial_pbmc3k_umap_dominant_topic.png")
    topic_label_heatmap(adata, key="cell_type", save=fig / "tutorial_pbmc3k_topic_celltype_heatmap.png",
                        title="pbmc3k: topic use by cell type")
    spec = sctopic.tl.topic_specificity(adata, "cell_type")
    markers = marker_topics(spec)
    checks["pbmc3k_marker_topics"] = {g: {"topic": r.topic, "fold": round(float(r.fold), 2)}
                                      for g, r in markers.iterrows()}
    checks["pbmc3k_types_with_3x_topic"] = f"{int((markers['fold'] >= 3).sum())} of {len(markers)}"
    gene_topic_map(adata, save=fig / "tutorial_pbmc3k_gene_topic_map.png")
    step("pbmc3k_figures", t0)

    # ------------------------------------------------------------ 3. evaluate
    t0 = time.perf_counter()
    scores = sctopic.metrics.evaluate(adata, labels="cell_type", genesets="go_bp_human", permutations=0)
    checks["pbmc3k_metrics"] = {k: (round(float(scores[k]), 3) if scores.get(k) is not None else None)
                                for k in ("ari_oracle", "nmi_oracle", "ari_fixed", "asw", "td", "tc", "ip",
                                          "ora_n", "ora_u")}
    step("pbmc3k_evaluate", t0)

    # ------------------------------------------------------------ 4. enrichment
    t0 = time.perf_counter()
    tab = sctopic.tl.enrichment(adata, "go_bp_human", top_n=20)
    sig = tab[tab["fdr"] < 0.05]
    n_topics = PBMC["n_topics"]
    checks["pbmc3k_ora_enriched_topics"] = f"{sig['topic'].nunique()} of {n_topics}"
    checks["pbmc3k_ora_fraction"] = round(sig["topic"].nunique() / n_topics, 2)
    checks["pbmc3k_best_term_per_topic"] = {
        str(t): f"{g.iloc[0]['description']} (FDR {g.iloc[0]['fdr']:.1e})"
        for t, g in sig.sort_values("p").groupby("topic", sort=True)}
    enrichment_manhattan(adata, save=fig / "tutorial_pbmc3k_ora_manhattan.png",
                         title="pbmc3k: ORA of each topic's top 20 genes in GO BP (coloured: FDR < 0.05)")
    best = tab.sort_values("p", kind="stable").iloc[0]
    lib = load("go_bp_human")
    topic = model.topic_names[int(best["topic"])] if not isinstance(best["topic"], str) else best["topic"]
    gsea_running_sum(adata, key=topic, gene_set=lib.members(str(best["set"])), set_name=str(best["description"]),
                     save=fig / "tutorial_pbmc3k_gsea_running_sum.png")
    step("pbmc3k_enrichment", t0)

    # ------------------------------------------------------------ 5. Kang: differential topics, perturbation
    t0 = time.perf_counter()
    kang = ad.read_h5ad(DATA / "kang2018_pbmc_ifnb_vs_ctrl.h5ad")
    km = sctopic.SCE2TM(kang, n_topics=KANG["n_topics"], batch_key="donor", seed=KANG["seed"])
    km.train(max_epochs=KANG["max_epochs"], seed=KANG["seed"], progress=False)
    step("kang_fit", t0)
    t0 = time.perf_counter()
    table = sctopic.tl.differential_topics(kang, "condition", groups="stim", reference="ctrl")
    volcano(kang, "stim", save=fig / "tutorial_kang_volcano.png", title="Kang: topics in stim vs ctrl cells")
    up = table[(table["p_bh"] < 0.05) & (table["cohens_d"] > 0)].sort_values("cohens_d", ascending=False)
    ktop = km.top_genes(10)
    checks["kang_topics_up_in_stim"] = {r.topic: f"d={r.cohens_d:.2f}: {' '.join(ktop.loc[r.topic])}"
                                        for r in up.head(5).itertuples()}
    res = perturb_topics(km, group_key="condition", control="ctrl", target="stim", celltype_key="cell_type")
    lfc_scatter(res, save=fig / "tutorial_kang_perturb_lfc.png")
    checks["kang_perturbation"] = {k: res.summary.get(k) for k in
                                   ("topics_up_in_target", "overlap_top100", "overlap_expected_random", "overlap_hypergeom_p", "spearman_lfc",
                                    "empirical_p_overlap", "empirical_p_spearman")}
    step("kang_differential_perturb", t0)

    checks["seconds"]["total"] = round(time.perf_counter() - t_all, 1)
    checks["load_average_end"] = list(os.getloadavg())
    out = fig / "tutorial_checks.json"
    out.write_text(json.dumps(checks, indent=1, default=str) + "\n")
    print(json.dumps(checks, indent=1, default=str))
    print(f"done: figures and {out.name} in {fig}")


if __name__ == "__main__":
    main()
