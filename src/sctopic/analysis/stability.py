"""Choosing the number of topics K: stability of topics across seeds, with TD, TC and ARI.

For each K in a list and each seed a model is trained. Topics of two seeds are matched
one-to-one by Hungarian matching (:func:`scipy.optimize.linear_sum_assignment`) on the cosine
similarity of their topic-gene rows; the mean similarity of the matched pairs says how
reproducible the K topics are. Topic diversity (TD), coherence (TC, with a gene-set library)
and clustering agreement (ARI, with labels) come from :mod:`sctopic.metrics`.
"""
from __future__ import annotations

import itertools
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from sctopic.errors import InputError

MODELS = ("scetm", "sce2tm")
RULES = ("tolerance", "product")

SUMMARY_COLUMNS = [
    "k", "n_seeds", "n_pairs", "stability_mean", "stability_sd", "stable_fraction_mean",
    "td_mean", "td_sd", "tc_mean", "tc_sd", "ari_mean", "ari_sd", "seconds_mean",
]


def cosine_similarity_matrix(a: np.ndarray, b: np.ndarray, center: bool = False) -> np.ndarray:
    """Cosine similarity of every row of ``a`` with every row of ``b``.

    Parameters
    ----------
    a, b
        ``(Ka, V)`` and ``(Kb, V)`` topic-gene matrices over the same genes.
    center
        Subtract each row's mean first (then the similarity is Pearson's correlation). Use it
        for logit-scale matrices such as scETM's ``alpha @ rho``, whose zero has no meaning.

    Returns
    -------
    numpy.ndarray
        ``(Ka, Kb)`` similarities in [-1, 1]; a row with zero norm has similarity 0.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise InputError(f"expected two topic x gene matrices over the same genes, got shapes {a.shape} and {b.shape}.")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise InputError("the topic-gene matrices contain NaN or infinite values.")
    if center:
        a = a - a.mean(1, keepdims=True)
        b = b - b.mean(1, keepdims=True)
    na = np.linalg.norm(a, axis=1)
    nb = np.linalg.norm(b, axis=1)
    na[na == 0] = np.inf
    nb[nb == 0] = np.inf
    return np.clip((a / na[:, None]) @ (b / nb[:, None]).T, -1.0, 1.0)


def match_topics(a: np.ndarray, b: np.ndarray, center: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Match the topics of ``a`` to those of ``b`` one-to-one, maximising total cosine similarity.

    Parameters
    ----------
    a, b
        ``(K, V)`` topic-gene matrices of two fits with the same K (rows: topics).
    center
        See :func:`cosine_similarity_matrix`.

    Returns
    -------
    match, similarity
        ``match[i]`` is the topic of ``b`` matched to topic ``i`` of ``a`` (a permutation of
        ``0..K-1``), and ``similarity[i]`` the cosine similarity of that pair.
    """
    from scipy.optimize import linear_sum_assignment

    sim = cosine_similarity_matrix(a, b, center=center)
    if sim.shape[0] != sim.shape[1]:
        raise InputError(f"both fits need the same number of topics, got {sim.shape[0]} and {sim.shape[1]}.")
    rows, cols = linear_sum_assignment(sim, maximize=True)
    match = np.empty(sim.shape[0], dtype=np.int64)
    match[rows] = cols
    return match, sim[np.arange(sim.shape[0]), match]


@dataclass
class StabilityResult:
    """Output of :func:`topic_stability`.

    Attributes
    ----------
    table
        One row per K (columns :data:`SUMMARY_COLUMNS`): stability mean/sd over seed pairs,
        the mean share of topics matched with similarity >= ``min_similarity``, TD, TC, ARI
        (mean and sd over seeds; NaN when not computed) and training seconds.
    runs
        One row per (K, seed): ``k, seed, td, tc, ari, seconds``.
    pairs
        One row per (K, seed pair): ``k, seed_a, seed_b, mean_similarity,
        median_similarity, min_similarity, stable_fraction``.
    suggested_k, reason, rule, tolerance
        The suggestion and why (see :func:`suggest_k`).
    settings
        What was run (model, seeds, model and training arguments).
    """

    table: pd.DataFrame
    runs: pd.DataFrame
    pairs: pd.DataFrame
    suggested_k: int
    reason: str
    rule: str
    tolerance: float
    settings: dict = field(default_factory=dict)
    #: False when no K reproduces at least half of its topics across seeds (see
    #: :func:`reproducibility_warning`): the suggestion then rests on noise.
    reproducible: bool = True

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (NaN become ``None`` when written with ``write_json``)."""
        return {
            "suggested_k": int(self.suggested_k),
            "reason": self.reason,
            "reproducible": bool(self.reproducible),
            "rule": self.rule,
            "tolerance": float(self.tolerance),
            "settings": self.settings,
            "table": self.table.to_dict(orient="records"),
            "runs": self.runs.to_dict(orient="records"),
            "pairs": self.pairs.to_dict(orient="records"),
        }


def _check_ks_seeds(ks: Sequence[int], seeds: Sequence[int]) -> tuple[list[int], list[int]]:
    try:
        ks = [int(k) for k in ks]
        seeds = [int(s) for s in seeds]
    except (TypeError, ValueError):
        raise InputError("ks and seeds must be lists of whole numbers.") from None
    bad = [k for k in ks if k < 2]
    if bad:
        raise InputError(f"every K must be at least 2 topics, got {bad}.")
    ks = sorted(set(ks))
    if len(ks) < 2:
        raise InputError(f"give at least two values of K to choose from, got {ks}.")
    seeds = list(dict.fromkeys(seeds))
    if len(seeds) < 2:
        raise InputError(f"stability needs at least two different seeds (pairs of fits), got {seeds}.")
    return ks, seeds


def suggest_k(table: pd.DataFrame, rule: str = "tolerance", tolerance: float = 0.05) -> tuple[int, str]:
    """Suggest a K from a per-K summary table.

    Rules
    -----
    ``"tolerance"`` (default)
        The largest K whose mean stability is at least ``best - tolerance``, where ``best``
        is the highest mean stability over the Ks: as many topics as possible while they stay
        about as reproducible as the most reproducible setting.
    ``"product"``
        The K with the largest ``stability_mean * td_mean`` (reproducible and diverse topics).

    Parameters
    ----------
    table
        :attr:`StabilityResult.table`.
    rule
        ``"tolerance"`` or ``"product"``.
    tolerance
        Allowed drop of mean stability below the best (absolute, on the cosine scale).

    Returns
    -------
    k, reason
        The suggested K and a sentence with the numbers behind it.
    """
    if rule not in RULES:
        raise InputError(f"rule must be one of {RULES}, got {rule!r}.")
    if not tolerance >= 0:
        raise InputError(f"tolerance must be >= 0, got {tolerance}.")
    t = table.sort_values("k")
    stab = t["stability_mean"].to_numpy(dtype=float)
    ks = t["k"].to_numpy(dtype=int)
    if not np.isfinite(stab).any():
        raise InputError("no finite stability values to choose K from.")
    if rule == "tolerance":
        best = float(np.nanmax(stab))
        best_k = int(ks[np.nanargmax(stab)])
        ok = np.flatnonzero(stab >= best - tolerance - 1e-12)
        k = int(ks[ok.max()])
        s = float(stab[ok.max()])
        reason = (
            f"K={k} is the largest K whose mean matched cosine similarity across seeds ({s:.3f}) is "
            f"within {tolerance:g} of the best ({best:.3f} at K={best_k})."
        )
        return k, reason
    td = t["td_mean"].to_numpy(dtype=float)
    score = stab * td
    if not np.isfinite(score).any():
        raise InputError("no finite stability x TD values to choose K from.")
    i = int(np.nanargmax(score))
    reason = (
        f"K={int(ks[i])} has the largest product of mean stability and topic diversity "
        f"({stab[i]:.3f} x {td[i]:.3f} = {score[i]:.3f})."
    )
    return int(ks[i]), reason


#: Share of topics that must match across seeds (similarity >= ``min_similarity``) at some K for
#: the suggestion to count as resting on reproducible topics.
REPRODUCIBLE_FRACTION = 0.5


def reproducibility_warning(table: pd.DataFrame, min_similarity: float) -> str | None:
    """A warning when no K reproduces at least half of its topics across seeds, else None."""
    frac = table["stable_fraction_mean"].to_numpy(dtype=float)
    if np.isfinite(frac).any() and np.nanmax(frac) >= REPRODUCIBLE_FRACTION:
        return None
    i = int(np.nanargmax(frac)) if np.isfinite(frac).any() else 0
    return (
        f"no K gives reproducible topics: at best {np.nan_to_num(frac[i]):.0%} of the topics (K="
        f"{int(table['k'].iloc[i])}) match across seeds with cosine >= {min_similarity:g}, so the "
        "suggested K rests on noise. Train longer (more epochs), try fewer topics or more cells, "
        "and check that the data are raw counts."
    )


def _mean_sd(values) -> tuple[float, float]:
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def stability_from_fits(
    fits: Mapping[tuple[int, int], np.ndarray],
    metrics: Mapping[tuple[int, int], Mapping[str, float]] | None = None,
    *,
    center: bool = False,
    min_similarity: float = 0.5,
    rule: str = "tolerance",
    tolerance: float = 0.05,
    settings: dict | None = None,
) -> StabilityResult:
    """Stability summary from topic-gene matrices that are already fitted.

    Parameters
    ----------
    fits
        ``{(k, seed): (k, V) topic-gene matrix}``, all over the same genes.
    metrics
        Optional ``{(k, seed): {"td": .., "tc": .., "ari": .., "seconds": ..}}``.
    center
        Centre topic rows before the cosine (see :func:`cosine_similarity_matrix`).
    min_similarity
        A matched topic counts as stable when its similarity is at least this.
    rule, tolerance
        See :func:`suggest_k`.
    settings
        Stored in the result as given.

    Returns
    -------
    StabilityResult
    """
    if not fits:
        raise InputError("no fits given.")
    ks, _ = _check_ks_seeds(sorted({k for k, _ in fits}), [0, 1])
    metrics = metrics or {}
    run_rows, pair_rows, rows = [], [], []
    for k in ks:
        seeds = sorted(s for kk, s in fits if kk == k)
        if len(seeds) < 2:
            raise InputError(f"K={k} has fits for {len(seeds)} seed(s); stability needs at least two.")
        for s in seeds:
            m = fits[(k, s)]
            if np.shape(m)[0] != k:
                raise InputError(f"the fit for K={k}, seed {s} has {np.shape(m)[0]} topics.")
            got = metrics.get((k, s), {})
            run_rows.append({"k": k, "seed": s, **{c: float(got.get(c, np.nan)) for c in ("td", "tc", "ari", "seconds")}})
        for sa, sb in itertools.combinations(seeds, 2):
            _, sim = match_topics(fits[(k, sa)], fits[(k, sb)], center=center)
            pair_rows.append({
                "k": k, "seed_a": sa, "seed_b": sb, "mean_similarity": float(sim.mean()),
                "median_similarity": float(np.median(sim)), "min_similarity": float(sim.min()),
                "stable_fraction": float((sim >= min_similarity).mean()),
            })
    runs = pd.DataFrame(run_rows, columns=["k", "seed", "td", "tc", "ari", "seconds"])
    pairs = pd.DataFrame(pair_rows, columns=["k", "seed_a", "seed_b", "mean_similarity", "median_similarity",
                                             "min_similarity", "stable_fraction"])
    for k in ks:
        r, p = runs[runs["k"] == k], pairs[pairs["k"] == k]
        row = {"k": k, "n_seeds": len(r), "n_pairs": len(p)}
        row["stability_mean"], row["stability_sd"] = _mean_sd(p["mean_similarity"])
        row["stable_fraction_mean"] = _mean_sd(p["stable_fraction"])[0]
        for c in ("td", "tc", "ari"):
            row[f"{c}_mean"], row[f"{c}_sd"] = _mean_sd(r[c])
        row["seconds_mean"] = _mean_sd(r["seconds"])[0]
        rows.append(row)
    table = pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
    k, reason = suggest_k(table, rule=rule, tolerance=tolerance)
    warning = reproducibility_warning(table, min_similarity)
    if warning:
        warnings.warn(warning[0].upper() + warning[1:], UserWarning, stacklevel=2)
        reason = f"{reason} Warning: {warning}"
    settings = dict(settings or {})
    settings.setdefault("center", bool(center))
    settings.setdefault("min_similarity", float(min_similarity))
    return StabilityResult(table, runs, pairs, k, reason, rule, float(tolerance), settings,
                           reproducible=warning is None)


def topic_stability(
    adata,
    ks: Sequence[int],
    seeds: Sequence[int] = (0, 1, 2),
    model: str = "scetm",
    model_kwargs: dict | None = None,
    train_kwargs: dict | None = None,
    labels: str | None = None,
    genesets=None,
    *,
    top_n: int = 10,
    rule: str = "tolerance",
    tolerance: float = 0.05,
    min_similarity: float = 0.5,
    center: bool | None = None,
    cluster_kwargs: dict | None = None,
    progress: bool = False,
) -> StabilityResult:
    """Train a model for every K and seed and measure how reproducible its topics are.

    For each K, every pair of seeds is compared: topics are matched one-to-one by Hungarian
    matching on the cosine similarity of their topic-gene rows (:func:`match_topics`), and the
    pair's score is the mean similarity of the matched topics. The stability of K is the mean
    (and sd) of that score over the seed pairs. TD (top ``top_n`` genes), TC (when
    ``genesets`` is given) and ARI (best over a Leiden resolution sweep of theta, when
    ``labels`` is given) are averaged over seeds.

    The suggested K follows ``rule`` (see :func:`suggest_k`): by default the largest K whose
    mean stability is within ``tolerance`` (0.05) of the best mean stability over the Ks.

    Parameters
    ----------
    adata
        AnnData with raw counts (or an ``.h5ad`` path).
    ks
        At least two numbers of topics, each >= 2.
    seeds
        At least two different seeds; each seeds the model's initialisation and training.
    model
        ``"scetm"`` (default) or ``"sce2tm"``.
    model_kwargs
        Extra arguments of the model class (e.g. ``{"n_top_genes": 2000}``); ``n_topics`` and
        ``seed`` are set here.
    train_kwargs
        Arguments of ``model.train`` (e.g. ``{"max_epochs": 200}``); ``seed`` is set here and
        ``progress`` defaults to False.
    labels
        ``adata.obs`` column with cell types for the ARI (:func:`sctopic.metrics.cluster_sweep`,
        ``ari_oracle``).
    genesets
        A gene-set library (bundled name, GMT path or :class:`~sctopic.genesets.GeneSetLibrary`)
        for TC (:func:`sctopic.metrics.topic_coherence`).
    top_n
        Top genes per topic for TD and TC.
    rule, tolerance
        How the K is suggested.
    min_similarity
        Threshold for ``stable_fraction`` (share of matched topics at least this similar).
    center
        Centre topic rows before the cosine; default True for ``scetm`` (its topic-gene matrix
        is on the logit scale) and False for ``sce2tm`` (non-negative beta).
    cluster_kwargs
        Extra arguments of :func:`sctopic.metrics.cluster_sweep`.
    progress
        Print one line per trained model.

    Returns
    -------
    StabilityResult
        ``.table`` (one row per K), ``.runs``, ``.pairs``, ``.suggested_k``, ``.reason``.
    """
    ks, seeds = _check_ks_seeds(ks, seeds)
    if model not in MODELS:
        raise InputError(f"model must be one of {MODELS}, got {model!r}.")
    if rule not in RULES:
        raise InputError(f"rule must be one of {RULES}, got {rule!r}.")
    from sctopic.data.io import read_adata

    adata = read_adata(adata)
    # --top-n larger than the genes a model can keep fails now, not after training every K
    n_keep = (model_kwargs or {}).get("n_top_genes")
    n_max = adata.n_vars if not n_keep else min(int(n_keep), adata.n_vars)
    if int(top_n) != top_n or not 1 <= top_n <= n_max:
        raise InputError(f"top_n (--top-n) is {top_n}, but the models will have at most {n_max} genes; "
                         f"pass --top-n between 1 and {n_max}.")
    label_values = None
    if labels is not None:
        from sctopic.analysis.inputs import obs_labels

        label_values = obs_labels(adata, labels, "labels").to_numpy(dtype=object)
    library = None
    if genesets is not None:
        from sctopic.genesets import load

        library = load(genesets)
    if center is None:
        center = model == "scetm"
    import sctopic
    from sctopic.metrics import cluster_sweep, topic_coherence, topic_diversity

    cls = sctopic.SCETM if model == "scetm" else sctopic.SCE2TM
    model_kwargs = dict(model_kwargs or {})
    train_kwargs = {"progress": False, **(train_kwargs or {})}
    for key in ("n_topics", "seed"):
        model_kwargs.pop(key, None)
    train_kwargs.pop("seed", None)
    fits, metrics, genes_ref = {}, {}, None
    for k in ks:
        for s in seeds:
            t0 = time.perf_counter()
            m = cls(adata, n_topics=k, seed=s, **model_kwargs)
            m.train(seed=s, write_results=False, **train_kwargs)
            seconds = time.perf_counter() - t0
            tg = m.get_topic_gene()
            if genes_ref is None:
                genes_ref = list(tg.columns)
            elif list(tg.columns) != genes_ref:
                tg = tg.reindex(columns=genes_ref, fill_value=0.0)
            beta = tg.to_numpy(dtype=np.float64)
            fits[(k, s)] = beta
            row = {"seconds": seconds, "td": topic_diversity(beta, top_n)}
            if library is not None:
                row["tc"] = topic_coherence(beta, genes_ref, library, top_n)
            if label_values is not None:
                theta = m.get_cell_topics(None)
                row["ari"] = cluster_sweep(theta, label_values, seed=s, **(cluster_kwargs or {}))["ari_oracle"]
            metrics[(k, s)] = row
            if progress:
                extra = "".join(f" {c}={row[c]:.3f}" for c in ("td", "tc", "ari") if c in row)
                print(f"K={k} seed={s}: {seconds:.1f} s{extra}", flush=True)
    settings = {
        "model": model, "ks": ks, "seeds": seeds, "model_kwargs": model_kwargs,
        "train_kwargs": train_kwargs, "labels": labels,
        "genesets": None if genesets is None else str(getattr(library, "name", genesets)),
        "top_n": int(top_n), "n_cells": int(adata.n_obs), "n_genes": len(genes_ref or []),
    }
    return stability_from_fits(fits, metrics, center=center, min_similarity=min_similarity,
                               rule=rule, tolerance=tolerance, settings=settings)
