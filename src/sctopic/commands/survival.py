"""``sctopic survival``: project topics onto bulk samples and test survival association."""
from __future__ import annotations

import sys
import warnings
from pathlib import Path

from sctopic.commands.common import add_command, positive_int
from sctopic.errors import InputError

DESCRIPTION = """\
Score each bulk sample by each topic's gene program (weighted z-score of the topic's top genes
present in the bulk data, weights from beta), fit one Cox model per topic (standardised score,
optional covariates), correct with Benjamini-Hochberg, and write one row per topic. DIR is a
'sctopic fit' output (or its result.h5ad, or a model.pt).
"""


def register(sub) -> None:
    p = add_command(sub, "survival", run, description=DESCRIPTION,
                    help="score bulk samples by topic and test association with survival (Cox, KM)")
    p.add_argument("model_dir", metavar="DIR", help="output of 'sctopic fit', a result .h5ad or a model.pt")
    p.add_argument("bulk", metavar="BULK.h5ad", help="samples x genes bulk expression (log scale), survival in obs")
    p.add_argument("--time-key", default="time", metavar="COL", help="obs column with follow-up time (default time)")
    p.add_argument("--event-key", default="event", metavar="COL", help="obs column with the event indicator (default event)")
    p.add_argument("--covariates", nargs="+", default=None, metavar="COL",
                   help="obs columns to adjust for (non-numeric ones are one-hot encoded)")
    p.add_argument("--n-top", type=positive_int, default=50, help="top genes per topic (default 50)")
    p.add_argument("--layer", default=None, help="layer of the bulk data (default X)")
    p.add_argument("--penalizer", type=float, default=0.0, help="L2 penalty of the Cox fits (default 0)")
    p.add_argument("--out", required=True, metavar="TABLE.tsv", help="write the per-topic table here")
    p.add_argument("--plot", default=None, metavar="FILE.png", help="Kaplan-Meier plot of one topic")
    p.add_argument("--plot-topic", default=None, metavar="T",
                   help="topic of the Kaplan-Meier plot (default: the smallest Cox p)")


def _obs_column(bulk, key: str, what: str):
    if key not in bulk.obs.columns:
        cols = ", ".join(map(str, bulk.obs.columns[:30]))
        raise InputError(f"{what} column {key!r} is not in the bulk data's obs (columns: {cols}).")
    return bulk.obs[key]


def run(args) -> int:
    import pandas as pd

    from sctopic.analysis.bulk import score_bulk
    from sctopic.analysis.survival import survival_association
    from sctopic.data.io import read_adata, write_text_atomic

    if args.plot_topic is not None and args.plot is None:
        raise InputError("--plot-topic needs --plot FILE.png.")
    from sctopic.commands.common import verify_run_input

    from sctopic.commands.progress import for_args

    prog = for_args("survival", args)
    src = Path(args.model_dir)
    verify_run_input(src)  # a folder whose files do not match its manifest is refused
    if src.is_file() and src.suffix == ".pt":
        from sctopic.models.transfer import load_model

        source = load_model(src)
    else:
        source = src
    from sctopic.data.io import check_writable

    check_writable(args.out)  # unwritable destinations fail now, not after the Cox fits
    if args.plot:
        check_writable(args.plot)
    bulk = read_adata(args.bulk)
    time_raw = _obs_column(bulk, args.time_key, "--time-key")
    time = pd.to_numeric(time_raw, errors="coerce")
    bad = time.isna() & time_raw.notna() & ~time_raw.astype(str).isin(("NA", "NaN", "nan", ""))
    if bad.any():  # text times would silently become missing ("only 0 samples have a time")
        raise InputError(f"--time-key {args.time_key!r} holds {int(bad.sum())} values that are not numbers "
                         f"(e.g. {time_raw[bad].iloc[0]!r}); pass a column of follow-up times as numbers.")
    event_raw = _obs_column(bulk, args.event_key, "--event-key")
    if event_raw.dtype == bool:
        event_raw = event_raw.astype(float)
    event = pd.to_numeric(event_raw, errors="coerce")
    if event_raw.notna().sum() and event.notna().sum() == 0:
        raise InputError(f"--event-key {args.event_key!r} is not numeric (expected 0/1).")
    cov = None
    if args.covariates:
        cov = pd.concat([_obs_column(bulk, c, "--covariates") for c in args.covariates], axis=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scores = score_bulk(source, bulk, n_top=args.n_top, layer=args.layer)
        table = survival_association(scores, time.to_numpy(), event.to_numpy(), cov, penalizer=args.penalizer)
    for w in caught:
        if issubclass(w.category, UserWarning):
            print(f"warning: {w.message}", file=sys.stderr)
    # Stage lines only once the inputs are known to be good, so that an input error stays one line.
    prog(f"{scores.shape[1]} topics scored and tested; writing the table")
    table = table.sort_values("p", na_position="last", kind="stable")
    write_text_atomic(table.to_csv(sep="\t", index=False, float_format="%.6g"), args.out)
    if args.plot:
        from sctopic.plotting.survival import kaplan_meier

        topic = args.plot_topic or str(table["topic"].iloc[0])
        if topic not in scores.columns:
            raise InputError(f"--plot-topic {topic!r} is not a topic (e.g. {', '.join(scores.columns[:5])}).")
        fig = kaplan_meier(scores[topic].to_numpy(), time.to_numpy(), event.to_numpy(), topic=topic, path=args.plot)
        print(f"Kaplan-Meier {topic}: log-rank p {fig.logrank['p']:.3g}", file=sys.stderr)
    n_sig = int((table["fdr"] < 0.05).sum())
    print(f"{len(table)} topics scored on {bulk.n_obs} samples ({scores.attrs['n_shared_genes']} model genes "
          f"in the bulk data); {n_sig} with FDR < 0.05")
    print(table.head(5)[["topic", "hr", "ci_low", "ci_high", "p", "fdr", "top_genes"]].to_string(index=False))
    print(f"wrote {args.out}", file=sys.stderr)
    prog.done(args.out + (f" and {args.plot}" if args.plot else ""),
              "the Kaplan-Meier plot of another topic: --plot FILE.png --plot-topic T" if args.plot else
              "--plot FILE.png draws the Kaplan-Meier curves of the top topic")
    return 0
