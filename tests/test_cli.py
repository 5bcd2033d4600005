"""The sctopic command line: fit, demo, and one-line errors with a non-zero exit."""
from __future__ import annotations

import json
import subprocess
import sys

import anndata as ad
import numpy as np
import pytest

from sctopic.cli import main
from sctopic.data.counts import log_normalize


@pytest.fixture()
def h5ad(small_adata, tmp_path):
    path = tmp_path / "data.h5ad"
    small_adata.write_h5ad(path)
    return path


def _fit(args, capsys):
    code = main(["-q", "fit", *map(str, args)])
    return code, capsys.readouterr()


def test_fit_writes_model_result_and_report(h5ad, tmp_path, capsys):
    out = tmp_path / "run"
    code, cap = _fit([h5ad, "--out", out, "--n-topics", 5, "--max-epochs", 2, "--batch-size", 150,
                      "--n-hvg", 300], capsys)
    assert code == 0, cap.err
    rep = json.loads((out / "train.json").read_text())
    assert rep["n_genes"] == 300 and rep["settings"]["n_topics"] == 5
    assert rep["seconds_per_epoch"] > 0 and "reconstruction" in rep["final_losses"]
    res = ad.read_h5ad(out / "result.h5ad")
    assert res.n_vars == 300 and res.obsm["X_sce2tm"].shape == (300, 5)
    assert res.uns["sctopic"]["model"] == "sce2tm"
    assert list(res.uns["sce2tm"]["genes"]) == list(res.var_names)
    import sctopic

    m = sctopic.SCE2TM.load(out / "model.pt", adata=res)
    np.testing.assert_allclose(m.get_cell_topics(), res.obsm["X_sce2tm"], rtol=1e-5, atol=1e-6)


def test_fit_on_normalised_data_fails_with_one_line(small_adata, tmp_path, capsys):
    small_adata.X = log_normalize(small_adata.X)
    path = tmp_path / "norm.h5ad"
    small_adata.write_h5ad(path)
    code, cap = _fit([path, "--out", tmp_path / "o", "--max-epochs", 1], capsys)
    assert code == 2
    lines = cap.err.strip().splitlines()
    assert len(lines) == 1 and "non-integer" in lines[0] and "layer" in lines[0]


@pytest.mark.parametrize(
    "extra, pattern",
    [(["--external-key", "X_nope"], "not in adata.obsm"),
     (["--layer", "counts"], "layer 'counts' not found")],
)
def test_fit_bad_options_fail_cleanly(h5ad, tmp_path, capsys, extra, pattern):
    code, cap = _fit([h5ad, "--out", tmp_path / "o", "--max-epochs", 1, *extra], capsys)
    assert code == 2 and pattern in cap.err and "Traceback" not in cap.err


def test_fit_missing_file(tmp_path, capsys):
    code, cap = _fit([tmp_path / "nope.h5ad", "--out", tmp_path / "o"], capsys)
    assert code == 2 and "no such file" in cap.err


def test_python_dash_m_and_argument_errors(tmp_path):
    r = subprocess.run([sys.executable, "-m", "sctopic", "fit", "x.h5ad", "--out", str(tmp_path),
                        "--n-topics", "0"], capture_output=True, text=True)
    assert r.returncode == 2 and "expected a number >= 1" in r.stderr
    r = subprocess.run([sys.executable, "-m", "sctopic", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "fit" in r.stdout and "demo" in r.stdout


def test_demo_runs_and_reports(tmp_path, capsys):
    code = main(["-q", "demo", "--out", str(tmp_path / "demo"), "--max-epochs", "3", "--n-topics", "6"])
    cap = capsys.readouterr()
    assert code == 0, cap.err
    assert "ARI" in cap.out and "topic_0" in cap.out
    rep = json.loads((tmp_path / "demo" / "train.json").read_text())
    assert 0 <= rep["demo_metrics"]["ari_oracle"] <= 1
    assert 0 < rep["demo_metrics"]["td"] <= 1


def _corrupt(adata, how):
    X = adata.X.toarray().astype(np.float32)
    if how == "negative":
        X[0, 0] = -3
    elif how == "nan":
        X[1, 2] = np.nan
    elif how == "inf":
        X[1, 2] = np.inf
    adata.X = X
    if how == "duplicate":
        names = adata.var_names.to_list()
        names[5] = names[4]
        adata.var_names = names
    if how == "nan_embedding":
        emb = np.random.default_rng(0).normal(size=(adata.n_obs, 8)).astype(np.float32)
        emb[7, 1] = np.nan
        adata.obsm["X_emb"] = emb
    return adata


@pytest.mark.parametrize(
    "how, pattern, extra",
    [("negative", "negative values", []), ("nan", "NaN", []), ("inf", "infinite", []),
     ("duplicate", "duplicate gene names", []),
     ("nan_embedding", "NaN", ["--external-key", "X_emb"])],
)
def test_cli_bad_inputs(small_adata, tmp_path, capsys, how, pattern, extra):
    path = tmp_path / f"{how}.h5ad"
    _corrupt(small_adata, how).write_h5ad(path)
    code, cap = _fit([path, "--out", tmp_path / "o", "--max-epochs", 1, "--n-hvg", 0, *extra], capsys)
    assert code == 2
    assert pattern in cap.err and len(cap.err.strip().splitlines()) == 1


def test_cli_gradient_choices_match_the_module():
    from sctopic.commands.fit import ECR_GRADS as cli_choices
    from sctopic.nn.sinkhorn import ECR_GRADS

    assert set(cli_choices) == set(ECR_GRADS)
