"""In-silico topic perturbation: shift topics in control cells, decode, compare with reality."""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pandas as pd

from sctopic.analysis.inputs import obs_labels, resolve_topics
from sctopic.analysis.decode import decode_expression, log_normalised, softmax
from sctopic.analysis.differential import differential_activity
from sctopic.errors import InputError

SHIFTS = ("mean_difference",)
NULL_SHIFTS = ("same", "own")


def hypergeom_overlap_p(overlap: int, n_genes: int, n_a: int, n_b: int) -> float:
    """P(X >= overlap) for the overlap X of two random gene lists of sizes ``n_a``, ``n_b``
    drawn from ``n_genes`` genes (hypergeometric upper tail)."""
    from scipy.stats import hypergeom

    if overlap <= 0:
        return 1.0
    return float(hypergeom.sf(overlap - 1, n_genes, n_a, n_b))


def empirical_p(observed: float, null: Sequence[float], greater: bool = True) -> float:
    """``(1 + #{null >= observed}) / (1 + n_null)`` (``<=`` when ``greater`` is False).

    NaN null values count as not extreme.
    """
    null = np.asarray(null, dtype=np.float64)
    if greater:
        hits = int(np.sum(null >= observed))
    else:
        hits = int(np.sum(null <= observed))
    return (1.0 + hits) / (1.0 + null.size)


def scanpy_style_lfc(logged_a: np.ndarray, logged_b: np.ndarray) -> np.ndarray:
    """log2 fold change of group a over b from log1p-normalised values, as scanpy computes it:
    ``log2((expm1(mean_a) + 1e-9) / (expm1(mean_b) + 1e-9))``."""
    ma = np.expm1(np.asarray(logged_a).mean(0))
    mb = np.expm1(np.asarray(logged_b).mean(0))
    return np.log2((ma + 1e-9) / (mb + 1e-9))


@dataclass
class PerturbationResult:
    """Outcome of :func:`perturb_topics`.

    ``summary`` holds the JSON-ready statistics (see :meth:`to_dict`); ``genes`` the per-gene
    observed and predicted changes; ``null`` one row per random-topic draw; ``embedding`` the
    PCA coordinates of the real control and target reconstructions and of the perturbed
    control cells; ``differential`` the target-vs-control differential topic table.
    """

    summary: dict[str, Any]
    genes: pd.DataFrame
    null: pd.DataFrame
    differential: pd.DataFrame
    embedding: dict[str, np.ndarray] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (the keys of ``sctopic perturb --json``)."""
        return dict(self.summary)

    def __getitem__(self, key: str) -> Any:
        return self.summary[key]


def _observed_degs(counts, labels: np.ndarray, control: str, target: str, genes: list[str]) -> pd.DataFrame:
    """Wilcoxon (scanpy) target vs control on log-normalised counts: one row per gene."""
    import anndata as ad
    import scanpy as sc

    from sctopic.data.counts import log_normalize

    keep = (labels == control) | (labels == target)
    tmp = ad.AnnData(X=log_normalize(counts[keep]),
                     obs=pd.DataFrame({"g": pd.Categorical(labels[keep])}, index=[str(i) for i in range(int(keep.sum()))]))
    tmp.var_names = genes
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sc.tl.rank_genes_groups(tmp, "g", groups=[target], reference=control, method="wilcoxon",
                                n_genes=len(genes), use_raw=False)
    df = sc.get.rank_genes_groups_df(tmp, group=target)
    df = df.set_index("names")
    return pd.DataFrame({"observed_score": df["scores"], "observed_lfc": df["logfoldchanges"],
                         "observed_p": df["pvals"], "observed_p_adj": df["pvals_adj"]}).reindex(genes)


class _Scorer:
    """Compares one perturbation with the observed response (reused for every null draw)."""

    def __init__(self, obs_lfc, obs_top, top_n, pca, ref_coords, ref_is_target, centroids, n_neighbors):
        from sklearn.neighbors import NearestNeighbors

        self.obs_lfc = obs_lfc
        self.obs_top = set(obs_top)
        self.top_n = top_n
        self.pca = pca
        self.ref_is_target = ref_is_target
        self.centroids = centroids  # one row per control cell: the target centroid it is compared to
        self.k = int(min(n_neighbors, len(ref_is_target) - 1))
        self.nn = NearestNeighbors(n_neighbors=self.k + 1).fit(ref_coords)
        self.finite = np.isfinite(obs_lfc)

    def movement(self, coords: np.ndarray, exclude: np.ndarray | None = None) -> tuple[float, float]:
        dist = float(np.linalg.norm(coords - self.centroids, axis=1).mean())
        _, idx = self.nn.kneighbors(coords, n_neighbors=self.k + 1)
        if exclude is None:
            idx = idx[:, : self.k]
        else:  # drop each cell itself from its own neighbours
            drop = idx == exclude[:, None]
            first = np.where(drop.any(1), drop.argmax(1), self.k)
            keep = np.ones_like(idx, dtype=bool)
            keep[np.arange(len(idx)), first] = False
            idx = idx[keep].reshape(len(idx), self.k)
        share = float((self.ref_is_target[idx].mean(1) > 0.5).mean())
        return dist, share

    def genes(self, pred_lfc: np.ndarray) -> tuple[int, float, np.ndarray]:
        """Top-N overlap, Spearman correlation with the observed fold changes, predicted top-N."""
        from scipy.stats import spearmanr

        order = np.argsort(-pred_lfc, kind="stable")[: self.top_n]
        overlap = len(self.obs_top.intersection(order.tolist()))
        ok = self.finite & np.isfinite(pred_lfc)
        if np.ptp(pred_lfc[ok]) == 0:
            rho = float("nan")
        else:
            rho = float(spearmanr(pred_lfc[ok], self.obs_lfc[ok]).statistic)
        return overlap, rho, order

    def score(self, pred_lfc: np.ndarray, logged_pert: np.ndarray) -> dict[str, float]:
        overlap, rho, order = self.genes(pred_lfc)
        dist, share = self.movement(self.pca.transform(logged_pert))
        return {"overlap": overlap, "spearman": rho, "distance_after": dist, "share_after": share,
                "pred_top": order}


def _cell_shifts(delta_c, delta_t, chosen, ct_c, ct_t, shift) -> np.ndarray:
    """``(n_control, len(chosen))`` logit shifts of the chosen topics for each control cell."""
    if not isinstance(shift, str):
        return np.full((delta_c.shape[0], len(chosen)), float(shift))
    glob = delta_t[:, chosen].mean(0) - delta_c[:, chosen].mean(0)
    out = np.tile(glob, (delta_c.shape[0], 1))
    if ct_c is not None:
        for c in sorted({v for v in ct_c if v is not None}):
            in_c, in_t = ct_c == c, ct_t == c
            if in_t.sum() == 0:
                continue  # no target cells of this type: the global shift
            out[in_c] = delta_t[in_t][:, chosen].mean(0) - delta_c[in_c][:, chosen].mean(0)
    return out


def perturb_topics(
    model,
    adata=None,
    *,
    group_key: str,
    control: str,
    target: str,
    topics: Sequence[str | int] | None = None,
    shift: str | float = "mean_difference",
    n_null: int = 100,
    top_n: int = 100,
    seed: int = 0,
    celltype_key: str | None = None,
    alpha: float = 0.05,
    min_effect: float = 0.8,
    null_max_effect: float = 0.2,
    null_shift: str = "same",
    n_neighbors: int = 15,
    n_pcs: int = 50,
    n_permutations: int = 1000,
    layer: str | None = None,
    allow_missing_genes: bool = False,
    progress: bool = False,
) -> PerturbationResult:
    """Shift chosen topics in control cells, decode expression, and compare with the real target.

    Procedure:

    1. Topic logits delta of every cell (the model's encoder; ``theta = softmax(delta)``).
    2. Topics: ``topics``, or by default the topics significantly up in ``target`` vs
       ``control`` with a large effect (permutation test on theta, BH ``p_bh < alpha`` and
       Cohen's ``d >= min_effect``; an effect-size threshold because with thousands of cells
       almost every topic differs significantly, and theta's scale differs between models).
    3. Shift: each control cell's logits of the chosen topics are moved by the mean logit
       difference target - control (of its cell type when ``celltype_key`` is given; cell
       types without target cells take the overall difference), or by the constant
       ``shift``; ``theta' = softmax(delta + shift)`` (renormalised).
    4. Expected expression of the perturbed and unperturbed control cells is decoded with the
       model's decoder (with each cell's batch intercept when the model has them; see
       :func:`~sctopic.analysis.decode.decode_expression`). Predicted log2 fold change per
       gene: as scanpy computes it, from the mean of ``log1p(1e4 p)`` of each set.
    5. Observed: scanpy's Wilcoxon test target vs control on log-normalised counts; observed
       top-N = the N genes with the highest scores. Predicted top-N = the N genes with the
       largest predicted fold change. Statistics: overlap (hypergeometric upper-tail p over
       the model's genes), Spearman correlation of predicted and observed fold changes over
       all genes.
    6. Movement: a PCA (``n_pcs``) fitted on the log-normalised reconstructions of the real
       control and target cells; the mean distance of control cells to the target centroid
       (of their cell type, with ``celltype_key``) before and after the shift, and the share
       of cells whose ``n_neighbors`` nearest real cells are mostly target cells.
    7. Null: the same with ``len(topics)`` topics drawn at random among the non-differential
       ones (``p_bh >= alpha`` or ``|d| < null_max_effect``: no or a negligible difference),
       ``n_null`` times (given topics that are non-differential themselves stay in the pool).
       When a strong, global response leaves fewer such topics than chosen ones, the pool
       widens to the topics without a large effect (``|d| < min_effect``), with a warning
       (``null_pool_rule`` in the result says which pool was used). With
       ``null_shift="same"`` (default) the random topics receive the chosen topics' shifts,
       so the null differs only in which topics move; ``"own"`` shifts them by their own
       mean differences. Empirical
       ``p = (1 + #{null >= observed}) / (1 + n_null)`` (``<=`` for distances).

    Parameters
    ----------
    model
        A trained SCETM or SCE2TM.
    adata
        Cells to use (default: the model's data); raw counts over the model's genes in ``X``
        or ``layer``, and the obs columns below.
    group_key
        ``obs`` column with the conditions.
    control, target
        Labels of the control cells (perturbed) and of the target cells.
    topics
        Topic names or indices to shift (default: see step 2).
    shift
        ``"mean_difference"`` or a number added to the chosen topics' logits.
    n_null
        Random-topic draws (0: no null).
    top_n
        Size of the observed and predicted top gene lists (100).
    seed
        Seed of the permutations, the null draws and the PCA.
    celltype_key
        ``obs`` column with cell types: per-type shifts and per-type target centroids.
    alpha, min_effect, null_max_effect
        Thresholds choosing the default topics (BH-adjusted p below ``alpha`` and Cohen's d at
        least ``min_effect``, 0.8 = "large") and the non-differential null pool (adjusted p at
        least ``alpha`` or ``|d|`` below ``null_max_effect``, 0.2 = "small").
    null_shift
        ``"same"`` or ``"own"`` (step 7).
    n_neighbors, n_pcs
        Neighbours and principal components of the movement statistics.
    n_permutations
        Permutations of the differential-topic test.
    layer
        Layer with raw counts (default: the model's layer, else ``X``).
    allow_missing_genes
        Fill model genes absent from ``adata`` with zero counts (with a warning stating the
        fraction; their observed fold changes are then 0) instead of failing.
    progress
        Show a progress bar over the null draws.

    Returns
    -------
    PerturbationResult
        ``result.to_dict()`` holds ``topics``, ``top_genes`` (per topic), ``overlap``,
        ``overlap_top{N}`` (``overlap_top100`` by default), ``overlap_hypergeom_p``,
        ``spearman_lfc``, ``null_overlap_mean``, ``null_spearman_mean``,
        ``empirical_p_overlap``, ``empirical_p_spearman``, ``distance_to_target_before`` /
        ``_after``, ``null_distance_to_target_after_mean``, ``empirical_p_distance``,
        ``target_neighbour_share_before`` / ``_after``,
        ``null_target_neighbour_share_after_mean``, ``empirical_p_neighbour_share``,
        ``reconstruction_overlap`` / ``reconstruction_spearman_lfc`` (the same statistics
        for the fold changes between the model's reconstructions of the real target and
        control cells: what the model can express at all), and the settings.
    """
    from sklearn.decomposition import PCA

    from sctopic.data.counts import get_counts
    from sctopic.data.io import read_adata

    if not model.is_trained:
        raise InputError(f"the {type(model).__name__} model is not trained yet; call .train() first.")
    if isinstance(shift, str) and shift not in SHIFTS:
        raise InputError(f"shift must be one of {SHIFTS} or a number, got {shift!r}.")
    if not isinstance(shift, str) and not np.isfinite(float(shift)):
        raise InputError(f"shift (--shift) must be a finite number or 'mean_difference', got {shift!r}.")
    if null_shift not in NULL_SHIFTS:
        raise InputError(f"null_shift must be one of {NULL_SHIFTS}, got {null_shift!r}.")
    if int(top_n) < 1 or int(n_null) < 0:
        raise InputError("top_n must be >= 1 and n_null >= 0.")
    if adata is None:
        if model.adata is None:
            raise InputError("the model has no data attached; pass adata=...")
        data = model.adata
    else:
        data = read_adata(adata)
    genes = list(model.genes)
    top_n = int(min(top_n, len(genes)))
    pos = pd.Index(data.var_names.astype(str)).get_indexer(genes)
    lay = layer if layer is not None else getattr(model, "layer", None)
    if (pos < 0).any():
        if not allow_missing_genes:
            raise InputError(f"{int((pos < 0).sum())} of the model's {len(genes)} genes are missing from the data; "
                             "perturbation needs the counts of every model gene: use data with the model's "
                             "genes, or fill the missing ones with zeros (allow_missing_genes=True, "
                             "--allow-missing-genes).")
        from sctopic.models.inputs import aligned_counts

        counts = aligned_counts(data, genes, lay, allow_missing_genes=True)
    else:
        counts = get_counts(data[:, pos] if not np.array_equal(pos, np.arange(data.n_vars)) else data, lay)
    labels = obs_labels(data, group_key, "group_key").to_numpy(dtype=object)
    control, target = str(control), str(target)
    if control == target:
        raise InputError("control and target must differ.")
    for name, lab in (("control", control), ("target", target)):
        n = int((labels == lab).sum())
        if n < 2:
            present = sorted({v for v in labels if v is not None})
            raise InputError(f"{name} label {lab!r} has {n} cells in obs[{group_key!r}] (labels: {', '.join(present[:20])}); "
                             "at least 2 are needed.")
    cell_types = obs_labels(data, celltype_key, "celltype_key").to_numpy(dtype=object) if celltype_key else None

    delta = model.get_cell_topics(None if adata is None else data, logits=True, layer=layer,
                                  allow_missing_genes=allow_missing_genes).astype(np.float64)
    theta = softmax(delta)
    is_c, is_t = labels == control, labels == target
    names = list(model.topic_names)

    diff = differential_activity(theta, labels, topic_names=names, groups=[target], reference=control,
                                 n_permutations=n_permutations, seed=seed, what=f"obs[{group_key!r}]")
    sig = diff["p_bh"].to_numpy() < alpha
    d = diff["cohens_d"].to_numpy()
    up = sig & (diff["diff"].to_numpy() > 0) & (d >= min_effect)
    nondiff = ~sig | (np.abs(np.nan_to_num(d)) < null_max_effect)
    if topics is None:
        chosen = np.flatnonzero(up).tolist()
        if not chosen:
            raise InputError(
                f"no topic is significantly up in {target!r} vs {control!r} (BH < {alpha}, "
                f"Cohen's d >= {min_effect}); pass topics=... explicitly."
            )
        how = "differential"
    else:
        chosen = resolve_topics(topics, names)
        if not chosen:
            raise InputError("topics is empty.")
        how = "given"
    # The chosen topics are in the pool only if they are non-differential themselves: the null
    # is then exchangeable with them (a random draw of the same kind).
    pool = np.flatnonzero(nondiff)
    pool_rule = f"non-differential: BH >= {alpha} or |d| < {null_max_effect}"
    if n_null > 0 and len(pool) < len(chosen):
        # A strong, global response (most topics move): widen the pool to the topics without a
        # large effect, and say so.
        wider = np.union1d(pool, np.setdiff1d(np.flatnonzero(np.abs(np.nan_to_num(d)) < min_effect), chosen))
        if len(wider) < len(chosen):
            raise InputError(
                f"only {len(pool)} non-differential topics ({len(wider)} without a large effect) for a null "
                f"of {len(chosen)} random topics; use fewer topics, n_null=0, or a model with more topics."
            )
        warnings.warn(
            f"only {len(pool)} non-differential topics for a null of {len(chosen)} random topics; the null "
            f"draws from the {len(wider)} topics without a large effect (|d| < {min_effect}) instead.",
            UserWarning, stacklevel=2,
        )
        pool = wider
        pool_rule = f"without a large effect: |d| < {min_effect} (too few non-differential topics)"

    batches = None
    if getattr(model, "batch_key", None) and model.n_batches > 0:
        if model.batch_key in data.obs.columns:
            batches = data.obs[model.batch_key].astype(str).to_numpy()
        else:
            warnings.warn(f"obs has no {model.batch_key!r} column; decoding with the mean batch intercept.",
                          UserWarning, stacklevel=2)
    b_c = None if batches is None else batches[is_c]
    b_t = None if batches is None else batches[is_t]
    delta_c, delta_t = delta[is_c], delta[is_t]
    ct_c = None if cell_types is None else cell_types[is_c]
    ct_t = None if cell_types is None else cell_types[is_t]

    # Reconstructions of the real cells and the shared PCA space.
    logged_c = log_normalised(decode_expression(model, theta[is_c], b_c))
    logged_t = log_normalised(decode_expression(model, theta[is_t], b_t))
    ref = np.vstack([logged_c, logged_t])
    n_comps = int(min(n_pcs, ref.shape[0] - 1, ref.shape[1]))
    pca = PCA(n_components=n_comps, random_state=seed).fit(ref)
    ref_coords = pca.transform(ref)
    coords_c, coords_t = ref_coords[: len(logged_c)], ref_coords[len(logged_c):]
    if ct_c is not None:
        glob = coords_t.mean(0)
        centroids = np.tile(glob, (len(coords_c), 1))
        for c in set(ct_c) - {None}:
            if (ct_t == c).any():
                centroids[ct_c == c] = coords_t[ct_t == c].mean(0)
    else:
        centroids = np.tile(coords_t.mean(0), (len(coords_c), 1))
    ref_is_target = np.r_[np.zeros(len(coords_c), bool), np.ones(len(coords_t), bool)]

    obs = _observed_degs(counts, labels, control, target, genes)
    obs_lfc = obs["observed_lfc"].to_numpy(dtype=np.float64)
    obs_top = np.argsort(-obs["observed_score"].to_numpy(dtype=np.float64), kind="stable")[:top_n]
    scorer = _Scorer(obs_lfc, obs_top.tolist(), top_n, pca, ref_coords, ref_is_target, centroids, n_neighbors)
    dist_before, share_before = scorer.movement(coords_c, exclude=np.arange(len(coords_c)))
    # What the model can express at all: fold changes between the reconstructions of the real
    # target and control cells (an upper reference for any perturbation of control cells).
    ceil_overlap, ceil_rho, _ = scorer.genes(scanpy_style_lfc(logged_t, logged_c))

    def run(topic_idx, shifts) -> tuple[dict, np.ndarray]:
        d = delta_c.copy()
        d[:, topic_idx] += shifts
        logged_p = log_normalised(decode_expression(model, softmax(d), b_c))
        lfc = scanpy_style_lfc(logged_p, logged_c)
        return scorer.score(lfc, logged_p), (lfc, logged_p)

    shifts = _cell_shifts(delta_c, delta_t, chosen, ct_c, ct_t, shift)
    res, (pred_lfc, logged_p) = run(chosen, shifts)

    rng = np.random.default_rng(seed)
    rows = []
    from tqdm.auto import tqdm

    for _ in tqdm(range(int(n_null)), desc="null draws", unit="draw", disable=not progress, leave=False):
        rand = np.sort(rng.choice(pool, size=len(chosen), replace=False)).tolist()
        if null_shift == "own" and isinstance(shift, str):
            s = _cell_shifts(delta_c, delta_t, rand, ct_c, ct_t, shift)
        else:
            s = shifts
        r, _ = run(rand, s)
        rows.append({"topics": ",".join(names[k] for k in rand), "overlap": r["overlap"],
                     "spearman": r["spearman"], "distance_to_target_after": r["distance_after"],
                     "target_neighbour_share_after": r["share_after"]})
    null = pd.DataFrame(rows, columns=["topics", "overlap", "spearman", "distance_to_target_after",
                                       "target_neighbour_share_after"])

    top_genes_frame = model.top_genes(10)
    pred_top = res["pred_top"]
    obs_top_set = set(obs_top.tolist())
    gene_frame = obs.copy()
    gene_frame["predicted_lfc"] = pred_lfc
    gene_frame["observed_top"] = np.isin(np.arange(len(genes)), obs_top)
    gene_frame["predicted_top"] = np.isin(np.arange(len(genes)), pred_top)

    def nanmean(x):
        x = np.asarray(x, dtype=float)
        return float(np.nanmean(x)) if np.isfinite(x).any() else float("nan")

    up_table = diff.loc[chosen, ["topic", "mean_in", "mean_out", "diff", "log2_ratio", "cohens_d", "p", "p_bh"]]
    summary: dict[str, Any] = {
        "topics": [names[k] for k in chosen],
        "topic_indices": [int(k) for k in chosen],
        "topics_chosen_by": how,
        "top_genes": {names[k]: list(top_genes_frame.iloc[k]) for k in chosen},
        "topics_up_in_target": [names[k] for k in np.flatnonzero(up)],
        "topic_differential": up_table.to_dict(orient="records"),
        "mean_shift_per_topic": {names[k]: float(shifts[:, j].mean()) for j, k in enumerate(chosen)},
        "control": control, "target": target, "group_key": group_key, "celltype_key": celltype_key,
        "n_control": int(is_c.sum()), "n_target": int(is_t.sum()), "n_genes": len(genes),
        "top_n": top_n,
        "overlap": int(res["overlap"]),
        f"overlap_top{top_n}": int(res["overlap"]),
        "overlap_fraction": res["overlap"] / top_n,
        "overlap_expected_random": top_n * top_n / len(genes),
        "overlap_hypergeom_p": hypergeom_overlap_p(res["overlap"], len(genes), top_n, top_n),
        "overlap_genes": [genes[g] for g in pred_top if g in obs_top_set],
        "observed_top_genes": [genes[g] for g in obs_top[:20]],
        "predicted_top_genes": [genes[g] for g in pred_top[:20]],
        "spearman_lfc": res["spearman"],
        "reconstruction_overlap": int(ceil_overlap),
        "reconstruction_spearman_lfc": ceil_rho,
        "n_null": int(n_null), "null_pool_size": int(len(pool)), "null_pool_rule": pool_rule,
        "null_shift": null_shift,
        "null_overlap_mean": nanmean(null["overlap"]),
        "null_overlap_sd": float(null["overlap"].std()) if len(null) > 1 else float("nan"),
        "null_overlap_max": float(null["overlap"].max()) if len(null) else float("nan"),
        "null_spearman_mean": nanmean(null["spearman"]),
        "empirical_p_overlap": empirical_p(res["overlap"], null["overlap"]) if len(null) else float("nan"),
        "empirical_p_spearman": empirical_p(res["spearman"], null["spearman"]) if len(null) else float("nan"),
        "distance_to_target_before": dist_before,
        "distance_to_target_after": res["distance_after"],
        "null_distance_to_target_after_mean": nanmean(null["distance_to_target_after"]),
        "empirical_p_distance": (empirical_p(res["distance_after"], null["distance_to_target_after"], greater=False)
                                 if len(null) else float("nan")),
        "target_neighbour_share_before": share_before,
        "target_neighbour_share_after": res["share_after"],
        "null_target_neighbour_share_after_mean": nanmean(null["target_neighbour_share_after"]),
        "empirical_p_neighbour_share": (empirical_p(res["share_after"], null["target_neighbour_share_after"])
                                        if len(null) else float("nan")),
        "shift": shift if isinstance(shift, str) else float(shift),
        "alpha": alpha, "min_effect": min_effect, "null_max_effect": null_max_effect, "n_neighbors": int(scorer.k),
        "n_pcs": n_comps, "seed": seed, "model": model.model_name,
    }
    embedding = {"control": coords_c, "target": coords_t, "perturbed": pca.transform(logged_p)}
    if ct_c is not None:
        embedding["control_celltype"] = ct_c
        embedding["target_celltype"] = ct_t
    return PerturbationResult(summary, gene_frame, null, diff, embedding)
