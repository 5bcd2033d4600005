"""Figures stay readable from K=10 to K=200 topics, and every plotting function has the
scanpy-style ``adata, key=..., show=, save=`` form beside its array form.

Drawing tests on synthetic topic matrices (random Dirichlet proportions and topic-gene rows):
what is checked is the figure's legibility (bounded, non-overlapping labels; legends where there
are categories; hidden rows counted), not biology.
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

import sctopic.plotting as pl
from sctopic.errors import InputError
from sctopic.plotting.labels import count_labels, overlapping_labels, place_labels, wrap_label

KS = (10, 200)


def synth_adata(k: int, n: int = 700, v: int = 600, seed: int = 0):
    """An AnnData with an sce2tm model's outputs (written by the output contract's writer)."""
    import anndata as ad

    from sctopic.data.outputs import write_outputs

    rng = np.random.default_rng(seed)
    labels = np.array([f"cell type {chr(65 + i)}" for i in range(9)])[rng.integers(0, 9, n)]
    theta = rng.dirichlet(np.full(k, 0.1), size=n)
    genes = [f"GENE{i}" for i in range(v)]
    a = ad.AnnData(X=np.zeros((n, v), dtype=np.float32),
                   obs=pd.DataFrame({"cell_type": pd.Categorical(labels)}, index=[f"c{i}" for i in range(n)]))
    a.var_names = genes
    write_outputs(a, "sce2tm", logits=np.log(theta), theta=theta, topic_gene=rng.dirichlet(np.full(v, 0.05), size=k),
                  genes=genes, topic_names=[f"topic_{i}" for i in range(k)], params="{}",
                  gene_embedding=rng.normal(size=(v, 16)), topic_embedding=rng.normal(size=(k, 16)))
    a.obsm["X_umap"] = rng.normal(size=(n, 2))
    return a


def diff_table(k: int, groups=("stim",), n_perm: int = 1000, seed: int = 0) -> pd.DataFrame:
    """A differential_topics-like table where every strong effect sits at the permutation floor."""
    rng = np.random.default_rng(seed)
    rows = []
    for g in groups:
        d = rng.normal(0, 1, k)
        p = np.where(np.abs(d) > 1, 1 / (n_perm + 1), rng.uniform(0, 1, k))
        rows += [dict(group=g, reference="ctrl", topic=f"topic_{i}", cohens_d=d[i], p=p[i], p_bh=min(1.0, 3 * p[i]))
                 for i in range(k)]
    return pd.DataFrame(rows)


def ora_table(k: int, n_sets: int = 200, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for t in range(k):
        p = rng.uniform(0, 1, n_sets) ** 3
        p[rng.integers(0, n_sets, 3)] = 10 ** -rng.uniform(3, 12, 3)
        rows += [dict(topic=t, set=f"GO:{s:07d}", description=f"regulation of long process number {s}", p=p[s],
                      fdr=min(1.0, p[s] * n_sets)) for s in range(n_sets)]
    return pd.DataFrame(rows)


def fake_perturbation(n_genes: int = 500, seed: int = 0):
    """A PerturbationResult-shaped object: a few genes absent in control get log2FC ~ +30."""
    rng = np.random.default_rng(seed)
    obs = rng.normal(0, 1, n_genes)
    obs[:4] = [31.0, 29.5, -30.2, 28.0]  # scanpy's 1e-9 pseudocount on genes absent in one group
    genes = pd.DataFrame({"observed_lfc": obs, "predicted_lfc": obs * 0.5 + rng.normal(0, 0.3, n_genes),
                          "observed_score": np.abs(obs) + rng.uniform(0, 1, n_genes),
                          "observed_top": np.arange(n_genes) < 50, "predicted_top": np.arange(n_genes) % 7 == 0},
                         index=[f"GENE{i}" for i in range(n_genes)])
    summary = dict(spearman_lfc=0.5, top_n=50, overlap=12, distance_to_target_before=3.0,
                   distance_to_target_after=2.0, empirical_p_overlap=0.01, empirical_p_spearman=0.02,
                   control="ctrl", target="stim")
    null = pd.DataFrame({"overlap": rng.integers(0, 10, 30), "spearman": rng.uniform(-0.2, 0.3, 30)})
    return SimpleNamespace(genes=genes, summary=summary, null=null, embedding={})


def perturbation_coords(seed: int = 0):
    rng = np.random.default_rng(seed)
    return {k: rng.normal(size=(50, 2)) for k in ("control", "target", "perturbed")}


def stability_table() -> pd.DataFrame:
    ks = [10, 20, 50, 100, 200]
    return pd.DataFrame({"k": ks, "stability_mean": [0.9, 0.85, 0.8, 0.7, 0.6], "stability_sd": [0.02] * 5,
                         "td_mean": [0.95, 0.9, 0.85, 0.8, 0.7], "td_sd": [0.01] * 5,
                         "tc_mean": [np.nan] * 5, "tc_sd": [np.nan] * 5,
                         "ari_mean": [0.5, 0.6, 0.65, 0.6, 0.55], "ari_sd": [0.03] * 5})


def ytick_labels(ax) -> list[str]:
    return [t.get_text() for t in ax.get_yticklabels() if t.get_text()]


# ---------------------------------------------------------------- the readability helpers


def test_wrap_label_bounds_lines_and_width():
    s = wrap_label("positive regulation of interferon-gamma production by activated T cells", 20, 2)
    lines = s.split("\n")
    assert len(lines) == 2 and all(len(x) <= 20 for x in lines) and lines[-1].endswith("…")
    assert wrap_label("short") == "short"


def test_place_labels_never_overlap_on_a_pile():
    fig = pl.cell_umap(np.zeros((5, 2)), np.arange(5))  # any axes
    ax = fig.axes[0]
    ax.set_xlim(-1, 1)
    ax.set_ylim(-1, 1)
    placed = place_labels(ax, np.zeros(100), np.zeros(100), [f"label {i}" for i in range(100)], max_labels=50)
    assert 1 <= len(placed) < 50  # all points on one spot: only the labels that fit are drawn
    assert overlapping_labels(fig) == 0


# ---------------------------------------------------------------- each figure at K=10 and K=200


@pytest.mark.parametrize("k", KS)
def test_dominant_topic_umap_has_a_bounded_legend(k, tmp_path):
    a = synth_adata(k)
    fig = pl.cell_umap(a, key="dominant_topic", save=tmp_path / "dom.png", show=False)
    leg = fig.axes[0].get_legend()
    assert leg is not None, "categories need a legend"
    texts = [t.get_text() for t in leg.get_texts()]
    n_cats = len(set(pl.dominant_topic(a)))  # topics that dominate at least one cell
    assert len(texts) == min(n_cats, 18) + (n_cats > 18)
    if n_cats > 18:
        assert texts[-1].startswith(f"other: {n_cats - 18} smaller categories")
    # no category shares the grey of "other"
    from matplotlib.colors import to_rgb

    cols = [to_rgb(h.get_facecolor()[0]) for h in leg.legend_handles[:-1]] if n_cats > 18 else []
    assert all(max(c) - min(c) > 0.05 for c in cols)
    assert (tmp_path / "dom.png").stat().st_size > 5000
    assert count_labels(fig) == 0
    # the rasterised scatter keeps a vector file small at 10^5 cells
    rng = np.random.default_rng(0)
    big = pl.cell_umap(rng.normal(size=(100_000, 2)), rng.integers(0, 30, 100_000).astype(str),
                       path=tmp_path / "big.pdf")
    assert all(c.get_rasterized() for c in big.axes[0].collections)
    assert (tmp_path / "big.pdf").stat().st_size < 1_500_000


@pytest.mark.parametrize("k", KS)
def test_topic_label_heatmap_filters_orders_and_counts_hidden(k, tmp_path):
    a = synth_adata(k)
    theta, labels = a.obsm["X_sce2tm"], a.obs["cell_type"].astype(str).to_numpy()
    names = [f"topic_{i}" for i in range(k)]
    fig = pl.topic_label_heatmap(theta, labels, names, path=tmp_path / "h.png")  # the array form
    ax = fig.axes[0]
    shown = ytick_labels(ax)
    assert len(shown) == min(k, 40) and fig.n_hidden_topics == k - len(shown)
    assert min(t.get_fontsize() for t in ax.get_yticklabels()) >= 7  # readable at K=200
    if k > 40:
        assert f"{k - 40} less used topics hidden" in ax.get_title()
    # every label's most used topic is among the rows shown
    mean = pd.DataFrame(theta, columns=names).groupby(labels).mean()
    assert set(mean.idxmax(axis=1)) <= set(shown)
    # rows are grouped under the label where they peak: peak columns never decrease down the rows
    img = ax.images[0].get_array()
    peaks = np.asarray(img).argmax(1)
    assert (np.diff(peaks) >= 0).all()
    fig2 = pl.topic_label_heatmap(a, key="cell_type", save=tmp_path / "h2.png")
    assert ytick_labels(fig2.axes[0]) == shown and (tmp_path / "h2.png").is_file()


@pytest.mark.parametrize("k", KS)
def test_gene_topic_map_labels_bounded_and_apart(k, tmp_path):
    a = synth_adata(k)
    fig = pl.gene_topic_map(a, layout="pca", save=tmp_path / "g.png", max_gene_labels=30, max_topic_labels=20)
    n = count_labels(fig)
    assert 1 <= n <= 50
    assert overlapping_labels(fig) == 0
    assert fig.axes[0].get_legend() is not None
    assert "named:" in fig.axes[0].get_title() and "..." not in fig.axes[0].get_title()
    # the most used topic is named first
    most_used = f"topic_{int(np.argmax(a.obsm['X_sce2tm'].mean(0)))}"
    assert most_used in [t.get_text() for t in fig.axes[0].texts]
    assert (tmp_path / "g.png").is_file()


@pytest.mark.parametrize("k", KS)
def test_volcano_labels_effects_not_the_floor_pile(k, tmp_path):
    import anndata as ad

    tab = diff_table(k)
    fig = pl.volcano(tab, n_labels=10)
    ax = fig.axes[0]
    assert count_labels(fig) <= 10 and overlapping_labels(fig) == 0
    assert ax.get_legend() is not None
    legend = " ".join(t.get_text() for t in ax.get_legend().get_texts())
    n_floor = int((tab["p_bh"] == tab["p_bh"].min()).sum())
    assert ("at the smallest p" in legend) == (n_floor >= 3)  # a pile at the permutation floor is marked
    labelled = {t.get_text() for t in ax.texts}
    sig = tab[tab["p_bh"] < 0.05]
    biggest_up = sig.loc[sig["cohens_d"].idxmax(), "topic"]
    biggest_down = sig.loc[sig["cohens_d"].idxmin(), "topic"]
    assert {biggest_up, biggest_down} <= labelled  # the largest effects on both sides are named
    a = ad.AnnData(np.zeros((3, 2)))
    a.uns["differential_topics"] = tab
    fig2 = pl.volcano(a, key="differential_topics", save=tmp_path / "v.png", show=False)
    assert fig2 is not None and (tmp_path / "v.png").is_file()


@pytest.mark.parametrize("k", KS)
def test_differential_heatmap_filters_topics(k, tmp_path):
    import anndata as ad

    tab = diff_table(k, groups=("B", "CD4 T", "CD8 T", "NK", "Mono"))
    fig = pl.topic_heatmap(tab, path=tmp_path / "d.png")
    shown = ytick_labels(fig.axes[0])
    assert len(shown) == min(k, 40) and fig.n_hidden_topics == k - len(shown)
    strongest = tab.loc[(tab["p_bh"] < 0.05)].assign(a=lambda d: d["cohens_d"].abs()).sort_values("a").iloc[-1]
    assert strongest["topic"] in shown
    a = ad.AnnData(np.zeros((3, 2)))
    a.uns["dt"] = tab
    assert pl.topic_heatmap(a, key="dt", save=tmp_path / "d2.png") is not None and (tmp_path / "d2.png").is_file()


@pytest.mark.parametrize("k", KS)
def test_manhattan_names_terms_not_ids(k, tmp_path):
    a = synth_adata(k)
    a.uns["enrichment"] = ora_table(k)
    fig = pl.enrichment_manhattan(a, n_labels=8, save=tmp_path / "m.png")
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert 1 <= len(texts) <= 8 and overlapping_labels(fig) == 0
    assert all(t.startswith("regulation of") and "GO:" not in t for t in texts)
    assert len(set(texts)) == len(texts)  # each term named once
    assert all(len(line) <= 26 for t in texts for line in t.split("\n"))
    assert len(fig.axes[0].get_xticklabels()) <= 41  # topic ticks thinned at K=200
    assert (tmp_path / "m.png").is_file()


def test_lfc_axis_clipped_with_edge_markers(tmp_path):
    import anndata as ad

    res = fake_perturbation()
    fig = pl.lfc_scatter(res, n_labels=12, path=tmp_path / "l.png")
    ax = fig.axes[0]
    assert ax.get_xlim()[1] < 10 and ax.get_xlim()[0] > -10  # not squashed by the +-30 genes
    legend = " ".join(t.get_text() for t in ax.get_legend().get_texts())
    import re

    n_out = int(re.search(r"(\d+) genes beyond the axes", legend).group(1))
    assert 4 <= n_out <= 4 + 5  # the four absent-in-control genes, plus at most the 0.5% tail
    assert count_labels(fig) <= 12 and overlapping_labels(fig) == 0
    unclipped = pl.lfc_scatter(res, clip=False)
    assert unclipped.axes[0].get_xlim()[1] > 25
    a = ad.AnnData(np.zeros((3, 2)))
    a.uns["perturbation"] = res
    assert pl.lfc_scatter(a, save=tmp_path / "l2.png") is not None and (tmp_path / "l2.png").is_file()
    f = pl.perturbation_umap(a, coords=perturbation_coords(), save=tmp_path / "u.png")
    assert f.axes[0].get_legend() is not None and (tmp_path / "u.png").is_file()
    f = pl.perturbation_summary(a, coords=perturbation_coords(), save=tmp_path / "s.png")
    assert len(f.axes) == 4 and (tmp_path / "s.png").is_file()


def test_stability_and_kaplan_meier_adata_forms(tmp_path):
    import anndata as ad

    a = ad.AnnData(np.zeros((3, 2)))
    a.uns["topic_stability"] = stability_table()
    fig = pl.stability_curves(a, save=tmp_path / "st.png")
    assert len(fig.axes) == 3 and (tmp_path / "st.png").is_file()  # the all-NaN TC panel left out
    rng = np.random.default_rng(0)
    n = 120
    bulk = ad.AnnData(np.zeros((n, 2)), obs=pd.DataFrame({"score": rng.normal(size=n), "time": rng.exponential(5, n),
                                                         "event": rng.integers(0, 2, n)},
                                                        index=[f"s{i}" for i in range(n)]))
    fig = pl.kaplan_meier(bulk, key="score", save=tmp_path / "km.png")
    assert fig.axes[0].get_legend() is not None and "score" in fig.axes[0].get_title()
    assert (tmp_path / "km.png").is_file()
    with pytest.raises(InputError, match="time_key"):
        pl.kaplan_meier(bulk, key="score", time_key="nope")


def test_gsea_running_sum_and_cell_umap_adata_forms(tmp_path):
    a = synth_adata(10)
    genes = list(a.var_names)
    fig = pl.gsea_running_sum(a, key="topic_3", gene_set=genes[:40], set_name="a set", save=tmp_path / "r.png")
    assert "topic_3" in fig.axes[0].get_title() and (tmp_path / "r.png").is_file()
    fig = pl.cell_umap(a, key="topic_3", save=tmp_path / "t.png")
    assert len(fig.axes) == 2  # a continuous value gets a colour bar
    del a.obsm["X_umap"]  # no basis: a UMAP of theta is computed once and stored
    fig = pl.cell_umap(a, key="cell_type", basis="X_sce2tm_logits")
    assert fig.axes[0].get_legend() is not None
    with pytest.raises(InputError, match="neither an obs column"):
        pl.cell_umap(a, key="nope", basis="X_sce2tm_logits")
    assert list(pl.dominant_topic(a)[:3]) == list(pl.dominant_topic(a.obsm["X_sce2tm"], [f"topic_{i}" for i in range(10)])[:3])


def test_show_returns_none_and_save_path_conflict(tmp_path):
    a = synth_adata(10)
    assert pl.topic_label_heatmap(a, key="cell_type", show=True) is None
    with pytest.raises(InputError, match="either save= or path="):
        pl.topic_label_heatmap(a, key="cell_type", save=tmp_path / "a.png", path=tmp_path / "b.png")


def test_tl_wrappers_store_tables_the_plots_read(pbmc_small, tmp_path):
    from sctopic import tl
    from sctopic.data.outputs import write_outputs

    a = synth_adata(10)
    tab = tl.differential_topics(a, "cell_type", n_permutations=50)
    assert a.uns["differential_topics"] is tab and set(tab["group"]) == set(a.obs["cell_type"].astype(str))
    assert pl.topic_heatmap(a, save=tmp_path / "h.png") is not None and (tmp_path / "h.png").is_file()
    b = pbmc_small.copy()  # real gene names, so GO BP sets match
    rng = np.random.default_rng(0)
    k, genes = 10, [str(g) for g in b.var_names]
    theta = rng.dirichlet(np.full(k, 0.1), size=b.n_obs)
    write_outputs(b, "scetm", logits=np.log(theta), theta=theta, topic_gene=rng.dirichlet(np.full(len(genes), 0.05), size=k),
                  genes=genes, topic_names=[f"topic_{i}" for i in range(k)], params="{}")
    ora = tl.enrichment(b, "go_bp_human", top_n=10)
    assert b.uns["enrichment"] is ora and set(ora["topic"]) == set(range(k))
    fig = pl.enrichment_manhattan(b, save=tmp_path / "m.png")
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()][:2] == ["topic_0", "topic_1"]
    with pytest.raises(InputError, match="method"):
        tl.enrichment(b, method="nope")


def test_topic_label_heatmap_means_match_pandas_with_missing_labels():
    a = synth_adata(10)
    theta = a.obsm["X_sce2tm"]
    lab = a.obs["cell_type"].astype(str).to_numpy().astype(object)
    lab[:5] = None  # missing labels are left out
    fig = pl.topic_label_heatmap(theta, lab, [f"t{i}" for i in range(10)], scale="none", order="none")
    ref = pd.DataFrame(theta[5:]).groupby(lab[5:].astype(str)).mean().T.to_numpy()
    np.testing.assert_allclose(np.asarray(fig.axes[0].images[0].get_array()), ref, rtol=1e-10)
