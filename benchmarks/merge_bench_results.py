"""Merge the rows of benchmark runs made in parallel lanes into one ``sctopic bench`` folder.

On two cores, two ``sctopic bench`` processes with one thread each and disjoint ``--datasets`` /
``--methods`` finish sooner than one process with two threads. Each lane writes its own
``--out`` folder (two processes must not share one: each rewrites ``results.csv`` whole). This
script takes the rows of the lanes (``ok`` rows only, unless ``--all``) and puts them into
``TARGET/results.csv``, replacing rows with the same (dataset, method, seed) and keeping every
other row, and copies each taken run's folder (``runs/<dataset>/<method>/seed<k>``, its
metrics) over the target's; then ``sctopic bench CONFIG --out TARGET --report-only`` rewrites the table.

A lane still running (or killed) keeps its rows in a hidden sibling ``.LANE.sctopic-tmp-*``
folder; pass that folder to merge the runs it has finished so far.

Usage (from the repository root)::

    python benchmarks/merge_bench_results.py TARGET LANE [LANE ...]
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import pandas as pd

from sctopic.bench.runner import KEY_COLUMNS, RESULTS_CSV, STATUS_OK, read_results, write_results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("target", type=Path, help="benchmark folder whose results.csv receives the rows")
    ap.add_argument("lanes", type=Path, nargs="+", help="benchmark folders (or their hidden staging folders)")
    ap.add_argument("--all", action="store_true", help="also take rows that did not finish with status ok")
    args = ap.parse_args()
    base = read_results(args.target / RESULTS_CSV)
    new = []
    for lane in args.lanes:
        df = read_results(lane / RESULTS_CSV)
        if not args.all:
            df = df[df["status"] == STATUS_OK]
        print(f"{lane}: {len(df)} rows")
        new.append(df)
    new_df = pd.concat(new, ignore_index=True)
    dup = new_df.duplicated(list(KEY_COLUMNS), keep=False)
    if dup.any():
        raise SystemExit(f"the lanes share runs: {new_df.loc[dup, list(KEY_COLUMNS)].to_dict('records')}")
    for lane, df in zip(args.lanes, new):  # only after the check: a refused merge changes nothing
        for d, m, k in df[list(KEY_COLUMNS)].itertuples(index=False):
            src = lane / "runs" / str(d) / str(m) / f"seed{int(k)}"
            if src.is_dir():
                dst = args.target / "runs" / str(d) / str(m) / f"seed{int(k)}"
                shutil.rmtree(dst, ignore_errors=True)
                shutil.copytree(src, dst)
    keys = set(map(tuple, new_df[list(KEY_COLUMNS)].astype(str).to_numpy()))
    keep = [tuple(r) not in keys for r in base[list(KEY_COLUMNS)].astype(str).to_numpy()]
    merged = pd.concat([base[keep], new_df], ignore_index=True)
    write_results(merged.sort_values(list(KEY_COLUMNS), kind="stable"), args.target / RESULTS_CSV)
    print(f"{args.target / RESULTS_CSV}: {int(sum(keep))} rows kept, {len(new_df)} from the lanes, {len(merged)} in all")


if __name__ == "__main__":
    main()
