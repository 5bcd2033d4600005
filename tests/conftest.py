"""Shared fixtures: real data from the bundled dataset and from ../shared/data."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SCTOPIC_SHARED_DATA", ROOT.parent / "shared" / "data"))


def shared_file(name: str) -> Path:
    """Path to a real dataset in ../shared/data (the test is skipped if it is absent)."""
    p = SHARED_DATA / name
    if not p.exists():
        pytest.skip(f"{p} not available")
    return p


def crash_after(monkeypatch, epoch: int, exc: type[BaseException] = KeyboardInterrupt) -> None:
    """Make training raise ``exc`` just after the checkpoint hook of ``epoch`` has run (a kill)."""
    from sctopic.train.checkpoint import Checkpointer

    write = Checkpointer.__call__

    def hook(self, e):
        write(self, e)
        if e == epoch:
            raise exc

    monkeypatch.setattr(Checkpointer, "__call__", hook)


@pytest.fixture(scope="session")
def pbmc_small():
    """The bundled 700-cell PBMC dataset (real counts), read once per session."""
    from sctopic.datasets import pbmc68k_reduced

    return pbmc68k_reduced()


@pytest.fixture()
def small_adata(pbmc_small):
    """300 real cells x the genes expressed in them (764); a fresh copy per test."""
    rng = np.random.default_rng(0)
    idx = np.sort(rng.choice(pbmc_small.n_obs, 300, replace=False))
    sub = pbmc_small[idx]
    expressed = np.asarray(sub.X.sum(0)).ravel() > 0
    return sub[:, expressed].copy()
