"""Every loss of the scE2TM module against a slow plain implementation."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sctopic.nn.crossview import (
    cluster_contrastive_loss,
    consistency_loss,
    info_nce,
    mean_entropy,
    relational_distillation,
)
from sctopic.nn.decoder import EmbeddedTopicDecoder, pairwise_sq_dist
from sctopic.nn.prior import kl_diag_gaussian, laplace_dirichlet_prior
from sctopic.nn.sce2tm import SCE2TMModule


def _simplex(B, K, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(B, K, generator=g, dtype=torch.float64) * 2, dim=1)


def test_consistency_loss_plain():
    p, q = _simplex(7, 5, 0), _simplex(7, 5, 1)
    ref = -sum(math.log(sum(float(p[i, k] * q[i, k]) for k in range(5))) for i in range(7)) / 7
    assert abs(float(consistency_loss(p, q)) - ref) < 1e-12


def test_cluster_contrastive_loss_plain():
    B, K, T = 9, 4, 0.5
    p, q = _simplex(B, K, 2), _simplex(B, K, 3)
    cols = [p[:, k].numpy() for k in range(K)] + [q[:, k].numpy() for k in range(K)]
    cols = [c / np.linalg.norm(c) for c in cols]
    total = 0.0
    for i in range(2 * K):
        pos = (i + K) % (2 * K)
        logits = {j: float(cols[i] @ cols[j]) / T for j in range(2 * K) if j != i}
        denom = sum(math.exp(v) for v in logits.values())
        total += -(logits[pos] - math.log(denom))
    assert abs(float(cluster_contrastive_loss(p, q, T)) - total / (2 * K)) < 1e-10
    # Symmetric in its arguments.
    assert abs(float(cluster_contrastive_loss(q, p, T)) - total / (2 * K)) < 1e-10


def test_mean_entropy_plain():
    p = _simplex(6, 5, 4)
    m = [sum(float(p[i, k]) for i in range(6)) / 6 for k in range(5)]
    ref = -sum(v * math.log(v) for v in m)
    assert abs(float(mean_entropy(p)) - ref) < 1e-12
    assert float(mean_entropy(torch.full((3, 5), 0.2))) == pytest.approx(math.log(5))


def test_info_nce_plain():
    B, D, T = 7, 5, 0.5
    g = torch.Generator().manual_seed(6)
    a, b = torch.randn(B, D, generator=g, dtype=torch.float64), torch.randn(B, D, generator=g, dtype=torch.float64)
    an = [a[i].numpy() / np.linalg.norm(a[i].numpy()) for i in range(B)]
    bn = [b[i].numpy() / np.linalg.norm(b[i].numpy()) for i in range(B)]
    total = 0.0
    for i in range(B):
        logits = [float(an[i] @ bn[j]) / T for j in range(B)]
        total += -(logits[i] - math.log(sum(math.exp(v) for v in logits)))
    assert abs(float(info_nce(a, b, T)) - total / B) < 1e-10
    # Positives aligned: a key equal to its query scores better than a shuffled one.
    assert float(info_nce(a, a, T)) < float(info_nce(a, a.roll(1, 0), T))


def test_relational_distillation_plain():
    B, T = 6, 0.5
    g = torch.Generator().manual_seed(7)
    s, t = torch.randn(B, 4, generator=g, dtype=torch.float64), torch.randn(B, 3, generator=g, dtype=torch.float64)

    def probs(z):
        z = [z[i].numpy() / np.linalg.norm(z[i].numpy()) for i in range(B)]
        out = []
        for i in range(B):
            w = {j: math.exp(float(z[i] @ z[j]) / T) for j in range(B) if j != i}
            tot = sum(w.values())
            out.append({j: v / tot for j, v in w.items()})
        return out

    P, Q = probs(t), probs(s)
    ref = sum(P[i][j] * math.log(P[i][j] / Q[i][j]) for i in range(B) for j in P[i]) / B
    assert abs(float(relational_distillation(s, t, T)) - ref) < 1e-10
    assert float(relational_distillation(t, t, T)) == pytest.approx(0.0, abs=1e-12)
    # The teacher is a target: no gradient flows into it.
    t.requires_grad_(True)
    relational_distillation(s.requires_grad_(True), t, T).backward()
    assert t.grad is None and torch.isfinite(s.grad).all()


def test_neighbour_cve_terms_and_weight():
    """The instance-level CVE pairs an anchor's logits with its external neighbour's cluster
    logits, the cluster logits of the anchor with its expression neighbour's logits, and a cell
    with itself; cve_weight scales exactly these terms."""
    torch.manual_seed(3)
    V, K, B, d = 40, 6, 16, 8
    mod = SCE2TMModule(V, K, n_external=d, n_hidden=16, emb_dim=8, cve_loss="neighbour").double().eval()
    x = torch.poisson(torch.rand(B, V, dtype=torch.float64) * 3)
    xn = torch.poisson(torch.rand(B, V, dtype=torch.float64) * 3)
    v, vn = torch.randn(B, d, dtype=torch.float64), torch.randn(B, d, dtype=torch.float64)
    out = mod(x, xn, v, vn, ecr_weight=0.0, cve_weight=3.0)
    assert "entropy" not in out
    mu = mod.encoder(torch.cat([x, xn]))[0]
    psi = mod.cluster_head(torch.cat([v, vn]))
    distill = info_nce(mu[:B], psi[B:]) + info_nce(psi[:B], mu[B:])
    assert float(out["distill"]) == pytest.approx(float(distill), rel=1e-12)
    assert float(out["consistency"]) == pytest.approx(float(info_nce(mu[:B], psi[:B])), rel=1e-12)
    total = out["reconstruction"] + out["kl"] + 3.0 * (out["distill"] + out["consistency"])
    assert float(out["loss"]) == pytest.approx(float(total), rel=1e-12)
    # The paper's cluster-level CVE at weight 2: every CVE term doubles, entropy included.
    paper = SCE2TMModule(V, K, n_external=d, n_hidden=16, emb_dim=8).double().eval()
    o1, o2 = paper(x, xn, v, vn, cve_weight=1.0), paper(x, xn, v, vn, cve_weight=2.0)
    cve1 = o1["distill"] + o1["consistency"] - 5.0 * o1["entropy"]
    assert float(o2["loss"] - o1["loss"]) == pytest.approx(float(cve1), rel=1e-10)
    with pytest.raises(ValueError, match="cve_loss"):
        SCE2TMModule(V, K, n_external=d, cve_loss="instance")


def test_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(5)
    mu, logvar = torch.randn(4, 6, generator=g, dtype=torch.float64), torch.randn(4, 6, generator=g, dtype=torch.float64)
    m0, v0 = laplace_dirichlet_prior(6)
    assert m0 == 0.0 and v0 == pytest.approx(1 - 1 / 6)
    q = torch.distributions.Normal(mu, torch.exp(0.5 * logvar))
    p = torch.distributions.Normal(torch.zeros_like(mu), torch.full_like(mu, math.sqrt(v0)))
    ref = torch.distributions.kl_divergence(q, p).sum(1)
    torch.testing.assert_close(kl_diag_gaussian(mu, logvar, m0, v0), ref)


def test_beta_is_softmax_over_topics_of_distances():
    dec = EmbeddedTopicDecoder(n_genes=30, n_topics=7, emb_dim=5, tau=0.2).double()
    beta = dec.beta()
    torch.testing.assert_close(beta.sum(0), torch.ones(30, dtype=torch.float64))
    t, g = dec.topic_embedding.detach(), dec.gene_embedding.detach()
    for k in (0, 3):
        for m in (0, 11, 29):
            num = math.exp(-float(((g[m] - t[k]) ** 2).sum()) / 0.2)
            den = sum(math.exp(-float(((g[m] - t[j]) ** 2).sum()) / 0.2) for j in range(7))
            assert float(beta[k, m]) == pytest.approx(num / den, rel=1e-10)
    torch.testing.assert_close(pairwise_sq_dist(t, g), torch.cdist(t, g) ** 2)


def test_module_losses_and_simplex_outputs():
    torch.manual_seed(0)
    V, K, B, d = 40, 6, 16, 8
    mod = SCE2TMModule(V, K, n_external=d, n_hidden=16, emb_dim=8).double()
    x = torch.poisson(torch.rand(B, V, dtype=torch.float64) * 3)
    xn = torch.poisson(torch.rand(B, V, dtype=torch.float64) * 3)
    v, vn = torch.randn(B, d, dtype=torch.float64), torch.randn(B, d, dtype=torch.float64)
    mod.eval()  # deterministic: z = mu
    out = mod(x, xn, v, vn, ecr_weight=20.0)
    # Recompute the total from its parts, and the reconstruction by hand.
    mu, logvar = mod.encoder(torch.cat([x, xn]))
    theta = torch.softmax(mu, 1)
    assert torch.allclose(theta.sum(1), torch.ones(2 * B, dtype=torch.float64))
    beta = mod.decoder.beta()
    logits = mod.decoder.bn(theta[:B] @ beta)
    recon = 0.0
    for i in range(B):
        lp = logits[i] - torch.logsumexp(logits[i], 0)
        recon += -float((x[i] * lp).sum())
    assert float(out["reconstruction"]) == pytest.approx(recon / B, rel=1e-10)
    total = out["reconstruction"] + out["kl"] + 20.0 * out["ecr"] + out["distill"] + out["consistency"] - 5.0 * out["entropy"]
    assert float(out["loss"]) == pytest.approx(float(total), rel=1e-12)


def test_gradients_reach_every_parameter():
    torch.manual_seed(1)
    mod = SCE2TMModule(30, 5, n_external=6, n_hidden=12, emb_dim=4)
    x = torch.poisson(torch.rand(10, 30) * 3)
    out = mod(x, x.flip(0), torch.randn(10, 6), torch.randn(10, 6), ecr_weight=10.0)
    out["loss"].backward()
    for name, p in mod.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_sparse_csr_input_gives_the_same_losses_and_gradients():
    torch.manual_seed(2)
    V, K, B, d = 50, 6, 12, 5
    for enc_in in ("counts", "log1p"):
        mod = SCE2TMModule(V, K, n_external=d, n_hidden=16, emb_dim=8, encoder_input=enc_in).double()
        mod.eval()
        x = torch.poisson(torch.rand(2 * B, V, dtype=torch.float64) * 0.5)
        v, vn = torch.randn(B, d, dtype=torch.float64), torch.randn(B, d, dtype=torch.float64)
        dense = mod(x, None, v, vn, ecr_weight=5.0)
        g_dense = torch.autograd.grad(dense["loss"], mod.encoder.mlp[0].weight)[0]
        sparse = mod(x.to_sparse_csr(), None, v, vn, ecr_weight=5.0)
        g_sparse = torch.autograd.grad(sparse["loss"], mod.encoder.mlp[0].weight)[0]
        for key in dense:
            assert float(sparse[key]) == pytest.approx(float(dense[key]), rel=1e-10), key
        torch.testing.assert_close(g_sparse, g_dense)
