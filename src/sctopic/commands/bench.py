"""``sctopic bench``: run a benchmark (methods x datasets x seeds) from a YAML configuration."""
from __future__ import annotations

import argparse
import sys

from sctopic.commands.common import add_command, add_overwrite_arg, nonneg_int, positive_int

DESCRIPTION = """\
Run every method on every dataset with every seed of CONFIG, scoring each run with `sctopic
evaluate`'s metrics. Writes OUT/results.csv (one row per run, rewritten after each run),
OUT/table.md (mean ± sd per method and dataset), OUT/summary.csv, OUT/figures/*.png and
OUT/manifest.json. The benchmark works in a hidden sibling folder (.OUT.sctopic-tmp-*, a copy
of OUT's previous rows) and swaps it in as OUT when done, so OUT always holds one consistent
state; a run that raises ends the benchmark with the rows finished so far (and their report)
swapped in. An interrupted benchmark continues where it stopped when started again (--resume,
the default): after a kill, from the hidden folder the killed process left. A non-empty OUT
that is not a benchmark is refused; --overwrite starts a new benchmark in place of the old.
"""


def register(sub) -> argparse.ArgumentParser:
    """Add the ``bench`` sub-command."""
    p = add_command(sub, "bench", run, description=DESCRIPTION,
                    help="benchmark methods x datasets x seeds from a YAML config (CSV, table, figures)")
    p.add_argument("config", metavar="CONFIG", help="benchmark configuration (YAML)")
    p.add_argument("--out", metavar="DIR", help="output folder (default: the config's `out`)")
    p.add_argument("--seeds", type=nonneg_int, nargs="+", metavar="S", help="seeds to run (replaces the config's)")
    p.add_argument("--methods", nargs="+", metavar="NAME", help="run only these of the config's methods")
    p.add_argument("--datasets", nargs="+", metavar="NAME", help="run only these of the config's datasets")
    p.add_argument("--max-epochs", type=positive_int, metavar="E",
                   help="epochs for every trained method (e.g. 2 for a smoke run)")
    p.add_argument("--device", metavar="D", help="device for every trained method: auto, cpu or cuda[:N]")
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                   help="skip runs already in OUT/results.csv with unchanged settings (default); "
                        "--no-resume runs them again and replaces their rows (other rows are kept)")
    p.add_argument("--keep-going", action="store_true",
                   help="record a failing run as `failed: ...` and continue (default: stop)")
    p.add_argument("--report-only", action="store_true",
                   help="only rewrite table.md, summary.csv and the figures from OUT/results.csv")
    p.add_argument("--dry-run", action="store_true", help="check the config and list the runs, run nothing")
    add_overwrite_arg(p)
    return p


def run(args: argparse.Namespace) -> int:
    """Run ``sctopic bench``; returns the exit code."""
    from pathlib import Path

    from sctopic.bench import load_config, read_results, run_benchmark, write_report
    from sctopic.bench.runner import RESULTS_CSV, check_datasets, plan_runs
    cfg = load_config(args.config)
    if args.device is not None and not (args.device in ("auto", "cpu") or args.device.startswith("cuda")):
        from sctopic.errors import InputError

        raise InputError(f"--device must be auto, cpu or cuda[:N], got {args.device!r}")
    if args.out:
        cfg.out = Path(args.out).resolve()
    cfg = cfg.select(methods=args.methods, datasets=args.datasets, seeds=args.seeds)
    cfg = cfg.override_training(max_epochs=args.max_epochs, device=args.device)
    quiet = getattr(args, "quiet", False)
    title = f"sctopic benchmark: {Path(args.config).name}"
    if cfg.description:
        title += f" ({cfg.description})"
    if args.dry_run:
        runs = plan_runs(cfg)
        check_datasets(cfg)
        for r in runs:
            print(f"{r.dataset.name}\t{r.method.name}\t{r.seed}\t{r.method.model}\t{r.train}")
        print(f"{len(runs)} runs; output folder {cfg.out}", file=sys.stderr)
        return 0
    from sctopic.data import rundir
    from sctopic.data.rundir import file_sha256

    target = Path(cfg.out)
    writer = rundir.RunWriter(target, "bench", overwrite=args.overwrite, continue_same=True,
                              adopt_stale=args.resume and not args.overwrite)
    stage = writer.path
    csv = stage / RESULTS_CSV

    def digest() -> str | None:
        return file_sha256(csv) if csv.is_file() else None

    def commit(df) -> dict:
        written = write_report(df, stage, datasets=list(cfg.datasets), methods=list(cfg.methods), title=title)
        writer.commit(settings=cfg.to_dict(), data={"config": rundir.input_file_info(args.config)},
                      extra={"rows": len(df)})
        return written

    before = None if writer.adopted else digest()
    with writer:
        if args.report_only:
            df = read_results(csv)
        else:
            try:
                df = run_benchmark(cfg, resume=args.resume, keep_going=args.keep_going, progress=not quiet,
                                   log=None, out=stage)
            except (Exception, KeyboardInterrupt):
                # A run failed: the rows finished before it are kept, with their report.
                if digest() != before:
                    commit(read_results(csv))
                raise
        written = commit(df)
    out = target
    n_ok = int((df["status"] == "ok").sum()) if len(df) else 0
    print(f"{len(df)} rows in {out / RESULTS_CSV} ({n_ok} ok); wrote "
          + ", ".join(str(p.relative_to(stage)) if p.is_relative_to(stage) else str(p) for p in written.values()))
    from sctopic.commands.progress import for_args

    for_args("bench", args).done(str(out), f"read {out}/table.md; 'sctopic bench {args.config} --report-only' "
                                 "redraws the tables and figures")
    return 0
