"""Seed spread of the CI quality guard: SCE2TM on the bundled pbmc68k_reduced (700 cells).

Usage: python benchmarks/bench_quality_guard.py [--seeds 0 1 2 3 4] [--epochs 150]

Trains the ``default`` and ``paper`` presets for each seed and reports what
``tests/test_quality_guard.py`` asserts: best-resolution Leiden ARI of the representation the
model recommends for clustering (``uns['sctopic']['clustering_key']``) against the FACS
labels, topic diversity and training time. The test's thresholds are set from this spread.
Writes benchmarks/results/quality_guard.json and .md.
"""
from __future__ import annotations

import time

import numpy as np

GUARD_EPOCHS = 150
GUARD_TOPICS = 20
LABELS = "cell_type"


def guard_metrics(preset: str = "default", seed: int = 0, epochs: int = GUARD_EPOCHS) -> dict:
    """Train SCE2TM on the bundled data with one preset and seed; its clustering and diversity."""
    import sctopic
    from sctopic import metrics
    from sctopic.data.outputs import clustering_key

    adata = sctopic.datasets.pbmc68k_reduced()
    model = sctopic.SCE2TM(adata, n_topics=GUARD_TOPICS, seed=seed, preset=preset)
    t0 = time.perf_counter()
    model.train(max_epochs=epochs, seed=seed, progress=False)
    seconds = time.perf_counter() - t0
    model.write_results()
    rep = np.asarray(adata.obsm[clustering_key(adata)], dtype=np.float64)
    sweep = metrics.cluster_sweep(rep, adata.obs[LABELS].to_numpy(), seed=0)
    beta = model.get_topic_gene().to_numpy()
    return {"preset": preset, "seed": seed, "epochs": epochs, "ari": sweep["ari_oracle"],
            "nmi": sweep["nmi_oracle"], "td": metrics.topic_diversity(beta, 10), "train_seconds": seconds}


def main() -> None:
    from harness import make_parser, md_table, write_report

    ap = make_parser(__doc__, seeds=[0, 1, 2, 3, 4], epochs=GUARD_EPOCHS, results_dir=True)
    args = ap.parse_args()
    rows = [guard_metrics(p, s, args.epochs) for p in ("default", "paper") for s in args.seeds]
    lines = [f"# Quality guard: SCE2TM on pbmc68k_reduced ({args.epochs} epochs, {GUARD_TOPICS} topics)", ""]
    summary = []
    for preset in ("default", "paper"):
        sub = [r for r in rows if r["preset"] == preset]
        for key in ("ari", "nmi", "td"):
            v = np.array([r[key] for r in sub])
            summary.append([preset, key, f"{v.mean():.3f}", f"{v.std(ddof=1):.3f}", f"{v.min():.3f}", f"{v.max():.3f}"])
    lines += md_table(["preset", "metric", "mean", "sd", "min", "max"], summary)
    lines += ["", *md_table(["preset", "seed", "ARI", "NMI", "TD", "train s"],
                            [[r["preset"], r["seed"], f"{r['ari']:.3f}", f"{r['nmi']:.3f}", f"{r['td']:.3f}",
                              f"{r['train_seconds']:.1f}"] for r in rows])]
    write_report(f"{args.results_dir}/quality_guard", rows, "\n".join(lines), indent=2)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
