"""Survival association of topic scores: Cox proportional hazards per topic, Kaplan-Meier split."""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from sctopic.errors import InputError
from sctopic.genesets.stats import bh_fdr

#: Text values of a categorical covariate read as missing (R exports write "NA").
MISSING_STRINGS = ("NA", "NaN", "nan", "")

COLUMNS = ["topic", "hr", "ci_low", "ci_high", "coef", "se", "z", "p", "fdr", "p_bonferroni",
           "n_samples", "n_events", "n_genes_used", "top_genes"]


def _aligned(x, index, what: str):
    """A Series or DataFrame labelled by sample names, put in the order of ``index`` (the
    scores' samples); an unlabelled one (default RangeIndex) is taken in the given order.
    Samples of ``index`` missing from a labelled ``x`` raise an error naming them."""
    if not isinstance(x, (pd.Series, pd.DataFrame)) or index is None or x.index.equals(index):
        return x
    if isinstance(x.index, pd.RangeIndex) and x.index.equals(pd.RangeIndex(len(x))):
        return x  # positional, as an array would be
    missing = pd.Index(index).difference(x.index)
    if len(missing):
        eg = ", ".join(map(str, missing[:5]))
        raise InputError(f"{what} has no value for {len(missing)} of the {len(index)} samples (e.g. {eg}); "
                         "give it for every sample, indexed by the same sample names as the scores.")
    if not x.index.is_unique:
        raise InputError(f"{what} is indexed by duplicated sample names; make them unique.")
    return x.reindex(index)


def _as_vector(x, n: int, what: str, index=None) -> np.ndarray:
    """Values per sample; a Series indexed by sample names is aligned to ``index``."""
    x = _aligned(x, index, what)
    arr = np.asarray(x, dtype=np.float64).ravel()
    if arr.shape[0] != n:
        raise InputError(f"{what} has {arr.shape[0]} values for {n} samples.")
    return arr


def _covariate_frame(covariates, n: int, index) -> pd.DataFrame | None:
    if covariates is None:
        return None
    cov = covariates if isinstance(covariates, pd.DataFrame) else pd.DataFrame(np.asarray(covariates))
    # Labelled rows are matched to the scores' samples by name (never by position).
    cov = _aligned(cov, index, "covariates")
    if cov.shape[0] != n:
        raise InputError(f"covariates have {cov.shape[0]} rows for {n} samples.")
    cov = cov.reset_index(drop=True)
    parts = []
    for col in cov.columns:
        c = cov[col]
        if pd.api.types.is_bool_dtype(c) or pd.api.types.is_numeric_dtype(c):
            parts.append(c.astype(float).rename(str(col)))
        else:
            c = c.astype(object).where(~c.astype(str).isin(MISSING_STRINGS), None)
            c = c.where(c.notna(), None)
            dummies = pd.get_dummies(c.astype("category"), prefix=str(col), drop_first=True, dtype=float)
            dummies[c.isna().to_numpy()] = np.nan
            if dummies.shape[1] == 0:
                raise InputError(f"covariate {col!r} has a single level; it cannot be adjusted for.")
            parts.append(dummies)
    out = pd.concat(parts, axis=1)
    out.columns = [f"cov_{c}" for c in out.columns]
    return out


def survival_association(
    scores,
    time,
    event,
    covariates=None,
    *,
    penalizer: float = 0.0,
    top_genes: dict[str, list[str]] | None = None,
    n_genes_shown: int = 10,
) -> pd.DataFrame:
    """Cox proportional-hazards association of each topic's score with survival.

    For each topic, a Cox model (:class:`lifelines.CoxPHFitter`, Efron ties) is fitted on the
    topic's score standardised across samples (mean 0, standard deviation 1, ``ddof=1``),
    plus the covariates if given. The hazard ratio is per standard deviation of the score
    (``hr < 1``: higher scores, longer survival), with its 95% Wald interval and Wald p;
    ``fdr`` is Benjamini-Hochberg over the topics.

    Parameters
    ----------
    scores
        Samples x topics scores (e.g. :func:`~sctopic.analysis.bulk.score_bulk`), a
        DataFrame or a 2-d array.
    time, event
        Follow-up time (>= 0) and event indicator (1/True: event observed, 0: censored) per
        sample. Samples with a missing time, event or covariate are left out.
    covariates
        Optional samples x covariates DataFrame; non-numeric columns are one-hot encoded
        (first level dropped; the texts "NA", "NaN" and "" count as missing).
    penalizer
        L2 penalty of lifelines' fitter (0: plain maximum likelihood).
    top_genes
        Genes of each topic for the table (default ``scores.attrs["genes_used"]``).
    n_genes_shown
        Genes listed in the ``top_genes`` column.

    Returns
    -------
    pandas.DataFrame
        One row per topic: ``topic``, ``hr``, ``ci_low``, ``ci_high``, ``coef``, ``se``,
        ``z``, ``p``, ``fdr``, ``p_bonferroni``, ``n_samples``, ``n_events``,
        ``n_genes_used``, ``top_genes`` (comma-separated). Topics whose score is constant or
        NaN, or whose fit fails, get NaN statistics.

    Raises
    ------
    InputError
        Lengths differ, times are negative, events are not 0/1, or no event is observed.
    """
    from lifelines import CoxPHFitter
    from lifelines.exceptions import ConvergenceError

    if not (isinstance(penalizer, (int, float)) and np.isfinite(penalizer) and penalizer >= 0):
        raise InputError(f"penalizer (--penalizer) must be a finite number >= 0 (0: no penalty), got {penalizer!r}.")
    if isinstance(scores, pd.DataFrame):
        S = scores.astype(np.float64)
    else:
        arr = np.asarray(scores, dtype=np.float64)
        if arr.ndim == 1:
            arr = arr[:, None]
        S = pd.DataFrame(arr, columns=[f"topic_{k}" for k in range(arr.shape[1])])
    if S.ndim != 2 or S.shape[1] < 1:
        raise InputError("scores must be a samples x topics table.")
    n = S.shape[0]
    T = _as_vector(time, n, "time", S.index)
    E = _as_vector(event, n, "event", S.index)
    cov = _covariate_frame(covariates, n, S.index)
    keep = np.isfinite(T) & np.isfinite(E)
    if cov is not None:
        keep &= np.isfinite(cov.to_numpy(dtype=float)).all(1)
    if (T[keep] < 0).any():
        raise InputError("survival times must be >= 0.")
    if not np.isin(E[keep], (0.0, 1.0)).all():
        raise InputError("the event indicator must be 0 (censored) or 1 (event observed).")
    if keep.sum() < 3:
        raise InputError(f"only {int(keep.sum())} samples have a time, an event and covariates.")
    if E[keep].sum() == 0:
        raise InputError("no event is observed among the samples; a Cox model cannot be fitted.")
    dropped = int((~keep).sum())
    if dropped:
        warnings.warn(f"{dropped} samples with a missing time, event or covariate are left out.",
                      UserWarning, stacklevel=2)
    genes = top_genes if top_genes is not None else S.attrs.get("genes_used", {}) or {}
    base = pd.DataFrame({"__time": T[keep], "__event": E[keep]})
    if cov is not None:
        base = pd.concat([base, cov.loc[keep].reset_index(drop=True)], axis=1)
    rows = []
    for topic in S.columns:
        s = S[topic].to_numpy()[keep]
        g = list(genes.get(topic, []) if hasattr(genes, "get") else [])
        row = {"topic": str(topic), "n_samples": int(keep.sum()), "n_events": int(E[keep].sum()),
               "n_genes_used": len(g) if g else np.nan, "top_genes": ",".join(g[:n_genes_shown])}
        sd = np.std(s, ddof=1) if np.isfinite(s).all() else np.nan
        if not np.isfinite(sd) or sd == 0:
            rows.append(row)
            continue
        df = base.copy()
        df["__score"] = (s - s.mean()) / sd
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fit = CoxPHFitter(penalizer=penalizer).fit(df, "__time", "__event")
        except (ConvergenceError, np.linalg.LinAlgError, ValueError) as exc:
            warnings.warn(f"Cox fit failed for {topic}: {str(exc).splitlines()[0][:120]}", UserWarning, stacklevel=2)
            rows.append(row)
            continue
        r = fit.summary.loc["__score"]
        row.update(hr=float(r["exp(coef)"]), ci_low=float(r["exp(coef) lower 95%"]),
                   ci_high=float(r["exp(coef) upper 95%"]), coef=float(r["coef"]), se=float(r["se(coef)"]),
                   z=float(r["z"]), p=float(r["p"]))
        rows.append(row)
    out = pd.DataFrame(rows).reindex(columns=COLUMNS)
    p = out["p"].to_numpy(dtype=float)
    out["fdr"] = bh_fdr(p)
    out["p_bonferroni"] = np.minimum(1.0, p * np.isfinite(p).sum())
    out.attrs.update(n_dropped=dropped, covariates=None if cov is None else list(cov.columns),
                     penalizer=penalizer)
    return out


def logrank_split(score, time, event) -> dict:
    """Split samples at the median score and compare survival with a log-rank test.

    Parameters
    ----------
    score
        One score per sample.
    time, event
        Follow-up time and event indicator (missing values are left out).

    Returns
    -------
    dict
        ``median``, ``n_high``, ``n_low`` (high: score above the median), ``events_high``,
        ``events_low``, ``p`` (log-rank), ``statistic``, and the boolean mask ``high`` and
        finite-sample mask ``kept`` (over the input samples).
    """
    from lifelines.statistics import logrank_test

    s = np.asarray(score, dtype=np.float64).ravel()
    n = s.shape[0]
    T = _as_vector(time, n, "time")
    E = _as_vector(event, n, "event")
    kept = np.isfinite(s) & np.isfinite(T) & np.isfinite(E)
    if kept.sum() < 4:
        raise InputError("fewer than 4 samples with a score, a time and an event.")
    med = float(np.median(s[kept]))
    high = kept & (s > med)
    low = kept & ~high
    if high.sum() == 0 or low.sum() == 0:
        raise InputError("the score is constant; the samples cannot be split at the median.")
    res = logrank_test(T[high], T[low], event_observed_A=E[high], event_observed_B=E[low])
    return {"median": med, "n_high": int(high.sum()), "n_low": int(low.sum()),
            "events_high": int(E[high].sum()), "events_low": int(E[low].sum()),
            "p": float(res.p_value), "statistic": float(res.test_statistic), "high": high, "kept": kept}
