"""Learning-rate schedules (cosine, one-cycle) and early stopping on held-out cells.

Closed forms of the schedules, the defaults left untouched, a constructed run whose held-out
reconstruction rises (it stops and restores the best check's weights), held-out cells never in
a training minibatch, bit-exact resume of an early-stopped run, out-of-core training, the CLI
flags and the input errors.
"""
from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
import torch

import sctopic
from conftest import crash_after
from sctopic.data.loader import count_batches
from sctopic.errors import InputError
from sctopic.train.early_stopping import EarlyStopper, EarlyStopping, HeldOutCells, split_cells
from sctopic.train.lr import cosine_factor, make_step_scheduler

SMALL = dict(n_topics=5, n_hidden=32, emb_dim=16)
QUIET = dict(progress=False, write_results=False, device="cpu")


def _lrs(opt, sched, n):
    """The rate each of ``n`` optimiser steps uses, then the rate after them."""
    out = []
    for _ in range(n):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out, opt.param_groups[0]["lr"]


def _cosine(step, total, warmup, floor):
    """The cosine schedule written out independently of the code under test."""
    n_w = round(warmup * total)
    if step < n_w:
        return (step + 1) / n_w
    t = min(1.0, (step - n_w) / (total - n_w))
    return floor + (1 - floor) * (1 + math.cos(math.pi * t)) / 2


def _onecycle(step, total, lr, pct, div=25.0, final_div=1e4):
    """PyTorch's one-cycle policy with cosine annealing, written out."""
    lo, hi, end = lr / div, lr, lr / div / final_div
    peak = pct * total - 1
    if step <= peak:
        a, b, frac = lo, hi, step / peak
    else:
        a, b, frac = hi, end, (step - peak) / (total - 1 - peak)
    return b + (a - b) / 2 * (math.cos(math.pi * frac) + 1)


# ---------------------------------------------------------------------------- schedules
def test_cosine_schedule_matches_its_closed_form():
    p = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.RMSprop([p], lr=0.1)
    sched = make_step_scheduler(opt, "cosine", 100, 0.1, 0.01, cycle_momentum=False)
    used, after = _lrs(opt, sched, 100)
    for s in (0, 4, 9, 10, 37, 55, 99):
        assert used[s] == pytest.approx(0.1 * _cosine(s, 100, 0.1, 0.01), rel=1e-12)
        assert used[s] == pytest.approx(0.1 * cosine_factor(s, 100, 0.1, 0.01), rel=1e-12)
    assert used[0] == pytest.approx(0.01) and used[9] == pytest.approx(0.1) and used[10] == pytest.approx(0.1)
    assert after == pytest.approx(0.1 * 0.01)  # the floor after the last step...
    assert _lrs(opt, sched, 3)[1] == pytest.approx(0.001)  # ...and on any step past the plan
    # no warm-up: the decay starts at the peak
    assert cosine_factor(0, 10, 0.0, 0.0) == 1.0 and cosine_factor(5, 10, 0.0, 0.0) == pytest.approx(0.5)


@pytest.mark.parametrize("optimizer", ["adam", "rmsprop"])
def test_onecycle_schedule_matches_its_closed_form(optimizer):
    p = torch.nn.Parameter(torch.zeros(2))
    opt = {"adam": torch.optim.Adam, "rmsprop": torch.optim.RMSprop}[optimizer]([p], lr=0.01)
    sched = make_step_scheduler(opt, "onecycle", 80, 0.25, 0.01, cycle_momentum=optimizer == "adam")
    used, _ = _lrs(opt, sched, 80)
    for s in (0, 7, 19, 20, 50, 79):
        assert used[s] == pytest.approx(_onecycle(s, 80, 0.01, 0.25), rel=1e-9)
    assert used[0] == pytest.approx(0.01 / 25) and max(used) == pytest.approx(0.01)
    assert _lrs(opt, sched, 5)[1] == pytest.approx(used[-1])  # stepping past the plan holds the end
    if optimizer == "adam":  # the one-cycle policy cycles Adam's beta1...
        assert opt.param_groups[0]["betas"][0] == pytest.approx(0.95)
    else:  # ...but never switches on RMSprop's momentum
        assert opt.param_groups[0]["momentum"] == 0


def test_history_lr_follows_the_cosine_schedule(pbmc_small):
    m = sctopic.SCETM(pbmc_small.copy(), **SMALL)
    m.train(max_epochs=6, batch_size=128, lr=1e-2, lr_schedule="cosine", lr_warmup=0.2, lr_floor=0.05, **QUIET)
    steps = count_batches(len(m._train_cells), 128)
    total = 6 * steps
    expected = [1e-2 * _cosine(e * steps, total, 0.2, 0.05) for e in range(1, 7)]
    np.testing.assert_allclose(m.history["lr"].to_numpy(), expected, rtol=1e-12)
    assert m.train_settings_["lr_schedule"] == "cosine" and m.train_settings_["lr_decay"] == 0.0
    assert m.train_settings_["lr_warmup"] == 0.2 and m.train_settings_["lr_floor"] == 0.05


def test_history_lr_follows_the_onecycle_schedule_for_sce2tm(pbmc_small):
    m = sctopic.SCE2TM(pbmc_small.copy(), **SMALL)
    m.train(max_epochs=4, batch_size=128, lr=2e-3, lr_schedule="onecycle", **QUIET)
    steps = count_batches(len(m._train_cells), 128)
    expected = [_onecycle(e * steps, 4 * steps, 2e-3, 0.25) for e in range(1, 4)]
    np.testing.assert_allclose(m.history["lr"].to_numpy()[:3], expected, rtol=1e-9)
    assert m.history["lr"].iloc[-1] == pytest.approx(2e-3 / 25 / 1e4)
    assert m.train_settings_["lr_step_epochs"] is None and m.train_settings_["lr_schedule"] == "onecycle"


# ---------------------------------------------------------------------------- defaults
@pytest.mark.parametrize("cls,kw", [(sctopic.SCE2TM, {**SMALL, "batch_key": "phase"}),
                                    (sctopic.SCETM, {**SMALL, "batch_key": "phase"})])
def test_defaults_change_nothing(cls, kw, pbmc_small):
    """The new options at their defaults are the code paths of before: passing them explicitly
    gives the same numbers, the same settings and no new history column or output."""
    train = dict(max_epochs=3, batch_size=128, seed=1, **QUIET)
    plain = cls(pbmc_small.copy(), **kw).train(**train)
    explicit = cls(pbmc_small.copy(), **kw).train(
        **train, lr_schedule=None, lr_warmup=None, lr_floor=0.01, early_stopping=False,
        validation_fraction=0.1, check_every=5, patience=3, min_delta=1e-3)
    assert plain.history_["loss"] == explicit.history_["loss"]
    assert plain.history_["lr"] == explicit.history_["lr"]
    for (k, v), (_, w) in zip(plain.module.state_dict().items(), explicit.module.state_dict().items()):
        assert torch.equal(v, w), k
    assert "heldout_reconstruction" not in plain.history_
    assert plain.early_stopping_ is None and len(plain.heldout_cells_) == 0
    assert plain.train_settings_ == explicit.train_settings_
    assert not {"lr_schedule", "early_stopping"} & set(plain.train_settings_)
    # the classic schedule names are the defaults themselves
    classic = "step" if cls is sctopic.SCE2TM else "exponential"
    named = cls(pbmc_small.copy(), **kw).train(**train, lr_schedule=classic)
    assert named.history_["loss"] == plain.history_["loss"]


# ---------------------------------------------------------------------------- early stopping
def _heldout_now(model) -> float:
    """The held-out reconstruction of the model's current weights, computed afresh."""
    cells = model.heldout_cells_
    codes = None if not model.n_batches else model._batch_codes[cells]
    return HeldOutCells(model._X[cells], codes, None, torch.device("cpu")).reconstruction(model.module)


@pytest.fixture(scope="module")
def rising(pbmc_small):
    """A run whose held-out reconstruction rises: a small scETM at a constant, high rate (no KL
    warm-up, so every check counts)."""
    m = sctopic.SCETM(pbmc_small.copy(), n_topics=10, n_hidden=64, emb_dim=16, dropout=0.0)
    m.train(max_epochs=20, batch_size=64, lr=0.2, lr_schedule="constant", seed=0, kl_warmup=0.0,
            early_stopping=True, validation_fraction=0.5, check_every=1, patience=2, min_delta=0.0, **QUIET)
    return m


def test_early_stopping_stops_when_the_heldout_loss_rises_and_restores_the_best(rising):
    m, es = rising, rising.early_stopping_
    h = m.history["heldout_reconstruction"].to_numpy()
    assert es["stopped_early"] and es["stopped_epoch"] < 20 and len(h) == es["stopped_epoch"]
    assert es["counted_from_epoch"] == 1
    best = es["best_epoch"]
    assert best == int(np.nanargmin(h)) + 1 and es["best_heldout_reconstruction"] == h[best - 1]
    # it stopped because the held-out loss rose for `patience` checks after the best
    after = h[best:]
    assert len(after) == 2 and (after >= h[best - 1]).all() and after[-1] > h[best - 1]
    # the weights kept are the best epoch's, not the last one's
    assert _heldout_now(m) == pytest.approx(h[best - 1], rel=1e-12)
    assert _heldout_now(m) != pytest.approx(h[-1], rel=1e-9)
    assert es["n_heldout_cells"] == len(m.heldout_cells_) == round(0.5 * len(m._train_cells))
    assert m.train_settings_["early_stopping"]["patience"] == 2


def test_checks_every_n_epochs_and_after_the_last(pbmc_small):
    m = sctopic.SCETM(pbmc_small.copy(), **SMALL)
    m.train(max_epochs=7, batch_size=128, early_stopping=True, check_every=3, patience=5, **QUIET)
    checked = m.history["heldout_reconstruction"].notna().to_numpy()
    assert checked.tolist() == [False, False, True, False, False, True, True]
    assert not m.early_stopping_["stopped_early"] and m.early_stopping_["stopped_epoch"] == 7


def test_checks_count_once_the_loss_weights_are_final(pbmc_small):
    """SCE2TM's default recipe: ECR off for half the epochs, then ramped over a quarter. Its
    reconstruction rises when ECR joins; stopping there would restore a model without ECR."""
    from sctopic.train import Optimisation, Ramp, TrainingPlan

    plan = TrainingPlan(8, 64, 0, Optimisation(), weights={"ecr": Ramp(100.0, 0.5, 0.25), "cve": Ramp(1.0)})
    assert plan.weights_final_from() == 6  # weights of epochs 0..7: 0, 0, 0, 0, 0, 50, 100, 100
    assert TrainingPlan(8, 64, 0, Optimisation()).weights_final_from() == 0
    m = sctopic.SCE2TM(pbmc_small.copy(), **SMALL)
    m.train(max_epochs=8, batch_size=128, ecr_delay=0.5, ecr_warmup=0.25, early_stopping=True, check_every=1,
            patience=1, min_delta=0.0, **QUIET)
    es = m.early_stopping_
    assert es["counted_from_epoch"] == 7 and es["best_epoch"] >= 7 and es["stopped_epoch"] == 8
    assert m.history["heldout_reconstruction"].notna().all()  # every check is recorded


def test_split_is_seeded_and_disjoint():
    a_train, a_held = split_cells(700, 0.1, seed=3)
    b_train, b_held = split_cells(700, 0.1, seed=3)
    assert np.array_equal(a_held, b_held) and len(a_held) == 70
    assert not np.intersect1d(a_train, a_held).size and len(a_train) + len(a_held) == 700
    assert not np.array_equal(split_cells(700, 0.1, seed=4)[1], a_held)


@pytest.mark.parametrize("cls,kw", [(sctopic.SCE2TM, {**SMALL, "batch_key": "phase"}),
                                    (sctopic.SCETM, {**SMALL, "batch_key": "phase"})])
def test_heldout_cells_never_enter_a_training_minibatch(cls, kw, pbmc_small, monkeypatch):
    """Every row gathered for training (anchors and, for SCE2TM, sampled neighbours) is a
    training cell; sparse CSR minibatches, batch intercepts."""
    import sctopic.train.plan as plan_mod

    seen, placed = [], {}
    prepare = plan_mod.prepare_data

    def spy(*args, **kwargs):
        data = prepare(*args, **kwargs)
        placed["data"] = data

        def recording(gather):
            def gather_and_record(idx):
                seen.append(idx.cpu().numpy().copy())
                return gather(idx)
            return gather_and_record
        data.rows, data.fetch = recording(data.rows), recording(data.fetch)
        return data

    monkeypatch.setattr(plan_mod, "prepare_data", spy)
    m = cls(pbmc_small.copy(), **kw).train(max_epochs=2, batch_size=128, storage="csr", early_stopping=True,
                                           validation_fraction=0.2, check_every=1, **QUIET)
    data = placed["data"]
    assert data.layout == "csr" and data.n == len(m._train_cells) - len(m.heldout_cells_)
    used = m._train_cells[data.cells[np.concatenate(seen)]]
    assert not np.intersect1d(used, m.heldout_cells_).size
    assert np.array_equal(np.unique(used), np.setdiff1d(m._train_cells, m.heldout_cells_))
    assert np.isfinite(m.history["heldout_reconstruction"]).all()


def test_resume_of_an_early_stopped_run_is_bit_exact(pbmc_small, tmp_path, monkeypatch):
    kw = dict(n_topics=10, n_hidden=64, emb_dim=16, dropout=0.0)
    train = dict(max_epochs=20, batch_size=64, lr=0.2, lr_schedule="constant", seed=0, kl_warmup=0.0,
                 early_stopping=True, validation_fraction=0.5, check_every=1, patience=2, min_delta=0.0, **QUIET)
    straight = sctopic.SCETM(pbmc_small.copy(), **kw).train(**train)
    stop = straight.early_stopping_["stopped_epoch"]
    assert stop < 20
    path = tmp_path / "ck.pt"
    crash_after(monkeypatch, stop - 2)  # killed between the best check and the stop
    with pytest.raises(KeyboardInterrupt):
        sctopic.SCETM(pbmc_small.copy(), **kw).train(**train, checkpoint_path=path, checkpoint_every=1)
    monkeypatch.undo()
    resumed = sctopic.SCETM(pbmc_small.copy(), **kw).train(**train, checkpoint_path=path, resume=True)
    for (k, v), (_, w) in zip(straight.module.state_dict().items(), resumed.module.state_dict().items()):
        assert torch.equal(v, w), k
    for col in ("loss", "lr", "heldout_reconstruction"):
        np.testing.assert_array_equal(resumed.history[col].to_numpy(), straight.history[col].to_numpy())
    assert resumed.early_stopping_ == straight.early_stopping_
    # the checkpoint of the stopping epoch resumes to the same model, without training more
    again = sctopic.SCETM(pbmc_small.copy(), **kw).train(**train, checkpoint_path=path, resume=True)
    assert len(again.history_["loss"]) == stop
    for (k, v), (_, w) in zip(straight.module.state_dict().items(), again.module.state_dict().items()):
        assert torch.equal(v, w), k


def test_cosine_schedule_resumes_bit_exactly(pbmc_small, tmp_path, monkeypatch):
    train = dict(max_epochs=5, batch_size=128, seed=2, lr_schedule="cosine", lr_warmup=0.3, **QUIET)
    straight = sctopic.SCE2TM(pbmc_small.copy(), **SMALL).train(**train)
    path = tmp_path / "ck.pt"
    crash_after(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        sctopic.SCE2TM(pbmc_small.copy(), **SMALL).train(**train, checkpoint_path=path, checkpoint_every=1)
    monkeypatch.undo()
    resumed = sctopic.SCE2TM(pbmc_small.copy(), **SMALL).train(**train, checkpoint_path=path, resume=True)
    assert resumed.history_["loss"] == straight.history_["loss"]
    assert resumed.history_["lr"] == straight.history_["lr"]
    for (k, v), (_, w) in zip(straight.module.state_dict().items(), resumed.module.state_dict().items()):
        assert torch.equal(v, w), k
    # another schedule is another run: its checkpoint is refused
    with pytest.raises(InputError, match="lr_schedule"):
        sctopic.SCE2TM(pbmc_small.copy(), **SMALL).train(**{**train, "lr_schedule": "onecycle"},
                                                           checkpoint_path=path, resume=True)


def test_early_stopping_out_of_core_and_saved(pbmc_small, tmp_path):
    path = tmp_path / "pbmc.h5ad"
    a = pbmc_small.copy()
    a.X = sp.csr_matrix(a.X, dtype=np.float32)
    a.write_h5ad(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = sctopic.SCETM(path, n_topics=5, n_hidden=32, emb_dim=16, n_top_genes=300, backed=True)
    m.train(max_epochs=4, batch_size=100, block_size=150, pool_blocks=2, early_stopping=True, check_every=2,
            lr_schedule="cosine", **QUIET)
    es = m.early_stopping_
    assert es["stopped_epoch"] == 4 and es["n_heldout_cells"] == len(m.heldout_cells_) == round(0.1 * len(m._train_cells))
    h = m.history["heldout_reconstruction"].to_numpy()
    assert np.isnan(h[[0, 2]]).all() and np.isfinite(h[[1, 3]]).all()
    assert _heldout_now(m) == pytest.approx(es["best_heldout_reconstruction"], rel=1e-6)
    m.save(tmp_path / "model.pt")
    loaded = sctopic.SCETM.load(tmp_path / "model.pt")
    assert loaded.early_stopping_ == es


def test_cli_fit_early_stopping_and_lr_schedule(small_adata, tmp_path):
    from sctopic.cli import main

    data = tmp_path / "x.h5ad"
    small_adata.write_h5ad(data)
    out = tmp_path / "o"
    assert main(["-q", "fit", str(data), "--out", str(out), "--model", "scetm", "--n-topics", "5",
                 "--max-epochs", "6", "--batch-size", "64", "--device", "cpu", "--early-stopping",
                 "--lr-schedule", "cosine"]) == 0
    report = json.loads((out / "train.json").read_text())
    es = report["early_stopping"]
    assert es["stopped_epoch"] == 6 and 1 <= es["best_epoch"] <= 6 and es["n_heldout_cells"] == 30
    assert report["settings"]["lr_schedule"] == "cosine" and report["settings"]["early_stopping"]["check_every"] == 5
    from sctopic.models.base import read_model_file

    meta, _ = read_model_file(out / "model.pt")
    assert meta["extra"]["early_stopping"]["best_epoch"] == es["best_epoch"]


def test_cli_flags_survive_the_devices_relaunch(tmp_path):
    from sctopic.cli import build_parser
    from sctopic.commands.fit import _relaunch_argv

    for flag, value in (("--early-stopping", True), ("--no-early-stopping", False)):
        argv = ["fit", "d.h5ad", "--out", str(tmp_path), "--devices", "2", flag, "--lr-schedule", "onecycle"]
        args = build_parser(argv).parse_args(argv)
        again = build_parser(_relaunch_argv(args, args._parser)).parse_args(_relaunch_argv(args, args._parser))
        assert again.early_stopping is value and again.lr_schedule == "onecycle"
    argv = ["fit", "d.h5ad", "--out", str(tmp_path)]
    assert build_parser(argv).parse_args(argv).early_stopping is None  # the model's default


# ---------------------------------------------------------------------------- errors
@pytest.fixture(scope="module")
def untrained(pbmc_small):
    """One model of each class; the bad calls fail before touching them."""
    return {"SCE2TM": sctopic.SCE2TM(pbmc_small.copy(), **SMALL), "SCETM": sctopic.SCETM(pbmc_small.copy(), **SMALL)}


@pytest.mark.parametrize("kw,msg", [
    ({"validation_fraction": 0.0}, r"validation_fraction must be in \(0, 0.5\]"),
    ({"validation_fraction": 0.6}, r"validation_fraction must be in \(0, 0.5\]"),
    ({"validation_fraction": float("nan")}, "validation_fraction must be"),
    ({"validation_fraction": 0.01}, "holds out 7 cells; early stopping needs at least 10"),
    ({"patience": 0}, "patience must be a whole number of checks >= 1"),
    ({"patience": 1.5}, "patience must be a whole number"),
    ({"check_every": 0}, "check_every must be"),
    ({"min_delta": -0.1}, "min_delta must be"),
    ({"early_stopping": "yes"}, "early_stopping must be True or False"),
    ({"lr_schedule": "cosin"}, "lr_schedule must be None .* or one of"),
    ({"lr_schedule": "cosine", "lr_warmup": 1.5}, r"lr_warmup must be a fraction of the steps in \[0, 1\)"),
    ({"lr_schedule": "onecycle", "lr_warmup": 0.0}, r"lr_warmup must be .* in \(0, 1\)"),
    ({"lr_schedule": "cosine", "lr_floor": 2.0}, r"lr_floor must be a fraction of lr in \[0, 1\]"),
])
@pytest.mark.parametrize("name", ["SCE2TM", "SCETM"])
def test_bad_settings_are_input_errors_before_any_work(name, kw, msg, untrained):
    m = untrained[name]
    kw = {"early_stopping": True, **kw}
    with pytest.raises(InputError, match=msg):
        m.train(max_epochs=2, **QUIET, **kw)
    assert not m.is_trained


def test_model_specific_schedule_errors(untrained):
    sce2tm = untrained["SCE2TM"]
    with pytest.raises(InputError, match="for SCE2TM"):
        sce2tm.train(max_epochs=1, lr_schedule="exponential", **QUIET)
    with pytest.raises(InputError, match="lr_step_epochs applies to lr_schedule='step' only"):
        sce2tm.train(max_epochs=1, lr_schedule="cosine", lr_step_epochs=10, **QUIET)
    assert not sce2tm.is_trained


def test_early_stopping_refuses_distributed_training(untrained, monkeypatch):
    import sctopic.train.plan as plan_mod
    from sctopic.train.distributed import DistContext

    monkeypatch.setattr(plan_mod.distributed, "setup", lambda *a, **k: DistContext(world_size=2, backend="gloo"))
    m = untrained["SCETM"]
    with pytest.raises(InputError, match="early_stopping is not supported with distributed"):
        m.train(max_epochs=1, early_stopping=True, **QUIET)


class _Values:
    """Stands in for the held-out cells: returns the given values check after check."""

    n = 3

    def __init__(self, *values):
        self.values = iter(values)

    def reconstruction(self, module):
        return next(self.values)


def test_stopper_rule_and_state_round_trip():
    module = torch.nn.Linear(2, 2)
    config = EarlyStopping(check_every=1, patience=2, min_delta=0.0)
    s = EarlyStopper(config, _Values(5.0, 4.0, 4.5), module, 10)
    assert [s(e) for e in (1, 2, 3)] == [5.0, 4.0, 4.5] and not s.stopped and s.best_epoch == 2
    t = EarlyStopper(config, _Values(4.6), module, 10)  # a resumed run continues the count
    t.load_state_dict(s.state_dict())
    assert (t.best, t.best_epoch, t.bad_checks, t.stopped) == (4.0, 2, 1, False)
    t(4)
    assert t.stopped and t.stopped_epoch == 4
    # min_delta is relative: 1% better than 100 is needed to count
    u = EarlyStopper(EarlyStopping(check_every=1, patience=1, min_delta=0.01), _Values(100.0, 99.5), module, 10)
    u(1), u(2)
    assert u.stopped and u.best_epoch == 1
    # checks before counted_from are returned but change nothing
    w = EarlyStopper(config, _Values(1.0, 9.0, 8.0), module, 10, counted_from=2)
    assert [w(e) for e in (1, 2, 3)] == [1.0, 9.0, 8.0] and (w.best_epoch, w.best, w.bad_checks) == (3, 8.0, 0)
