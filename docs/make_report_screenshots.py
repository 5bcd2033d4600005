"""Screenshots of the HTML report and of every figure type at K=100 (written to docs/figures/).

Usage (single thread; the two fits take about 1 and 0.5 minutes on this 2-core machine):

    OMP_NUM_THREADS=1 sctopic -q fit ../shared/data/pbmc3k_seurat_labels.h5ad --model sce2tm \\
        --n-topics 100 --max-epochs 40 --device cpu --seed 0 --out /tmp/wt19_pbmc3k/fit
    OMP_NUM_THREADS=1 sctopic -q evaluate /tmp/wt19_pbmc3k/fit --labels cell_type --permutations 200 \\
        --json /tmp/wt19_pbmc3k/fit/evaluate.json
    OMP_NUM_THREADS=1 sctopic -q fit ../shared/data/kang2018_pbmc_ifnb_vs_ctrl.h5ad --model sce2tm \\
        --n-topics 100 --max-epochs 60 --batch-key donor --n-hvg 0 --device cpu --seed 0 \\
        --out /tmp/wt19_pbmc3k/kang_fit
    OMP_NUM_THREADS=1 python docs/make_report_screenshots.py --pbmc /tmp/wt19_pbmc3k/fit \\
        --kang /tmp/wt19_pbmc3k/kang_fit

The fits are deliberately short (SCE2TM, 100 topics, 40 epochs on pbmc3k with its 5,000 HVGs and
60 epochs on the Kang IFN-beta set, against the recipe's 500): the point is what the figures and the
report look like at K=100, not a converged model. Needs headless Chromium for the report
screenshots (``chromium`` on PATH) and ../shared/data for the TCGA melanoma cohort.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
from pathlib import Path

import anndata as ad
import numpy as np

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data"
FIG = HERE / "figures"


def chromium_shot(html: Path, png: Path, width: int, height: int) -> None:
    """Screenshot of the top ``width`` x ``height`` pixels of ``html`` in headless Chromium."""
    exe = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
    if exe is None:
        print("no Chromium: report screenshots skipped")
        return
    with tempfile.TemporaryDirectory() as prof:
        subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        f"--user-data-dir={prof}", f"--window-size={width},{height}", f"--screenshot={png}",
                        html.as_uri()],
                       check=True, capture_output=True, timeout=300)
    print("wrote", png)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pbmc", type=Path, default=Path("/tmp/wt19_pbmc3k/fit"), help="pbmc3k K=100 fit directory")
    ap.add_argument("--kang", type=Path, default=Path("/tmp/wt19_pbmc3k/kang_fit"), help="Kang K=100 fit directory")
    ap.add_argument("--skip-report", action="store_true")
    args = ap.parse_args()
    FIG.mkdir(parents=True, exist_ok=True)

    import sctopic.plotting as pl
    from sctopic import tl
    from sctopic.analysis import differential_topics

    # ------------------------------------------------------------ pbmc3k: report and figures
    if not args.skip_report:
        from sctopic.report import build_report

        html = build_report(args.pbmc, args.pbmc / "report.html", labels="cell_type", layout="umap", progress=True,
                            title="sctopic report: pbmc3k, SCE2TM, 100 topics (40 epochs)")
        chromium_shot(html, FIG / "report_pbmc3k_k100_top.png", 1280, 3000)
        # The cards, on a copy of the page holding only the card section (headless Chromium paints a
        # page from its top, so scrolling to #topic-cards gives an empty screenshot).
        text = html.read_text()
        start, end = text.index("<section id='topic-cards'>"), text.index("</section>", text.index("<section id='topic-cards'>"))
        cards_html = args.pbmc / "report_cards_only.html"
        cards_html.write_text(text[:text.index("<main>") + 6] + text[start:end + 10] + "</main></body></html>")
        chromium_shot(cards_html, FIG / "report_pbmc3k_k100_cards.png", 1280, 2400)
    a = ad.read_h5ad(args.pbmc / "result.h5ad")
    pre = "pbmc3k_k100"
    pl.cell_umap(a, key="dominant_topic", title="pbmc3k: cells by dominant topic (K=100)",
                 save=FIG / f"{pre}_umap_dominant_topic.png")
    pl.cell_umap(a, key="cell_type", title="pbmc3k: cells by cell type", save=FIG / f"{pre}_umap_celltype.png")
    pl.topic_label_heatmap(a, key="cell_type", title="pbmc3k: topic use by cell type",
                           save=FIG / f"{pre}_topic_celltype_heatmap.png")
    pl.gene_topic_map(a, save=FIG / f"{pre}_gene_topic_map.png", title="pbmc3k: genes and topics (K=100)")
    tab = tl.enrichment(a, "go_bp_human", top_n=10)
    pl.enrichment_manhattan(a, save=FIG / f"{pre}_ora_manhattan.png",
                            title="pbmc3k: ORA of each topic's top 10 genes in GO BP (coloured: FDR < 0.05)")
    best = tab.sort_values("p", kind="stable").iloc[0]
    from sctopic.genesets import load

    lib = load("go_bp_human")
    topic = a.uns["sce2tm"]["topic_names"][int(best["topic"])]
    pl.gsea_running_sum(a, key=str(topic), gene_set=lib.members(str(best["set"])),
                        set_name=f"{best['description']} ({best['set']})", size=(6, 4),
                        save=FIG / f"{pre}_gsea_running_sum.png")

    # ------------------------------------------------------------ Kang: differential topics, perturbation
    kang = ad.read_h5ad(args.kang / "result.h5ad")
    tl.differential_topics(kang, "condition", groups="stim", reference="ctrl", n_permutations=1000)
    pl.volcano(kang, title="Kang: topics in IFN-beta stimulated vs control cells (K=100)",
               save=FIG / "kang_k100_volcano.png")
    tl.differential_topics(kang, "cell_type", n_permutations=1000, key_added="by_type")
    pl.topic_heatmap(kang, key="by_type", title="Kang: topics by cell type (Cohen's d vs the rest)",
                     save=FIG / "kang_k100_differential_heatmap.png")
    from sctopic.analysis.perturb import perturb_topics
    from sctopic.models.transfer import load_model

    model = load_model(args.kang, adata=kang)
    res = perturb_topics(model, group_key="condition", control="ctrl", target="stim", n_null=30,
                         celltype_key="cell_type", seed=0)
    kang.uns["perturbation"] = res
    pl.lfc_scatter(kang, save=FIG / "kang_k100_perturb_lfc.png")
    pl.lfc_scatter(kang, clip=False, save=FIG / "kang_k100_perturb_lfc_unclipped.png")
    pl.perturbation_summary(kang, title="Kang: shifting the IFN topics in control cells (K=100)",
                            save=FIG / "kang_k100_perturb_summary.png")

    # ------------------------------------------------------------ TCGA melanoma: Kaplan-Meier
    from sctopic.analysis.bulk import score_bulk
    from sctopic.analysis.survival import survival_association

    bulk = ad.read_h5ad(DATA / "tcga_skcm_bulk_survival.h5ad")
    scores = score_bulk(a, bulk, n_top=50)
    surv = survival_association(scores, bulk.obs["time"].to_numpy(float), bulk.obs["event"].to_numpy(float))
    top = str(surv.sort_values("p", kind="stable")["topic"].iloc[0])
    bulk.obs[top] = scores[top].to_numpy()
    # consICA does not state the unit of obs["time"] (0.016 to 30.8: most likely years), so none is claimed.
    pl.kaplan_meier(bulk, key=top, time_unit="unit not stated; likely years", save=FIG / "tcga_k100_kaplan_meier.png")

    # ------------------------------------------------------------ topic number: the stored select-k run
    import json

    import pandas as pd

    sk = json.loads((HERE.parent / "benchmarks" / "results" / "select_k_pbmc3k.json").read_text())
    holder = ad.AnnData(np.zeros((1, 1)))
    holder.uns["topic_stability"] = pd.DataFrame(sk["table"])
    pl.stability_curves(holder, title=f"pbmc3k: choosing K (stored benchmark run; suggested K = {sk['suggested_k']})",
                        save=FIG / "pbmc3k_select_k_curves.png")
    print("figures in", FIG)


if __name__ == "__main__":
    main()
