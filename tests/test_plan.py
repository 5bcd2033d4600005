"""The training plan, its schedules, the module API and the models' public surface.

Includes a third model written in one file on the public extension points (a plain ETM, Dieng
et al. 2020): if the plan serves it, a new model needs nothing more than this.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import sctopic
from sctopic.errors import InputError
from sctopic.models.base import BaseTopicModel
from sctopic.models.batches import plain_batches
from sctopic.nn.base import TopicModule, batch_offsets
from sctopic.nn.encoder import NormalEncoder
from sctopic.nn.scetm import kl_standard_normal, library_normalize
from sctopic.train import Constant, Optimisation, Ramp, RunOptions, TrainingPlan, warmup
from sctopic.utils.random import seeded


# ---------------------------------------------------------------- schedules
def test_ramp_matches_its_closed_form():
    r = Ramp(2.0, start=0.5, length=0.25)  # 0 until epoch 50 of 100, 2.0 from epoch 75
    for epoch, expected in [(0, 0.0), (50, 0.0), (55, 0.4), (62, 0.96), (75, 2.0), (99, 2.0)]:
        assert r(epoch, 100) == pytest.approx(expected)
    assert Ramp(1.0, 0.0, 0.0)(0, 10) == 0.0 and Ramp(1.0, 0.0, 0.0)(1, 10) == 1.0


def test_warmup_is_a_ramp_from_zero_or_a_constant():
    assert warmup(1e-7, 1 / 3) == Ramp(1e-7, 0.0, 1 / 3)
    assert warmup(0.5, 0.0) == Constant(0.5)
    assert [warmup(1.0, 0.5)(e, 10) for e in (0, 1, 5, 9)] == pytest.approx([0.0, 0.2, 1.0, 1.0])
    assert Constant(3.0).describe() == {"schedule": "Constant", "value": 3.0}
    # Delayed: 0 for the first half, then linear over a quarter (ECR's warm-up option).
    assert [warmup(2.0, 0.25, 0.5)(e, 8) for e in (0, 3, 4, 5, 6, 7)] == pytest.approx([0, 0, 0, 1, 2, 2])


def test_ecr_delay_skips_ecr_and_keeps_the_history_aligned(pbmc_small):
    model = sctopic.SCE2TM(pbmc_small.copy(), n_topics=6, seed=0)
    model.train(max_epochs=4, progress=False, device="cpu", ecr_delay=0.5, ecr_warmup=0.25)
    hist = model.history
    # Weight 0 through epoch 2 (the ramp starts from 0 there), 1.0 * ecr_weight in epoch 3.
    assert len(hist) == 4 and hist["ecr"].isna().tolist() == [True, True, True, False]
    assert hist["loss"].notna().all()
    assert model.train_settings_["ecr_delay"] == 0.5


def test_plan_evaluates_every_weight_per_epoch():
    plan = TrainingPlan(10, 64, 0, Optimisation(), weights={"a": Constant(1.0), "b": Ramp(4.0, 0.0, 0.5)})
    assert plan.weights_at(0) == {"a": 1.0, "b": 0.0}
    assert plan.weights_at(2) == {"a": 1.0, "b": pytest.approx(1.6)}
    with pytest.raises(InputError, match="max_epochs"):
        TrainingPlan(0, 64, 0, Optimisation()).check()


def test_bad_settings_fail_before_any_work(pbmc_small):
    model = sctopic.SCETM(pbmc_small.copy(), n_topics=5)
    for kw, msg in [({"lr": -1}, "lr must be a positive"), ({"lr": float("nan")}, "lr must be a positive"),
                    ({"lr_decay": -1.0}, "lr_decay must be >= 0")]:
        with pytest.raises(InputError, match=msg):
            model.train(max_epochs=1, progress=False, device="cpu", **kw)
    assert not model.is_trained
    with pytest.raises(InputError, match="positive integer"):
        model.top_genes(-3)
    with pytest.raises(InputError, match="1000 topics for only 765 genes"):
        sctopic.SCETM(pbmc_small.copy(), n_topics=1000)


def test_unknown_run_option_names_the_valid_ones():
    with pytest.raises(InputError, match="unknown argument.*devcie.*device"):
        RunOptions.from_kwargs({"devcie": "cpu"})
    assert RunOptions.from_kwargs({"device": "cpu"}).device == "cpu"


# ---------------------------------------------------------------- module API
def test_batch_offsets_use_the_mean_for_unknown_batches():
    lam = torch.tensor([[1.0, 2.0], [3.0, 6.0]])
    out = batch_offsets(lam, torch.tensor([1, -1, 0, 7]), 4)
    assert torch.equal(out, torch.tensor([[3.0, 6.0], [2.0, 4.0], [1.0, 2.0], [2.0, 4.0]]))
    assert torch.equal(batch_offsets(lam, None, 2), torch.tensor([[2.0, 4.0], [2.0, 4.0]]))
    assert batch_offsets(None, None, 3) is None


@pytest.fixture(scope="module")
def trained_pair(pbmc_small):
    # Copies: training writes its outputs into the AnnData, and pbmc_small is shared.
    sce = sctopic.SCE2TM(pbmc_small.copy(), n_topics=8, seed=0)
    sce.train(max_epochs=3, progress=False, device="cpu")
    sc = sctopic.SCETM(pbmc_small.copy(), n_topics=8, seed=0)
    sc.train(max_epochs=3, progress=False, device="cpu")
    return sce, sc


def test_forward_is_inference_then_loss(trained_pair):
    _, model = trained_pair
    module = model.module.train()
    x = torch.as_tensor(model.adata.X[:64].toarray(), dtype=torch.float32)
    with seeded(5):
        out = module(x, kl_weight=0.3)
    with seeded(5):
        again = module.loss(x, module.inference(x), kl_weight=0.3)
    module.eval()
    assert set(out) == set(again) and all(torch.equal(out[k], again[k]) for k in out)
    assert torch.allclose(out["loss"], out["reconstruction"] + 0.3 * out["kl"])


def test_public_outputs_agree(trained_pair):
    for model in trained_pair:
        assert model.is_trained
        theta = model.get_latent_representation()
        np.testing.assert_array_equal(theta, model.get_cell_topics())
        hist = model.history
        assert isinstance(hist, pd.DataFrame) and list(hist.index) == [1, 2, 3]
        assert hist["loss"].tolist() == model.history_["loss"]
        p = model.get_normalized_expression()
        np.testing.assert_allclose(p.sum(1), 1.0, rtol=1e-9)
        # Decoding the encoder's theta explicitly is the same as decoding the cells.
        np.testing.assert_allclose(model.get_normalized_expression(topics=theta), p, rtol=1e-6)
        counts = np.asarray(model.adata[:, model.genes].X.sum(1)).ravel()
        scaled = model.get_normalized_expression(library_size="observed")
        np.testing.assert_allclose(scaled.sum(1), counts, rtol=1e-6)
        with pytest.raises(InputError, match="expected cells x 8 topics"):
            model.get_normalized_expression(topics=theta[:, :3])


def test_scetm_decoding_is_softmax_of_theta_alpha_rho(trained_pair):
    _, model = trained_pair
    theta = model.get_latent_representation()[:20].astype(np.float64)
    beta = model.get_topic_gene().to_numpy().astype(np.float64)  # alpha rho, as logits
    logits = theta @ beta
    expected = np.exp(logits - logits.max(1, keepdims=True))
    expected /= expected.sum(1, keepdims=True)
    np.testing.assert_allclose(model.get_normalized_expression(topics=theta), expected, rtol=2e-5)


def test_python_and_cli_share_defaults():
    from sctopic.commands.fit import model_defaults

    for name, cls in (("sce2tm", sctopic.SCE2TM), ("scetm", sctopic.SCETM)):
        d = model_defaults(name)
        assert d["n_top_genes"] == 5000 and d["n_topics"] == 100
        # sce2tm: None, i.e. its preset's epochs (the CLI passes None on, so both get the same)
        assert d["max_epochs"] == {"sce2tm": None, "scetm": 800}[name]
    from sctopic.models.sce2tm import PRESETS

    assert PRESETS["default"]["max_epochs"] == 200 and PRESETS["paper"]["max_epochs"] == 500


# ---------------------------------------------------------------- a third model in one file
class _ETMDecoder(nn.Module):
    def __init__(self, n_genes: int, n_topics: int, emb_dim: int = 16):
        super().__init__()
        self.rho = nn.Parameter(torch.randn(emb_dim, n_genes) * 0.1)
        self.alpha = nn.Parameter(torch.randn(n_topics, emb_dim) * 0.1)
        self.batch_intercept = None

    def beta(self) -> torch.Tensor:
        return torch.softmax(self.alpha @ self.rho, dim=1)

    def logits(self, theta, beta, batch=None):
        return torch.log(theta @ beta + 1e-10)


class _ETMModule(TopicModule):
    def __init__(self, n_genes: int, n_topics: int):
        super().__init__()
        self.encoder = NormalEncoder(n_genes, n_topics, n_hidden=32)
        self.decoder = _ETMDecoder(n_genes, n_topics)

    def inference(self, x, v=None):
        mu, logsigma = self.encoder(library_normalize(x))
        z = mu + torch.randn_like(mu) * torch.exp(logsigma) if self.training else mu
        return {"mu": mu, "logsigma": logsigma, "z": z, "theta": torch.softmax(z, 1)}

    def loss(self, x, posterior, batch=None, kl_weight: float = 1.0):
        dense = x.to_dense() if x.layout == torch.sparse_csr else x
        recon = -(dense * self.decoder.logits(posterior["theta"], self.decoder.beta())).sum(1).mean()
        kl = kl_standard_normal(posterior["mu"], posterior["logsigma"]).mean()
        return {"reconstruction": recon, "kl": kl, "loss": recon + kl_weight * kl}

    def forward(self, x, batch=None, kl_weight: float = 1.0):
        return self.loss(x, self.inference(x), batch, kl_weight)

    def gene_embedding(self):
        return self.decoder.rho.T

    def topic_embedding(self):
        return self.decoder.alpha


class ETM(BaseTopicModel):
    model_name = "etm"

    def __init__(self, adata, n_topics: int = 6, *, seed: int = 0):
        self._setup(adata, None, 0, False, None)
        self._init_kwargs = dict(n_topics=int(n_topics), seed=seed)
        with seeded(seed):
            self.module = self._make_module()

    def _make_module(self):
        return _ETMModule(len(self.genes), self.n_topics)

    def train(self, max_epochs: int = 20, batch_size: int = 128, lr: float = 1e-2, seed: int = 0, **run_options):
        plan = TrainingPlan(max_epochs, batch_size, seed, Optimisation("adam", lr),
                            weights={"kl_weight": warmup(1.0, 0.5)})
        self._fit(plan, run_options, plain_batches(batch_size))
        return self


def test_a_third_model_trains_resumes_and_saves_through_the_plan(pbmc_small, tmp_path, monkeypatch):
    from conftest import crash_after

    adata = pbmc_small.copy()
    straight = ETM(adata).train(max_epochs=6, progress=False, device="cpu")
    assert straight.history_["loss"][-1] < straight.history_["loss"][0]
    assert "X_etm" in adata.obsm and adata.uns["sctopic"]["model"] == "etm"
    # The plan's checkpoints work for it too: killed after epoch 3 and resumed, the run equals
    # the uninterrupted one bit for bit.
    ckpt = tmp_path / "etm.ckpt"
    crash_after(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        ETM(pbmc_small.copy()).train(max_epochs=6, progress=False, device="cpu", checkpoint_path=ckpt,
                                     checkpoint_every=3)
    monkeypatch.undo()
    resumed = ETM(pbmc_small.copy()).train(max_epochs=6, progress=False, device="cpu",
                                           checkpoint_path=ckpt, resume=True)
    np.testing.assert_array_equal(resumed.get_latent_representation(), straight.get_latent_representation())
    straight.save(tmp_path / "etm.pt")
    loaded = ETM.load(tmp_path / "etm.pt", adata=pbmc_small.copy())
    np.testing.assert_array_equal(loaded.get_topic_gene().to_numpy(), straight.get_topic_gene().to_numpy())


# ---------------------------------------------------------------- scanpy habits
def test_topics_to_obs_writes_named_columns(trained_pair):
    from sctopic.tl import topics_to_obs

    model = trained_pair[0]
    adata = model.adata.copy()
    cols = topics_to_obs(adata)
    assert cols == [f"topic_{k}" for k in range(8)]
    np.testing.assert_array_equal(adata.obs[cols].to_numpy(), np.asarray(adata.obsm["X_sce2tm"], dtype=np.float64))
    cols = topics_to_obs(adata, "X_sce2tm_logits", prefix="sce2tm_")
    assert cols[0] == "sce2tm_topic_0"
    np.testing.assert_array_equal(adata.obs[cols].to_numpy(), np.asarray(adata.obsm["X_sce2tm_logits"], dtype=np.float64))
    with pytest.raises(InputError, match="obsm\\['X_nope'\\] not found"):
        topics_to_obs(adata, "nope")


def test_dir_lists_the_lazy_names():
    assert {"SCE2TM", "SCETM", "transfer", "load_model", "tl"} <= set(dir(sctopic))
