"""The benchmark loop: methods x datasets x seeds, one tidy CSV row per run, resumable.

After every run the whole table is rewritten atomically (temporary file, then rename), so an
interrupted benchmark loses at most the run in progress; on the next start, runs whose row
says ``ok`` and whose settings are unchanged are skipped.
"""
from __future__ import annotations

import json
import math
import sys
import time
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from sctopic.bench.config import BenchConfig, DatasetSpec, MethodSpec, settings_hash
from sctopic.bench.methods import (
    DatasetData,
    check_dataset_fields,
    check_global_train,
    get_model_kind,
    load_dataset,
)
from sctopic.errors import InputError

RESULTS_CSV = "results.csv"
KEY_COLUMNS: tuple[str, ...] = ("dataset", "method", "seed")
STATUS_OK = "ok"

#: scalar keys of sctopic.metrics.evaluate copied into each row besides FLAT_KEYS
_EXTRA_METRICS = (
    "resolution_fixed", "n_clusters_oracle", "n_clusters_fixed", "ari_matched", "nmi_matched",
    "resolution_matched", "n_clusters_matched", "asw_raw",
)
_LIBRARY_KEYS = ("tc", "tq", "ora_n", "ora_u", "ora_q", "gsea_n", "gsea_u", "gsea_q")
_INFO_COLUMNS = (
    "n_cells", "n_genes", "n_topics", "epochs", "seconds_setup", "seconds_train",
    "seconds_per_epoch", "seconds_eval", "device", "n_warnings", "settings_hash", "timestamp",
    "sctopic_version",
)

_INT_COLUMNS = ("seed", "ora_n", "gsea_n", "n_clusters_oracle", "n_clusters_fixed", "n_clusters_matched",
                "n_cells", "n_genes", "n_topics", "epochs", "n_warnings")


def result_columns() -> list[str]:
    """The CSV's leading columns, in order (extra gene-set libraries add ``<metric>__<lib>``)."""
    from sctopic.metrics.evaluate import FLAT_KEYS

    return [*KEY_COLUMNS, "model", "status", *FLAT_KEYS, *_EXTRA_METRICS,
            "accuracy_fixed", "balanced_accuracy_fixed", "accuracy_oracle",
            "balanced_accuracy_oracle", *_INFO_COLUMNS]


@dataclass
class Run:
    """One planned run."""

    dataset: DatasetSpec
    method: MethodSpec
    seed: int
    train: dict[str, Any]
    settings_hash: str

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.dataset.name, self.method.name, self.seed)

    def run_dir(self, out: Path) -> Path:
        return out / "runs" / self.dataset.name / self.method.name / f"seed{self.seed}"


def plan_runs(cfg: BenchConfig) -> list[Run]:
    """Every (dataset, method, seed) run of a configuration, dataset by dataset.

    Also checks each available method's parameters against its model (unknown keyword
    arguments raise :class:`InputError` before anything runs).
    """
    check_global_train(cfg.train)
    runs = []
    trains = {}
    for m in cfg.methods.values():
        kind = get_model_kind(m.model)
        if kind.unavailable() is None:
            trains[m.name] = kind.train_kwargs(cfg.train if kind.takes_global_train else {}, m)
            kind.check(m, trains[m.name], cfg.train)
        else:
            trains[m.name] = dict(m.train)
    for d in cfg.datasets.values():
        for m in cfg.methods.values():
            h = settings_hash(cfg, m, d, trains[m.name])
            for s in cfg.seeds:
                runs.append(Run(d, m, s, trains[m.name], h))
    return runs


def check_datasets(cfg: BenchConfig) -> None:
    """Check that each dataset file opens and has its labels/batch columns and layer.

    Reads only ``obs`` and the layer names (the file is opened in backed mode).
    """
    import anndata as ad

    from sctopic.bench.config import BUILTIN_PREFIX

    for spec in cfg.datasets.values():
        if spec.path.startswith(BUILTIN_PREFIX):
            continue  # read in full when used; small
        try:
            a = ad.read_h5ad(spec.path, backed="r")
        except OSError as exc:
            raise InputError(f"datasets.{spec.name}.path: could not read {spec.path} as h5ad: {exc}") from None
        try:
            check_dataset_fields(spec, a.obs.columns, a.layers.keys())
        finally:
            a.file.close()


def read_results(path: str | Path) -> pd.DataFrame:
    """Read a benchmark's ``results.csv`` (an empty table when it does not exist)."""
    path = Path(path)
    if not path.is_file():
        return pd.DataFrame(columns=result_columns())
    try:
        df = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise InputError(f"{path} is not a readable results table ({exc}); move it away or use another --out") from None
    missing = [c for c in (*KEY_COLUMNS, "status") if c not in df.columns]
    if missing:
        raise InputError(f"{path} lacks the column(s) {', '.join(missing)}; it is not a benchmark results table")
    return df


def _num(x) -> float:
    if x is None:
        return float("nan")
    try:
        return float(x)
    except (TypeError, ValueError):
        return float("nan")


def metrics_row(res: dict) -> dict[str, float]:
    """The CSV metric columns of one :func:`sctopic.metrics.evaluate` result."""
    from sctopic.metrics.evaluate import FLAT_KEYS

    row = {key: _num(res.get(key)) for key in (*FLAT_KEYS, *_EXTRA_METRICS)}
    for which in ("fixed", "oracle"):
        acc = res.get(f"accuracy_{which}")
        acc = acc if isinstance(acc, dict) else {}
        row[f"accuracy_{which}"] = _num(acc.get("overall"))
        row[f"balanced_accuracy_{which}"] = _num(acc.get("balanced"))
    libs = list((res.get("genesets") or {}).items())
    for name, lib in libs[1:]:
        for key in _LIBRARY_KEYS:
            row[f"{key}__{name}"] = _num(lib.get(key))
    return row


def _order(df: pd.DataFrame, cfg: BenchConfig) -> pd.DataFrame:
    """Rows in config order (datasets, then methods, then seeds); others after, as they were."""
    if df.empty:
        return df
    d_rank = {d: i for i, d in enumerate(cfg.datasets)}
    m_rank = {m: i for i, m in enumerate(cfg.methods)}
    big = len(d_rank) + len(m_rank) + 1
    key = pd.DataFrame({
        "d": df["dataset"].map(lambda d: d_rank.get(d, big)),
        "m": df["method"].map(lambda m: m_rank.get(m, big)),
        "s": pd.to_numeric(df["seed"], errors="coerce"),
        "i": np.arange(len(df)),
    })
    order = key.sort_values(["d", "m", "s", "i"], kind="stable").index
    return df.loc[order].reset_index(drop=True)


def write_results(df: pd.DataFrame, path: str | Path) -> Path:
    """Write the results table atomically."""
    from sctopic.data.io import write_text_atomic

    cols = result_columns()
    extra = sorted(c for c in df.columns if c not in cols)
    df = df.reindex(columns=[*cols, *extra])
    for c in _INT_COLUMNS:  # whole numbers without ".0" where some rows have none
        v = pd.to_numeric(df[c], errors="coerce")
        if v.notna().any() and (v.dropna() == v.dropna().round()).all():
            df[c] = v.astype("Int64")
    return write_text_atomic(df.to_csv(index=False), path)


def _as_int(x) -> int | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return int(v) if math.isfinite(v) and v == int(v) else None


def _done(existing: pd.DataFrame) -> dict[tuple, dict]:
    """Rows of an existing table keyed by (dataset, method, seed)."""
    out = {}
    for rec in existing.to_dict("records"):
        seed = _as_int(rec["seed"])
        if seed is not None:
            out[(str(rec["dataset"]), str(rec["method"]), seed)] = rec
    return out


def _fmt(x, digits: int = 3) -> str:
    return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{digits}f}"


def run_one(
    run: Run,
    data: DatasetData,
    cfg: BenchConfig,
    libraries: list,
    out: Path,
) -> dict[str, Any]:
    """Fit one method on one dataset with one seed, score it, and return its CSV row.

    Writes ``runs/<dataset>/<method>/seed<k>/metrics.json`` (and ``result.h5ad`` when the
    configuration sets ``save_results``).
    """
    import sctopic
    from sctopic.data.io import jsonable
    from sctopic.metrics.evaluate import evaluate

    kind = get_model_kind(run.method.model)
    row: dict[str, Any] = {
        "dataset": run.dataset.name, "method": run.method.name, "seed": run.seed,
        "model": run.method.model, "status": STATUS_OK,
        "n_cells": int(data.adata.n_obs), "settings_hash": run.settings_hash,
        "sctopic_version": sctopic.__version__,
    }
    reason = kind.unavailable()
    if reason is not None:
        row["status"] = f"skipped: {reason}"
        row["timestamp"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        return row
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit = kind.fit(data, run.method, run.train, cfg.n_topics, run.seed)
        t0 = time.perf_counter()
        res = evaluate(
            fit.adata, labels=run.dataset.labels, batch_key=run.dataset.batch_key,
            genesets=libraries, model=fit.model_key, use_rep=fit.use_rep,
            permutations=cfg.permutations, seed=run.seed, **cfg.evaluate,
        )
        seconds_eval = time.perf_counter() - t0
    noise = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)
    messages = list(dict.fromkeys(f"{w.category.__name__}: {w.message}" for w in caught
                                  if not issubclass(w.category, noise)))
    row.update(metrics_row(res))
    row.update(
        n_genes=fit.n_genes, n_topics=fit.n_topics, epochs=fit.epochs,
        seconds_setup=round(fit.seconds_setup, 4), seconds_train=round(fit.seconds_train, 4),
        seconds_per_epoch=fit.seconds_per_epoch, seconds_eval=round(seconds_eval, 4),
        device=fit.device, n_warnings=len(messages),
        timestamp=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    rdir = run.run_dir(out)
    rdir.mkdir(parents=True, exist_ok=True)
    if cfg.save_results and fit.to_save is not None:
        from sctopic.data.io import write_h5ad_atomic

        write_h5ad_atomic(fit.to_save(), rdir / "result.h5ad")
    from sctopic.data.io import write_text_atomic

    record = {"row": row, "method": {"model": run.method.model, "params": run.method.params,
                                     "train": run.train},
              "dataset": run.dataset.describe(), "fit_info": fit.info, "warnings": messages,
              "evaluation": res}
    write_text_atomic(json.dumps(jsonable(record), indent=2, default=str) + "\n", rdir / "metrics.json")
    return row


def _log_line(i: int, n: int, row: dict, elapsed: float) -> str:
    head = f"[{i}/{n}] {row['dataset']} / {row['method']} / seed {row['seed']}"
    if row["status"] != STATUS_OK:
        return f"{head}: {row['status']}"
    return (f"{head}: ARI {_fmt(row.get('ari_oracle'))} NMI {_fmt(row.get('nmi_oracle'))} "
            f"TD {_fmt(row.get('td'))} TQ {_fmt(row.get('tq'))} ORA_N {_fmt(row.get('ora_n'), 0)} "
            f"({_fmt(row.get('seconds_per_epoch'))} s/epoch, {elapsed:.1f} s)")


def run_benchmark(
    cfg: BenchConfig,
    *,
    resume: bool = True,
    keep_going: bool = False,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    out: str | Path | None = None,
) -> pd.DataFrame:
    """Run every (dataset, method, seed) of a configuration and write ``results.csv``.

    Parameters
    ----------
    cfg
        The checked configuration (:func:`sctopic.bench.load_config`).
    resume
        Skip runs whose row in an existing ``results.csv`` has status ``ok`` and the same
        settings hash (the hash changes with the method's parameters, epochs, dataset fields,
        topics and evaluation settings, not with the output folder). ``False`` re-runs them,
        replacing their rows. Rows of runs outside the configuration are always kept.
    keep_going
        Record a failing run as ``failed: <error>`` and go on (it is retried on the next
        start), instead of stopping at the error.
    progress
        Show a progress bar over runs.
    log
        Called with a one-line summary of each finished run (default: printed).
    out
        Folder to write into instead of ``cfg.out`` (``sctopic bench`` passes the staging
        folder that it swaps in as ``cfg.out`` at the end; see :mod:`sctopic.data.rundir`).

    Returns
    -------
    pandas.DataFrame
        The whole table, as written to ``cfg.out / "results.csv"``.

    Raises
    ------
    InputError
        For a configuration that does not fit the data or the models, before any run starts.
    """
    from tqdm.auto import tqdm

    out = Path(cfg.out if out is None else out)
    out.mkdir(parents=True, exist_ok=True)
    csv = out / RESULTS_CSV
    runs = plan_runs(cfg)
    check_datasets(cfg)
    existing = read_results(csv)
    done = _done(existing)
    if log is None:
        def log(line: str) -> None:
            tqdm.write(line, file=sys.stdout)
    todo = []
    changed = []
    for r in runs:
        rec = done.get(r.key)
        if resume and rec is not None and rec.get("status") == STATUS_OK:
            if rec.get("settings_hash") == r.settings_hash:
                continue
            changed.append("/".join(map(str, r.key)))
        todo.append(r)
    if changed:
        log(f"sctopic bench: settings changed since these rows were written, running them again: "
            f"{', '.join(changed)}")

    from sctopic.data.io import write_text_atomic
    from sctopic.data.io import jsonable

    write_text_atomic(json.dumps(jsonable(cfg.to_dict()), indent=2) + "\n", out / "bench_config.json")
    log(f"sctopic bench: {len(runs)} runs in the config, {len(runs) - len(todo)} already done, "
        f"{len(todo)} to run; results in {Path(cfg.out) / RESULTS_CSV}")

    rows: dict[tuple, dict] = dict(done)
    # rows whose key cannot be read are kept as they are (nothing written is lost)
    for i, rec in enumerate(existing.to_dict("records")):
        if (str(rec["dataset"]), str(rec["method"]), _as_int(rec["seed"])) not in done:
            rows[("__unkeyed__", str(i), -1)] = rec
    from sctopic import genesets as gs

    loaded: dict[str, Any] = {}

    def libraries_for(spec) -> list:
        names = cfg.genesets if spec.genesets is None else spec.genesets
        libs = [loaded[n] if n in loaded else loaded.setdefault(n, gs.load(n)) for n in names]
        return [lib.matching_case(True) for lib in libs] if spec.case_insensitive_genes else libs
    data: DatasetData | None = None
    bar = tqdm(total=len(todo), desc="bench", unit="run", disable=not progress)
    try:
        for i, run in enumerate(todo, 1):
            bar.set_postfix_str(f"{run.dataset.name}/{run.method.name}/seed{run.seed}")
            if data is None or data.spec.name != run.dataset.name:
                data = None
                data = load_dataset(run.dataset)
            t0 = time.perf_counter()
            try:
                row = run_one(run, data, cfg, libraries_for(run.dataset), out)
            except Exception as exc:
                if not keep_going:
                    raise
                msg = " ".join(f"{type(exc).__name__}: {exc}".split())
                row = {"dataset": run.dataset.name, "method": run.method.name, "seed": run.seed,
                       "model": run.method.model, "status": f"failed: {msg}"[:500],
                       "settings_hash": run.settings_hash,
                       "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds")}
            rows[run.key] = row
            table = _order(pd.DataFrame(list(rows.values())), cfg)
            write_results(table, csv)
            bar.update(1)
            log(_log_line(i, len(todo), row, time.perf_counter() - t0))
    finally:
        bar.close()
    return read_results(csv)
