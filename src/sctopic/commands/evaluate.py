"""``sctopic evaluate``: score a fitted model's output (clustering, mixing, topics)."""
from __future__ import annotations

import argparse
import json
import sys

from sctopic.commands.common import add_command
from sctopic.errors import InputError

DESCRIPTION = """\
Score a fitted topic model. DIR is a model output directory holding result.h5ad (or the .h5ad
itself). ARI/NMI are reported at the best resolution of a sweep (*_oracle: chosen with the
labels, optimistic) and at a fixed resolution.
"""


def register(subparsers) -> argparse.ArgumentParser:
    """Add the ``evaluate`` sub-command."""
    p = add_command(subparsers, "evaluate", run, description=DESCRIPTION,
                    help="score a fitted model: ARI/NMI, ASW, kBET, TC, TD, IP, ORA/GSEA N/U/Q")
    p.add_argument("dir", metavar="DIR", help="model output directory (with result.h5ad) or an .h5ad file")
    p.add_argument("--labels", metavar="COL", help="obs column with cell types (label metrics are null without it)")
    p.add_argument("--batch-key", metavar="COL", help="obs column with batches (for kBET and batch ASW)")
    p.add_argument(
        "--genesets", metavar="NAME|GMT", nargs="+", default=None,
        help="gene-set libraries: bundled names (go_bp_human, go_bp_mouse, hallmark) or GMT "
        "paths; the first gives tc/ora_*/gsea_* (default: go_bp_human); 'none' skips them",
    )
    p.add_argument("--permutations", type=int, default=1000, metavar="N", help="GSEA permutations; 0 skips GSEA (default 1000)")
    p.add_argument("--use-rep", metavar="KEY", help="obsm key of the embedding to cluster (default the model's theta)")
    p.add_argument("--model", metavar="NAME", help="model name (default uns['sctopic']['model'])")
    p.add_argument("--method", choices=("leiden", "louvain"), default="leiden", help="community detection (default leiden)")
    p.add_argument("--resolution", type=float, default=1.0, metavar="R", help="label-free fixed resolution for *_fixed (default 1.0)")
    p.add_argument(
        "--tc-documents", choices=("matched", "all"), default="matched",
        help="TC documents: the sets matched to the data with 5..500 genes (default) or every set "
        "of the library (the reference code)",
    )
    p.add_argument("--fdr", type=float, default=0.05, help="enrichment FDR threshold (default 0.05; the reference used 0.01)")
    p.add_argument("--top-n", type=int, default=10, metavar="H", help="top genes per topic (default 10)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="random seed (default 0)")
    p.add_argument("--json", metavar="FILE", help="write the results as JSON here (default: print JSON to stdout)")
    return p


FLAT_SHOWN = (
    "ari_oracle", "nmi_oracle", "resolution_oracle", "ari_fixed", "nmi_fixed", "asw",
    "kbet", "batch_asw", "tc", "td", "td_exclusive", "tq", "ip",
    "ora_n", "ora_u", "ora_q", "gsea_n", "gsea_u", "gsea_q",
)


def _summary(res: dict) -> str:
    def fmt(v):
        if v is None:
            return "-"
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    return "\n".join(f"{key:<18} {fmt(res.get(key))}" for key in FLAT_SHOWN)


def run(args: argparse.Namespace) -> int:
    """Run ``sctopic evaluate``; returns the exit code."""
    from sctopic.data.io import write_text_atomic
    from sctopic.metrics.evaluate import DEFAULT_GENESETS, evaluate

    if args.permutations < 0:
        raise InputError(f"--permutations must be >= 0, got {args.permutations}")
    if not 0 < args.fdr <= 1:
        raise InputError(f"--fdr must be in (0, 1], got {args.fdr}")
    if args.top_n < 1:
        raise InputError(f"--top-n must be >= 1, got {args.top_n}")
    from sctopic.commands.common import verify_run_input

    verify_run_input(args.dir)  # a folder whose files do not match its manifest is refused
    if args.json:  # an unwritable destination fails now, not after the evaluation
        from sctopic.data.io import check_writable

        check_writable(args.json)
    from sctopic.commands.progress import for_args

    prog = for_args("evaluate", args)
    genesets = DEFAULT_GENESETS if args.genesets is None else tuple(args.genesets)
    if [g.lower() for g in genesets] == ["none"]:
        genesets = ()
    from sctopic.genesets import load

    genesets = tuple(load(g) for g in genesets)  # a bad name fails now, not after the clustering
    res = evaluate(
        args.dir,
        labels=args.labels,
        batch_key=args.batch_key,
        genesets=genesets,
        model=args.model,
        use_rep=args.use_rep,
        permutations=args.permutations,
        seed=args.seed,
        top_n=args.top_n,
        fdr=args.fdr,
        method=args.method,
        fixed_resolution=args.resolution,
        tc_documents=args.tc_documents,
        progress=prog,
    )
    text = json.dumps(res, indent=2, allow_nan=False) + "\n"
    if args.json:
        write_text_atomic(text, args.json)
        if not getattr(args, "quiet", False):
            print(_summary(res))
            print(f"wrote {args.json}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    from pathlib import Path

    folder = args.dir if Path(args.dir).is_dir() else str(Path(args.dir).parent)
    prog.done(args.json or "stdout (JSON)",
              f"'sctopic report {args.dir}' shows these metrics with the figures" if args.json and
              Path(args.json).parent.resolve() == Path(folder).resolve() else
              f"--json {folder}/evaluate.json, then 'sctopic report {args.dir}' shows them with the figures")
    return 0
