"""``sctopic perturb``: in-silico topic perturbation of a fitted model, compared with reality."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sctopic.commands.common import add_command, nonneg_int, positive_int, write_json
from sctopic.errors import InputError


def _shift(value: str):
    if value == "mean_difference":
        return value
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'mean_difference' or a number, got {value!r}") from None


DESCRIPTION = """\
Shift chosen topics' logits in the control cells (by default the topics significantly up in
the target cells, shifted by the mean logit difference target - control), decode expression with
the model, and compare the predicted fold changes with the observed Wilcoxon DEGs (top-N overlap,
hypergeometric p, Spearman of fold changes), the movement of the perturbed cells toward the
target cells, and a null of random non-differential topics (empirical p). DIR is a 'sctopic fit'
output (model.pt + result.h5ad).
"""


def register(sub) -> None:
    p = add_command(sub, "perturb", run, description=DESCRIPTION,
                    help="shift topics in control cells in silico and compare with the target cells")
    p.add_argument("model_dir", metavar="DIR", help="output directory of 'sctopic fit'")
    p.add_argument("--group-key", required=True, metavar="COL", help="obs column with the conditions")
    p.add_argument("--control", required=True, help="label of the control cells (these are perturbed)")
    p.add_argument("--target", required=True, help="label of the target cells")
    p.add_argument("--topics", nargs="+", default=None, metavar="T",
                   help="topics to shift, names (topic_3) or indices (default: topics up in the target)")
    p.add_argument("--celltype-key", default=None, metavar="COL",
                   help="obs column with cell types: shifts and target centroids per cell type")
    p.add_argument("--shift", type=_shift, default="mean_difference",
                   help="'mean_difference' (default) or a number added to the topics' logits")
    p.add_argument("--n-null", type=nonneg_int, default=100, help="random-topic draws of the null (default 100)")
    p.add_argument("--top-n", type=positive_int, default=100, help="size of the top gene lists (default 100)")
    p.add_argument("--null-shift", choices=("same", "own"), default="same",
                   help="random topics get the chosen topics' shifts (same, default) or their own mean differences")
    p.add_argument("--min-effect", type=float, default=0.8,
                   help="Cohen's d a topic needs to be chosen by default (default 0.8)")
    p.add_argument("--data", default=None, metavar="H5AD",
                   help="cells with raw counts to use instead of DIR/result.h5ad")
    p.add_argument("--layer", default=None, help="layer with raw counts (default X)")
    p.add_argument("--allow-missing-genes", action="store_true",
                   help="with --data: fill model genes missing from it with zeros (with a warning) "
                        "instead of failing")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--json", required=True, metavar="FILE", help="write the statistics here")
    p.add_argument("--plots", default=None, metavar="DIR",
                   help="write perturb_umap.png, perturb_lfc.png and perturb_summary.png here")


def run(args) -> int:
    from sctopic.analysis.perturb import perturb_topics
    from sctopic.data.io import read_adata
    from sctopic.models.transfer import load_model

    from sctopic.commands.common import verify_run_input

    from sctopic.commands.progress import for_args

    prog = for_args("perturb", args)
    d = Path(args.model_dir)
    verify_run_input(d)  # a folder whose files do not match its manifest is refused
    if args.data is not None:
        data_path = Path(args.data)
    elif d.is_dir():
        data_path = d / "result.h5ad"
        if not data_path.is_file():
            raise InputError(f"{d} holds no result.h5ad; pass the cells with --data.")
    else:
        raise InputError(f"{d} is not a 'sctopic fit' output directory; pass the directory (and --data for other cells).")
    from sctopic.data.io import check_writable, check_writable_dir

    check_writable(args.json)  # unwritable destinations fail now, not after the null draws
    if args.plots:
        check_writable_dir(args.plots)
    adata = read_adata(data_path)
    allow = bool(getattr(args, "allow_missing_genes", False))
    if allow:  # the cells are passed to perturb_topics, which fills the missing genes
        model, cells = load_model(d), adata
    else:
        import pandas as pd

        from sctopic.models.transfer import read_model_file

        genes = read_model_file(d / "model.pt" if d.is_dir() else d)[0].get("genes") or []
        missing = pd.Index(genes).difference(adata.var_names.astype(str))
        if len(missing):
            raise InputError(f"{len(missing)} of the model's {len(genes)} genes are missing from {data_path} "
                             f"(e.g. {', '.join(missing[:3])}); use cells with the model's genes, or pass "
                             "--allow-missing-genes to fill them with zeros.")
        model, cells = load_model(d, adata=adata), None
    # No stage line before perturb_topics has checked the groups: an input error stays one line.
    res = perturb_topics(
        model, cells, group_key=args.group_key, control=args.control, target=args.target, topics=args.topics,
        shift=args.shift, n_null=args.n_null, top_n=args.top_n, seed=args.seed,
        celltype_key=args.celltype_key, null_shift=args.null_shift, min_effect=args.min_effect,
        layer=args.layer, allow_missing_genes=allow, progress=prog.enabled,
    )
    out = res.to_dict()
    out.update(model_dir=str(d), data=str(data_path), null_draws=res.null.to_dict(orient="records"))
    write_json(out, args.json)
    if args.plots:
        from sctopic.plotting.perturb import (
            lfc_scatter,
            perturbation_summary,
            perturbation_umap,
            perturbation_umap_coords,
        )

        plots = Path(args.plots)
        plots.mkdir(parents=True, exist_ok=True)
        prog("drawing the figures")
        coords = perturbation_umap_coords(res, seed=args.seed)
        perturbation_umap(res, coords=coords, path=plots / "perturb_umap.png")
        lfc_scatter(res, path=plots / "perturb_lfc.png")
        if len(res.null):
            perturbation_summary(res, coords=coords, path=plots / "perturb_summary.png")
    s = out
    print(f"topics shifted: {', '.join(s['topics'])}")
    print(f"top-{s['top_n']} overlap {s['overlap']} (hypergeometric p {s['overlap_hypergeom_p']:.3g}; "
          f"null mean {s['null_overlap_mean']:.3g}, empirical p {s['empirical_p_overlap']:.3g})")
    print(f"Spearman of fold changes {s['spearman_lfc']:.3f} (null mean {s['null_spearman_mean']:.3g}, "
          f"empirical p {s['empirical_p_spearman']:.3g})")
    print(f"distance to target {s['distance_to_target_before']:.3g} -> {s['distance_to_target_after']:.3g}; "
          f"target-neighbour share {s['target_neighbour_share_before']:.3f} -> {s['target_neighbour_share_after']:.3f}")
    print(f"wrote {args.json}" + (f" and figures in {args.plots}" if args.plots else ""), file=sys.stderr)
    prog.done(args.json + (f" and {args.plots}" if args.plots else ""),
              f"look at {args.plots}/perturb_summary.png" if args.plots else
              "add --plots DIR for the UMAP, fold-change and null figures")
    return 0
