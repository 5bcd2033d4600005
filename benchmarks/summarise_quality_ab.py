"""Summarise a quality A/B (benchmarks/quality_ab.sh): mean and per-seed numbers per arm and dataset.

Usage: python benchmarks/summarise_quality_ab.py DIR [--out DIR/summary]
Reads DIR/foundation_ab<epochs>_<arm>_<dataset>_s<seed>.json and writes DIR/summary.md and .json.
"""
from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
from harness import md_table, write_report

KEYS = ("ari_oracle_mu", "ari_oracle_mu_leiden_mean", "ari_fixed_mu", "ari_oracle", "ari_fixed", "td", "tc_go_bp",
        "ip", "ora_fraction")
NAMES = ("ARI (mu)", "ARI (mu, mean of Leiden seeds)", "ARI res=1 (mu)", "ARI (theta)", "ARI res=1 (theta)", "TD",
         "TC GO-BP", "IP", "ORA frac.")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dir")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    pattern = re.compile(r"foundation_ab(\d+)_(.+)_([a-z0-9]+)_s(\d+)\.json$")
    for f in sorted(Path(args.dir).glob("foundation_ab*.json")):
        m = pattern.search(f.name)
        if m:
            for r in json.loads(f.read_text()):
                groups[(m.group(2), r["dataset"])].append(r)
    rows, payload = [], []
    for (arm, ds), rs in sorted(groups.items(), key=lambda t: (t[0][1], t[0][0])):
        # runs from before a key existed (the Leiden-seed mean) leave it out: NaN, shown as "-"
        vals = {k: [r.get(k, np.nan) for r in rs] for k in KEYS}
        means = {k: float(np.mean(v)) for k, v in vals.items()}
        sds = {k: float(np.std(v, ddof=1)) if len(v) > 1 else 0.0 for k, v in vals.items()}
        payload.append({"arm": arm, "dataset": ds, "seeds": [r["seed"] for r in rs], "epochs": rs[0]["epochs"],
                        "mean": means, "sd": sds, "runs": [{k: r.get(k) for k in ("seed", *KEYS)} for r in rs]})
        rows.append([ds, arm, len(rs)] + ["-" if np.isnan(means[k]) else f"{means[k]:.3f} ± {sds[k]:.3f}"
                                          for k in KEYS])
    lines = ["# Quality A/B: mean ± sd over seeds (best-resolution Leiden ARI unless 'res=1')", "",
             *md_table(["dataset", "arm", "seeds", *NAMES], rows), "",
             "Per seed, ARI (mu) / TD:", ""]
    for p in payload:
        runs = ", ".join(f"s{r['seed']}: {r['ari_oracle_mu']:.3f} / {r['td']:.3f}" for r in p["runs"])
        lines.append(f"- {p['dataset']} {p['arm']}: {runs}")
    write_report(args.out or Path(args.dir) / "summary", payload, "\n".join(lines), indent=1, nan_as_null=True)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
