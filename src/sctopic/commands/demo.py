"""``sctopic demo``: train scE2TM on the bundled PBMC dataset and print what came out."""
from __future__ import annotations

import argparse
from pathlib import Path

from sctopic.commands.common import add_overwrite_arg, positive_int, write_json


def register(sub) -> None:
    p = sub.add_parser("demo", help="train on the bundled 700-cell PBMC dataset (about a minute)")
    p.add_argument("--out", default="sctopic_demo", help="output directory (default ./sctopic_demo)")
    p.add_argument("--max-epochs", type=positive_int, default=200, help="epochs (default 200)")
    p.add_argument("--n-topics", type=positive_int, default=20, help="topics (default 20)")
    p.add_argument("--seed", type=int, default=0)
    add_overwrite_arg(p)
    p.set_defaults(func=run)


def run(args) -> int:
    import numpy as np

    from sctopic.commands.fit import fit_and_write
    from sctopic.datasets import pbmc68k_reduced

    out = Path(args.out)
    adata = pbmc68k_reduced()
    fit_args = argparse.Namespace(
        data="sctopic.datasets.pbmc68k_reduced()", n_topics=args.n_topics, layer=None,
        external_key=None, n_hvg=0, max_epochs=args.max_epochs, batch_size=512, lr=1e-3,
        seed=args.seed, device="auto", ecr_weight=100.0, no_cross_view=False,
        external_concat=False, encoder_input="counts", ecr_grad="implicit",
        overwrite=bool(getattr(args, "overwrite", False)),
    )
    print(f"sctopic demo: scE2TM with {args.n_topics} topics on {adata.n_obs} PBMCs x "
          f"{adata.n_vars} genes (bundled pbmc68k_reduced), {args.max_epochs} epochs")
    import anndata as ad

    def add_metrics(stage: Path, report: dict) -> None:
        """Score the result in the staging folder and add the numbers to its train.json."""
        from sctopic.data.outputs import clustering_key

        res = ad.read_h5ad(stage / "result.h5ad")
        key = clustering_key(res)  # the representation the model recommends for clustering
        report["demo_metrics"] = {"clustering_key": key, **_quick_metrics(
            res.obsm[key], res.uns["sce2tm"]["topic_gene"], res.obs["cell_type"].to_numpy())}
        write_json(report, stage / "train.json")

    report = fit_and_write(adata, fit_args, out, progress=not args.quiet, command="demo", finish=add_metrics)
    res = ad.read_h5ad(out / "result.h5ad")
    beta = res.uns["sce2tm"]["topic_gene"]
    metrics = report["demo_metrics"]
    print(f"trained in {report['seconds_training']:.1f} s ({report['seconds_per_epoch']:.3f} s/epoch)")
    print(f"clustering of obsm['{metrics['clustering_key']}'] vs cell types (Leiden, best resolution = oracle): "
          f"ARI {metrics['ari_oracle']:.3f}, NMI {metrics['nmi_oracle']:.3f}")
    print(f"topic diversity (top 10): {metrics['td']:.3f} (exclusive: {metrics['td_exclusive']:.3f})")
    genes = np.asarray(res.uns["sce2tm"]["genes"])
    order = np.argsort(-beta, axis=1)[:, :6]
    print("top genes of the first topics:")
    for k in range(min(5, beta.shape[0])):
        print(f"  topic_{k}: {', '.join(genes[order[k]])}")
    print(f"outputs: {out}/model.pt, {out}/result.h5ad (obsm['X_sce2tm'], uns['sce2tm']), "
          f"{out}/train.json")
    return 0


def _quick_metrics(rep, beta, labels) -> dict:
    from sctopic import metrics

    sweep = metrics.cluster_sweep(rep, labels)
    return {
        "ari_oracle": sweep["ari_oracle"], "nmi_oracle": sweep["nmi_oracle"],
        "resolution_oracle": sweep["resolution_oracle"],
        "td": metrics.topic_diversity(beta, 10), "td_exclusive": metrics.topic_diversity_exclusive(beta, 10),
    }
