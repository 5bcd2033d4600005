"""Speed of sctopic's ORA and preranked GSEA against all GO-BP human sets, and gseapy on the same job.

Job: 100 topics x 5,000 genes, every GO-BP human set with 5..500 genes among those genes,
1,000 permutations. Topic-gene matrices are built the way embedded topic models (ETM,
scE2TM) build theirs, beta_k = softmax(rho @ alpha_k) over genes, with real gene
embeddings rho = the 50 PCA gene loadings of log-normalised pbmc3k restricted to its 5,000
most variable genes (each column scaled to unit variance) and random topic embeddings
alpha_k ~ N(0, (0.5^2 / 50) I). The loadings are heavy-tailed, so each topic's top 10
genes hold about 20% of its mass (reported as mean_top10_mass). Betas are positive,
skewed toward genes that drive real expression programmes, and free of ties (NMF components were tried first but are ~90% exact zeros, i.e. ties, unlike the
softmax betas of the models).

gseapy (Rust backend) takes about 1.5 min per topic for this job, so it is timed on
``--gseapy-topics`` topics (default 1) and extrapolated linearly to all topics (stated in
the output). Run from the repository root:

    python benchmarks/bench_enrichment.py            # ~3-4 minutes on 2 cores
"""
from __future__ import annotations

import json
import os
import platform
import sys
import time

import numpy as np
import pandas as pd
from harness import DATASETS, RESULTS, make_parser, timed, write_report


def make_topics(n_topics: int, n_hvg: int, seed: int = 0) -> tuple[np.ndarray, list[str], float]:
    """ETM-style betas softmax(rho @ alpha) with PCA gene loadings as rho (see module docstring)."""
    import anndata as ad
    import scanpy as sc

    adata = ad.read_h5ad(DATASETS["pbmc3k"].path)
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    sc.pp.highly_variable_genes(adata, n_top_genes=n_hvg)
    adata = adata[:, adata.var["highly_variable"]].copy()
    t0 = time.perf_counter()
    sc.pp.pca(adata, n_comps=50, random_state=seed)
    rho = adata.varm["PCs"]
    rho = rho / rho.std(axis=0, keepdims=True)
    alpha = np.random.default_rng(seed).normal(scale=0.5 / np.sqrt(rho.shape[1]), size=(rho.shape[1], n_topics))
    logits = (rho @ alpha).T
    logits -= logits.max(axis=1, keepdims=True)
    beta = np.exp(logits)
    beta /= beta.sum(axis=1, keepdims=True)
    return beta, list(map(str, adata.var_names)), time.perf_counter() - t0


def main(argv=None) -> int:
    ap = make_parser(__doc__, out=RESULTS / "enrichment_speed")
    ap.add_argument("--topics", type=int, default=100)
    ap.add_argument("--genes", type=int, default=5000)
    ap.add_argument("--permutations", type=int, default=1000)
    ap.add_argument("--gseapy-topics", type=int, default=1, help="0 skips gseapy")
    args = ap.parse_args(argv)

    import scipy.stats as ss

    import sctopic.genesets as gs

    load_before = os.getloadavg()
    beta, genes, t_topics = make_topics(args.topics, args.genes)
    top10 = np.sort(beta, axis=1)[:, -10:].sum(axis=1).mean()
    print(f"topics: {beta.shape[0]} x {beta.shape[1]} in {t_topics:.1f}s (not counted); "
          f"mean mass of the top 10 genes {top10:.3f}", flush=True)

    lib, t_load = timed(gs.load, "go_bp_human")
    matched, t_match = timed(lib.match, genes)
    print(matched.report, flush=True)
    n_perm = args.permutations
    times: dict[str, float] = {"load_go_bp_human": t_load, "match": t_match}

    _, times["ora"] = timed(gs.ora, beta, genes, matched, top_n=10)
    _, times["ora_without_gene_lists"] = timed(gs.ora, beta, genes, matched, top_n=10, with_genes=False)
    print(f"ORA: {times['ora']:.2f}s", flush=True)
    exact, times["gsea_exact_1_thread"] = timed(gs.gsea, beta, genes, matched, permutations=n_perm, seed=0)
    print(f"GSEA exact, 1 thread: {times['gsea_exact_1_thread']:.1f}s", flush=True)
    again, times["gsea_exact_2_threads"] = timed(
        gs.gsea, beta, genes, matched, permutations=n_perm, seed=0, n_jobs=2
    )
    print(f"GSEA exact, 2 threads: {times['gsea_exact_2_threads']:.1f}s", flush=True)
    pd.testing.assert_frame_equal(exact, again)  # threads do not change results
    approx, times["gsea_size_grid_1.1_1_thread"] = timed(
        gs.gsea, beta, genes, matched, permutations=n_perm, seed=0, size_grid=1.1
    )
    print(f"GSEA size_grid=1.1, 1 thread: {times['gsea_size_grid_1.1_1_thread']:.1f}s", flush=True)
    key = ["topic", "set"]
    e, a = exact.set_index(key).sort_index(), approx.set_index(key).sort_index()
    approx_agreement = {
        "spearman_p": float(ss.spearmanr(e["p"], a["p"])[0]),
        "spearman_nes": float(ss.spearmanr(e["statistic"], a["statistic"], nan_policy="omit")[0]),
        "max_abs_p_diff": float(np.abs(e["p"] - a["p"]).max()),
    }
    for col in ("fdr", "fdr_nes"):
        for thr in (0.01, 0.05):
            approx_agreement[f"pairs_{col}<{thr}_exact"] = int((e[col] < thr).sum())
            approx_agreement[f"pairs_{col}<{thr}_approx"] = int((a[col] < thr).sum())

    gseapy_info: dict = {"run": False}
    if args.gseapy_topics > 0:
        try:
            import gseapy
        except ImportError:
            gseapy_info["reason"] = "gseapy not installed"
        else:
            sets = lib.to_dict()
            per_topic, agree = [], []
            for k in range(args.gseapy_topics):
                rnk = pd.Series(beta[k], index=genes).sort_values(ascending=False)
                res, t = timed(
                    gseapy.prerank, rnk=rnk, gene_sets=sets, permutation_num=n_perm, seed=k,
                    min_size=5, max_size=500, outdir=None, threads=1, verbose=False,
                )
                per_topic.append(t)
                ref = res.res2d.set_index("Term")
                ours = e.loc[k].join(ref, how="inner")
                agree.append({
                    "topic": k,
                    "sets_compared": int(len(ours)),
                    "max_abs_es_diff": float(np.abs(ours["es"] - ours["ES"].astype(float)).max()),
                    "spearman_nes": float(ss.spearmanr(ours["statistic"], ours["NES"].astype(float), nan_policy="omit")[0]),
                    "spearman_nominal_p": float(ss.spearmanr(ours["p"], ours["NOM p-val"].astype(float))[0]),
                    "spearman_fdr_bh_vs_gseapy_fdr": float(ss.spearmanr(ours["fdr"], ours["FDR q-val"].astype(float))[0]),
                    "spearman_fdr_nes_vs_gseapy_fdr": float(ss.spearmanr(ours["fdr_nes"], ours["FDR q-val"].astype(float), nan_policy="omit")[0]),
                    "sets_fdr<0.05 (ours bh, ours fdr_nes, gseapy)": [
                        int((ours["fdr"] < 0.05).sum()), int((ours["fdr_nes"] < 0.05).sum()),
                        int((ours["FDR q-val"].astype(float) < 0.05).sum()),
                    ],
                })
                print(f"gseapy topic {k}: {t:.1f}s; {agree[-1]}", flush=True)
            mean_t = float(np.mean(per_topic))
            gseapy_info = {
                "run": True,
                "version": gseapy.__version__,
                "threads": 1,
                "topics_timed": args.gseapy_topics,
                "seconds_per_topic": per_topic,
                "extrapolated_seconds_all_topics": mean_t * beta.shape[0],
                "note": f"timed on {args.gseapy_topics} topic(s), extrapolated linearly to {beta.shape[0]}",
                "agreement_with_sctopic": agree,
            }
            times["gseapy_prerank_extrapolated"] = gseapy_info["extrapolated_seconds_all_topics"]

    ratios = {
        "gseapy_over_sctopic_gsea_1_thread": times.get("gseapy_prerank_extrapolated", np.nan) / times["gsea_exact_1_thread"],
        "gseapy_over_sctopic_gsea_2_threads": times.get("gseapy_prerank_extrapolated", np.nan) / times["gsea_exact_2_threads"],
        "exact_over_size_grid_1.1": times["gsea_exact_1_thread"] / times["gsea_size_grid_1.1_1_thread"],
        "gsea_1_over_2_threads": times["gsea_exact_1_thread"] / times["gsea_exact_2_threads"],
    }
    sizes = matched.sizes
    result = {
        "job": {
            "data": "pbmc3k (10x, 2,638 cells), log-normalised, top HVGs",
            "topics": "ETM-style softmax(rho @ alpha): rho = PCA gene loadings (50 PCs), alpha random",
            "mean_top10_mass": round(float(top10), 4),
            "n_topics": int(beta.shape[0]),
            "n_genes": int(beta.shape[1]),
            "library": "go_bp_human (bundled, 7,853 sets)",
            "sets_tested": int(len(matched)),
            "distinct_set_sizes": int(np.unique(sizes).size),
            "permutations": n_perm,
            "ora_top_n": 10,
            "topic_construction_seconds_not_counted": round(t_topics, 2),
        },
        "seconds": {k: round(float(v), 3) for k, v in times.items()},
        "ratios": {k: round(float(v), 2) for k, v in ratios.items()},
        "size_grid_vs_exact": approx_agreement,
        "gseapy": gseapy_info,
        "machine": {
            "cpus": os.cpu_count(),
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
            "python": sys.version.split()[0],
            "numpy": np.__version__,
            "platform": platform.platform(),
        },
    }
    write_report(args.out, result, _markdown(result), indent=2)
    print(json.dumps(result["seconds"], indent=2))
    print(json.dumps(result["ratios"], indent=2))
    return 0


def _markdown(r: dict) -> str:
    j, s, g = r["job"], r["seconds"], r["gseapy"]
    lines = [
        "# Enrichment speed (sctopic.genesets vs gseapy)",
        "",
        f"Job: {j['n_topics']} topics x {j['n_genes']:,} genes ({j['topics']}; {j['data']}), "
        f"{j['library']} -> {j['sets_tested']:,} sets with 5..500 genes in the data "
        f"({j['distinct_set_sizes']} distinct sizes), {j['permutations']:,} permutations, "
        f"ORA top {j['ora_top_n']} genes.",
        f"Machine: {r['machine']['cpus']} CPUs, shared (load average before/after: "
        f"{r['machine']['load_average_before'][0]} / {r['machine']['load_average_after'][0]}).",
        "",
        "| step | seconds |",
        "|---|---:|",
    ]
    lines += [f"| {k} | {v:,.2f} |" for k, v in s.items()]
    lines += ["", "| ratio | value |", "|---|---:|"]
    lines += [f"| {k} | {v:,.1f} |" for k, v in r["ratios"].items()]
    lines += ["", f"Approximate mode (size_grid=1.1) vs exact: {r['size_grid_vs_exact']}", ""]
    if g.get("run"):
        lines.append(
            f"gseapy {g['version']} prerank (threads=1): {', '.join(f'{t:.1f}' for t in g['seconds_per_topic'])} s "
            f"per topic; {g['note']}: {g['extrapolated_seconds_all_topics']:,.0f} s. "
            f"Agreement with sctopic on the timed topics: {g['agreement_with_sctopic']}."
        )
    else:
        lines.append(f"gseapy not run ({g.get('reason', 'skipped')}).")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
