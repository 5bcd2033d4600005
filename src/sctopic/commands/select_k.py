"""``sctopic select-k``: train over several K and seeds, measure topic stability, suggest a K."""
from __future__ import annotations

import argparse
import sys

from pathlib import Path

from sctopic.commands.common import add_command, add_overwrite_arg, nonneg_int, positive_int, write_json
from sctopic.errors import InputError

DESCRIPTION = """\
Train a model for every K and seed; match topics between each pair of seeds by Hungarian
matching on the cosine similarity of their topic-gene rows and report the mean matched
similarity (stability) with TD, TC (--genesets) and ARI (--labels) per K. The suggested K is the
largest K whose mean stability is within --tolerance of the best (--rule tolerance), or the K
maximising stability x TD (--rule product). Writes DIR/stability.tsv (one row per K),
DIR/stability_runs.tsv, DIR/stability.json (with the suggestion), DIR/stability.png and
DIR/manifest.json, swapped in as one unit when all are written (a previous select-k run in DIR
is replaced only with --overwrite).
"""


def register(sub) -> None:
    p = add_command(sub, "select-k", run, description=DESCRIPTION,
                    help="choose the number of topics: stability across seeds, TD, TC, ARI per K")
    p.add_argument("data", help="input .h5ad with raw counts")
    p.add_argument("--ks", type=positive_int, nargs="+", required=True, metavar="K", help="numbers of topics to try (at least two)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], metavar="S", help="seeds (at least two; default 0 1 2)")
    p.add_argument("--model", choices=("scetm", "sce2tm"), default="scetm", help="model (default scetm)")
    p.add_argument("--labels", metavar="COL", default=None, help="obs column with cell types (adds ARI)")
    p.add_argument("--genesets", metavar="NAME|GMT", default=None, help="gene-set library for TC (default: no TC)")
    p.add_argument("--layer", default=None, help="layer with raw counts (default X)")
    p.add_argument("--n-hvg", type=nonneg_int, default=2000, help="highly variable genes (default 2000; 0 keeps all)")
    p.add_argument("--max-epochs", type=positive_int, default=None, help="epochs per fit (default: the model's)")
    p.add_argument("--batch-size", type=positive_int, default=None, help="cells per minibatch (default: the model's)")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: the model's)")
    p.add_argument("--device", default="auto", help="auto (default), cpu or cuda[:N]")
    p.add_argument("--top-n", type=positive_int, default=10, help="top genes per topic for TD/TC (default 10)")
    p.add_argument("--rule", choices=("tolerance", "product"), default="tolerance", help="how K is suggested (default tolerance)")
    p.add_argument("--tolerance", type=float, default=0.05, help="allowed drop of stability below the best (default 0.05)")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    add_overwrite_arg(p)


def run(args: argparse.Namespace) -> int:
    """Run ``sctopic select-k``; returns the exit code."""
    from sctopic.analysis.stability import topic_stability
    from sctopic.data.io import read_adata, write_text_atomic
    from sctopic.plotting.stability import stability_curves

    if args.tolerance < 0:
        raise InputError(f"--tolerance must be >= 0, got {args.tolerance}")
    from sctopic.data import rundir

    out = Path(args.out)
    rundir.check_target(out, "select-k", overwrite=args.overwrite)  # before minutes of training
    rundir.check_parent_writable(out)
    adata = read_adata(args.data)
    model_kwargs = {"n_top_genes": args.n_hvg or None, "layer": args.layer}
    train_kwargs = {"device": args.device}
    for name in ("max_epochs", "batch_size", "lr"):
        if getattr(args, name) is not None:
            train_kwargs[name] = getattr(args, name)
    res = topic_stability(
        adata, args.ks, seeds=args.seeds, model=args.model, model_kwargs=model_kwargs,
        train_kwargs=train_kwargs, labels=args.labels, genesets=args.genesets, top_n=args.top_n,
        rule=args.rule, tolerance=args.tolerance, progress=not args.quiet,
    )
    settings = {k: v for k, v in vars(args).items() if k not in ("func", "quiet", "out", "overwrite", "command")}
    with rundir.RunWriter(out, "select-k", overwrite=args.overwrite) as writer:
        stage = writer.path
        write_text_atomic(res.table.to_csv(sep="\t", index=False), stage / "stability.tsv")
        write_text_atomic(res.runs.to_csv(sep="\t", index=False), stage / "stability_runs.tsv")
        data = res.to_dict()
        data["data"] = str(args.data)
        data["run_id"] = writer.run_id
        write_json(data, stage / "stability.json")
        stability_curves(res, path=stage / "stability.png")
        writer.commit(settings=settings, data=rundir.input_file_info(args.data))
    cols = ["k", "stability_mean", "stability_sd", "td_mean", "tc_mean", "ari_mean"]
    print(res.table[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"suggested K = {res.suggested_k}: {res.reason}")
    print(f"wrote {out}/stability.tsv, stability_runs.tsv, stability.json, stability.png", file=sys.stderr)
    from sctopic.commands.progress import for_args

    for_args("select-k", args).done(str(out), f"look at {out}/stability.png, then 'sctopic fit {args.data} "
                                    f"--model {args.model} --n-topics {res.suggested_k} --out DIR'")
    return 0
