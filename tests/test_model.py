"""SCE2TM end to end on real (small) data: outputs, save/load, determinism, ablations, errors."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

import sctopic
from sctopic.errors import InputError, SctopicError

FAST = dict(max_epochs=3, batch_size=128, progress=False)


@pytest.fixture()
def trained(small_adata):
    m = sctopic.SCE2TM(small_adata, n_topics=8, n_hidden=32, emb_dim=16)
    m.train(seed=0, **FAST)
    return m


def test_outputs_follow_scverse_conventions(trained, small_adata):
    a = trained.adata
    assert a is small_adata
    theta = a.obsm["X_sce2tm"]
    assert theta.shape == (300, 8)
    np.testing.assert_allclose(theta.sum(1), 1.0, rtol=1e-5)
    delta = a.obsm["X_sce2tm_logits"]
    e = np.exp(delta - delta.max(1, keepdims=True))
    np.testing.assert_allclose(theta, e / e.sum(1, keepdims=True), rtol=1e-5)
    beta = trained.get_topic_gene()
    assert beta.shape == (8, a.n_vars) and list(beta.columns) == list(a.var_names)
    np.testing.assert_allclose(beta.sum(0).to_numpy(), 1.0, rtol=1e-5)
    np.testing.assert_allclose(a.uns["sce2tm"]["topic_gene"], beta.to_numpy(), rtol=1e-6)
    assert a.varm["sce2tm_gene_embedding"].shape == (a.n_vars, 16)
    top = trained.top_genes(5)
    assert top.shape == (8, 5)
    k0 = beta.iloc[0].sort_values(ascending=False).index[:5].tolist()
    assert top.iloc[0].tolist() == k0
    assert a.uns["sctopic"]["model"] == "sce2tm"
    assert np.isfinite(trained.history_["loss"]).all() and len(trained.history_["loss"]) == 3
    assert trained.graph_stats_ == {}  # the default's relational CVE samples no graph neighbours


def test_same_seed_same_model_and_different_seed_differs(small_adata):
    runs = []
    for seed in (0, 0, 1):
        m = sctopic.SCE2TM(small_adata.copy(), n_topics=6, n_hidden=32, emb_dim=16, seed=0)
        m.train(seed=seed, **FAST)
        runs.append(m.get_cell_topics())
    np.testing.assert_array_equal(runs[0], runs[1])
    assert not np.allclose(runs[0], runs[2])


def test_save_load_roundtrip_identical(trained, small_adata, tmp_path):
    path = trained.save(tmp_path / "m.pt")
    loaded = sctopic.SCE2TM.load(path, adata=small_adata)
    np.testing.assert_array_equal(loaded.get_cell_topics(), trained.get_cell_topics())
    np.testing.assert_array_equal(loaded.get_topic_gene().to_numpy(), trained.get_topic_gene().to_numpy())
    assert loaded.history.equals(trained.history)  # NaN where a term was off (ECR warm-up) compares equal
    with pytest.raises(InputError, match="loaded from a file"):
        loaded.train(max_epochs=1, progress=False)
    # Inference on new cells: gene order does not matter.
    perm = small_adata[:, np.random.default_rng(0).permutation(small_adata.n_vars)].copy()
    np.testing.assert_allclose(loaded.get_cell_topics(perm), trained.get_cell_topics(), rtol=1e-5, atol=1e-6)


def test_load_refuses_pickled_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (exec, ("open(%r, 'w').write('pwned')" % str(tmp_path / "pwned"),))

    path = tmp_path / "evil.pt"
    torch.save({"meta": "{}", "state_dict": {}, "x": Evil()}, path)
    with pytest.raises(InputError, match="refused"):
        sctopic.SCE2TM.load(path)
    assert not (tmp_path / "pwned").exists()
    path2 = tmp_path / "evil2.pt"
    path2.write_bytes(pickle.dumps(Evil()))
    with pytest.raises(InputError):
        sctopic.SCE2TM.load(path2)
    assert not (tmp_path / "pwned").exists()


def test_missing_genes_error_or_explicit_zero_fill(trained, small_adata):
    sub = small_adata[:, 10:].copy()
    with pytest.raises(InputError, match="10 of the model's 764 genes.*allow_missing_genes"):
        trained.get_cell_topics(sub)
    with pytest.warns(UserWarning, match="filled with zeros"):
        theta = trained.get_cell_topics(sub, allow_missing_genes=True)
    padded = small_adata.copy()
    dense = padded.X.toarray()
    dense[:, :10] = 0
    padded.X = dense
    np.testing.assert_allclose(theta, trained.get_cell_topics(padded), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs",
    [dict(ecr_weight=0.0), dict(cross_view=False), dict(cross_view=False, external_concat=True),
     dict(external_key="random"), dict(ecr_grad="unrolled"), dict(encoder_input="log1p"),
     dict(cve_loss="relational"), dict(preset="paper")],
)
def test_ablations_and_options_train(small_adata, kwargs):
    m = sctopic.SCE2TM(small_adata, n_topics=5, n_hidden=16, emb_dim=8, **kwargs)
    m.train(max_epochs=2, batch_size=150, progress=False)
    theta = m.get_cell_topics()
    assert theta.shape == (300, 5) and np.isfinite(theta).all()
    if kwargs.get("ecr_weight", 1) == 0:
        assert "ecr" not in m.history_
    if kwargs.get("cross_view", True) is False:
        assert "distill" not in m.history_


def test_external_obsm_key_any_width(small_adata):
    rng = np.random.default_rng(0)
    small_adata.obsm["X_fm"] = rng.normal(size=(300, 37)).astype(np.float32)
    m = sctopic.SCE2TM(small_adata, n_topics=4, external_key="X_fm", n_hidden=16, emb_dim=8)
    assert m.init_params["n_external"] == 37 and m.module.cluster_head is None  # relational: no head
    m.train(max_epochs=1, batch_size=150, progress=False)
    assert m.graph_stats_ == {}  # the relational CVE reads the view itself, no graph on it
    paper = sctopic.SCE2TM(small_adata, n_topics=4, external_key="X_fm", n_hidden=16, emb_dim=8, preset="paper")
    assert paper.module.cluster_head.net[0].in_features == 37
    paper.train(max_epochs=1, batch_size=150, progress=False)
    assert paper.graph_stats_["external"]["n_cells"] == 300
    expression = paper.graph_stats_["expression"]
    assert expression["components"] <= expression["components_mutual_knn"]


def test_bad_inputs_give_clear_errors(small_adata):
    with pytest.raises(InputError, match="not in adata.obsm"):
        sctopic.SCE2TM(small_adata, external_key="X_nope")
    small_adata.obsm["X_bad"] = np.full((300, 4), np.nan, dtype=np.float32)
    with pytest.raises(InputError, match="NaN"):
        sctopic.SCE2TM(small_adata, external_key="X_bad")
    with pytest.raises(InputError, match="n_topics"):
        sctopic.SCE2TM(small_adata, n_topics=1)
    m = sctopic.SCE2TM(small_adata, n_topics=4, n_hidden=16, emb_dim=8)
    with pytest.raises(SctopicError, match="not trained"):
        m.get_cell_topics()


def test_empty_cells_and_genes_warn(small_adata):
    a = small_adata.copy()
    X = a.X.toarray()
    X[0, :] = 0
    X[:, 3] = 0
    a.X = X
    with pytest.warns(UserWarning) as rec:
        m = sctopic.SCE2TM(a, n_topics=4, n_hidden=16, emb_dim=8)
    msgs = " ".join(str(r.message) for r in rec)
    assert "1 of 300 cells have zero counts" in msgs
    assert "genes with zero counts" in msgs
    m.train(max_epochs=1, batch_size=150, progress=False)
    assert m.adata.obsm["X_sce2tm"].shape[0] == 300
    assert np.isnan(m.adata.varm["sce2tm_topic_gene"]).any()  # unused genes: NaN rows


def test_hvg_selection_inside_model(small_adata):
    m = sctopic.SCE2TM(small_adata, n_topics=4, n_top_genes=300, n_hidden=16, emb_dim=8)
    assert len(m.genes) == 300
    m.train(max_epochs=1, batch_size=150, progress=False)
    tg = m.adata.varm["sce2tm_topic_gene"]
    assert tg.shape == (small_adata.n_vars, 4) and np.isfinite(tg).all(axis=1).sum() == 300


def test_evaluate_reads_a_gene_subset_model_in_memory(small_adata):
    from sctopic import metrics

    m = sctopic.SCE2TM(small_adata, n_topics=4, n_top_genes=300, n_hidden=16, emb_dim=8)
    m.train(max_epochs=1, batch_size=150, progress=False)
    res = metrics.evaluate(m.adata, labels="cell_type", genesets=("hallmark",), permutations=0)
    assert res["td"] == pytest.approx(metrics.topic_diversity(m.get_topic_gene().to_numpy(), 10))
    assert res["n_genes"] == 300 or res.get("n_topics") == 4


def test_repeated_training_in_one_process_is_bit_identical():
    """The ECR backward once used LAPACK's least-squares driver, whose results differed from
    call to call; two trainings with the same seed in one process must agree exactly."""
    import anndata as ad

    from conftest import shared_file

    a = ad.read_h5ad(shared_file("kang2018_pbmc_ifnb_vs_ctrl.h5ad"))
    out = []
    for _ in range(2):
        m = sctopic.SCE2TM(a.copy(), n_topics=50, seed=0)
        m.train(max_epochs=4, progress=False, write_results=False)
        out.append(m.get_cell_topics())
    np.testing.assert_array_equal(out[0], out[1])


def test_presets_fill_unset_options(small_adata):
    """``preset`` fills the CVE loss and weight and the ECR schedule; explicit values win."""
    from sctopic.models.sce2tm import AUTO_CVE_PER_COUNT, PRESETS

    X = small_adata.X
    mean_lib = float(X.sum() / (np.asarray(X.sum(1)).ravel() > 0).sum())
    d = sctopic.SCE2TM(small_adata, n_topics=4, n_hidden=16, emb_dim=8)
    assert d.init_params["preset"] == "default" and d.init_params["cve_loss"] == PRESETS["default"]["cve_loss"]
    assert d.init_params["cve_weight"] == "auto"
    assert d.init_params["cve_weight_value"] == pytest.approx(AUTO_CVE_PER_COUNT * mean_lib, rel=1e-6)
    d.train(max_epochs=4, batch_size=150, progress=False)
    # Default ECR schedule: off for the first half, ramped over the next quarter (no Sinkhorn
    # solve, no "ecr" entry, while the weight is 0).
    ecr = np.asarray(d.history_["ecr"], dtype=float)
    assert np.isnan(ecr[:3]).all() and np.isfinite(ecr[3])  # weight 0 through epoch 2 of 0-3
    assert "entropy" not in d.history_  # the instance-level CVE has no entropy term
    p = sctopic.SCE2TM(small_adata, n_topics=4, n_hidden=16, emb_dim=8, preset="paper")
    assert (p.init_params["cve_loss"], p.init_params["cve_weight_value"]) == ("cluster", 1.0)
    p.train(max_epochs=2, batch_size=150, progress=False)
    assert np.isfinite(np.asarray(p.history_["ecr"], dtype=float)).all() and "entropy" in p.history_
    mixed = sctopic.SCE2TM(small_adata, n_topics=4, n_hidden=16, emb_dim=8, preset="paper", cve_weight=7)
    assert mixed.init_params["cve_weight_value"] == 7.0 and mixed.init_params["cve_loss"] == "cluster"
    with pytest.raises(InputError, match="preset"):
        sctopic.SCE2TM(small_adata, preset="best")
    with pytest.raises(InputError, match="cve_weight"):
        sctopic.SCE2TM(small_adata, cve_weight=-1)
    with pytest.raises(InputError, match="cve_loss"):
        sctopic.SCE2TM(small_adata, cve_loss="instance")
    with pytest.raises(InputError, match="ecr_delay"):
        d.train(max_epochs=2, ecr_delay=0.8, ecr_warmup=0.5, progress=False)


def test_clustering_key_names_the_recommended_representation(trained, small_adata):
    """The result names the obsm key to cluster; evaluate() clusters it by default; files
    written before the key existed fall back to theta."""
    from sctopic.data.outputs import clustering_key
    from sctopic.metrics import evaluate

    a = trained.adata
    key = a.uns["sctopic"]["clustering_key"]
    rep = "X_sce2tm_logits" if trained.clustering_representation == "logits" else "X_sce2tm"
    assert key == rep and clustering_key(a) == rep
    labels = small_adata.obs.columns[0]
    default = evaluate(a, labels=labels, genesets=None)
    assert default["use_rep"] == rep
    explicit = evaluate(a, labels=labels, genesets=None, use_rep="X_sce2tm")
    assert explicit["use_rep"] == "X_sce2tm"
    old = a.copy()
    old.uns["sctopic"] = {"model": "sce2tm"}
    assert clustering_key(old) == "X_sce2tm"
    assert evaluate(old, labels=labels, genesets=None)["use_rep"] == "X_sce2tm"
