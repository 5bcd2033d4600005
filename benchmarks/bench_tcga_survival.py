"""Project PBMC topics onto TCGA melanoma tumours and test their association with survival.

Usage: python benchmarks/bench_tcga_survival.py [--models sce2tm scetm] [--epochs 300] [--n-top 50]

Train a topic model on pbmc3k (../shared/data/pbmc3k_seurat_labels.h5ad, 2,638 cells, 5,000
highly variable genes, 50 topics), score the 472 TCGA SKCM tumours
(../shared/data/tcga_skcm_bulk_survival.h5ad, log2 expression of 2,454 genes) by each topic
with :func:`sctopic.analysis.score_bulk` (weighted z-score of the topic's top genes present in
the bulk data), and fit one Cox model per topic (standardised score; unadjusted, and adjusted
for sample type (primary / metastatic) and age quartile), BH FDR over topics.

Topics are named "cytotoxic" / "B cell" when at least 3 of their 10 top genes (by the model's
beta, over all model genes) are in the marker lists below. Known biology: immune-infiltrated
melanomas have better survival, so such topics should come out with HR < 1.

Writes benchmarks/results/tcga_survival.{json,md,tsv,png} (the TSV and the Kaplan-Meier figure
for the first model).
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
from harness import DATASETS, RESULTS, make_parser, write_json, write_text

import sctopic
from sctopic.analysis import logrank_split, score_bulk, survival_association
from sctopic.plotting.figure import new_figure, save_figure

# Markers of cytotoxic lymphocytes (NK and effector CD8 T cells) and of B cells.
CYTOTOXIC = {"GZMB", "PRF1", "NKG7", "GNLY", "GZMA", "GZMH", "GZMK", "KLRD1", "KLRB1", "KLRC1", "KLRF1", "CST7",
             "CCL5", "CCL4", "CD8A", "CD8B", "FGFBP2", "CTSW", "SPON2", "CD247", "HOPX", "CD160", "NCR1", "NCR3",
             "KIR2DL1", "KIR2DL3", "KIR3DL1", "TBX21", "XCL1", "XCL2", "SH2D1B"}
BCELL = {"MS4A1", "CD79A", "CD79B", "CD19", "BANK1", "TCL1A", "CD22", "VPREB3", "FCRLA", "FCER2",
         "LINC00926", "IGLL5", "IGHM", "IGHD", "BLK", "FCRL1", "FCRL2", "FCRL5", "PAX5", "TNFRSF13C"}
MODELS = {"sce2tm": "SCE2TM", "scetm": "SCETM"}
DEFAULT_EPOCHS = {"scetm": 300, "sce2tm": 200}


def train(name: str, epochs: int, seed: int):
    adata = ad.read_h5ad(DATASETS["pbmc3k"].path)
    model = getattr(sctopic, MODELS[name])(adata, n_topics=50, n_top_genes=5000, seed=seed)
    t0 = time.perf_counter()
    model.train(max_epochs=epochs, seed=seed, progress=False, device="cpu")
    return model, time.perf_counter() - t0


def label_topics(model) -> pd.DataFrame:
    top = model.top_genes(10)
    rows = []
    for t in top.index:
        genes = list(top.loc[t])
        cyt = [g for g in genes if g in CYTOTOXIC]
        b = [g for g in genes if g in BCELL]
        kind = "cytotoxic" if len(cyt) >= 3 and len(cyt) >= len(b) else ("B cell" if len(b) >= 3 else "")
        rows.append({"topic": t, "kind": kind, "cytotoxic_in_top10": cyt, "bcell_in_top10": b,
                     "model_top10": genes})
    return pd.DataFrame(rows).set_index("topic")


def covariates(bulk) -> pd.DataFrame:
    return pd.DataFrame({"sample_type": bulk.obs["sample_type"].astype(str).to_numpy(),
                         "age_quartile": bulk.obs["age_at_initial_pathologic_diagnosis"].astype(str).to_numpy()})


def main() -> None:
    ap = make_parser(__doc__, seed=0, out=RESULTS)
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--epochs", type=int, default=None, help="epochs (default 300 scetm, 200 sce2tm)")
    ap.add_argument("--n-top", type=int, default=50)
    args = ap.parse_args()
    out = Path(args.out)  # a folder
    out.mkdir(parents=True, exist_ok=True)
    bulk = ad.read_h5ad(DATASETS["tcga_skcm"].path)
    time_, event = bulk.obs["time"].to_numpy(float), bulk.obs["event"].to_numpy(float)
    cov = covariates(bulk)
    report = {"bulk": "tcga_skcm_bulk_survival.h5ad", "n_samples": bulk.n_obs, "n_bulk_genes": bulk.n_vars,
              "n_events": int(np.nansum(event)), "n_top": args.n_top, "seed": args.seed,
              "method": "weighted z-score of each topic's top genes present in the bulk data; Cox per topic on "
                        "the standardised score; BH over topics",
              "covariates_adjusted": list(cov.columns), "torch_threads": os.environ.get("OMP_NUM_THREADS"),
              "models": {}}
    tables = {}
    for i, name in enumerate(args.models):
        epochs = args.epochs or DEFAULT_EPOCHS[name]
        model, secs = train(name, epochs, args.seed)
        labels = label_topics(model)
        scores = score_bulk(model, bulk, n_top=args.n_top)
        tab = survival_association(scores, time_, event)
        adj = survival_association(scores, time_, event, covariates=cov)
        tab = tab.set_index("topic")
        adj = adj.set_index("topic")
        tab["kind"] = labels["kind"]
        tab["model_top10"] = labels["model_top10"].map(" ".join)
        tab["hr_adjusted"], tab["p_adjusted"], tab["fdr_adjusted"] = adj["hr"], adj["p"], adj["fdr"]
        tab = tab.reset_index().sort_values("p", kind="stable")
        tables[name] = (tab, scores)
        named = tab[tab["kind"] != ""]
        report["models"][name] = {
            "epochs": epochs, "train_seconds": secs, "n_model_genes": len(model.genes),
            "n_model_genes_in_bulk": scores.attrs["n_shared_genes"],
            "genes_used_per_topic_median": float(tab["n_genes_used"].median()),
            "n_topics_fdr_0.05": int((tab["fdr"] < 0.05).sum()),
            "n_protective_fdr_0.05": int(((tab["fdr"] < 0.05) & (tab["hr"] < 1)).sum()),
            "n_hazardous_fdr_0.05": int(((tab["fdr"] < 0.05) & (tab["hr"] > 1)).sum()),
            "n_topics_fdr_0.05_adjusted": int((tab["fdr_adjusted"] < 0.05).sum()),
            "named_topics": named[["topic", "kind", "hr", "ci_low", "ci_high", "p", "fdr", "hr_adjusted",
                                   "fdr_adjusted", "n_genes_used", "top_genes", "model_top10"]].to_dict(orient="records"),
            "table": tab.drop(columns=["model_top10"]).to_dict(orient="records"),
        }
        if i == 0:
            tab.to_csv(out / "tcga_survival.tsv", sep="\t", index=False, float_format="%.6g")
        print(name, report["models"][name]["n_topics_fdr_0.05"], "topics at FDR < 0.05")
        print(named[["topic", "kind", "hr", "fdr", "hr_adjusted", "fdr_adjusted", "top_genes"]].to_string(index=False))
    first = args.models[0]
    tab, scores = tables[first]
    km_topics = []
    for kind in ("cytotoxic", "B cell"):
        sub = tab[tab["kind"] == kind]
        if len(sub):
            km_topics.append((kind, sub["topic"].iloc[0]))
    if not km_topics:
        km_topics = [("best", tab["topic"].iloc[0])]
    report["kaplan_meier"] = {}
    figure(scores, time_, event, km_topics, first, out / "tcga_survival.png")
    for kind, t in km_topics:
        lr = logrank_split(scores[t].to_numpy(), time_, event)
        report["kaplan_meier"][t] = {"kind": kind, "model": first,
                                     **{k: v for k, v in lr.items() if k not in ("high", "kept")}}
    write_json(out / "tcga_survival.json", report, indent=2, nan_as_null=True)
    write_text(out / "tcga_survival.md", markdown(report))
    print(f"wrote {out}/tcga_survival.json/.md/.tsv/.png")


def figure(scores, time_, event, km_topics, model_name: str, path: Path) -> None:
    from sctopic.plotting.survival import kaplan_meier

    fig = new_figure(5.0 * len(km_topics), 4.2)
    axes = fig.subplots(1, len(km_topics), squeeze=False)[0]
    for ax, (kind, t) in zip(axes, km_topics):
        kaplan_meier(scores[t].to_numpy(), time_, event, topic=f"{model_name} {t} ({kind})", time_unit="years?", ax=ax)
    save_figure(fig, path)


def markdown(rep: dict) -> str:
    lines = ["# PBMC topics projected onto TCGA melanoma: survival association", "",
             f"Bulk: `{rep['bulk']}`, {rep['n_samples']} tumours, {rep['n_bulk_genes']} genes (log2), "
             f"{rep['n_events']} events. Scores: {rep['method']} (n_top = {rep['n_top']}). Adjusted model: "
             f"{', '.join(rep['covariates_adjusted'])}. HR per standard deviation of the score. "
             "Generated by `benchmarks/bench_tcga_survival.py`.", ""]
    for name, m in rep["models"].items():
        lines += [f"## {name} (pbmc3k, 5000 HVGs, 50 topics, {m['epochs']} epochs, {m['train_seconds']:.0f} s)", "",
                  f"{m['n_model_genes_in_bulk']} of the model's {m['n_model_genes']} genes are in the bulk data; "
                  f"median {m['genes_used_per_topic_median']:.0f} genes used per topic. "
                  f"{m['n_topics_fdr_0.05']} topics at FDR < 0.05 ({m['n_protective_fdr_0.05']} protective, "
                  f"{m['n_hazardous_fdr_0.05']} hazardous); {m['n_topics_fdr_0.05_adjusted']} after adjustment.", "",
                  "Named topics (>= 3 marker genes among the model's top 10):", "",
                  "| topic | kind | HR (95% CI) | FDR | HR adjusted | FDR adjusted | genes used (bulk) | model top 10 |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in m["named_topics"]:
            lines.append(f"| {r['topic']} | {r['kind']} | {r['hr']:.2f} ({r['ci_low']:.2f}-{r['ci_high']:.2f}) | "
                         f"{r['fdr']:.2g} | {r['hr_adjusted']:.2f} | {r['fdr_adjusted']:.2g} | {r['top_genes']} | "
                         f"{r['model_top10']} |")
        lines += ["", "All topics:", "", "| topic | HR (95% CI) | p | FDR | FDR adjusted | n genes | genes used |",
                  "|---|---|---|---|---|---|---|"]
        for r in m["table"]:
            if r["hr"] is None or (isinstance(r["hr"], float) and np.isnan(r["hr"])):
                lines.append(f"| {r['topic']} | - | - | - | - | 0 | - |")
                continue
            lines.append(f"| {r['topic']} | {r['hr']:.2f} ({r['ci_low']:.2f}-{r['ci_high']:.2f}) | {r['p']:.2g} | "
                         f"{r['fdr']:.2g} | {r['fdr_adjusted']:.2g} | {r['n_genes_used']:.0f} | {r['top_genes']} |")
        lines.append("")
    for t, k in rep.get("kaplan_meier", {}).items():
        lines.append(f"Kaplan-Meier ({k['model']} {t}, {k['kind']}): split at the median score, log-rank p = "
                     f"{k['p']:.3g} ({k['n_high']} high / {k['n_low']} low).")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
