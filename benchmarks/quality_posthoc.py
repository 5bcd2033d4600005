"""Post-hoc diagnosis of saved SCE2TM results (issue 17): what in the logits hurts clustering?

For each ``result.h5ad`` saved by ``sctopic bench`` (``save_results: true``), this re-clusters,
with the bench's protocol (k = 15, Leiden sweep 0.1-2.0, best ARI; ARI at resolution 1.0):

* the clustering key as written (the logits for SCE2TM);
* the logits with the linear effect of log library size regressed out (what scanpy's
  ``regress_out(adata, ["total_counts"])`` does to expression), to test whether sequencing depth
  drives the partition; the R^2 of log depth per topic is reported beside it;
* other representations of the same model: theta, sqrt(theta) (Hellinger geometry), PCA-50 of
  the logits, and PCA-50 of log decoded expression ``log1p(1e4 theta @ beta)``.

It also lists, on Baron, how the beta cells (the largest type) fall into the two largest
clusters per mouse, which is where the clustering loses most there.

Usage::

    python benchmarks/quality_posthoc.py RUNS_DIR [RUNS_DIR ...] --out benchmarks/results/quality/posthoc

where RUNS_DIR holds ``runs/<dataset>/<method>/seed<k>/result.h5ad``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

import anndata as ad
import numpy as np
import scipy.sparse as sp
from sklearn.decomposition import PCA

from sctopic.metrics.clustering import cluster_sweep


def _score(x: np.ndarray, labels: np.ndarray, seed: int) -> tuple[float, float]:
    r = cluster_sweep(np.ascontiguousarray(x, dtype=np.float32), labels, seed=seed)
    return float(r["ari_oracle"]), float(r["ari_fixed"])


def depth_regressed(x: np.ndarray, log_depth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``x`` minus its least-squares fit on log depth (intercept kept), and R^2 per column."""
    design = np.column_stack([np.ones_like(log_depth), log_depth])
    coef, *_ = np.linalg.lstsq(design, x, rcond=None)
    fitted = design @ coef
    r2 = 1.0 - ((x - fitted) ** 2).sum(0) / np.maximum(((x - x.mean(0)) ** 2).sum(0), 1e-12)
    return x - design[:, 1:] @ coef[1:], r2


def analyse(path: Path, extra: bool) -> dict:
    a = ad.read_h5ad(path)
    seed = int(path.parent.name.removeprefix("seed"))
    labels = a.obs["cell_type"].astype(str).to_numpy()
    key = a.uns["sctopic"]["clustering_key"]
    logits = np.asarray(a.obsm[key], dtype=np.float64)
    x = a.X.tocsr() if sp.issparse(a.X) else np.asarray(a.X)
    log_depth = np.log(np.asarray(x.sum(1)).ravel())
    row = {"dataset": path.parts[-4], "method": path.parts[-3], "seed": seed, "key": key}
    row["ari"], row["ari_res1"] = _score(logits, labels, seed)
    reg, r2 = depth_regressed(logits, log_depth)
    row["ari_depth_regressed"], row["ari_res1_depth_regressed"] = _score(reg, labels, seed)
    row["r2_depth_median"], row["r2_depth_max"] = float(np.median(r2)), float(r2.max())
    row["n_topics_r2_over_0.3"] = int((r2 > 0.3).sum())
    model = a.uns["sctopic"]["model"]
    if extra and f"X_{model}" in a.obsm:
        theta = np.asarray(a.obsm[f"X_{model}"], dtype=np.float64)
        beta = np.asarray(a.uns[model]["topic_gene"], dtype=np.float64)
        pca = PCA(n_components=50, random_state=0)
        row["ari_theta"] = _score(theta, labels, seed)[0]
        row["ari_sqrt_theta"] = _score(np.sqrt(theta), labels, seed)[0]
        row["ari_pca50_logits"] = _score(pca.fit_transform(logits), labels, seed)[0]
        # decoded expression without the decoder's batch norm: an approximation of the model's
        # own decode (result.h5ad holds beta, not the module)
        row["ari_pca50_log_decoded"] = _score(pca.fit_transform(np.log1p(1e4 * theta @ beta)), labels, seed)[0]
    if row["dataset"] == "baron" and "batch" in a.obs:
        r = cluster_sweep(logits.astype(np.float32), labels, seed=seed, return_clusters=True)
        cl = np.asarray(r["clusters"][r["resolution_oracle"]])
        beta_cells = labels == "beta"
        mice = a.obs["batch"].astype(str).to_numpy()[beta_cells]
        ids, counts = np.unique(cl[beta_cells], return_counts=True)
        top = ids[np.argsort(-counts)[:2]]
        row["baron_beta_split"] = {str(c): {m: int(((cl[beta_cells] == c) & (mice == m)).sum())
                                            for m in np.unique(mice)} for c in top}
        deep = np.median(log_depth[beta_cells][cl[beta_cells] == top[0]])
        shallow = np.median(log_depth[beta_cells][cl[beta_cells] == top[1]]) if len(top) > 1 else np.nan
        row["baron_beta_median_depth"] = [float(np.exp(deep)), float(np.exp(shallow))]
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--out", type=Path, required=True, help="writes OUT.json and OUT.md")
    p.add_argument("--methods", nargs="*", default=None)
    p.add_argument("--no-extra", action="store_true", help="only the depth regression")
    args = p.parse_args()
    files = sorted(f for d in args.runs for f in d.glob("runs/*/*/seed*/result.h5ad"))
    rows = []
    for f in files:
        if args.methods and f.parts[-3] not in args.methods:
            continue
        try:
            if "clustering_key" not in ad.read_h5ad(f, backed="r").uns.get("sctopic", {}):
                continue  # PCA and scvi-tools results: no topic model to diagnose
        except Exception:
            continue
        row = analyse(f, extra=not args.no_extra)
        rows.append(row)
        print(json.dumps(row), flush=True)
    load = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({"rows": rows, "load": load,
                                                         "machine": platform.platform()}, indent=1) + "\n")
    cols = ["ari", "ari_depth_regressed", "ari_res1", "ari_res1_depth_regressed", "r2_depth_median",
            "n_topics_r2_over_0.3", "ari_theta", "ari_sqrt_theta", "ari_pca50_logits", "ari_pca50_log_decoded"]
    lines = ["# Post-hoc representations of saved SCE2TM results (best-resolution Leiden ARI)", "",
             f"Load average while scoring: {load[0]:.2f} (scores do not depend on load).", "",
             "| dataset | method | seed | " + " | ".join(cols) + " |", "|" + "---|" * (3 + len(cols))]
    for r in rows:
        vals = [f"{r[c]:.3f}" if isinstance(r.get(c), float) else str(r.get(c, "-")) for c in cols]
        lines.append(f"| {r['dataset']} | {r['method']} | {r['seed']} | " + " | ".join(vals) + " |")
    split = [r for r in rows if "baron_beta_split" in r]
    if split:
        lines += ["", "Baron: beta cells in the two largest clusters at the best resolution, per mouse, "
                  "and the median counts per cell of each cluster's beta cells:", ""]
        lines += [f"- {r['method']} s{r['seed']}: {r['baron_beta_split']}, depth "
                  f"{r['baron_beta_median_depth'][0]:.0f} vs {r['baron_beta_median_depth'][1]:.0f}" for r in split]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
