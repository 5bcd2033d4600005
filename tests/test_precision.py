"""bfloat16 mixed precision: float32 islands, agreement with float32 training, determinism."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import sctopic
from sctopic.errors import InputError
from sctopic.nn.precision import autocast, cpu_has_fast_bf16, resolve_precision

CPU = torch.device("cpu")


def test_resolve_precision():
    assert resolve_precision("32", CPU) == "32"
    assert resolve_precision(32, CPU) == "32"
    assert resolve_precision("bf16", CPU) == "bf16"
    assert resolve_precision("auto", CPU) == ("bf16" if cpu_has_fast_bf16() else "32")
    with pytest.raises(InputError, match="precision must be one of"):
        resolve_precision("fp8", CPU)


def test_float32_islands_under_bf16_autocast(pbmc_small):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = sctopic.SCE2TM(pbmc_small.copy(), n_topics=10, seed=0)
    dec = m.module.decoder
    with autocast(CPU, "bf16"):
        cost = dec.cost()
        theta = torch.softmax(torch.randn(8, 10), 1)
        logits = dec.logits(theta, dec.beta(cost))
        x = torch.randn(8, len(m.genes)).abs()
        mu, logvar = m.module.encoder(x)
        assert (theta @ dec.beta(cost)).dtype == torch.bfloat16  # products do run in bf16
    assert cost.dtype == torch.float32
    assert logits.dtype == torch.float32
    assert mu.dtype == logvar.dtype == torch.float32
    # The float32 distances equal those computed without autocast.
    assert torch.equal(cost, dec.cost())


@pytest.mark.parametrize("cls", [sctopic.SCE2TM, sctopic.SCETM])
def test_bf16_training_tracks_float32_and_is_deterministic(cls, pbmc_small):
    def fit(precision):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m = cls(pbmc_small.copy(), n_topics=10, seed=0)
        m.train(max_epochs=5, batch_size=128, progress=False, write_results=False,
                device="cpu", precision=precision)
        return m

    ref, a, b = fit("32"), fit("bf16"), fit("bf16")
    assert a.train_settings_["precision"] == "bf16"
    for k, v in a.module.state_dict().items():
        assert torch.equal(v, b.module.state_dict()[k]), k  # same seed, same result
        if v.is_floating_point():
            assert v.dtype == torch.float32, k  # master weights stay float32
    lr, la = np.array(ref.history_["loss"]), np.array(a.history_["loss"])
    np.testing.assert_allclose(la, lr, rtol=0.02)
    assert la[-1] < la[0]


@pytest.mark.parametrize("cls", [sctopic.SCE2TM, sctopic.SCETM])
def test_bf16_gradient_agrees_with_float32(cls, pbmc_small):
    """One minibatch: the bf16 gradient points where the float32 one does."""
    import scipy.sparse as sp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = cls(pbmc_small.copy(), n_topics=10, seed=0)
    m.module.eval()  # no dropout or noise: the two passes see the same function
    x = torch.as_tensor(sp.csr_matrix(m._X)[:256].toarray())
    kw = {"x": x}
    if cls is sctopic.SCE2TM:
        v = torch.as_tensor(m.external_.matrix[:128])
        kw = {"x": x, "v": v, "v_nb": torch.as_tensor(m.external_.matrix[128:256]), "ecr_weight": 100.0}

    def grad(precision):
        m.module.zero_grad(set_to_none=True)
        with autocast(CPU, precision):
            loss = m.module(**kw)["loss"]
        loss.backward()
        return torch.cat([p.grad.flatten() for p in m.module.parameters() if p.grad is not None]), loss

    g32, l32 = grad("32")
    g16, l16 = grad("bf16")
    cos = torch.nn.functional.cosine_similarity(g32, g16, dim=0)
    assert cos > 0.99
    assert abs(l16.item() - l32.item()) < 0.01 * abs(l32.item())


def test_compile_refuses_sparse_minibatches(pbmc_small):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = sctopic.SCETM(pbmc_small.copy(), n_topics=5, seed=0)
    with pytest.raises(InputError, match="compile=True needs dense minibatches"):
        m.train(max_epochs=1, storage="csr", compile=True, progress=False)


@pytest.mark.slow
def test_compiled_training_tracks_eager(pbmc_small, monkeypatch):
    """torch.compile (inductor, needs a C++ compiler on CPU) gives the eager losses.

    Inductor draws dropout and noise from its own generator unless ``fallback_random`` is
    set, which makes the random streams (and so the losses) comparable."""
    import torch._inductor.config as inductor_config

    monkeypatch.setattr(inductor_config, "fallback_random", True)
    def fit(compile):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m = sctopic.SCETM(pbmc_small.copy(), n_topics=5, seed=0)
        return m.train(max_epochs=3, batch_size=128, storage="dense", compile=compile,
                       progress=False, write_results=False, device="cpu")

    eager, comp = fit(False), fit(True)
    # Fused kernels reassociate sums: epoch 1 agrees to 1e-3, later epochs drift a little.
    np.testing.assert_allclose(comp.history_["loss"][0], eager.history_["loss"][0], rtol=1e-3)
    np.testing.assert_allclose(comp.history_["loss"], eager.history_["loss"], rtol=5e-3)


def test_cli_precision_flag(tmp_path, pbmc_small):
    import json
    import os
    import subprocess
    import sys

    path = tmp_path / "pbmc.h5ad"
    pbmc_small.write_h5ad(path)
    out = tmp_path / "out"
    r = subprocess.run(
        [sys.executable, "-m", "sctopic", "-q", "fit", str(path), "--model", "scetm", "--out", str(out),
         "--n-topics", "4", "--n-hvg", "200", "--max-epochs", "2", "--precision", "bf16"],
        capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "train.json").read_text())["settings"]["precision"] == "bf16"
    r = subprocess.run(
        [sys.executable, "-m", "sctopic", "-q", "fit", str(path), "--out", str(tmp_path / "o2"),
         "--precision", "fp8"], capture_output=True, text=True,
    )
    assert r.returncode != 0 and "invalid choice: 'fp8'" in r.stderr
