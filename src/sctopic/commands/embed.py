"""``sctopic embed``: compute an external cell view once and store it in ``obsm`` for reuse."""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from sctopic.commands.common import add_command
from sctopic.errors import InputError

DEFAULT_KEYS = {"pca": "X_view_pca", "random": "X_view_random", "go": "X_go",
                "scgpt": "X_scgpt", "geneformer": "X_geneformer"}

DESCRIPTION = """\
Compute an external cell view of DATA and write DATA plus obsm[KEY] to --out, so that training
runs can reuse it (sctopic fit --external-key KEY). Views: scgpt:DIR (scGPT checkpoint folder:
vocab.json, args.json, best_model.pt), geneformer:DIR (Hugging Face BERT folder with
token_dictionary* and gene_median_dictionary*; needs sctopic[geneformer]), go (gene-ontology
knowledge view), pca, random.
"""


def register(sub) -> argparse.ArgumentParser:
    """Add the ``embed`` sub-command."""
    p = add_command(sub, "embed", run, description=DESCRIPTION,
                    help="compute an external cell view (scGPT, Geneformer, GO, PCA, random) into obsm")
    p.add_argument("data", help="input .h5ad (raw counts in X or --layer)")
    p.add_argument("--external", required=True, metavar="VIEW",
                   help="scgpt:DIR | geneformer:DIR | go | pca | random")
    p.add_argument("--key", default=None, help="obsm key to write (default X_scgpt, X_geneformer, X_go, "
                                               "X_view_pca, X_view_random)")
    p.add_argument("--out", required=True, help="output .h5ad (must differ from the input)")
    p.add_argument("--layer", default=None, help="layer with the expression (default X)")
    p.add_argument("--gene-key", default=None, metavar="COL",
                   help="var column with gene symbols (scgpt, go) or Ensembl IDs (geneformer); "
                        "default var_names")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda[:N] or auto (foundation models)")
    return p


def _same_file(a: Path, b: Path) -> bool:
    if not b.exists():
        return False
    try:
        return a.samefile(b)
    except OSError:
        return a.resolve() == b.resolve()


def run(args: argparse.Namespace) -> int:
    """Run ``sctopic embed``; returns the exit code."""
    from sctopic.data.io import read_adata, write_h5ad_atomic
    from sctopic.external.views import BUILTIN_VIEWS, KNOWLEDGE_VIEWS, parse_view_spec, resolve_view

    src, out = Path(args.data), Path(args.out)
    if _same_file(src, out):
        raise InputError(f"--out {out} is the input file; write the view to a new file.")
    if out.suffix != ".h5ad":
        raise InputError(f"--out {out} must end in .h5ad.")
    if out.is_dir():
        raise InputError(f"--out {out} is a directory; give a file name ending in .h5ad.")
    kind, _ = parse_view_spec(args.external)
    if kind not in DEFAULT_KEYS:
        raise InputError(
            f"unknown view {args.external!r}; choose scgpt:DIR, geneformer:DIR, "
            f"{', '.join(KNOWLEDGE_VIEWS + BUILTIN_VIEWS)}."
        )
    key = args.key or DEFAULT_KEYS[kind]
    from sctopic.data.io import check_writable

    check_writable(out)  # before a foundation model embeds every cell
    adata = read_adata(src)
    if getattr(adata, "isbacked", False):
        adata = adata.to_memory()
    X_counts = None
    if kind in BUILTIN_VIEWS:
        from sctopic.data.counts import get_counts

        X_counts = get_counts(adata, args.layer)
    t0 = time.perf_counter()
    view = resolve_view(adata, args.external, X_counts, seed=args.seed, layer=args.layer,
                        gene_key=args.gene_key, device=args.device,
                        progress=not getattr(args, "quiet", False))
    seconds = time.perf_counter() - t0
    info = {"view": view.name, "seed": args.seed, "seconds": round(seconds, 3), **view.info}
    adata.obsm[key] = view.matrix
    views = dict(adata.uns.get("sctopic_views", {}))
    views[key] = json.dumps(info, default=str)
    adata.uns["sctopic_views"] = views
    write_h5ad_atomic(adata, out)
    cov = info.get("gene_coverage")
    cov_txt = f"; gene coverage {cov:.1%}" if isinstance(cov, float) else ""
    print(f"computed view {view.name!r} for {adata.n_obs} cells: {view.matrix.shape[1]} dimensions "
          f"in {seconds:.1f} s{cov_txt}")
    print(f"wrote {out} with obsm[{key!r}] (reuse it with --external-key {key})")
    return 0
