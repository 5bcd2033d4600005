"""The scETM family on real data: batch handling, the authors' package, transfer, p-scETM.

Runs in the project environment; the reference package ``scetm==0.5.0`` runs in
``benchmarks/envs/scetm`` (``bash benchmarks/setup_reference_envs.sh``)::

    .venv/bin/python benchmarks/bench_scetm.py --part reference   # vs scetm 0.5.0, Kang 8 donors
    .venv/bin/python benchmarks/bench_scetm.py --part variants    # batch options, Kang 8 donors
    .venv/bin/python benchmarks/bench_scetm.py --part transfer    # Kang -> pbmc3k zero-shot
    .venv/bin/python benchmarks/bench_scetm.py --part pscetm      # p-scETM, GO BP, pbmc3k
    .venv/bin/python benchmarks/bench_scetm.py --part all --epochs 20   # smoke run (suffix _e20)

Parts
-----
``reference``
    ``kang2018_pbmc_ctrl_8donors.h5ad`` (12,261 cells, all 1,287 genes), 100 topics, batch
    intercepts on the 8 donors, E epochs (default 800), 2000 cells per batch, T threads
    (default 2): scetm 0.5.0 (``reference/run_scetm.py --batch-key``) and sctopic's SCETM
    (``reference/run_sctopic_scetm.py --batch-key``), each in its own process, one after the
    other. Seconds per epoch, peak RSS, ARI/NMI (Leiden k=15 over resolutions 0.1..2.0; best
    = ORACLE), kBET and batch ASW on donors, topic diversity.
``variants``
    In process, on Kang 8 donors: SCETM without batch terms, with batch intercepts, with
    intercepts + adversary (E epochs); SCE2TM without and with ``batch_key`` (E2 epochs,
    default 200). Same scores on theta, plus on the logits for SCETM.
``transfer``
    SCETM and SCE2TM with intercepts trained on Kang 8 donors, then pbmc3k
    (``pbmc3k_seurat_labels.h5ad``) embedded zero-shot; ARI/NMI on pbmc3k's labels, fraction
    of model genes shared, and for reference the same models trained on pbmc3k itself
    (restricted to the shared genes).
``pscetm``
    p-scETM with the bundled GO BP (human) library on pbmc3k (5,000 HVGs): the topics most
    enriched in B cells, CD14+ monocytes and NK cells (ratio of mean theta inside vs outside
    the type) and their top pathways.

Results: ``benchmarks/results/scetm_<part>.json`` and ``.md`` (suffix ``_e<E>`` when the
epoch count is not the default, so smoke runs never overwrite real results).
"""
from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
from harness import (
    DATASETS,
    ENVS,
    REFERENCE,
    data_path,
    fmt,
    load1,
    make_parser,
    run_logged,
    save_input,
    write_report,
)

KANG = DATASETS["kang8"].path
PBMC3K = DATASETS["pbmc3k"].path
GO_BP = data_path("go_bp_human_symbols.gmt.gz")
DEFAULT_EPOCHS = 800
DEFAULT_EPOCHS_SCE2TM = 200


def parse_args(argv=None):
    p = make_parser(__doc__, epochs=DEFAULT_EPOCHS, seed=0, threads=2, n_topics=100, work_dir=True, results_dir=True)
    p.add_argument("--part", choices=("reference", "variants", "transfer", "pscetm", "all"), default="all")
    p.add_argument("--epochs-sce2tm", type=int, default=DEFAULT_EPOCHS_SCE2TM)
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- scoring
def scores(theta, labels, batches=None, topic_gene=None, logits=None, seed: int = 0) -> dict:
    """ARI/NMI (oracle and resolution 1.0), kBET and batch ASW, TD of one embedding."""
    from sctopic import metrics

    out = {}
    s = metrics.cluster_sweep(theta, labels, k=15, seed=seed)
    out.update({k: s[k] for k in ("ari_oracle", "nmi_oracle", "resolution_oracle", "ari_fixed", "nmi_fixed")})
    if logits is not None:
        s = metrics.cluster_sweep(logits, labels, k=15, seed=seed)
        out.update({"ari_oracle_logits": s["ari_oracle"], "nmi_oracle_logits": s["nmi_oracle"]})
    if batches is not None:
        out["kbet"] = metrics.kbet(theta, batches, seed=seed)["kbet"]
        out["batch_asw"] = metrics.batch_asw(theta, labels, batches, seed=seed)["batch_asw"]
    if topic_gene is not None:
        out["td"] = metrics.topic_diversity(topic_gene, 10)
        out["td_exclusive"] = metrics.topic_diversity_exclusive(topic_gene, 10)
    return out


def _threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)


def _machine() -> str:
    return f"{platform.node()} {platform.machine()} {os.cpu_count()} cpus, python {platform.python_version()}"


def _write(results: Path, name: str, report: dict, md: str, epochs: int) -> None:
    suffix = "" if epochs == DEFAULT_EPOCHS else f"_e{epochs}"
    write_report(results / f"scetm_{name}{suffix}", report, md)
    print(md)


# ----------------------------------------------------------------------------- reference
def prepare_kang(work: Path) -> Path:
    """``input.npz`` for the runners: Kang 8 donors, all genes, counts, labels, donors."""
    import anndata as ad
    import scipy.sparse as sp

    npz = work / "input.npz"
    if npz.exists():
        return npz
    a = ad.read_h5ad(KANG)
    return save_input(npz, sp.csr_matrix(a.X), np.zeros((a.n_obs, 1), np.float32), a.var_names, a.obs_names,
                      a.obs["cell_type"], a.obs["batch"])


def part_reference(args) -> None:
    import anndata as ad

    work = Path(args.work_dir) / f"scetm_kang8_s{args.seed}"
    npz = prepare_kang(work)
    a = ad.read_h5ad(KANG)
    labels, batches = a.obs["cell_type"].astype(str).to_numpy(), a.obs["batch"].astype(str).to_numpy()
    common = ["--input", str(npz), "--epochs", str(args.epochs), "--seed", str(args.seed),
              "--threads", str(args.threads), "--n-topics", str(args.n_topics), "--batch-size", "2000"]
    runs = {
        "scetm 0.5.0": [str(ENVS / "scetm" / "bin" / "python"), str(REFERENCE / "run_scetm.py"), *common,
                        "--batch-key", "batch", "--out", str(work / "scetm")],
        "sctopic SCETM": [sys.executable, str(REFERENCE / "run_sctopic_scetm.py"), *common, "--batch-key",
                          "--out", str(work / "sctopic_scetm")],
    }
    rows = {}
    for name, cmd in runs.items():
        out = Path(cmd[-1])
        out.mkdir(parents=True, exist_ok=True)
        print(f"[{name}] {' '.join(cmd)}", flush=True)
        load0 = load1()
        proc, _ = run_logged(cmd, out / "stdout.log", threads=args.threads)
        if proc.returncode != 0:
            print(f"[{name}] failed:\n" + (out / "stdout.log").read_text()[-2000:], file=sys.stderr)
            continue
        t = json.loads((out / "timings.json").read_text())
        t["loadavg_1min_before_after"] = [load0, load1()]
        t.update(scores(np.load(out / "theta.npy"), labels, batches, np.load(out / "topic_gene.npy"),
                        np.load(out / "logits.npy"), seed=args.seed))
        t.pop("epoch_seconds", None)
        rows[name] = t
        print(f"  {t['seconds_per_epoch_mean']:.3f} s/epoch, ARI {t['ari_oracle']:.3f}", flush=True)
    ratio = {}
    if len(rows) == 2:
        r, s = rows["scetm 0.5.0"], rows["sctopic SCETM"]
        ratio = {"speedup_seconds_per_epoch": r["seconds_per_epoch_mean"] / s["seconds_per_epoch_mean"],
                 "peak_rss_ratio": s["peak_rss_mb"] / r["peak_rss_mb"],
                 "ari_oracle_diff": s["ari_oracle"] - r["ari_oracle"]}
    report = {"dataset": "kang2018_pbmc_ctrl_8donors (all 1,287 genes)", "epochs": args.epochs,
              "n_topics": args.n_topics, "threads": args.threads, "seed": args.seed,
              "batch": "intercepts on 8 donors", "machine": _machine(),
              "started": time.strftime("%Y-%m-%d %H:%M:%S"), "contenders": rows, "ratio": ratio}
    L = ["# SCETM vs scetm 0.5.0 on Kang 8 donors", "",
         f"{args.n_topics} topics, {args.epochs} epochs, 2000 cells per batch, batch intercepts on "
         f"donors, {args.threads} threads per contender, seed {args.seed}; {report['machine']}.", "",
         "| contender | s/epoch | cells/s | peak RSS MiB | ARI oracle | NMI oracle | ARI (logits) "
         "| kBET | batch ASW | TD | TD excl | load before/after |", "|---" * 12 + "|"]
    for name, t in rows.items():
        L.append("| " + " | ".join([name, fmt(t["seconds_per_epoch_mean"]), fmt(t["cells_per_second"], 0),
                                     fmt(t["peak_rss_mb"], 0), fmt(t["ari_oracle"]), fmt(t["nmi_oracle"]),
                                     fmt(t["ari_oracle_logits"]), fmt(t["kbet"]), fmt(t["batch_asw"]),
                                     fmt(t["td"]), fmt(t["td_exclusive"]),
                                     str(t["loadavg_1min_before_after"])]) + " |")
    if ratio:
        L += ["", f"sctopic is {ratio['speedup_seconds_per_epoch']:.2f}x faster per epoch, peak RSS "
                  f"ratio {ratio['peak_rss_ratio']:.2f}, ARI difference {ratio['ari_oracle_diff']:+.3f}."]
    _write(Path(args.results_dir), "vs_reference_kang8", report, "\n".join(L) + "\n", args.epochs)


# ----------------------------------------------------------------------------- variants
def part_variants(args) -> None:
    import anndata as ad

    import sctopic

    _threads(args.threads)
    a = ad.read_h5ad(KANG)
    labels, batches = a.obs["cell_type"].astype(str).to_numpy(), a.obs["batch"].astype(str).to_numpy()
    specs = [
        ("SCETM", "no batch terms", dict(), args.epochs),
        ("SCETM", "batch intercepts", dict(batch_key="batch"), args.epochs),
        ("SCETM", "intercepts + adversary", dict(batch_key="batch", adversarial=True), args.epochs),
        ("SCE2TM", "no batch terms", dict(), args.epochs_sce2tm),
        ("SCE2TM", "batch intercepts", dict(batch_key="batch"), args.epochs_sce2tm),
    ]
    rows = []
    models = Path(args.work_dir) / f"scetm_variants_s{args.seed}"
    models.mkdir(parents=True, exist_ok=True)
    for cls, variant, kw, epochs in specs:
        m = getattr(sctopic, cls)(a.copy(), n_topics=args.n_topics, seed=args.seed, **kw)
        m.train(max_epochs=epochs, seed=args.seed, progress=False, write_results=False)
        m.save(models / f"{cls}_{variant.replace(' ', '_').replace('+', 'and')}_e{epochs}.pt", overwrite=True)
        theta, logits = m.get_cell_topics(), m.get_cell_topics(logits=True)
        r = {"model": cls, "variant": variant, "epochs": epochs,
             "seconds_per_epoch": float(np.mean(m.history["epoch_seconds"]))}
        r.update(scores(theta, labels, batches, m.get_topic_gene().to_numpy(), logits, seed=args.seed))
        rows.append(r)
        print(f"[{cls} / {variant}] ARI {r['ari_oracle']:.3f} kBET {r['kbet']:.3f} "
              f"bASW {r['batch_asw']:.3f} TD {r['td']:.3f}", flush=True)
    pca = _pca_row(a, labels, batches, args.seed)
    rows.append(pca)
    report = {"dataset": "kang2018_pbmc_ctrl_8donors (all genes)", "n_topics": args.n_topics,
              "seed": args.seed, "threads": args.threads, "machine": _machine(), "rows": rows}
    L = ["# Batch handling on Kang 8 donors (labels: 8 cell types; batches: 8 donors)", "",
         f"{args.n_topics} topics, seed {args.seed}; SCETM {args.epochs} epochs (scETM defaults), "
         f"SCE2TM {args.epochs_sce2tm} epochs. Scores on theta: Leiden k=15, resolutions 0.1..2.0, "
         "best ARI = ORACLE; kBET acceptance rate (k=50) and scib batch ASW on donors (1 = mixed). "
         "s/epoch here is informative only (other work may have shared the cores); timings are "
         "compared in scetm_vs_reference_kang8.", "",
         "| model | variant | ARI oracle | NMI oracle | ARI (logits) | kBET | batch ASW | TD | s/epoch |",
         "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        L.append("| " + " | ".join([r["model"], r["variant"], fmt(r["ari_oracle"]), fmt(r["nmi_oracle"]),
                                     fmt(r.get("ari_oracle_logits")), fmt(r["kbet"]), fmt(r["batch_asw"]),
                                     fmt(r.get("td")), fmt(r.get("seconds_per_epoch"))]) + " |")
    _write(Path(args.results_dir), "variants_kang8", report, "\n".join(L) + "\n", args.epochs)


def _pca_row(a, labels, batches, seed) -> dict:
    from sctopic.data.counts import get_counts, pca_embedding

    emb = pca_embedding(get_counts(a, None), 50, seed)
    r = {"model": "PCA", "variant": "50 PCs of log-normalised counts (baseline)", "epochs": None}
    r.update(scores(emb, labels, batches, seed=seed))
    return r


# ----------------------------------------------------------------------------- transfer
def part_transfer(args) -> None:
    import warnings

    import anndata as ad

    import sctopic

    _threads(args.threads)
    kang, pbmc = ad.read_h5ad(KANG), ad.read_h5ad(PBMC3K)
    labels = pbmc.obs["cell_type"].astype(str).to_numpy()
    rows = []
    for cls, epochs in (("SCETM", args.epochs), ("SCE2TM", args.epochs_sce2tm)):
        saved = Path(args.work_dir) / f"scetm_variants_s{args.seed}" / f"{cls}_batch_intercepts_e{epochs}.pt"
        if saved.exists():  # the variants part trained exactly this model already
            m = getattr(sctopic, cls).load(saved)
        else:
            m = getattr(sctopic, cls)(kang.copy(), n_topics=args.n_topics, batch_key="batch", seed=args.seed)
            m.train(max_epochs=epochs, seed=args.seed, progress=False, write_results=False)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out, rep = sctopic.transfer(m, pbmc)
        key = m.model_name
        r = {"model": cls, "epochs": epochs, "setting": "trained on Kang 8 donors, pbmc3k zero-shot",
             **rep, "warnings": [str(w.message) for w in caught]}
        r.update(scores(out.obsm[f"X_{key}"], labels, logits=out.obsm[f"X_{key}_logits"], seed=args.seed))
        rows.append(r)
        # Reference point: the same model class trained on pbmc3k itself, on the shared genes.
        shared = [g for g in m.genes if g in set(pbmc.var_names)]
        own = getattr(sctopic, cls)(pbmc[:, shared].copy(), n_topics=args.n_topics, seed=args.seed)
        own.train(max_epochs=epochs, seed=args.seed, progress=False, write_results=False)
        r2 = {"model": cls, "epochs": epochs, "setting": f"trained on pbmc3k itself ({len(shared)} shared genes)"}
        r2.update(scores(own.get_cell_topics(), labels, logits=own.get_cell_topics(logits=True), seed=args.seed))
        rows.append(r2)
        print(f"[{cls}] transfer ARI {r['ari_oracle']:.3f} (shared {rep['fraction_shared']:.1%}); "
              f"trained on pbmc3k ARI {r2['ari_oracle']:.3f}", flush=True)
    report = {"source": "kang2018_pbmc_ctrl_8donors", "target": "pbmc3k_seurat_labels", "rows": rows,
              "n_topics": args.n_topics, "seed": args.seed, "machine": _machine()}
    L = ["# Zero-shot transfer: Kang 8 donors -> pbmc3k", "",
         f"{args.n_topics} topics, batch intercepts on Kang donors; pbmc3k embedded with the trained "
         "encoder (genes aligned by name, missing model genes zero-filled). ARI/NMI on pbmc3k's 9 "
         "Seurat labels (Leiden k=15, best resolution = ORACLE).", "",
         "| model | setting | genes shared | ARI oracle | NMI oracle | ARI (logits) | ARI res 1.0 |",
         "|---|---|---|---|---|---|---|"]
    for r in rows:
        shared = f"{r['n_shared_genes']}/{r['n_model_genes']} ({r['fraction_shared']:.1%})" if "n_shared_genes" in r else "-"
        L.append("| " + " | ".join([r["model"], r["setting"], shared, fmt(r["ari_oracle"]), fmt(r["nmi_oracle"]),
                                     fmt(r.get("ari_oracle_logits")), fmt(r["ari_fixed"])]) + " |")
    _write(Path(args.results_dir), "transfer_kang8_to_pbmc3k", report, "\n".join(L) + "\n", args.epochs)


# ----------------------------------------------------------------------------- p-scETM
def part_pscetm(args) -> None:
    import anndata as ad

    import sctopic

    _threads(args.threads)
    pbmc = ad.read_h5ad(PBMC3K)
    labels = pbmc.obs["cell_type"].astype(str).to_numpy()
    t0 = time.perf_counter()
    m = sctopic.SCETM(pbmc, n_topics=args.n_topics, n_top_genes=5000, gene_sets=GO_BP, seed=args.seed)
    m.train(max_epochs=args.epochs, seed=args.seed, progress=False, write_results=False)
    seconds = time.perf_counter() - t0
    theta = m.get_cell_topics()
    tp = m.topic_pathway_frame()
    res = {"n_pathways": len(m.pathways_), "pathway_match": getattr(m, "pathway_report_", ""),
           "seconds": seconds, "seconds_per_epoch": float(np.mean(m.history["epoch_seconds"]))}
    res.update(scores(theta, labels, topic_gene=m.get_topic_gene().to_numpy(), seed=args.seed))
    from sctopic.genesets import load

    lib = load(GO_BP)
    desc = {name: text for name, text, _ in lib.records()}
    types = {}
    for ct in ("B", "CD14+ Mono", "NK"):
        inside = labels == ct
        ratio = theta[inside].mean(0) / np.maximum(theta[~inside].mean(0), 1e-12)
        top_topics = np.argsort(-ratio)[:2]
        entries = []
        for k in top_topics:
            w = tp.iloc[k].sort_values(ascending=False)[:10]
            genes = m.top_genes(10).iloc[k].tolist()
            entries.append({"topic": tp.index[k], "enrichment_ratio": float(ratio[k]),
                            "mean_theta_in_type": float(theta[inside, k].mean()),
                            "top_genes": genes,
                            "top_pathways": [{"set": s, "description": desc.get(s, ""), "weight": float(v)}
                                             for s, v in w.items()]})
        types[ct] = entries
    report = {"dataset": "pbmc3k_seurat_labels, 5000 HVGs", "library": "go_bp_human_symbols.gmt.gz",
              "epochs": args.epochs, "n_topics": args.n_topics, "seed": args.seed, "machine": _machine(),
              **res, "cell_types": types}
    L = ["# p-scETM on pbmc3k with GO biological process (human)", "",
         f"{args.n_topics} topics, {args.epochs} epochs; rho fixed to {res['n_pathways']} standardised GO-BP "
         f"sets (5..500 genes in the data); {res['seconds_per_epoch']:.3f} s/epoch. Clustering of theta: "
         f"ARI {res['ari_oracle']:.3f}, NMI {res['nmi_oracle']:.3f} (oracle).", "",
         "For each cell type, the two topics with the highest ratio of mean theta inside vs outside "
         "the type, their top genes (alpha rho) and their top-weighted pathways (alpha).", ""]
    for ct, entries in types.items():
        L.append(f"## {ct}")
        for e in entries:
            L.append(f"- **{e['topic']}** (ratio {e['enrichment_ratio']:.1f}, mean theta {e['mean_theta_in_type']:.3f}); "
                     f"genes: {', '.join(e['top_genes'])}")
            for pw in e["top_pathways"]:
                L.append(f"  - {pw['description'] or pw['set']} ({pw['set']}, {pw['weight']:.2f})")
        L.append("")
    _write(Path(args.results_dir), "pscetm_pbmc3k", report, "\n".join(L) + "\n", args.epochs)


def main(argv=None) -> int:
    args = parse_args(argv)
    parts = ["reference", "variants", "transfer", "pscetm"] if args.part == "all" else [args.part]
    for part in parts:
        t0 = time.perf_counter()
        globals()[f"part_{part}"](args)
        print(f"[{part}] done in {time.perf_counter() - t0:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
