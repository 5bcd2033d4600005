"""Checkpoints: atomic writes, bit-for-bit resume (in process and after a real SIGKILL), errors."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import warnings

import anndata as ad
import numpy as np
import pytest
import torch

import sctopic
from conftest import crash_after
from sctopic.errors import InputError
from sctopic.train.checkpoint import load_checkpoint

MODELS = [
    pytest.param(sctopic.SCE2TM, dict(n_topics=5, n_hidden=32, emb_dim=16), id="sce2tm"),
    pytest.param(sctopic.SCETM, dict(n_topics=5, n_hidden=32, emb_dim=16), id="scetm"),
]
TRAIN = dict(max_epochs=6, batch_size=128, progress=False, seed=3, write_results=False)


class Crash(Exception):
    """Stands in for a crash right after the epoch-4 checkpoint."""


def _crash_after(monkeypatch, at: int) -> None:
    crash_after(monkeypatch, at, Crash)


def _same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture()
def data(pbmc_small):
    return pbmc_small.copy()


@pytest.mark.parametrize("cls,kw", MODELS)
def test_resume_is_bit_identical_to_uninterrupted_run(cls, kw, data, tmp_path, monkeypatch):
    straight = cls(data.copy(), **kw).train(**TRAIN)

    path = tmp_path / "ck.pt"
    _crash_after(monkeypatch, 4)
    with pytest.raises(Crash):
        cls(data.copy(), **kw).train(**TRAIN, checkpoint_path=path, checkpoint_every=2)
    monkeypatch.undo()
    state = load_checkpoint(path)
    assert state["epoch"] == 4
    assert len(state["trainer"]["history"]["loss"]) == 4
    assert not list(tmp_path.glob("*.tmp"))

    resumed = cls(data.copy(), **kw).train(**TRAIN, checkpoint_path=path, resume=True)
    assert _same_state(straight.module.state_dict(), resumed.module.state_dict())
    np.testing.assert_array_equal(straight.get_cell_topics(), resumed.get_cell_topics())
    assert straight.history_["loss"] == resumed.history_["loss"]
    assert len(resumed.history_["lr"]) == 6


def test_resume_from_final_checkpoint_trains_no_more(data, tmp_path):
    kw = dict(n_topics=5, n_hidden=32, emb_dim=16)
    path = tmp_path / "ck.pt"
    first = sctopic.SCETM(data.copy(), **kw).train(**TRAIN, checkpoint_path=path, checkpoint_every=3)
    assert load_checkpoint(path)["epoch"] == 6 and path.exists()  # kept by the Python API
    again = sctopic.SCETM(data.copy(), **kw).train(**TRAIN, checkpoint_path=path, resume=True)
    assert _same_state(first.module.state_dict(), again.module.state_dict())


def test_resume_without_checkpoint_warns_and_starts_fresh(data, tmp_path):
    kw = dict(n_topics=5, n_hidden=32, emb_dim=16)
    with pytest.warns(UserWarning, match="no checkpoint"):
        m = sctopic.SCETM(data.copy(), **kw).train(**TRAIN, checkpoint_path=tmp_path / "no.pt",
                                                   resume=True)
    ref = sctopic.SCETM(data.copy(), **kw).train(**TRAIN)
    assert _same_state(m.module.state_dict(), ref.module.state_dict())


# ---------------------------------------------------------------------------- errors
@pytest.fixture()
def scetm_checkpoint(data, tmp_path):
    path = tmp_path / "ck.pt"
    sctopic.SCETM(data.copy(), n_topics=5, n_hidden=32, emb_dim=16).train(
        **{**TRAIN, "max_epochs": 2}, checkpoint_path=path, checkpoint_every=1)
    return path


def _resume(data, path, **over):
    kw = dict(n_topics=5, n_hidden=32, emb_dim=16)
    kw.update(over.pop("init", {}))
    return sctopic.SCETM(data, **kw).train(**{**TRAIN, "max_epochs": 2, **over},
                                           checkpoint_path=path, resume=True)


def test_truncated_or_garbage_checkpoint_is_a_clear_error(data, scetm_checkpoint, tmp_path):
    raw = scetm_checkpoint.read_bytes()
    bad = tmp_path / "bad.pt"
    for content in (raw[: len(raw) // 2], raw[:100], b"", b"not a checkpoint at all" * 10):
        bad.write_bytes(content)
        with pytest.raises(InputError, match="not a readable sctopic checkpoint"):
            _resume(data.copy(), bad)
    # A valid torch file that is not a checkpoint.
    torch.save({"weights": torch.zeros(3)}, bad)
    with pytest.raises(InputError, match="not a sctopic checkpoint"):
        _resume(data.copy(), bad)
    # A model file is not a checkpoint either.
    m = sctopic.SCETM(data.copy(), n_topics=5, n_hidden=32, emb_dim=16).train(**{**TRAIN, "max_epochs": 1})
    m.save(bad, overwrite=True)
    with pytest.raises(InputError, match="not a sctopic checkpoint"):
        _resume(data.copy(), bad)


def test_pickled_objects_are_refused(data, scetm_checkpoint, tmp_path):
    state = torch.load(scetm_checkpoint, weights_only=True)
    state["extra"] = ad.AnnData(np.zeros((2, 2), np.float32))  # arbitrary object: needs pickle
    bad = tmp_path / "pickled.pt"
    torch.save(state, bad)
    with pytest.raises(InputError, match="not a readable sctopic checkpoint"):
        _resume(data.copy(), bad)


@pytest.mark.parametrize("change,what", [
    (dict(lr=1e-3), "train.lr"),
    (dict(seed=4), "train.seed"),
    (dict(batch_size=64), "train.batch_size"),
    (dict(max_epochs=3), "train.max_epochs"),
    (dict(init=dict(n_topics=6)), "init.n_topics"),
])
def test_mismatched_settings_are_refused(data, scetm_checkpoint, change, what):
    with pytest.raises(InputError, match=what.replace(".", r"\.")):
        _resume(data.copy(), scetm_checkpoint, **change)


def test_mismatched_data_and_model_class_are_refused(data, scetm_checkpoint):
    fewer_cells = data[:600].copy()
    with pytest.raises(InputError, match="data.n_cells"):
        _resume(fewer_cells, scetm_checkpoint)
    other_genes = data[:, :700].copy()
    with pytest.raises(InputError, match="genes_sha256"):
        _resume(other_genes, scetm_checkpoint)
    scaled = data.copy()
    scaled.X = scaled.X * 2
    with pytest.raises(InputError, match="total_counts"):
        _resume(scaled, scetm_checkpoint)
    with pytest.raises(InputError, match="class"):
        sctopic.SCE2TM(data.copy(), n_topics=5, n_hidden=32, emb_dim=16, cross_view=False).train(
            **{**TRAIN, "max_epochs": 2}, checkpoint_path=scetm_checkpoint, resume=True)


def test_bad_checkpoint_arguments(data, tmp_path):
    m = sctopic.SCETM(data.copy(), n_topics=5, n_hidden=32, emb_dim=16)
    with pytest.raises(InputError, match="checkpoint_path"):
        m.train(**TRAIN, checkpoint_every=2)
    with pytest.raises(InputError, match="checkpoint_path"):
        m.train(**TRAIN, resume=True)
    with pytest.raises(InputError, match="checkpoint_every"):
        m.train(**TRAIN, checkpoint_path=tmp_path / "c.pt", checkpoint_every=-1)
    with pytest.raises(InputError, match="directory"):
        m.train(**TRAIN, checkpoint_path=tmp_path, checkpoint_every=1)


def test_stale_temporary_files_are_cleaned_on_resume(data, scetm_checkpoint):
    stale = scetm_checkpoint.parent / (scetm_checkpoint.name + ".abc123.tmp")
    stale.write_bytes(b"half a checkpoint")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _resume(data.copy(), scetm_checkpoint)
    assert not stale.exists()


# ---------------------------------------------------------------------------- real SIGKILL
def _fit_cmd(h5ad, out, *extra):
    return [sys.executable, "-m", "sctopic", "-q", "fit", str(h5ad), "--out", str(out),
            "--model", "sce2tm", "--n-topics", "5", "--n-hvg", "0", "--max-epochs", "30",
            "--batch-size", "32", "--seed", "7", "--device", "cpu", *extra]


def _env():
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", NUMBA_NUM_THREADS="1",
               OPENBLAS_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    return env


def _model_state(path):
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def test_sigkill_then_resume_equals_uninterrupted_run(pbmc_small, tmp_path):
    h5ad = tmp_path / "pbmc.h5ad"
    pbmc_small.write_h5ad(h5ad)
    ref_out, run_out = tmp_path / "ref", tmp_path / "run"
    env = _env()
    # The reference runs alongside the run that gets killed.
    ref = subprocess.Popen(_fit_cmd(h5ad, ref_out), env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE)
    victim = subprocess.Popen(_fit_cmd(h5ad, run_out, "--checkpoint-every", "1"), env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ckpt = run_out / "checkpoint.pt"
    killed_at = None
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and victim.poll() is None:
            if ckpt.exists():
                epoch = load_checkpoint(ckpt)["epoch"]  # never a partial file: atomic rename
                if epoch >= 2:
                    victim.send_signal(signal.SIGKILL)
                    killed_at = epoch
                    break
            time.sleep(0.02)
    finally:
        if victim.poll() is None and killed_at is None:
            victim.kill()
        victim.wait()
    assert killed_at is not None, victim.stderr.read().decode()[-2000:]
    assert victim.returncode == -signal.SIGKILL
    assert not (run_out / "model.pt").exists()
    assert 2 <= load_checkpoint(ckpt)["epoch"] < 30

    resumed = subprocess.run(_fit_cmd(h5ad, run_out, "--checkpoint-every", "1", "--resume"),
                             env=env, capture_output=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr.decode()[-2000:]
    assert ref.wait(timeout=300) == 0, ref.stderr.read().decode()[-2000:]
    assert not ckpt.exists()  # removed once every output is written
    assert _same_state(_model_state(ref_out / "model.pt"), _model_state(run_out / "model.pt"))
    theta_ref = ad.read_h5ad(ref_out / "result.h5ad").obsm["X_sce2tm"]
    theta_run = ad.read_h5ad(run_out / "result.h5ad").obsm["X_sce2tm"]
    np.testing.assert_array_equal(theta_ref, theta_run)
