"""``sctopic report``: one self-contained HTML page describing a fitted model."""
from __future__ import annotations

import argparse
import sys

from sctopic.commands.common import add_command, positive_int
from sctopic.errors import InputError

DESCRIPTION = """\
Write one HTML file (figures embedded as PNG data URIs, no external resources, no script): the
fit's settings (DIR/train.json) and an evaluation JSON found in DIR (e.g. from 'sctopic evaluate
--json DIR/evaluate.json'), UMAPs of the cells by label and by dominant topic, the gene-topic
embedding map, the topic-by-label heatmap, a Manhattan plot of enrichment, and one card per topic
(top genes, ORA-enriched gene sets, labels of the cells that use it most, small figures).
"""


def register(sub) -> None:
    p = add_command(sub, "report", run, description=DESCRIPTION,
                    help="write a self-contained HTML report of a fitted model")
    p.add_argument("dir", metavar="DIR", help="output directory of 'sctopic fit' (with result.h5ad), or a result .h5ad")
    p.add_argument("--out", metavar="FILE.html", default=None, help="output file (default DIR/report.html)")
    p.add_argument("--labels", metavar="COL", default=None, help="obs column with cell labels")
    p.add_argument("--genesets", metavar="NAME|GMT", default="go_bp_human",
                   help="library for enrichment (default go_bp_human; 'none' skips it)")
    p.add_argument("--top-n", type=positive_int, default=10, help="top genes per topic (default 10)")
    p.add_argument("--gsea", action="store_true", help="also run GSEA and draw running-sum plots (slower)")
    p.add_argument("--permutations", type=positive_int, default=200, help="GSEA permutations (default 200)")
    p.add_argument("--fdr", type=float, default=0.05, help="FDR threshold for enriched sets (default 0.05)")
    p.add_argument("--seed", type=int, default=0, help="seed of the UMAP (default 0)")
    p.add_argument("--title", default=None, help="page title")
    p.add_argument("--layout", choices=("umap", "pca"), default="umap",
                   help="cell and gene-topic maps: umap (default) or pca (instant)")


def _preflight(args: argparse.Namespace) -> None:
    """Refuse an unwritable --out and a --top-n above the model's genes before any work."""
    from sctopic.data.io import check_writable
    from sctopic.genesets.io import read_topic_gene, result_path

    src = result_path(args.dir)
    check_writable(args.out if args.out else src.parent / "report.html")
    n_genes = read_topic_gene(src)[0].shape[1]
    if args.top_n > n_genes:
        raise InputError(f"--top-n {args.top_n} is larger than the model's {n_genes} genes; pass --top-n "
                         f"between 1 and {n_genes}.")


def run(args: argparse.Namespace) -> int:
    """Run ``sctopic report``; returns the exit code."""
    from sctopic.report import build_report

    if not 0 < args.fdr <= 1:
        raise InputError(f"--fdr must be in (0, 1], got {args.fdr}")
    from sctopic.commands.common import verify_run_input

    verify_run_input(args.dir)  # a folder whose files do not match its manifest is refused
    _preflight(args)
    from sctopic.commands.progress import for_args

    prog = for_args("report", args)
    path = build_report(args.dir, args.out, labels=args.labels, genesets=args.genesets, top_n=args.top_n,
                        gsea=args.gsea, permutations=args.permutations, fdr=args.fdr, seed=args.seed,
                        title=args.title, layout=args.layout, progress=prog.enabled)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)", file=sys.stderr)
    from sctopic.report import find_evaluation

    has_eval = find_evaluation(path.parent)[0] is not None
    prog.done(str(path), "open it in a web browser" + ("" if has_eval else
              f"; 'sctopic evaluate {args.dir} --json {path.parent}/evaluate.json' then 'sctopic report' again "
              "adds the metrics"))
    return 0
