"""One self-contained HTML page per fitted model: metrics, cell and topic maps, one card per topic.

Every figure is a PNG embedded as a base64 ``data:`` URI; the page has inline CSS only, no
script and no external resource, so it can be mailed or opened offline. All text taken from
the data (gene, label, set and topic names, metric keys) is escaped with :func:`html.escape`.
"""
from __future__ import annotations

import base64
import html
import io
import json
import logging
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from sctopic.errors import InputError

log = logging.getLogger(__name__)

#: Keys of an evaluation JSON shown in the summary (in this order), when present.
METRIC_KEYS = (
    "ari_oracle", "nmi_oracle", "resolution_oracle", "ari_fixed", "nmi_fixed", "asw", "kbet",
    "batch_asw", "tc", "td", "td_exclusive", "tq", "ip", "ora_n", "ora_u", "ora_q", "gsea_n",
    "gsea_u", "gsea_q",
)

#: What each metric means, for a reader who has not read the paper: name, one-line definition,
#: and which direction is better with the range.
METRIC_HELP: dict[str, tuple[str, str, str]] = {
    "ari_oracle": ("ARI (best resolution)", "agreement of Leiden clusters of the cells with the labels, at the "
                   "resolution that maximises it (chosen with the labels: optimistic)", "higher is better; 0 = chance, 1 = identical"),
    "nmi_oracle": ("NMI (best resolution)", "normalised mutual information of the clusters and the labels, same "
                   "resolution as ARI", "higher is better; 0 to 1"),
    "resolution_oracle": ("best resolution", "the Leiden resolution where ARI peaked", "neither; for information"),
    "ari_fixed": ("ARI (fixed resolution)", "ARI at a resolution fixed in advance (no labels used to choose it)",
                  "higher is better; 0 = chance, 1 = identical"),
    "nmi_fixed": ("NMI (fixed resolution)", "NMI at the fixed resolution", "higher is better; 0 to 1"),
    "asw": ("ASW (cell types)", "average silhouette width of the labels in the embedding, rescaled", "higher is better "
            "(types better separated); 0 to 1"),
    "kbet": ("kBET acceptance", "share of cells whose neighbourhood has the data set's batch mix",
             "higher is better (batches mixed); 0 to 1"),
    "batch_asw": ("batch ASW", "1 - |silhouette of batches| within each cell type", "higher is better (batches "
                  "mixed); 0 to 1"),
    "tc": ("TC (topic coherence)", "NPMI of pairs of each topic's top genes, gene sets as documents: do the top "
           "genes co-occur in known pathways?", "higher is better; -1 to 1, around 0.05-0.15 is typical"),
    "td": ("TD (topic diversity)", "distinct genes among all topics' top genes / all top genes: 1 = no two topics "
           "share a top gene", "higher is better; 0 to 1; low = topics repeat the same genes"),
    "td_exclusive": ("TD (exclusive)", "share of top genes that occur in exactly one topic", "higher is better; 0 to 1"),
    "tq": ("TQ (topic quality)", "TC x TD: coherent and diverse at once", "higher is better"),
    "ip": ("IP (interpretability purity)", "purity of the labels when each cell is assigned its largest topic",
           "higher is better; 0 to 1"),
    "ora_n": ("ORA_N", "number of distinct gene sets enriched (over-representation of top genes, FDR below the "
              "threshold) in any topic", "higher is better; 0 to the library size"),
    "ora_u": ("ORA_U", "distinct enriched sets / all enriched (topic, set) pairs: are topics enriched for "
              "different pathways?", "higher is better; 0 to 1"),
    "ora_q": ("ORA_Q", "ORA_N x ORA_U", "higher is better"),
    "gsea_n": ("GSEA_N", "number of distinct gene sets enriched by GSEA on each topic's full gene ranking",
               "higher is better"),
    "gsea_u": ("GSEA_U", "distinct GSEA-enriched sets / all enriched (topic, set) pairs", "higher is better; 0 to 1"),
    "gsea_q": ("GSEA_Q", "GSEA_N x GSEA_U", "higher is better"),
}

HOW_TO_READ = """\
<p>A topic model describes each cell as a mixture of <b>topics</b> (its proportions, theta) and each
topic as a weighting of genes (its top genes are the gene program it stands for). Read the report
from the top: <b>Summary</b> says what was fitted and how well (every metric is defined beside
its value); <b>Cells</b> shows whether cell types separate in the topic space; <b>Topics</b>
shows which topics each cell type uses and where topics sit among their genes; <b>Enrichment</b>
marks topics whose top genes are over-represented in known pathways (each point is one topic x
gene-set test; named points are each topic's best term). Each <b>topic card</b> gives a topic's
top genes, the pathways enriched in them (tested on the same top genes, among those found in the
gene-set library: the card says when that list differs), how many cells use the topic and
which cell types use it most. A good topic is used by a coherent group of cells and its top
genes are enriched for a related set of pathways; topics that share most top genes with other
topics, or that no cell uses, are noise. Tables fold away: click a grey line to open one.</p>
"""

CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;margin:0;background:#f6f7f9;color:#222}
header{background:#24344d;color:#fff;padding:18px 28px}header h1{margin:0;font-size:22px}
header p{margin:4px 0 0;font-size:13px;color:#cfd8e6}
main{padding:16px 28px;max-width:1400px}
section{background:#fff;border:1px solid #dde2ea;border-radius:6px;padding:12px 18px;margin:14px 0}
h2{font-size:17px;margin:4px 0 10px}h3{font-size:15px;margin:2px 0 6px}
table{border-collapse:collapse;font-size:12px}td,th{border-bottom:1px solid #e6e9ef;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f0f2f6}.figs{display:flex;flex-wrap:wrap;gap:12px}.figs figure{margin:0}
figcaption{font-size:12px;color:#555}img{max-width:100%;height:auto}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(min(420px,100%),1fr));gap:12px}
.topic-card{background:#fff;border:1px solid #dde2ea;border-radius:6px;padding:10px 14px}
.genes{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px;line-height:1.5}
.muted{color:#777;font-size:12px}.kv td:first-child{color:#555}
nav a{margin-right:6px;font-size:12px}
.toc{display:flex;flex-wrap:wrap;gap:4px 14px;font-size:13px}
.topic-card{min-width:0;overflow-wrap:anywhere}
.topic-card table,.wide{table-layout:fixed;width:100%}
td,th{overflow-wrap:anywhere;word-break:break-word}
details{margin:6px 0}summary{cursor:pointer;color:#335;font-size:12px}
.help{color:#666;font-size:11px}.term-id{color:#888;font-size:11px}
.notlib{color:#999;text-decoration:line-through}
.topic-nav{display:flex;flex-wrap:wrap;gap:2px 0;max-height:9em;overflow-y:auto}
"""


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, (float, np.floating)):
        return "-" if not np.isfinite(v) else f"{v:.4g}"
    if isinstance(v, (dict, list)):
        return json.dumps(v, default=str)[:300]
    return str(v)


def _png(fig, dpi: int = 110) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _img(uri: str, alt: str, caption: str | None = None, width: int | None = None) -> str:
    w = f' width="{int(width)}"' if width else ""
    cap = f"<figcaption>{_e(caption)}</figcaption>" if caption else ""
    return f'<figure><img src="{uri}" alt="{_e(alt)}"{w}>{cap}</figure>'


class Raw(str):
    """Table cell content that is already HTML (built from escaped parts)."""


def _table(rows: Sequence[Sequence[Any]], header: Sequence[str] | None = None, cls: str = "",
           widths: Sequence[str] | None = None) -> str:
    out = [f'<table class="{_e(cls)}">'] if cls else ["<table>"]
    if widths:  # fixed layout: long gene lists wrap inside the card instead of widening it
        out.append("<colgroup>" + "".join(f'<col style="width:{_e(w)}">' for w in widths) + "</colgroup>")
    if header:
        out.append("<tr>" + "".join(f"<th>{_e(h)}</th>" for h in header) + "</tr>")
    for r in rows:
        out.append("<tr>" + "".join(f"<td>{v if isinstance(v, Raw) else _e(_fmt(v))}</td>" for v in r) + "</tr>")
    out.append("</table>")
    return "".join(out)


def _details(summary: str, body: str, open_: bool = False) -> str:
    """A collapsible block (``<details>``: no script needed); ``summary`` is escaped."""
    return f"<details{' open' if open_ else ''}><summary>{_e(summary)}</summary>{body}</details>"


def metric_rows(evaluation: dict) -> list[tuple]:
    """Rows ``(metric, value, meaning, better / range)`` of an evaluation's known metrics."""
    rows = []
    for key in METRIC_KEYS:
        if key in evaluation:
            name, what, better = METRIC_HELP.get(key, (key, "", ""))
            rows.append((Raw(f"{_e(name)} <span class='term-id'>{_e(key)}</span>"), evaluation[key],
                         Raw(f"<span class='help'>{_e(what)}</span>"), Raw(f"<span class='help'>{_e(better)}</span>")))
    return rows


def find_evaluation(directory: str | os.PathLike) -> tuple[dict | None, Path | None]:
    """The first JSON file in ``directory`` that looks like ``sctopic evaluate`` output.

    A file qualifies when it holds a JSON object with at least one of ``ari_oracle``, ``td``
    or ``tc``; ``evaluate.json`` and ``metrics.json`` are tried first, then the other JSON
    files in name order (``train.json`` is not an evaluation).

    Returns
    -------
    metrics, path
        The parsed object and its path, or ``(None, None)``.
    """
    d = Path(directory)
    if not d.is_dir():
        return None, None
    files = [d / "evaluate.json", d / "metrics.json"] + sorted(d.glob("*.json"))
    seen = set()
    for f in files:
        if f in seen or not f.is_file() or f.name == "train.json":
            continue
        seen.add(f)
        try:
            obj = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(obj, dict) and any(k in obj for k in ("ari_oracle", "td", "tc")):
            return obj, f
    return None, None


def _small_topic_figure(coords, values, weights, gene_names, title):
    from sctopic.plotting.figure import new_figure

    fig = new_figure(6.0, 2.4)
    ax1, ax2 = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.1, 1]})
    order = np.argsort(values, kind="stable")
    ax1.scatter(coords[order, 0], coords[order, 1], c=values[order], s=float(np.clip(1500 / len(values), 0.3, 6)),
                cmap="viridis", linewidths=0, rasterized=True)
    ax1.set_xticks([])
    ax1.set_yticks([])
    ax1.set_title("cells: theta of " + title, fontsize=7)
    y = np.arange(len(weights))[::-1]
    ax2.barh(y, weights, color="tab:blue")
    ax2.set_yticks(y, list(gene_names), fontsize=6)
    ax2.tick_params(axis="x", labelsize=6)
    ax2.set_title("top genes (topic-gene weight)", fontsize=7)
    return fig


def build_report(
    fit_dir: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    labels: str | None = None,
    genesets: str | os.PathLike | None = "go_bp_human",
    top_n: int = 10,
    gsea: bool = False,
    permutations: int = 200,
    fdr: float = 0.05,
    n_top_cells: int = 50,
    max_umap_cells: int = 20000,
    seed: int = 0,
    title: str | None = None,
    layout: str = "umap",
    progress: bool = False,
) -> Path:
    """Write one self-contained HTML report of a fitted topic model.

    The page holds: a summary of the fit (``DIR/train.json``) and of an evaluation JSON in
    ``DIR`` when there is one (:func:`find_evaluation`); a UMAP (or PCA) of the cells' topic proportions
    coloured by label and by dominant topic; the joint gene-topic embedding map (when the model
    stored gene and topic embeddings); the topic-by-label heatmap; a Manhattan plot of the
    enrichment; and one card per topic with its top genes and weights, its enriched gene sets
    (ORA of the top genes against ``genesets``; GSEA with a running-sum plot when ``gsea``),
    how many cells use it, the labels of the cells that use it most, and a small figure.

    Parameters
    ----------
    fit_dir
        A ``sctopic fit`` output directory (with ``result.h5ad``), or a result ``.h5ad``.
    out
        Output HTML file (default ``DIR/report.html``).
    labels
        ``obs`` column with cell labels (cell types); without it the label figures are left out.
    genesets
        Gene-set library for enrichment (bundled name or GMT path); ``None`` or ``"none"`` skips it.
    top_n
        Top genes per topic (shown, and tested by ORA).
    gsea
        Also run preranked GSEA (slower) and draw each topic's best set's running sum.
    permutations
        GSEA permutations.
    fdr
        Sets with FDR below this are listed as enriched.
    n_top_cells
        The cells with the highest proportion of a topic whose labels are summarised.
    max_umap_cells
        Cells drawn in the UMAP (a random subset above this).
    seed
        Seed of the UMAP and the subsampling.
    title
        Page title (default from the directory name).
    layout
        Cell map: ``"umap"`` (default; umap-learn, whose first call in a process compiles for
        tens of seconds) or ``"pca"`` (first two principal components of theta, instant).
    progress
        Say on stderr what is being done (enrichment, maps, topic cards with a progress bar).

    Returns
    -------
    pathlib.Path
        The HTML file written.
    """
    from sctopic.analysis.inputs import obs_labels, topic_activity
    from sctopic.data.io import write_text_atomic
    from sctopic.metrics import topic_diversity
    from sctopic.data.outputs import model_outputs
    from sctopic.plotting.embedding import cell_umap, dominant_topic, gene_topic_map, topic_label_heatmap, umap_coords

    import sys

    from tqdm.auto import tqdm

    def say(msg: str) -> None:
        if progress:
            print(f"report: {msg} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)

    t0 = time.perf_counter()
    src = Path(fit_dir)
    if not src.exists():
        raise InputError(f"no such file or directory: {src}")
    if layout not in ("umap", "pca"):
        raise InputError(f"layout must be 'umap' or 'pca', got {layout!r}.")
    if top_n < 1 or n_top_cells < 1:
        raise InputError("top_n and n_top_cells must be >= 1.")
    d = src if src.is_dir() else src.parent
    out = Path(out) if out is not None else d / "report.html"
    act = topic_activity(src)
    adata, theta, names = act.adata, act.values, act.topic_names
    outs = model_outputs(adata, act.model)
    if outs.topic_gene is None:
        raise InputError(f"uns[{act.model!r}]['topic_gene'] not found: this result holds no topic-gene matrix.")
    w = outs.topic_gene
    genes = outs.genes or [str(g) for g in adata.var_names]
    k = theta.shape[1]
    if w.shape[0] != k:
        raise InputError(f"the topic-gene matrix has {w.shape[0]} topics but theta has {k}.")
    lab = None
    if labels is not None:
        lab = obs_labels(adata, labels, "labels").to_numpy(dtype=object)
    notes: list[str] = []
    train = None
    if (d / "train.json").is_file():
        try:
            train = json.loads((d / "train.json").read_text())
        except ValueError:
            notes.append("train.json could not be parsed.")
    evaluation, eval_path = find_evaluation(d)

    # ---------------------------------------------------------------- enrichment
    ora_tab = gsea_tab = None
    lib = None
    ora_top = None  # per topic, the gene indices ORA tested (top_n among the genes in the library)
    if genesets is not None and str(genesets).lower() != "none":
        from sctopic.genesets import load, ora
        from sctopic.genesets.overrepresentation import top_genes as top_in

        try:
            say(f"ORA of {k} topics' top {top_n} genes against {genesets}")
            lib = load(genesets)
            ora_tab = ora(w, genes, lib, top_n=top_n)
            ora_top = top_in(w, np.flatnonzero(lib.match(genes).in_library), top_n)
        except InputError as exc:
            notes.append(f"enrichment skipped: {exc}")
        if gsea and ora_tab is not None:
            from sctopic.genesets import gsea as run_gsea

            say(f"GSEA of {k} topics ({permutations} permutations)")
            gsea_tab = run_gsea(w, genes, lib, permutations=permutations, seed=seed)
    lib_name = getattr(lib, "name", None) or str(genesets)

    # ---------------------------------------------------------------- figures
    rng = np.random.default_rng(seed)
    cells = np.arange(adata.n_obs)
    if adata.n_obs > max_umap_cells:
        cells = np.sort(rng.choice(adata.n_obs, max_umap_cells, replace=False))
        notes.append(f"UMAPs show {max_umap_cells} of {adata.n_obs} cells (random subset).")
    say(f"{layout.upper()} of {len(cells)} cells and overview figures")
    if layout == "umap":
        coords = umap_coords(theta[cells], seed=seed)
    else:
        c = theta[cells] - theta[cells].mean(0)
        coords = c @ np.linalg.svd(c, full_matrices=False)[2][:2].T
    dom = dominant_topic(theta, names)
    overview = []
    if lab is not None:
        overview.append(_img(_png(cell_umap(coords, lab[cells], title=f"cells coloured by {labels}", axis_label=layout.upper(),
                                             size=(5.2, 3.8))),
                             f"UMAP by {labels}", f"{layout.upper()} of the cells' topic proportions, coloured by {labels}"))
    overview.append(_img(_png(cell_umap(coords, dom[cells], title="cells coloured by dominant topic",
                                        continuous=False, axis_label=layout.upper(), size=(6.4, 3.8))),
                         "UMAP by dominant topic", "the same map coloured by each cell's largest topic (the 18 "
                         "topics dominating most cells; the rest in grey)"))
    gemb = adata.varm.get(f"{act.model}_gene_embedding") if hasattr(adata.varm, "get") else None
    temb = adata.uns.get(act.model, {}).get("topic_embedding") if hasattr(adata.uns.get(act.model, {}), "get") else None
    gene_map = None
    if gemb is not None and temb is not None:
        pos = pd.Index(adata.var_names.astype(str)).get_indexer(genes)
        if (pos >= 0).all():
            ge = np.asarray(gemb)[pos]
            try:
                gene_map = _img(_png(gene_topic_map(ge, np.asarray(temb), genes, w, topic_names=names,
                                                    top_n=min(top_n, 10), seed=seed, layout=layout,
                                                    topic_importance=theta.mean(0))),
                                "gene-topic embedding map",
                                "genes (dots, coloured by the topic where they rank highest) and topics (stars) "
                                "in the shared embedding space; the most used topics and their top genes are "
                                "named where the names fit")
            except InputError as exc:
                notes.append(f"gene-topic map skipped: {exc}")
    else:
        notes.append("gene-topic map skipped: the result stores no gene/topic embeddings.")
    heat = None
    if lab is not None:
        hfig = topic_label_heatmap(theta, lab, names, title=f"topic use by {labels}")
        hidden = getattr(hfig, "n_hidden_topics", 0)
        heat = _img(_png(hfig), "topic by label heatmap",
                    f"mean topic proportion per {labels}, each topic scaled to its maximum; topics grouped under "
                    f"the {labels} that uses them most"
                    + (f"; {hidden} less used topics hidden (each {labels}'s top 2 and the most used are shown)"
                       if hidden else ""))
    manhattan = None
    if ora_tab is not None and len(ora_tab):
        from sctopic.plotting.enrichment import enrichment_manhattan

        manhattan = _img(_png(enrichment_manhattan(ora_tab, alpha=fdr, topic_names=names,
                                                   title=f"ORA of each topic's top {top_n} genes "
                                                         f"(coloured: FDR < {fdr})")),
                         "enrichment Manhattan plot",
                         f"every topic x gene set test ({lib_name}); named: the best term of the most enriched "
                         "topics, where the names fit")

    # ---------------------------------------------------------------- cards
    from sctopic.plotting.labels import wrap_label

    say(f"{k} topic cards")
    order = np.argsort(-w, axis=1, kind="stable")[:, :top_n]
    in_lib = None if ora_top is None else set(int(i) for i in np.flatnonzero(lib.match(genes).in_library))
    cards = []
    for t in tqdm(range(k), desc="topic cards", unit="topic", disable=not progress, leave=False):
        tg = [genes[i] for i in order[t]]
        tw = w[t, order[t]]
        n_dom = int((dom == names[t]).sum())
        rows = [("cells where it is the largest topic", f"{n_dom} ({n_dom / adata.n_obs:.1%})"),
                ("mean proportion", f"{theta[:, t].mean():.3f}")]
        label_html = ""
        if lab is not None:
            top_cells = np.argsort(-theta[:, t], kind="stable")[:n_top_cells]
            vc = pd.Series(lab[top_cells]).fillna("NA").value_counts(normalize=True)
            label_html = ("<p class='muted'>labels of its top " + _e(len(top_cells)) + " cells: "
                          + ", ".join(f"{_e(n)} {v:.0%}" for n, v in vc.head(3).items()) + "</p>")
            rows.append((f"most common {labels} among its top cells", vc.index[0]))
        # The top genes, with those absent from the library struck through: ORA cannot test them.
        gene_html = ", ".join(f"<span class='notlib' title='not in {_e(lib_name)}: not tested by ORA'>{_e(genes[i])}</span>"
                              if in_lib is not None and int(i) not in in_lib else _e(genes[i]) for i in order[t])
        tested_html = ""
        if ora_top is not None and list(ora_top[t]) != list(order[t]):
            n_out = sum(int(i) not in in_lib for i in order[t])
            tested_html = (f"<p class='muted'>ORA tested the top {top_n} genes found in {_e(lib_name)} "
                           f"({n_out} of the genes above are not in it): "
                           + ", ".join(_e(genes[i]) for i in ora_top[t]) + "</p>")
        enr_html = ""
        if ora_tab is not None:
            sub = ora_tab[(ora_tab["topic"] == t) & (ora_tab["fdr"] < fdr)]
            if len(sub):
                best = sub.iloc[0]
                best_name = best["description"] if isinstance(best.get("description"), str) else best["set"]
                tab_rows = [(Raw(_e(r.description if isinstance(r.description, str) and r.description else r.set)
                                 + f" <span class='term-id'>{_e(r.set)}</span>"),
                             int(r.statistic), r.fdr, r.genes if "genes" in sub.columns else "")
                            for r in sub.head(10).itertuples()]
                enr_html = _details(
                    f"{len(sub)} enriched {lib_name} sets (ORA, FDR < {fdr}); best: {wrap_label(best_name, 60, 1)}",
                    _table(tab_rows, ["term", "overlap", "FDR", "genes"], widths=("48%", "12%", "14%", "26%"))
                    + (f"<p class='muted'>10 of {len(sub)} shown</p>" if len(sub) > 10 else ""),
                    open_=False)
            else:
                enr_html = f"<p class='muted'>no {_e(lib_name)} set enriched at FDR &lt; {_e(fdr)} (ORA)</p>"
        gsea_html = ""
        if gsea_tab is not None:
            gs = gsea_tab[(gsea_tab["topic"] == t)].sort_values("p", kind="stable")
            gs = gs[gs["statistic"] > 0].head(3)
            if len(gs):
                from sctopic.plotting.enrichment import gsea_running_sum

                best = gs.iloc[0]
                members = lib.members(str(best["set"])) if str(best["set"]) in lib else None
                body = _table([(Raw(_e(r.description if isinstance(getattr(r, "description", None), str)
                                       and r.description else r.set) + f" <span class='term-id'>{_e(r.set)}</span>"),
                                r.statistic, r.fdr) for r in gs.itertuples()], ["term", "NES", "FDR"],
                              widths=("64%", "18%", "18%"))
                if members is not None:
                    try:
                        body += _img(_png(gsea_running_sum(w[t], genes, members, set_name=str(best["set"]),
                                                           topic=names[t]), dpi=80),
                                     f"GSEA running sum {best['set']}")
                    except InputError:
                        pass
                gsea_html = _details("GSEA on the full gene ranking (positive NES)", body)
        fig = _small_topic_figure(coords, theta[cells, t], tw, tg, names[t])
        cards.append(
            f'<article class="topic-card" id="topic-{t}" data-topic="{_e(names[t])}">'
            f"<h3>{_e(names[t])}</h3>"
            f"<p class='genes'>{gene_html}</p>" + tested_html
            + _table(rows, cls="kv", widths=("62%", "38%")) + label_html + enr_html + gsea_html
            + _img(_png(fig, dpi=80), f"{names[t]} figure") + "</article>"
        )

    # ---------------------------------------------------------------- summary
    summary_rows: list[tuple] = [("model", act.model), ("cells", adata.n_obs), ("genes in the model", len(genes)),
                                 ("topics", k),
                                 (Raw(f"topic diversity (top {top_n}) <span class='help'>distinct genes among all "
                                      "topics' top genes / all top genes; higher is better, 0 to 1</span>"),
                                  topic_diversity(w, top_n))]
    settings_rows: list[tuple] = []
    if train:
        st = train.get("settings", {}) or {}
        for key in ("max_epochs", "batch_size", "lr", "seed", "n_top_genes", "external_key", "batch_key"):
            if key in st:
                settings_rows.append((key, st[key]))
        for key in ("seconds_training", "seconds_per_epoch", "data"):
            if train.get(key) is not None:
                settings_rows.append((key, train[key]))
        for key, v in (train.get("final_losses") or {}).items():
            settings_rows.append((f"final {key}", v))
    else:
        notes.append("no train.json found next to the result.")
    eval_html = ""
    if evaluation:
        eval_html = (f"<h3>evaluation ({_e(eval_path.name)})</h3>"
                     + _table(metric_rows(evaluation), ["metric", "value", "what it measures", "better / range"],
                              cls="kv wide", widths=("22%", "10%", "43%", "25%")))
    nav = "".join(f'<a href="#topic-{t}">{_e(names[t])}</a>' for t in range(k))
    settings_html = _details("training settings and final losses (train.json)",
                             _table(settings_rows, ["item", "value"], cls="kv wide", widths=("40%", "60%"))) \
        if settings_rows else ""
    title = title or f"sctopic report: {d.name if src.is_dir() else src.name}"
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    fig_blocks = "".join(overview)
    toc = [("how-to-read", "how to read this report"), ("summary", "summary and metrics"), ("cells", "cells")]
    if gene_map or heat:
        toc.append(("topics-overview", "topics"))
    if manhattan:
        toc.append(("enrichment", "enrichment"))
    toc.append(("topic-cards", f"topic cards ({k})"))
    body = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title><style>{CSS}</style></head><body>",
        f"<header><h1>{_e(title)}</h1><p>{_e(act.model)} with {k} topics on {adata.n_obs} cells; "
        f"source {_e(src)}; written {_e(stamp)}</p></header><main>",
        "<section id='contents'><h2>Contents</h2><nav class='toc'>"
        + "".join(f'<a href="#{a}">{_e(t_)}</a>' for a, t_ in toc) + "</nav></section>",
        f"<section id='how-to-read'><h2>How to read this report</h2>{HOW_TO_READ}</section>",
        "<section id='summary'><h2>Summary</h2>" + _table(summary_rows, ["item", "value"], cls="kv wide",
                                                           widths=("40%", "60%"))
        + settings_html + eval_html
        + ("".join(f"<p class='muted'>{_e(n)}</p>" for n in notes)) + "</section>",
        f"<section id='cells'><h2>Cells</h2><div class='figs'>{fig_blocks}</div></section>",
    ]
    if gene_map or heat:
        body.append("<section id='topics-overview'><h2>Topics</h2><div class='figs'>"
                    + (gene_map or "") + (heat or "") + "</div></section>")
    if manhattan:
        body.append(f"<section id='enrichment'><h2>Enrichment</h2><div class='figs'>{manhattan}</div></section>")
    body += [
        f"<section id='topic-cards'><h2>Topic cards</h2><nav class='topic-nav'>{nav}</nav>"
        f"<div class='cards'>{''.join(cards)}</div></section>",
        f"<p class='muted'>made by sctopic report in {time.perf_counter() - t0:.1f} s</p>",
        "</main></body></html>",
    ]
    say("writing the page")
    return write_text_atomic("\n".join(body) + "\n", out)
