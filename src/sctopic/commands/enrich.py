"""``sctopic enrich``: ORA and preranked GSEA of a fitted model's topics against gene-set libraries."""
from __future__ import annotations

import argparse
from pathlib import Path

from sctopic.commands.common import nonneg_int, positive_int
from sctopic.errors import InputError

DESCRIPTION = """\
Test every topic of a fitted model against gene-set libraries.
ORA: hypergeometric test of each topic's top-N genes (background: the model's genes found
in the library). GSEA: preranked, genes ranked by the topic's weights (beta), permutation
null shared by sets of equal size. Both give Benjamini-Hochberg FDR over the sets of each
topic (column fdr); GSEA also gives GSEA's own pooled-NES FDR (fdr_nes, as gseapy). Writes one tidy table (TSV; .gz compresses) with a row per (library, method, topic, set).
Bundled libraries: go_bp_human, go_bp_mouse, hallmark; any GMT file path works too."""


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {value}")
    return value


def register(subparsers) -> None:
    """Add the ``enrich`` sub-command."""
    p = subparsers.add_parser(
        "enrich",
        help="gene-set enrichment (ORA, GSEA) of a fitted model's topics",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("dir", metavar="DIR", help="fitted-model output directory (with result.h5ad), or the .h5ad")
    p.add_argument(
        "--genesets", "-g", metavar="NAME|GMT", action="extend", nargs="+", required=True,
        help="bundled library name or GMT path; repeat or list several",
    )
    p.add_argument("--method", choices=["ora", "gsea", "both"], default="both", help="default: both")
    p.add_argument("--permutations", type=nonneg_int, default=1000, help="GSEA permutations (default 1000)")
    p.add_argument("--top-n", type=positive_int, default=10, help="ORA: top genes per topic (default 10)")
    p.add_argument("--seed", type=int, default=0, help="GSEA random seed (default 0)")
    p.add_argument("--min-size", type=positive_int, default=5, help="smallest set size in the data (default 5)")
    p.add_argument("--max-size", type=positive_int, default=500, help="largest set size in the data (default 500)")
    p.add_argument("--leading-edge", action="store_true", help="GSEA: add the leading-edge genes")
    p.add_argument(
        "--size-grid", type=float, default=None, metavar="RATIO",
        help="GSEA approximate mode: nulls on a geometric grid of set sizes (e.g. 1.1)",
    )
    p.add_argument("--jobs", type=positive_int, default=1, help="GSEA threads (default 1)")
    p.add_argument(
        "--max-fdr", type=_fraction, default=0.05,
        help="keep the rows with FDR <= this (default 0.05), plus --top-per-topic rows per topic",
    )
    p.add_argument("--top-per-topic", type=nonneg_int, default=3,
                   help="also keep each topic's N lowest-p sets per library and method, significant "
                        "or not (default 3)")
    p.add_argument("--all", action="store_true", dest="all_rows",
                   help="write every (library, method, topic, set) row (large: ~800k rows for 100 "
                        "topics x GO BP)")
    p.add_argument("--out", "-o", metavar="TABLE.tsv", help="output table (default: DIR/enrichment.tsv)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``sctopic enrich``; returns the exit status."""
    import pandas as pd

    from sctopic import genesets as gs

    if args.min_size > args.max_size:
        raise InputError(f"--min-size {args.min_size} is larger than --max-size {args.max_size}")
    if args.size_grid is not None and not args.size_grid > 1:
        raise InputError("--size-grid must be a ratio > 1 (e.g. 1.1)")
    from sctopic.data.io import atomic_write, check_writable

    from sctopic.commands.common import verify_run_input

    src = gs.io.result_path(args.dir)
    verify_run_input(args.dir)  # a folder whose files do not match its manifest is refused
    topic_gene, genes, model = gs.read_topic_gene(src)
    out = check_writable(Path(args.out) if args.out else src.parent / "enrichment.tsv")
    quiet = getattr(args, "quiet", False)
    say = (lambda *a: None) if quiet else print
    from sctopic.commands.progress import for_args

    prog = for_args("enrich", args)
    say(f"{model}: {topic_gene.shape[0]} topics x {topic_gene.shape[1]} genes from {src}")

    libraries = [gs.load(name) for name in dict.fromkeys(args.genesets)]  # fail early on a bad name
    tables = []
    for lib in libraries:
        matched = lib.match(genes, min_size=args.min_size, max_size=args.max_size)
        say(str(matched.report))
        parts = []
        if args.method in ("ora", "both"):
            prog(f"ORA against {lib.name}")
            parts.append(gs.ora(topic_gene, genes, matched, top_n=args.top_n,
                                min_size=args.min_size, max_size=args.max_size))
        if args.method in ("gsea", "both"):
            prog(f"GSEA against {lib.name} ({args.permutations} permutations)")
            parts.append(gs.gsea(topic_gene, genes, matched, permutations=args.permutations,
                                 seed=args.seed, min_size=args.min_size, max_size=args.max_size,
                                 leading_edge=args.leading_edge, size_grid=args.size_grid,
                                 n_jobs=args.jobs))
        for part in parts:
            part.insert(0, "library", lib.name)
            for col in ("fdr", "fdr_nes"):
                if col in part.columns:
                    sig = part[col].lt(0.05)
                    say(f"  {part['method'].iat[0]}: {int(sig.sum())} (topic, set) pairs with "
                        f"{col} < 0.05 ({part.loc[sig, 'set'].nunique()} distinct sets)")
        tables.extend(parts)

    table = pd.concat(tables, ignore_index=True)
    n_all = len(table)
    if not getattr(args, "all_rows", False):
        table = readable_rows(table, args.max_fdr, getattr(args, "top_per_topic", 3))
    # Text columns hold "" where a method has no value (not NaN), so the TSV reads back with one
    # dtype per column.
    text = table.select_dtypes(include="object").columns
    table[text] = table[text].fillna("")
    gz = "gzip" if out.suffix == ".gz" else None
    atomic_write(out, lambda tmp: table.to_csv(tmp, sep="\t", index=False, float_format="%.6g", compression=gz))
    kept = "" if len(table) == n_all else f" of {n_all} (FDR <= {args.max_fdr:g} or a topic's top " \
        f"{getattr(args, 'top_per_topic', 3)}; --all writes every row)"
    say(f"wrote {len(table)} rows{kept} to {out}")
    prog.done(str(out), f"'sctopic report {args.dir}' shows each topic's enriched sets on its card")
    return 0


def readable_rows(table, max_fdr: float, top_per_topic: int):
    """The rows a person reads: FDR <= ``max_fdr``, plus each (library, method, topic)'s
    ``top_per_topic`` lowest-p sets; in the table's order."""
    rank = table.groupby(["library", "method", "topic"], sort=False)["p"].rank(method="first")
    return table[(table["fdr"] <= max_fdr) | (rank <= top_per_topic)].reset_index(drop=True)
