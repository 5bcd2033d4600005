"""Benchmark report: mean +/- sd tables (the shape of the paper's Table 1) and figures.

Only rows with status ``ok`` enter the numbers; sd is the sample standard deviation over
seeds (``ddof=1``, as pandas computes it), left out when a method has one seed.
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from sctopic.bench.config import METHOD_LABELS

#: (column title, results.csv column, decimals) of the markdown table, in order
TABLE_METRICS: tuple[tuple[str, str, int], ...] = (
    ("ARI", "ari_oracle", 3), ("NMI", "nmi_oracle", 3),  # clustering (best resolution)
    ("TC", "tc", 3), ("TD", "td", 3), ("TQ", "tq", 3), ("IP", "ip", 3),  # interpretability
    ("ORA_N", "ora_n", 1), ("ORA_U", "ora_u", 3), ("ORA_Q", "ora_q", 1),  # enrichment: ORA
    ("GSEA_N", "gsea_n", 1), ("GSEA_U", "gsea_u", 3), ("GSEA_Q", "gsea_q", 1),  # and GSEA
    ("s/epoch", "seconds_per_epoch", 3),  # speed
)

TABLE_MD = "table.md"
SUMMARY_CSV = "summary.csv"
FIGURES = "figures"


def _order(values: Sequence[str], preferred: Sequence[str] | None) -> list[str]:
    seen = list(dict.fromkeys(map(str, values)))
    if not preferred:
        return seen
    first = [v for v in preferred if v in seen]
    return first + [v for v in seen if v not in first]


def summarize(
    df: pd.DataFrame,
    metrics: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Mean, sd and count over seeds of each metric, per dataset and method.

    Parameters
    ----------
    df
        The results table (``results.csv``).
    metrics
        Columns to summarise (default the table's, :data:`TABLE_METRICS`).

    Returns
    -------
    pandas.DataFrame
        Long format: ``dataset``, ``method``, ``metric``, ``mean``, ``sd``, ``n`` (seeds with a
        value), for rows with status ``ok``.
    """
    metrics = [m for _, m, _ in TABLE_METRICS] if metrics is None else list(metrics)
    cols = ["dataset", "method", "metric", "mean", "sd", "n"]
    ok = df[df["status"] == "ok"] if "status" in df else df.iloc[0:0]
    if ok.empty:
        return pd.DataFrame(columns=cols)
    present = [m for m in metrics if m in ok.columns]
    values = ok[["dataset", "method", *present]].copy()
    for m in present:
        values[m] = pd.to_numeric(values[m], errors="coerce")
    long = values.melt(id_vars=["dataset", "method"], var_name="metric", value_name="value")
    g = long.groupby(["dataset", "method", "metric"], sort=False)["value"]
    out = pd.DataFrame({"mean": g.mean(), "sd": g.std(), "n": g.count()}).reset_index()
    return out[cols]


def format_mean_sd(mean: float, sd: float, digits: int) -> str:
    """``"0.512 ± 0.013"``; the mean alone when sd is undefined; ``"–"`` when there is no value."""
    if mean is None or not math.isfinite(mean):
        return "–"
    if sd is None or not math.isfinite(sd):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {sd:.{digits}f}"


def _label(method: str) -> str:
    return METHOD_LABELS.get(method, method)


def markdown_table(
    df: pd.DataFrame,
    datasets: Sequence[str] | None = None,
    methods: Sequence[str] | None = None,
    title: str | None = None,
) -> str:
    """The markdown report: one table per dataset, rows methods, columns :data:`TABLE_METRICS`.

    Parameters
    ----------
    df
        The results table.
    datasets, methods
        Preferred order (others follow in order of appearance).
    title
        First line (a markdown heading).
    """
    summ = summarize(df)
    lines = [f"# {title or 'sctopic benchmark'}", ""]
    lines.append(
        "Mean ± sd over seeds (sample sd; the mean alone for one seed). ARI/NMI: Leiden on a "
        "k = 15 graph of the embedding, best resolution of a 0.1–2.0 sweep chosen with the labels "
        "(the paper's oracle protocol; label-free values at resolution 1.0 are `ari_fixed`, "
        "`nmi_fixed` in results.csv). TC, ORA and GSEA use the first gene-set library. "
        "TD = |unique top-10 genes| / (K·10). s/epoch = mean training seconds per epoch. "
        "– : not defined for the method (no topic-gene matrix) or no finished run."
    )
    lines.append("")
    if df.empty:
        lines.append("(no runs yet)")
        return "\n".join(lines) + "\n"
    look = {(r.dataset, r.method, r.metric): (r.mean, r.sd, r.n) for r in summ.itertuples(index=False)}
    head = ["method", "seeds", *[t for t, _, _ in TABLE_METRICS]]
    for d in _order(df["dataset"], datasets):
        sub = df[df["dataset"] == d]
        ok = sub[sub["status"] == "ok"]
        info = []
        for col, what in (("n_cells", "cells"), ("n_genes", "genes"), ("n_topics", "topics")):
            if col in ok and ok[col].notna().any():
                vals = sorted(set(int(v) for v in ok[col].dropna()))
                info.append(f"{'/'.join(map(str, vals))} {what}")
        lines.append(f"## {d}" + (f" ({', '.join(info)})" if info else ""))
        lines.append("")
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "|".join(["---"] * len(head)) + "|")
        for m in _order(sub["method"], methods):
            rows = sub[sub["method"] == m]
            n_ok = int((rows["status"] == "ok").sum())
            seeds = str(n_ok)
            other = [str(s) for s in rows["status"] if s != "ok"]
            if other:
                counts = pd.Series(other).value_counts()
                seeds += " (" + "; ".join(f"{c}× {st}" for st, c in counts.items()) + ")"
            cells = [_label(m), seeds]
            for _, col, digits in TABLE_METRICS:
                mean, sd, _n = look.get((d, m, col), (float("nan"), float("nan"), 0))
                cells.append(format_mean_sd(mean, sd, digits))
            lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
        lines.append("")
    return "\n".join(lines)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", str(name))


def _new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def plot_metrics(df: pd.DataFrame, dataset: str, path: str | Path, methods: Sequence[str] | None = None) -> Path:
    """Bar chart of each table metric per method on one dataset (error bars: sd over seeds)."""
    sub = df[(df["dataset"] == dataset) & (df["status"] == "ok")]
    summ = summarize(sub)
    order = _order(sub["method"], methods)
    n = len(TABLE_METRICS)
    ncols = 5
    nrows = math.ceil(n / ncols)
    fig = _new_figure(3.2 * ncols, 2.9 * nrows)
    colors = _method_colors(order)
    x = np.arange(len(order))
    for i, (title, col, _) in enumerate(TABLE_METRICS):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        s = summ[summ["metric"] == col].set_index("method")
        means = np.array([s["mean"].get(m, np.nan) for m in order], dtype=float)
        sds = np.array([s["sd"].get(m, np.nan) for m in order], dtype=float)
        ax.bar(x, np.nan_to_num(means), yerr=np.where(np.isfinite(sds), sds, 0.0),
               color=[colors[m] for m in order], capsize=2, edgecolor="none")
        for xi, mv in zip(x, means):
            if not np.isfinite(mv):
                ax.text(xi, 0, "n/a", ha="center", va="bottom", fontsize=6, rotation=90)
        ax.set_title(title, fontsize=9)
        ax.set_xticks(x)
        ax.set_xticklabels([_label(m) for m in order], rotation=60, ha="right", fontsize=6)
        ax.tick_params(axis="y", labelsize=7)
    fig.suptitle(f"{dataset}: mean ± sd over seeds", fontsize=10)
    fig.tight_layout()
    from sctopic.data.io import atomic_write

    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))


def _method_colors(methods: Sequence[str]) -> dict[str, tuple]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if len(methods) <= 10 else "tab20"]
    return {m: cmap(i % cmap.N) for i, m in enumerate(methods)}


def plot_clustering_vs_interpretability(
    df: pd.DataFrame,
    path: str | Path,
    methods: Sequence[str] | None = None,
    datasets: Sequence[str] | None = None,
) -> Path:
    """ARI against TQ and against TD: one point per method x dataset (sd as error bars).

    Methods without topics (PCA, SCVI) have no TQ/TD and are listed in the caption.
    """
    summ = summarize(df, ["ari_oracle", "tq", "td"])
    m_order = _order(df["method"], methods)
    d_order = _order(df["dataset"], datasets)
    colors = _method_colors(m_order)
    markers = "osD^vP*Xh<>p"
    fig = _new_figure(11, 4.6)
    look = {(r.dataset, r.method, r.metric): (r.mean, r.sd) for r in summ.itertuples(index=False)}
    missing = set()
    for j, (ycol, ylabel) in enumerate((("tq", "TQ (TC × TD)"), ("td", "TD"))):
        ax = fig.add_subplot(1, 2, j + 1)
        for di, d in enumerate(d_order):
            for m in m_order:
                xa, xs = look.get((d, m, "ari_oracle"), (np.nan, np.nan))
                ya, ys = look.get((d, m, ycol), (np.nan, np.nan))
                if not (np.isfinite(xa) and np.isfinite(ya)):
                    missing.add(_label(m))
                    continue
                ax.errorbar(xa, ya, xerr=xs if np.isfinite(xs) else None, yerr=ys if np.isfinite(ys) else None,
                            fmt=markers[di % len(markers)], color=colors[m], ms=7, capsize=2,
                            label=f"{_label(m)} · {d}")
        ax.set_xlabel("ARI (oracle resolution)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if j == 1:
            handles, labels = ax.get_legend_handles_labels()
            if handles:
                ax.legend(handles, labels, fontsize=6, loc="center left", bbox_to_anchor=(1.02, 0.5))
    caption = "Clustering vs interpretability (mean ± sd over seeds)"
    if missing:
        caption += f"; not shown (no topics or no finished run): {', '.join(sorted(missing))}"
    fig.suptitle(caption, fontsize=10)
    fig.tight_layout()
    from sctopic.data.io import atomic_write

    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", bbox_inches="tight"))


def write_report(
    df: pd.DataFrame,
    out: str | Path,
    datasets: Sequence[str] | None = None,
    methods: Sequence[str] | None = None,
    title: str | None = None,
) -> dict[str, Path]:
    """Write ``table.md``, ``summary.csv`` and the figures for a results table.

    Parameters
    ----------
    df
        The results table (``results.csv``).
    out
        Output folder; figures go to ``out/figures``.
    datasets, methods
        Preferred order of datasets and methods.
    title
        Heading of ``table.md``.

    Returns
    -------
    dict
        Name -> path of every file written.
    """
    from sctopic.data.io import write_text_atomic

    out = Path(out)
    written: dict[str, Path] = {}
    written["table"] = write_text_atomic(markdown_table(df, datasets, methods, title), out / TABLE_MD)
    written["summary"] = write_text_atomic(summarize(df).to_csv(index=False), out / SUMMARY_CSV)
    if df.empty or not (df["status"] == "ok").any():
        return written
    for d in _order(df["dataset"], datasets):
        if (df.loc[df["dataset"] == d, "status"] == "ok").any():
            written[f"metrics_{d}"] = plot_metrics(df, d, out / FIGURES / f"metrics_{_safe(d)}.png", methods)
    written["scatter"] = plot_clustering_vs_interpretability(
        df, out / FIGURES / "clustering_vs_interpretability.png", methods, datasets)
    return written
