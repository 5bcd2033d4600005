"""scETM family: module maths, batch intercepts, adversary, p-scETM, transfer, CLI."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

import sctopic
from sctopic.errors import InputError
from sctopic.nn.decoder import LinearTopicDecoder
from sctopic.nn.scetm import SCETMModule, confusion_loss, kl_standard_normal, library_normalize
from sctopic.utils.sparse import dense_to_csr


def _with_batches(adata, n=3, seed=0):
    rng = np.random.default_rng(seed)
    adata.obs["donor"] = pd.Categorical(rng.choice([f"d{i}" for i in range(n)], adata.n_obs))
    return adata


@pytest.fixture(scope="module")
def trained_scetm(pbmc_small):
    ad = _with_batches(pbmc_small.copy())
    m = sctopic.SCETM(ad, n_topics=8, batch_key="donor", seed=0)
    m.train(max_epochs=4, batch_size=128, progress=False)
    return m


# ------------------------------------------------------------------ maths
def test_kl_and_confusion_against_plain_references():
    torch.manual_seed(0)
    mu, ls = torch.randn(5, 4, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64)
    q = torch.distributions.Normal(mu, ls.exp())
    p = torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu))
    ref = torch.distributions.kl_divergence(q, p).sum(1)
    torch.testing.assert_close(kl_standard_normal(mu, ls), ref)
    logits = torch.randn(6, 3, dtype=torch.float64)
    probs = torch.softmax(logits, 1)
    plain = np.mean([-sum(math.log(probs[i, j]) / 3 for j in range(3)) for i in range(6)])
    assert abs(float(confusion_loss(logits)) - plain) < 1e-12


def test_library_normalize_sparse_equals_dense():
    x = torch.tensor([[0.0, 2.0, 2.0], [1.0, 0.0, 0.0], [3.0, 1.0, 0.0]])
    dense = library_normalize(x)
    torch.testing.assert_close(dense.sum(1), torch.ones(3))
    torch.testing.assert_close(library_normalize(dense_to_csr(x)).to_dense(), dense)


def test_scetm_loss_against_plain_formula():
    torch.manual_seed(1)
    m = SCETMModule(n_genes=7, n_topics=3, n_hidden=5, emb_dim=4, n_batches=2).eval()
    with torch.no_grad():
        m.decoder.batch_intercept.normal_()
    x = torch.poisson(torch.rand(6, 7) * 4)
    x[:, 0] += 1
    b = torch.tensor([0, 1, 0, 1, 1, 0])
    out = m(dense_to_csr(x), batch=b, kl_weight=0.3)
    xn = x / x.sum(1, keepdim=True)
    mu, ls = m.encoder(xn)
    theta = torch.softmax(mu, 1)
    p = torch.softmax(theta @ (m.decoder.alpha @ m.decoder.rho_trainable) + m.decoder.batch_intercept[b], 1)
    recon = -(xn * torch.log(p)).sum(1).mean()
    kl = kl_standard_normal(mu, ls).mean()
    torch.testing.assert_close(out["reconstruction"], recon, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["loss"], recon + 0.3 * kl, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ batch intercepts
def test_intercepts_change_reconstruction_only_through_batch_term():
    torch.manual_seed(2)
    dec = LinearTopicDecoder(n_genes=9, n_topics=4, emb_dim=3, n_batches=3)
    with torch.no_grad():
        dec.batch_intercept.normal_()
    theta = torch.softmax(torch.randn(5, 4), 1)
    beta = dec.beta()
    b = torch.tensor([2, 0, 2, 1, 0])
    diff = dec.logits(theta, beta, b) - dec.logits(theta, beta, None)
    torch.testing.assert_close(diff, dec.batch_intercept[b])
    # Cells with the same counts but different batches get the same topics (the encoder does
    # not see the batch) and reconstructions that differ by exactly lambda_b - lambda_b'.
    m = SCETMModule(n_genes=9, n_topics=4, n_hidden=6, emb_dim=3, n_batches=3).eval()
    with torch.no_grad():
        m.decoder.batch_intercept.normal_()
    x = torch.poisson(torch.rand(1, 9) * 5) + 1
    xx = x.repeat(2, 1)
    torch.testing.assert_close(m.infer(xx)[0], m.infer(xx)[1])
    theta2 = torch.softmax(m.infer(xx), 1)
    lg = m.decoder.logits(theta2, m.decoder.beta(), torch.tensor([0, 2]))
    torch.testing.assert_close(lg[0] - lg[1], m.decoder.batch_intercept[0] - m.decoder.batch_intercept[2])
    # Only the intercepts of batches in the minibatch receive gradient.
    m.train()
    out = m(xx, batch=torch.tensor([0, 0]))
    out["reconstruction"].backward()
    g = m.decoder.batch_intercept.grad
    assert g[0].abs().sum() > 0 and g[1].abs().sum() == 0 and g[2].abs().sum() == 0


def test_batch_intercepts_fitted_and_written(trained_scetm):
    m = trained_scetm
    assert m.n_batches == 3 and m.batch_categories_ == ["d0", "d1", "d2"]
    lam = m.module.decoder.batch_intercept.detach()
    assert lam.shape == (3, len(m.genes)) and lam.abs().sum() > 0  # moved from its zero start
    theta = m.adata.obsm["X_scetm"]
    np.testing.assert_allclose(theta.sum(1), 1.0, rtol=1e-5)


# ------------------------------------------------------------------ adversary
def test_adversary_gradients_reach_encoder_with_the_right_sign():
    torch.manual_seed(3)
    m = SCETMModule(n_genes=12, n_topics=5, n_hidden=8, emb_dim=4, n_batches=2, adversarial=True, dropout=0.0)
    x = torch.poisson(torch.rand(64, 12) * 5) + 1
    b = torch.arange(64) % 2
    x[b == 1, :6] *= 4  # a batch effect the discriminator can see
    disc_params = list(m.discriminator.parameters())
    enc_params = list(m.encoder.parameters())
    # Let the discriminator learn first, on detached delta.
    opt = torch.optim.Adam(disc_params, lr=1e-2)
    m.eval()
    for _ in range(150):
        out = m(x, batch=b, adv_weight=0.0)
        opt.zero_grad()
        out["discriminator"].backward()
        opt.step()
    m.discriminator.eval()
    # The discriminator loss does not reach the encoder...
    out = m(x, batch=b, adv_weight=1.0)
    g_disc_enc = torch.autograd.grad(out["discriminator"], enc_params, allow_unused=True, retain_graph=True)
    assert all(g is None or g.abs().sum() == 0 for g in g_disc_enc)
    # ... and the confusion loss does not reach the discriminator, but does reach the encoder.
    g_conf_disc = torch.autograd.grad(out["adversarial"], disc_params, allow_unused=True, retain_graph=True)
    assert all(g is None or g.abs().sum() == 0 for g in g_conf_disc)
    g_enc = torch.autograd.grad(out["adversarial"], enc_params, allow_unused=True)
    g_enc = [torch.zeros_like(p) if g is None else g for p, g in zip(enc_params, g_enc)]  # logsigma head unused in eval
    assert sum(float(g.abs().sum()) for g in g_enc) > 0

    def disc_state():
        with torch.no_grad():
            probs = torch.softmax(m.discriminator(m.encoder(library_normalize(x))[0]), 1)
            acc_ce = float(torch.nn.functional.cross_entropy(torch.log(probs), b))
            return float(confusion_loss(torch.log(probs))), acc_ce

    conf0, ce0 = disc_state()
    with torch.no_grad():  # a small step of the encoder down the confusion gradient
        for p, g in zip(enc_params, g_enc):
            p -= 1e-3 * g / max(float(sum(gg.norm() ** 2 for gg in g_enc)) ** 0.5, 1e-12)
    conf1, ce1 = disc_state()
    assert conf1 < conf0  # predictions moved toward uniform
    assert ce1 > ce0  # the discriminator got worse at naming the true batch


def test_adversarial_training_runs_with_schedule(pbmc_small):
    ad = _with_batches(pbmc_small.copy())
    m = sctopic.SCETM(ad, n_topics=6, batch_key="donor", adversarial=True)
    m.train(max_epochs=6, batch_size=256, progress=False, adv_cutoff=1 / 3, adv_warmup=1 / 3)
    h = m.history_
    assert "discriminator" in h and np.all(np.isfinite(h["discriminator"]))
    # the encoder's adversarial term only appears once the cutoff has passed (weight 0 through
    # epoch 2 of 6); the history stays aligned with the epochs, NaN where a term was not computed
    adv = np.asarray(h["adversarial"])
    assert len(adv) == len(h["loss"]) == 6
    assert np.isnan(adv[:3]).all() and np.isfinite(adv[3:]).all()


def test_adversarial_needs_batches(pbmc_small):
    with pytest.raises(InputError, match="batch_key"):
        sctopic.SCETM(pbmc_small.copy(), n_topics=5, adversarial=True)
    with pytest.raises(InputError, match="not a column"):
        sctopic.SCETM(pbmc_small.copy(), n_topics=5, batch_key="nope")


# ------------------------------------------------------------------ p-scETM
def test_pscetm_rho_is_the_fixed_pathway_matrix_and_stays_fixed(pbmc_small):
    from sctopic.genesets import load

    ad = pbmc_small.copy()
    m = sctopic.SCETM(ad, n_topics=5, gene_sets="hallmark", seed=0)
    # Independent construction: membership vectors z-scored across genes, set by set.
    lib = load("hallmark")
    genes = m.genes
    upper = {g.upper(): i for i, g in enumerate(genes)}
    rows = []
    for name in m.pathways_:
        v = np.zeros(len(genes))
        for g in lib.members(name):
            if g.upper() in upper:
                v[upper[g.upper()]] = 1
        rows.append((v - v.mean()) / v.std())
    ref = np.array(rows)
    assert 5 <= len(m.pathways_) <= len(lib)
    fixed0 = m.module.decoder.fixed_rho.clone()
    np.testing.assert_allclose(fixed0.numpy(), ref, atol=1e-5)
    assert m.module.decoder.rho_trainable is None  # pure p-scETM: rho is the pathway matrix
    assert all(p is not m.module.decoder.fixed_rho for p in m.module.parameters())
    alpha0 = m.module.decoder.alpha.detach().clone()
    m.train(max_epochs=3, batch_size=256, progress=False)
    assert torch.equal(m.module.decoder.fixed_rho, fixed0)
    assert not torch.equal(m.module.decoder.alpha.detach(), alpha0)
    tp = m.topic_pathway_frame()
    assert tp.shape == (5, len(m.pathways_)) and list(tp.columns) == m.pathways_
    assert list(m.top_pathways(3).iloc[0]) == list(tp.iloc[0].sort_values(ascending=False).index[:3])
    assert ad.uns["scetm"]["topic_pathway"].shape == (5, len(m.pathways_))


def test_pscetm_initial_logits_are_order_one():
    """Thousands of z-scored pathway rows must not saturate the softmax at the start."""
    torch.manual_seed(0)
    P, V = 3000, 400
    fixed = torch.randn(P, V)
    dec = LinearTopicDecoder(n_genes=V, n_topics=20, emb_dim=0, fixed_rho=fixed)
    assert 0.5 < float(dec.beta().std()) < 2.0
    plain = LinearTopicDecoder(n_genes=V, n_topics=20, emb_dim=16)  # scETM's N(0, 1) alpha kept
    assert float(plain.alpha.std()) > 0.8


def test_pscetm_save_load_keeps_pathways(pbmc_small, tmp_path):
    m = sctopic.SCETM(pbmc_small.copy(), n_topics=4, gene_sets="hallmark")
    m.train(max_epochs=2, batch_size=256, progress=False, write_results=False)
    m.save(tmp_path / "m.pt")
    m2 = sctopic.SCETM.load(tmp_path / "m.pt")
    assert m2.pathways_ == m.pathways_
    assert torch.equal(m2.module.decoder.fixed_rho, m.module.decoder.fixed_rho)
    pd.testing.assert_frame_equal(m2.topic_pathway_frame(), m.topic_pathway_frame())


# ------------------------------------------------------------------ model surface
def test_same_seed_same_model_and_save_load_roundtrip(pbmc_small, tmp_path):
    def fit(seed):
        m = sctopic.SCETM(pbmc_small.copy(), n_topics=5, seed=seed)
        return m.train(max_epochs=3, batch_size=256, seed=seed, progress=False, write_results=False)

    a, b, c = fit(0), fit(0), fit(1)
    np.testing.assert_array_equal(a.get_cell_topics(), b.get_cell_topics())
    assert not np.allclose(a.get_cell_topics(), c.get_cell_topics())
    a.save(tmp_path / "a.pt")
    a2 = sctopic.SCETM.load(tmp_path / "a.pt", adata=pbmc_small)
    np.testing.assert_array_equal(a2.get_cell_topics(), a.get_cell_topics())
    pd.testing.assert_frame_equal(a2.get_topic_gene(), a.get_topic_gene())
    with pytest.raises(InputError, match="SCETM"):
        sctopic.SCE2TM.load(tmp_path / "a.pt")


def test_trainer_exponential_lr_decay(pbmc_small):
    m = sctopic.SCETM(pbmc_small.copy(), n_topics=4)
    m.train(max_epochs=2, batch_size=100, lr=1e-2, lr_decay=0.1, progress=False, write_results=False)
    n_steps = 2 * (pbmc_small.n_obs // 100)
    assert m.history_["lr"][-1] == pytest.approx(1e-2 * math.exp(-0.1 * n_steps), rel=1e-6)


def test_sce2tm_batch_key_adds_intercepts(pbmc_small, tmp_path):
    ad = _with_batches(pbmc_small.copy())
    m = sctopic.SCE2TM(ad, n_topics=6, batch_key="donor", cross_view=False)
    assert m.module.decoder.batch_intercept.shape == (3, len(m.genes))
    m.train(max_epochs=2, batch_size=256, progress=False)
    assert m.module.decoder.batch_intercept.detach().abs().sum() > 0
    m.save(tmp_path / "s.pt")
    m2 = sctopic.SCE2TM.load(tmp_path / "s.pt")
    assert m2.batch_categories_ == ["d0", "d1", "d2"] and m2.batch_key == "donor"


# ------------------------------------------------------------------ transfer
@pytest.mark.parametrize("cls", ["SCETM", "SCE2TM"])
def test_transfer_with_permuted_genes_equals_original_order(pbmc_small, cls):
    m = getattr(sctopic, cls)(pbmc_small.copy(), n_topics=5, **({"cross_view": False} if cls == "SCE2TM" else {}))
    m.train(max_epochs=2, batch_size=256, progress=False, write_results=False)
    rng = np.random.default_rng(0)
    perm = rng.permutation(pbmc_small.n_vars)
    shuffled = pbmc_small[:, perm].copy()
    out1, rep1 = sctopic.transfer(m, pbmc_small)
    out2, rep2 = sctopic.transfer(m, shuffled)
    key = m.model_name
    np.testing.assert_array_equal(out1.obsm[f"X_{key}"], out2.obsm[f"X_{key}"])
    np.testing.assert_array_equal(out1.obsm[f"X_{key}"], m.get_cell_topics())
    assert rep1["fraction_shared"] == 1.0
    assert f"X_{key}" not in pbmc_small.obsm  # the input is not modified


def test_transfer_missing_genes_and_orthologs(trained_scetm, pbmc_small, tmp_path):
    m = trained_scetm
    drop = set(m.genes[:50])
    part = pbmc_small[:, [g not in drop for g in pbmc_small.var_names]].copy()
    with pytest.warns(UserWarning, match=r"50 of the model's .* \(.*%\) are missing"):
        _, rep = sctopic.transfer(m, part)
    assert rep["n_shared_genes"] == len(m.genes) - 50
    # "Mouse" symbols (capitalised) mapped back through a one-to-one ortholog table.
    mouse = pbmc_small.copy()
    mouse.var_names = [g.capitalize() for g in pbmc_small.var_names]
    table = pd.DataFrame({"human": list(pbmc_small.var_names), "mouse": list(mouse.var_names)})
    # An ambiguous (one-to-many) pair is dropped, not guessed.
    table = pd.concat([table, pd.DataFrame({"human": ["CD3E", "CD3E"], "mouse": ["Cd3e", "Cd3e-ps"]})])
    path = tmp_path / "orth.tsv"
    table.to_csv(path, sep="\t", index=False, header=False)
    assert "CD3E" in m.genes
    with pytest.warns(UserWarning, match=r"1 of the model's"):
        out, rep = sctopic.transfer(m, mouse, orthologs=path)
    assert rep["ortholog_one_to_one_used"] == pbmc_small.n_vars - 1
    # Equal to direct transfer of the human data with CD3E removed.
    with pytest.warns(UserWarning):
        direct, _ = sctopic.transfer(m, pbmc_small[:, pbmc_small.var_names != "CD3E"].copy())
    np.testing.assert_array_equal(out.obsm["X_scetm"], direct.obsm["X_scetm"])
    with pytest.raises(InputError, match="identifiers"):
        ens = pbmc_small.copy()
        ens.var_names = [f"ENSG{i:011d}" for i in range(ens.n_vars)]
        sctopic.transfer(m, ens)


# ------------------------------------------------------------------ CLI
def test_cli_fit_scetm_and_transfer(tmp_path, pbmc_small):
    import json

    from sctopic.cli import main

    ad = _with_batches(pbmc_small.copy())
    data = tmp_path / "d.h5ad"
    ad.write_h5ad(data)
    out = tmp_path / "fit"
    rc = main(["-q", "fit", str(data), "--model", "scetm", "--out", str(out), "--n-topics", "5",
               "--n-hvg", "0", "--max-epochs", "2", "--batch-key", "donor", "--adversarial"])
    assert rc == 0
    rep = json.loads((out / "train.json").read_text())
    assert rep["model"] == "scetm" and rep["batches"] == ["d0", "d1", "d2"]
    assert rep["settings"]["batch_size"] == 2000 and rep["settings"]["adversarial"] is True
    new = tmp_path / "new.h5ad"
    pbmc_small[:200, ::-1].copy().write_h5ad(new)
    rc = main(["-q", "transfer", str(out), str(new), "--out", str(tmp_path / "tr")])
    assert rc == 0
    tr = json.loads((tmp_path / "tr" / "transfer.json").read_text())
    assert tr["n_cells"] == 200 and tr["fraction_shared"] == 1.0
    import anndata

    res = anndata.read_h5ad(tmp_path / "tr" / "result.h5ad")
    m = sctopic.load_model(out)
    np.testing.assert_allclose(res.obsm["X_scetm"], m.get_cell_topics(pbmc_small[:200]), rtol=1e-6)


def test_cli_rejects_flags_of_the_other_model(tmp_path, pbmc_small, capsys):
    from sctopic.cli import main

    data = tmp_path / "d.h5ad"
    pbmc_small.write_h5ad(data)
    rc = main(["fit", str(data), "--out", str(tmp_path / "o"), "--gene-sets", "hallmark"])
    assert rc == 2
    assert "--gene-sets does not apply to --model sce2tm" in capsys.readouterr().err
    rc = main(["fit", str(data), "--model", "scetm", "--out", str(tmp_path / "o2"), "--ecr-weight", "0"])
    assert rc == 2
    rc = main(["transfer", str(tmp_path / "nowhere"), str(data), "--out", str(tmp_path / "t")])
    assert rc == 2 and "no model file" in capsys.readouterr().err
