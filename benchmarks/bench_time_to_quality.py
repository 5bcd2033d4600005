"""Time to quality: wall time until each contender first reaches its own final quality and the
final quality of the authors' scE2TM (sce2tm 1.2.3); cells per second at the default batch.

Issue 20, items 1 and 3. Run alone on a quiet machine (the reference environments first)::

    bash benchmarks/setup_reference_envs.sh                       # once
    .venv/bin/python benchmarks/bench_time_to_quality.py --dataset pbmc3k --seeds 0 1 2
    .venv/bin/python benchmarks/bench_time_to_quality.py --dataset kang8 --seeds 0 1 2
    .venv/bin/python benchmarks/bench_time_to_quality.py --dataset pbmc3k --seeds 0 --epochs 5 \\
        --threads 1 --out /tmp/ttq_smoke --work-dir /tmp/ttq_smoke/work          # smoke run

Data: exactly ``bench_vs_reference.py``'s preparation (its ``prepare``, the same
``input.npz`` under ``<work-dir>/<dataset>_s<seed>/``): pbmc3k with 5,000 highly variable
genes, Kang 8 donors with all 1,287 genes, raw counts, and a 512-d TruncatedSVD of the
log-normalised expression standing in for scGPT. 100 topics for every contender (``--n-topics``).

Contenders, each at its own defaults (epochs and batch size), each in its own process with
the same threads (``--threads``, default 2):

* ``sce2tm``: the authors' scE2TM 1.2.3 (``reference/run_sce2tm.py``, ``envs/sce2tm``), 500
  epochs of 512 cells (its API's defaults), external view: the SVD-512 stand-in (precomputed,
  its cost not counted, as a foundation-model embedding would be given);
* ``scetm``: the authors' scETM 0.5.0 (``reference/run_scetm.py``, ``envs/scetm``), 800 epochs
  of 2,000 cells, no external view;
* ``sctopic_sce2tm``: ``sctopic.SCE2TM`` at its defaults (``reference/run_sctopic.py
  --external-key none --lr-step-epochs -1``): the default preset's epochs (200 since
  2026-12-04, 500 before) of 512 cells, the default offline
  view (50 PCs of log-normalised expression, computed inside the model and counted);
* ``sctopic_scetm``: ``sctopic.SCETM`` at its defaults (``reference/run_sctopic_scetm.py``):
  800 epochs of 2,000 cells, no external view.

``--epochs E`` gives every contender E epochs (smoke runs; the outputs get the suffix ``_e<E>``).

The clock: wall seconds from just before the contender's process is started (interpreter
start, imports, data loading, graph building included) to the end of a checkpoint's epoch,
less what the runner leaves out: the in-memory copy of the model's state at each checkpoint,
sce2tm's conversion of the input to its CSV files and its periodic ``evaluate()``. The runners
(``--dump-at``) keep the state at each checkpoint epoch and write its outputs after training;
this script scores them afterwards (scoring time not counted).

Checkpoints: the fractions ``--checkpoints`` of each contender's epochs (default 2, 5, 10, 20,
..., 100 %). Quality at a checkpoint: best-resolution Leiden ARI (``sctopic.metrics.
cluster_sweep``: k = 15 graph, resolutions 0.1..2.0, the best ARI against the labels: ORACLE)
on the contender's clustering representation (``--representation own``: the topic logits for
sce2tm (what it saves and clusters), scetm (delta, its default) and sctopic SCE2TM
(``SCE2TM.clustering_representation``), theta for sctopic SCETM), and TD = distinct genes
among the topics' top 25 / (K * 25) (``sctopic.metrics.topic_diversity``, ``--td-top-n``).

"Reaches" a target (ARI*, TD*) at the first checkpoint with ARI >= ARI* - tol and
TD >= TD* - tol (``--tolerance``, default 0.02); ARI-only reach times are reported too. Targets:
the contender's own final checkpoint, and sce2tm's final checkpoint of the same seed. A reach
time is the wall clock of that checkpoint, so it is resolved only to the checkpoint schedule.
Ratios: sce2tm's time to its own final quality divided by the contender's time to (a) sce2tm's
final quality and (b) its own (issue 20's goals for sctopic SCE2TM: >= 10x and >= 5x).

Cells per second (item 3): per contender and seed, cells x (epochs - 1) / the training
seconds of all epochs but the first (the runners' per-epoch clocks), and sctopic SCE2TM at
its default batch (512) against scetm 0.5.0 at its default (2,000).

Results: ``<out>/<dataset>[_e<E>].{json,md,png}`` (default ``benchmarks/results/time_to_quality/``),
with the load average at start and end (``provenance``) and, per contender, before and after
together with a matmul calibration. Resumable: a (contender, seed) whose runner finished with
the same settings is not rerun (``<work-dir>/<dataset>_s<seed>/ttq_<contender>_e<E>_t<K>/``),
nor rescored (``ttq_scores.json`` there) unless ``--rerun`` / ``--rescore``.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from bench_vs_reference import calibrate, prepare
from harness import ENVS, REFERENCE, RESULTS, fmt, load1, make_parser, md_table, run_logged, write_json, write_report

from sctopic.models.sce2tm import PRESETS

REFERENCE_NAME = "sce2tm"
DEFAULT_CHECKPOINTS = (0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
SCORE_VERSION = 1  # bump when the scoring changes: cached scores are then recomputed


@dataclass(frozen=True)
class Contender:
    name: str
    what: str
    env: str | None  # reference environment under benchmarks/envs/, None: this interpreter
    script: str
    epochs: int  # its default
    batch_size: int  # its default
    representation: str  # its clustering representation: "logits" or "theta"
    view: str  # the external view it sees
    extra: tuple[str, ...] = ()

    def python(self) -> str:
        return sys.executable if self.env is None else str(ENVS / self.env / "bin" / "python")


SVD_VIEW = ("512-d TruncatedSVD of log-normalised expression, bench_vs_reference's stand-in for "
            "scGPT (precomputed: not counted)")
CONTENDERS: dict[str, Contender] = {c.name: c for c in (
    Contender("sce2tm", "authors' scE2TM (sce2tm 1.2.3), its API's defaults", "sce2tm", "run_sce2tm.py",
              500, 512, "logits", SVD_VIEW, ("--quiet",)),
    Contender("scetm", "authors' scETM (scetm 0.5.0), its defaults", "scetm", "run_scetm.py",
              800, 2000, "logits", "none"),
    Contender("sctopic_sce2tm", "sctopic.SCE2TM, its defaults", None, "run_sctopic.py",
              PRESETS["default"]["max_epochs"], 512, "logits",
              "SCE2TM's default offline view: 50 PCs of log-normalised expression (computed in the "
              "model: counted)", ("--external-key", "none", "--lr-step-epochs", "-1")),
    Contender("sctopic_scetm", "sctopic.SCETM, its defaults", None, "run_sctopic_scetm.py", 800, 2000,
              "theta", "none"),
)}
#: item 3: sctopic's SCE2TM at its default batch against scetm 0.5.0 at its default
CELLS_PER_S_PAIR = ("sctopic_sce2tm", "scetm")


def parse_args(argv=None):
    p = make_parser(__doc__, dataset="pbmc3k", choices=("pbmc3k", "kang8"), seeds=(0, 1, 2), threads=2,
                    n_topics=100, out=RESULTS / "time_to_quality", work_dir=True)
    p.add_argument("--epochs", type=int, default=None,
                   help="epochs for every contender (default: each its own: " + ", ".join(
                       f"{c.name} {c.epochs}" for c in CONTENDERS.values()) + ")")
    p.add_argument("--contenders", nargs="+", default=list(CONTENDERS), choices=list(CONTENDERS))
    p.add_argument("--checkpoints", type=float, nargs="+", default=list(DEFAULT_CHECKPOINTS),
                   help="fractions of the epochs at which quality is measured (the last epoch always is)")
    p.add_argument("--tolerance", type=float, default=0.02,
                   help="reached: ARI >= target - tol and TD >= target - tol (default 0.02)")
    p.add_argument("--td-top-n", type=int, default=25, help="top genes per topic for TD (25)")
    p.add_argument("--k", type=int, default=15, help="neighbours of the clustering graph (15)")
    p.add_argument("--representation", choices=("own", "logits", "theta"), default="own",
                   help="what is clustered: each contender's own clustering representation (default), "
                        "or the logits / theta of all")
    p.add_argument("--timeout", type=float, default=None, help="seconds per contender run")
    p.add_argument("--rerun", action="store_true", help="rerun contenders even when finished runs are on disk")
    p.add_argument("--rescore", action="store_true", help="rescore checkpoints even when scores are cached")
    return p.parse_args(argv)


def checkpoint_epochs(epochs: int, fractions) -> list[int]:
    """The epochs (1-based) of the fractions of ``epochs``; the last epoch always."""
    chosen = {min(epochs, max(1, math.ceil(f * epochs - 1e-9))) for f in fractions if f > 0}
    chosen.add(epochs)
    return sorted(chosen)


# ----------------------------------------------------------------------------- running
def run_settings(c: Contender, args, epochs: int, dump: list[int]) -> dict:
    return {"contender": c.name, "epochs": epochs, "batch_size": c.batch_size, "n_topics": args.n_topics,
            "threads": args.threads, "dump_epochs": dump, "extra": list(c.extra)}


def run_contender(c: Contender, args, npz: Path, run_dir: Path, seed: int, allow_run: bool = True) -> dict | None:
    """Run (or reuse) one contender on one seed; its ``run.json`` (settings, clock, load).
    ``allow_run=False``: only reuse a finished run (None without one)."""
    epochs = args.epochs or c.epochs
    dump = checkpoint_epochs(epochs, args.checkpoints)
    settings = {**run_settings(c, args, epochs, dump), "seed": seed}
    meta_path = run_dir / "run.json"
    done = all((run_dir / f).exists() for f in ("run.json", "timings.json", "checkpoints.json"))
    if done and (not args.rerun or not allow_run):
        meta = json.loads(meta_path.read_text())
        if meta.get("settings") == settings:
            print(f"[{c.name} s{seed}] finished earlier: {run_dir}", flush=True)
            meta["reused"] = True
            return meta
    if not allow_run:
        print(f"[{c.name} s{seed}] not among --contenders and no finished run with these settings: "
              "no reference targets for this seed", flush=True)
        return None
    if c.env is not None and not Path(c.python()).exists():
        print(f"[{c.name}] environment missing: run benchmarks/setup_reference_envs.sh", file=sys.stderr)
        return None
    run_dir.mkdir(parents=True, exist_ok=True)
    for f in ("run.json", "timings.json", "checkpoints.json", "ttq_scores.json"):
        (run_dir / f).unlink(missing_ok=True)  # never mistake an old result for this run's
    load0, cal0 = load1(), calibrate(args.threads)
    clock_start = time.time()
    cmd = [c.python(), str(REFERENCE / c.script), "--input", str(npz), "--out", str(run_dir),
           "--epochs", str(epochs), "--seed", str(seed), "--threads", str(args.threads),
           "--n-topics", str(args.n_topics), "--batch-size", str(c.batch_size),
           "--dump-at", ",".join(map(str, dump)), "--clock-start", repr(clock_start), *c.extra]
    print(f"[{c.name} s{seed}] {' '.join(cmd)}", flush=True)
    try:
        proc, wall = run_logged(cmd, run_dir / "stdout.log", threads=args.threads, cwd=run_dir,
                                timeout=args.timeout)
    except subprocess.TimeoutExpired:
        print(f"[{c.name} s{seed}] timed out after {args.timeout} s", file=sys.stderr)
        return None
    if proc.returncode != 0 or not (run_dir / "checkpoints.json").exists():
        tail = (run_dir / "stdout.log").read_text().splitlines()[-15:]
        print(f"[{c.name} s{seed}] FAILED (exit {proc.returncode}); last lines:\n  " + "\n  ".join(tail),
              file=sys.stderr)
        return None
    meta = {"settings": settings, "command": cmd, "clock_start": clock_start, "process_wall_seconds": wall,
            "loadavg_1min_before_after": [load0, load1()],
            "calibration_gflops_before_after": [round(cal0, 1), round(calibrate(args.threads), 1)],
            "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
    write_json(meta_path, meta, with_provenance=False)
    return meta


# ----------------------------------------------------------------------------- scoring
def score_settings(c: Contender, args, seed: int) -> dict:
    rep = c.representation if args.representation == "own" else args.representation
    return {"version": SCORE_VERSION, "representation": rep, "k": args.k, "td_top_n": args.td_top_n,
            "cluster_seed": seed, "resolutions": "0.1..2.0", "implementation": "sctopic.metrics.cluster_sweep"}


def score_run(c: Contender, args, run_dir: Path, labels, seed: int) -> list[dict]:
    """ARI/TD of every checkpoint of a run (cached in ``ttq_scores.json``)."""
    from sctopic.metrics import cluster_sweep, topic_diversity, topic_diversity_exclusive

    want = score_settings(c, args, seed)
    cache = run_dir / "ttq_scores.json"
    if cache.exists() and not args.rescore:
        got = json.loads(cache.read_text())
        if got.get("settings") == want:
            return got["checkpoints"]
    ck = json.loads((run_dir / "checkpoints.json").read_text())
    rows = []
    for item in ck["checkpoints"]:
        t0 = time.perf_counter()
        d = run_dir / "checkpoints" / f"e{item['epoch']:05d}"
        emb = np.load(d / f"{want['representation']}.npy")
        tg = np.load(d / "topic_gene.npy")
        s = cluster_sweep(emb, labels, k=args.k, seed=seed)
        rows.append({
            "epoch": item["epoch"], "wall_seconds": item["wall_seconds"],
            "fractional_epoch": item.get("fractional_epoch"),
            "ari": s["ari_oracle"], "nmi": s["nmi_oracle"], "resolution": s["resolution_oracle"],
            "n_clusters": s["n_clusters_oracle"], "ari_fixed": s["ari_fixed"],
            "td": topic_diversity(tg, args.td_top_n), "td_exclusive": topic_diversity_exclusive(tg, args.td_top_n),
            "td_top10": topic_diversity(tg, 10), "scoring_seconds": time.perf_counter() - t0,
        })
        print(f"  e{item['epoch']:>4d} {item['wall_seconds']:8.1f} s  ARI {rows[-1]['ari']:.3f}  "
              f"TD@{args.td_top_n} {rows[-1]['td']:.3f}", flush=True)
    write_json(cache, {"settings": want, "checkpoints": rows}, with_provenance=False)
    return rows


def first_reach(traj: list[dict], ari: float, td: float | None, tol: float) -> dict | None:
    """The first checkpoint with ARI >= ari - tol (and TD >= td - tol unless ``td`` is None)."""
    for row in traj:
        if row["ari"] >= ari - tol and (td is None or row["td"] >= td - tol):
            return row
    return None


def reach_times(traj: list[dict], target: dict | None, tol: float) -> dict:
    if not target:
        return {"seconds": None, "epoch": None, "ari_only_seconds": None, "ari_only_epoch": None}
    both, ari = first_reach(traj, target["ari"], target["td"], tol), first_reach(traj, target["ari"], None, tol)
    return {"seconds": both and both["wall_seconds"], "epoch": both and both["epoch"],
            "ari_only_seconds": ari and ari["wall_seconds"], "ari_only_epoch": ari and ari["epoch"]}


def cells_per_second(timings: dict) -> dict:
    """Training cells per second over all epochs but the first (one-off costs)."""
    e = np.asarray(timings.get("epoch_seconds") or [], dtype=float)
    n = timings.get("n_cells")
    if e.size < 2 or not n:
        return {"cells_per_s_excl_first": None, "cells_per_s_median_epoch": None, "epochs_timed": int(e.size)}
    return {"cells_per_s_excl_first": float(n * (e.size - 1) / e[1:].sum()),
            "cells_per_s_median_epoch": float(n / np.median(e[1:])), "epochs_timed": int(e.size) - 1}


def div(a, b):
    return None if a is None or b is None or b == 0 else a / b


def summarise(rows: list[dict], args) -> dict:
    """Targets, reach times and ratios per (contender, seed); means over seeds; cells/s rows."""
    ref = {r["seed"]: r for r in rows if r["contender"] == REFERENCE_NAME}
    for r in rows:
        traj = r["checkpoints"]
        final = traj[-1]
        r["final"] = {k: final[k] for k in ("epoch", "ari", "td", "td_exclusive", "td_top10", "nmi", "ari_fixed")}
        r["own_target"] = {"ari": final["ari"], "td": final["td"]}
        r["reach_own"] = reach_times(traj, r["own_target"], args.tolerance)
        rf = ref.get(r["seed"])
        r["reference_target"] = rf and {"ari": rf["checkpoints"][-1]["ari"], "td": rf["checkpoints"][-1]["td"]}
        r["reach_reference"] = reach_times(traj, r["reference_target"], args.tolerance)
        r["total_seconds"] = final["wall_seconds"]
    for r in rows:
        rf = ref.get(r["seed"])
        if rf is None or r["contender"] == REFERENCE_NAME:
            r["vs_reference"] = None
            continue
        t_ref, t_ref_ari = rf["reach_own"]["seconds"], rf["reach_own"]["ari_only_seconds"]
        r["vs_reference"] = {
            "reference_time_to_own_final": t_ref,
            "speedup_to_reference_quality": div(t_ref, r["reach_reference"]["seconds"]),
            "speedup_own_final_vs_reference_own_final": div(t_ref, r["reach_own"]["seconds"]),
            "speedup_to_reference_ari_only": div(t_ref_ari, r["reach_reference"]["ari_only_seconds"]),
            "speedup_own_final_ari_only": div(t_ref_ari, r["reach_own"]["ari_only_seconds"]),
            "speedup_total": div(rf["total_seconds"], r["total_seconds"]),
        }

    def agg(vals):
        vals = [v for v in vals if v is not None]
        if not vals:
            return None
        return {"mean": float(np.mean(vals)), "min": float(np.min(vals)), "max": float(np.max(vals)), "n": len(vals)}

    per = {}
    for name in dict.fromkeys(r["contender"] for r in rows):
        rs = [r for r in rows if r["contender"] == name]
        per[name] = {
            "seeds": [r["seed"] for r in rs],
            "final_ari": agg([r["final"]["ari"] for r in rs]), "final_td": agg([r["final"]["td"] for r in rs]),
            "time_to_own_final": agg([r["reach_own"]["seconds"] for r in rs]),
            "time_to_reference_final": agg([r["reach_reference"]["seconds"] for r in rs]),
            "time_to_reference_final_reached": sum(r["reach_reference"]["seconds"] is not None for r in rs),
            "time_to_reference_ari_only": agg([r["reach_reference"]["ari_only_seconds"] for r in rs]),
            "total_seconds": agg([r["total_seconds"] for r in rs]),
        }
        if name != REFERENCE_NAME:
            for key in ("speedup_to_reference_quality", "speedup_own_final_vs_reference_own_final",
                        "speedup_to_reference_ari_only", "speedup_own_final_ari_only", "speedup_total"):
                per[name][key] = agg([(r["vs_reference"] or {}).get(key) for r in rs])
    goals = None
    if "sctopic_sce2tm" in per and REFERENCE_NAME in per:
        s = per["sctopic_sce2tm"]
        ok_ref = [r["vs_reference"] and r["vs_reference"]["speedup_to_reference_quality"]
                  for r in rows if r["contender"] == "sctopic_sce2tm"]
        ok_own = [r["vs_reference"] and r["vs_reference"]["speedup_own_final_vs_reference_own_final"]
                  for r in rows if r["contender"] == "sctopic_sce2tm"]
        goals = {
            "reference_quality_10x_sooner": bool(ok_ref) and all(v is not None and v >= 10 for v in ok_ref),
            "own_final_5x_sooner": bool(ok_own) and all(v is not None and v >= 5 for v in ok_own),
            "speedup_to_reference_quality": s.get("speedup_to_reference_quality"),
            "speedup_own_final_vs_reference_own_final": s.get("speedup_own_final_vs_reference_own_final"),
            "note": "met when every seed meets it (a seed that never reaches the reference's final quality fails)",
        }
    cps = []
    for r in rows:
        cps.append({"contender": r["contender"], "seed": r["seed"], "batch_size": r["batch_size"],
                    "n_cells": r["n_cells"], **r["cells_per_s"]})
    a, b = CELLS_PER_S_PAIR
    cps_ratio = []
    for seed in sorted({r["seed"] for r in rows}):
        x = next((c for c in cps if c["contender"] == a and c["seed"] == seed), None)
        y = next((c for c in cps if c["contender"] == b and c["seed"] == seed), None)
        if x and y:
            cps_ratio.append({"seed": seed, "pair": f"{a} (batch {x['batch_size']}) / {b} (batch {y['batch_size']})",
                              "ratio": div(x["cells_per_s_excl_first"], y["cells_per_s_excl_first"])})
    return {"per_contender": per, "goals": goals, "cells_per_s": cps, "cells_per_s_ratio": cps_ratio}


# ----------------------------------------------------------------------------- report
def _t(x, nd=1) -> str:
    return "never" if x is None else fmt(float(x), nd)


def _agg(a, nd=3, never=False) -> str:
    if a is None:
        return "never" if never else "-"
    if a["n"] == 1:
        return fmt(a["mean"], nd)
    return f"{fmt(a['mean'], nd)} ({fmt(a['min'], nd)}-{fmt(a['max'], nd)})"


def markdown(report: dict) -> str:
    p, rows, s, a = report["prep"], report["runs"], report["summary"], report["options"]
    L = [f"# Time to quality: {report['dataset']}", "",
         f"{p['n_cells']} cells x {p['n_genes']} genes ({p['gene_selection']}), {a['n_topics']} topics, "
         f"seeds {', '.join(map(str, a['seeds']))}, {a['threads']} threads per contender, one run on "
         f"{report['machine']}. Load average (1, 5, 15 min) at start {report['loadavg_start']}, at end "
         f"{report['loadavg_end']}.", "",
         f"Quality: best-resolution Leiden ARI (k={a['k']}, resolutions 0.1..2.0, the best ARI against the "
         f"labels: ORACLE) on each contender's clustering representation, and TD (distinct genes among the "
         f"top {a['td_top_n']} / (K x {a['td_top_n']})). Reached: ARI >= target - {a['tolerance']} and "
         f"TD >= target - {a['tolerance']} at a checkpoint (fractions {', '.join(map(str, a['checkpoints']))} of "
         "the epochs); times are wall seconds from the process start (data loading and setup included, "
         "checkpoint copies and evaluation excluded), so a reach time is resolved only to the checkpoints.", "",
         "## Contenders", ""]
    L += md_table(["contender", "what", "epochs (default)", "batch", "clustered", "external view"],
                  [[c["name"], c["what"], f"{c['epochs']} ({c['default_epochs']})", c["batch_size"],
                    c["representation"], c["view"]] for c in report["contenders"]])
    L += ["", "## Per run", ""]
    L += md_table(
        ["contender", "seed", "final ARI", f"final TD@{a['td_top_n']}", "to own final s (epoch)",
         "to sce2tm final s (epoch)", "ARI only: own / sce2tm s", "total s", "x sooner to sce2tm's final",
         "x sooner own final", "ARI only: x / x", "load before/after", "GFLOP/s before/after"],
        [[r["contender"] + (" (reused)" if r.get("reused") else ""), r["seed"], fmt(r["final"]["ari"]),
          fmt(r["final"]["td"]),
          f"{_t(r['reach_own']['seconds'])} ({r['reach_own']['epoch']})",
          "-" if r["reference_target"] is None else
          f"{_t(r['reach_reference']['seconds'])} ({r['reach_reference']['epoch'] or '-'})",
          f"{_t(r['reach_own']['ari_only_seconds'])} / " + (
              "-" if r["reference_target"] is None else _t(r["reach_reference"]["ari_only_seconds"])),
          _t(r["total_seconds"]),
          *(["-", "-", "-"] if not r["vs_reference"] else [
              _t(r["vs_reference"]["speedup_to_reference_quality"], 2),
              _t(r["vs_reference"]["speedup_own_final_vs_reference_own_final"], 2),
              f"{_t(r['vs_reference']['speedup_to_reference_ari_only'], 2)} / "
              f"{_t(r['vs_reference']['speedup_own_final_ari_only'], 2)}"]),
          "/".join(fmt(float(x), 1) for x in r.get("loadavg_1min_before_after") or []) or "-",
          "/".join(fmt(float(x), 0) for x in r.get("calibration_gflops_before_after") or []) or "-"]
         for r in rows])
    L += ["", "## Over seeds (mean, min-max)", ""]
    L += md_table(
        ["contender", "final ARI", "final TD", "to own final s", "to sce2tm final s (seeds reaching)",
         "total s", "x sooner to sce2tm's final", "x sooner own final", "x total"],
        [[name, _agg(v["final_ari"]), _agg(v["final_td"]), _agg(v["time_to_own_final"], 1),
          f"{_agg(v['time_to_reference_final'], 1, never=True)} ({v['time_to_reference_final_reached']}/{len(v['seeds'])})",
          _agg(v["total_seconds"], 1), _agg(v.get("speedup_to_reference_quality"), 2),
          _agg(v.get("speedup_own_final_vs_reference_own_final"), 2), _agg(v.get("speedup_total"), 2)]
         for name, v in s["per_contender"].items()])
    g = s.get("goals")
    if g:
        L += ["", f"Issue 20 goals for sctopic SCE2TM (every seed): reaches sce2tm's final ARI and TD >= 10x "
                  f"sooner: **{'met' if g['reference_quality_10x_sooner'] else 'not met'}**; its own final quality "
                  f">= 5x sooner than sce2tm reaches its own: **{'met' if g['own_final_5x_sooner'] else 'not met'}**."]
    L += ["", "## Cells per second (all epochs but the first)", ""]
    L += md_table(["contender", "seed", "batch", "cells/s", "cells/s (median epoch)", "epochs timed"],
                  [[c["contender"], c["seed"], c["batch_size"], fmt(c["cells_per_s_excl_first"], 0),
                    fmt(c["cells_per_s_median_epoch"], 0), c["epochs_timed"]] for c in s["cells_per_s"]])
    if s["cells_per_s_ratio"]:
        L += ["", "Ratio " + s["cells_per_s_ratio"][0]["pair"] + ": " + ", ".join(
            f"seed {c['seed']} {_t(c['ratio'], 2)}" for c in s["cells_per_s_ratio"]) + " (issue 20 goal: >= 1.0)."]
    L += ["", "## Checkpoints (wall s / ARI / TD)", ""]
    for name in dict.fromkeys(r["contender"] for r in rows):
        rs = [r for r in rows if r["contender"] == name]
        epochs = sorted({c["epoch"] for r in rs for c in r["checkpoints"]})
        table = []
        for e in epochs:
            cells = []
            for r in rs:
                c = next((c for c in r["checkpoints"] if c["epoch"] == e), None)
                cells.append("-" if c is None else f"{c['wall_seconds']:.1f} / {c['ari']:.3f} / {c['td']:.3f}")
            table.append([e, *cells])
        L += [f"**{name}**", ""] + md_table(["epoch", *[f"seed {r['seed']}" for r in rs]], table) + [""]
    L += ["Notes:", "",
          "- ARI is the ORACLE best-resolution ARI (resolution chosen with the labels), the scE2TM paper's "
          "protocol; sce2tm's and scetm's ARIs are on their topic logits (what they cluster), sctopic SCE2TM's "
          "on its logits, sctopic SCETM's on theta (each model's clustering representation).",
          "- The clock starts just before the contender's process is started and includes interpreter start, "
          "imports, data loading, neighbour graphs and PCA; it excludes the in-memory state copies at the "
          "checkpoints, sce2tm's conversion of the input to its CSV files and its periodic evaluate() (every "
          "100 epochs), and all scoring. sce2tm's SVD-512 view is precomputed (not counted); sctopic SCE2TM "
          "computes its default PCA view itself (counted).",
          "- 'x sooner' = sce2tm's time to its own final quality (with the tolerance) / the contender's time to "
          "sce2tm's final quality, or to its own final quality. 'never': not reached at any checkpoint.",
          "- Cells per second: cells x (epochs - 1) / the training seconds of epochs 2..E (the runners' epoch "
          "clocks; setup not included). sctopic SCE2TM's default recipe has ECR off for the first half of the "
          "epochs and ramps it in over the next quarter, so its early epochs are cheaper than its late ones; "
          "sce2tm's epochs slow down late in training (its Sinkhorn iterations grow).",
          "- scETM counts epochs in steps of 2,000 cells; its checkpoint is the step at which the fractional "
          "epoch reaches the checkpoint epoch.",
          "- Load average and a calibration matmul rate (1024x5000 @ 5000x200, float32) before and after each "
          "contender: compare times only where they agree."]
    return "\n".join(L) + "\n"


def plot(report: dict, path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover
        return None
    from harness import atomic_write

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    colours = {name: f"C{i}" for i, name in enumerate(CONTENDERS)}
    for r in report["runs"]:
        t = [c["wall_seconds"] for c in r["checkpoints"]]
        for ax, key in zip(axes, ("ari", "td")):
            ax.plot(t, [c[key] for c in r["checkpoints"]], marker="o", ms=3, lw=1, color=colours[r["contender"]],
                    label=r["contender"])
    for r in report["runs"]:
        if r["contender"] == REFERENCE_NAME:
            for ax, key in zip(axes, ("ari", "td")):
                ax.axhline(r["checkpoints"][-1][key], color=colours[REFERENCE_NAME], ls=":", lw=0.8)
    a = report["options"]
    for ax, label in zip(axes, ("ARI (oracle, best resolution)", f"TD (top {a['td_top_n']})")):
        ax.set_xscale("log")
        ax.set_xlabel("wall seconds from process start")
        ax.set_ylabel(label)
    handles, labels = axes[0].get_legend_handles_labels()
    seen = dict(zip(labels, handles))
    axes[0].legend(seen.values(), seen.keys(), frameon=False, fontsize=8)
    fig.suptitle(f"{report['dataset']}: time to quality (dotted: sce2tm's final)", fontsize=10)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110))
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- main
def main(argv=None) -> int:
    args = parse_args(argv)
    if args.epochs is not None and args.epochs < 1:
        raise SystemExit("--epochs must be >= 1")
    if not 0 < max(args.checkpoints) <= 1:
        raise SystemExit("--checkpoints are fractions in (0, 1]")
    import platform

    from harness import LOADAVG_AT_START

    names = list(dict.fromkeys(args.contenders))
    if REFERENCE_NAME not in names:  # its finished runs still give the targets, never rerun here
        names.insert(0, REFERENCE_NAME)
    preps, finished = {}, []
    for seed in args.seeds:  # all runs first, then all scoring: scoring never loads the machine under a run
        work = Path(args.work_dir) / f"{args.dataset}_s{seed}"
        npz, prep = prepare(args.dataset, seed, work)
        preps[seed] = prep
        print(f"[prepare] seed {seed}: {prep['n_cells']} cells x {prep['n_genes']} genes -> {npz}", flush=True)
        for name in names:
            c = CONTENDERS[name]
            run_dir = work / f"ttq_{name}_e{args.epochs or c.epochs}_t{args.n_topics}"
            meta = run_contender(c, args, npz, run_dir, seed, allow_run=name in args.contenders)
            if meta is not None:
                finished.append((c, seed, npz, run_dir, meta))
    runs = []
    for c, seed, npz, run_dir, meta in finished:
        labels = [str(x) for x in np.load(npz, allow_pickle=False)["labels"]]
        timings = json.loads((run_dir / "timings.json").read_text())
        print(f"[{c.name} s{seed}] scoring checkpoints", flush=True)
        traj = score_run(c, args, run_dir, labels, seed)
        ck = json.loads((run_dir / "checkpoints.json").read_text())
        runs.append({
            "contender": c.name, "seed": seed, "epochs": args.epochs or c.epochs, "batch_size": c.batch_size,
            "n_cells": timings.get("n_cells"), "representation": score_settings(c, args, seed)["representation"],
            "reused": bool(meta.get("reused")), "run_dir": str(run_dir), "finished": meta.get("finished"),
            "process_wall_seconds": meta.get("process_wall_seconds"),
            "loadavg_1min_before_after": meta.get("loadavg_1min_before_after"),
            "calibration_gflops_before_after": meta.get("calibration_gflops_before_after"),
            "train_seconds": timings.get("train_seconds"), "setup_seconds": timings.get("setup_seconds"),
            "seconds_per_epoch_mean": timings.get("seconds_per_epoch_mean"),
            "peak_rss_mb": timings.get("peak_rss_mb"), "excluded_seconds": ck.get("excluded_seconds"),
            "clock_origin": ck.get("clock_origin"), "cells_per_s": cells_per_second(timings),
            "checkpoints": traj, "env": timings.get("env"), "shims": timings.get("shims"),
        })
    names = list(dict.fromkeys(r["contender"] for r in runs))
    if not runs:
        print("nothing ran", file=sys.stderr)
        return 1
    summary = summarise(runs, args)
    report = {
        "dataset": args.dataset, "machine": f"{platform.machine()}, {os.cpu_count()} logical CPUs",
        "loadavg_start": [round(x, 2) for x in LOADAVG_AT_START],
        "loadavg_end": [round(x, 2) for x in os.getloadavg()],
        "options": {"seeds": args.seeds, "epochs_override": args.epochs, "threads": args.threads,
                    "n_topics": args.n_topics, "checkpoints": args.checkpoints, "tolerance": args.tolerance,
                    "td_top_n": args.td_top_n, "k": args.k, "representation": args.representation},
        "contenders": [{"name": c.name, "what": c.what, "epochs": args.epochs or c.epochs,
                        "default_epochs": c.epochs, "batch_size": c.batch_size,
                        "representation": c.representation if args.representation == "own" else args.representation,
                        "view": c.view, "runner": f"benchmarks/reference/{c.script} {' '.join(c.extra)}".strip()}
                       for c in (CONTENDERS[n] for n in names)],
        "prep": preps[args.seeds[0]], "runs": runs, "summary": summary,
    }
    suffix = "" if args.epochs is None else f"_e{args.epochs}"
    stem = write_report(Path(args.out) / f"{args.dataset}{suffix}", report, markdown(report))
    png = plot(report, stem.with_name(stem.name + ".png"))
    print(markdown(report))
    print(f"wrote {stem}.json, {stem}.md" + (f", {png.name}" if png else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
