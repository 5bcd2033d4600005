"""Output directories as one unit (staging, swap, manifest), --overwrite, and resume tied to the data."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import sctopic
from conftest import crash_after
from sctopic.cli import main
from sctopic.data import rundir
from sctopic.errors import InputError

FIT = ["--model", "scetm", "--n-topics", "3", "--n-hvg", "0", "--max-epochs", "1", "--batch-size", "100",
       "--device", "cpu"]


@pytest.fixture(scope="module")
def h5ad(tmp_path_factory):
    """120 real PBMCs x their expressed genes, on disk."""
    from sctopic.datasets import pbmc68k_reduced

    a = pbmc68k_reduced()[:120]
    a = a[:, np.asarray(a.X.sum(0)).ravel() > 0].copy()
    path = tmp_path_factory.mktemp("data") / "pbmc120.h5ad"
    a.write_h5ad(path)
    return path


def _fit(h5ad, out, *extra):
    return main(["-q", "fit", str(h5ad), "--out", str(out), *FIT, *map(str, extra)])


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _temporaries(folder: Path) -> list[Path]:
    return sorted(folder.parent.glob(f".{folder.name}.sctopic-*"))


@pytest.fixture(scope="module")
def fitted(h5ad, tmp_path_factory):
    """A finished ``sctopic fit`` folder (copied by the tests that change it)."""
    out = tmp_path_factory.mktemp("fit") / "run"
    assert _fit(h5ad, out, "--seed", 0) == 0
    return out


def _copy(src: Path, tmp_path: Path, name: str = "run") -> Path:
    dst = tmp_path / name
    shutil.copytree(src, dst)
    return dst


# ---------------------------------------------------------------------------- manifest
def test_fit_writes_a_manifest_of_its_files(fitted):
    m = json.loads((fitted / "manifest.json").read_text())
    assert m["format"] == "sctopic-run" and m["command"] == "fit" and m["run_id"]
    files = {f["path"]: f for f in m["files"]}
    assert set(files) == {"model.pt", "result.h5ad", "train.json"}
    for name, f in files.items():
        assert f["size"] == (fitted / name).stat().st_size
        assert f["sha256"] == rundir.file_sha256(fitted / name)
    assert len(m["settings_sha256"]) == 64 and m["settings"]["n_topics"] == 3
    assert m["data"]["n_cells"] == 120 and len(m["data"]["counts_sha256"]) == 64
    assert m["data"]["path"] == str(Path(m["data"]["path"]).resolve())
    rep = json.loads((fitted / "train.json").read_text())
    assert rep["run_id"] == m["run_id"] and rep["resumes"] == []
    assert rundir.verify(fitted)["run_id"] == m["run_id"]
    assert not _temporaries(fitted)


def test_readers_refuse_a_mixed_folder_and_read_an_old_one(fitted, h5ad, tmp_path, capsys):
    other = tmp_path / "other"
    assert _fit(h5ad, other, "--seed", 1) == 0
    mixed = _copy(fitted, tmp_path, "mixed")
    shutil.copy(other / "model.pt", mixed / "model.pt")  # run B's model beside run A's result
    capsys.readouterr()
    commands = [
        ["evaluate", mixed, "--genesets", "none"],
        ["enrich", mixed, "--genesets", "hallmark", "--out", tmp_path / "e.tsv"],
        ["report", mixed, "--out", tmp_path / "r.html"],
        ["perturb", mixed, "--group-key", "bulk_labels", "--control", "a", "--target", "b",
         "--json", tmp_path / "p.json"],
        ["survival", mixed, h5ad, "--time-key", "t", "--out", tmp_path / "s.tsv"],
        ["transfer", mixed, h5ad, "--out", tmp_path / "t"],
        ["evaluate", mixed / "result.h5ad", "--genesets", "none"],
    ]
    for cmd in commands:
        assert main(list(map(str, cmd))) == 2, cmd
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "model.pt does not match" in err[0] and "--overwrite" in err[0], (cmd, err)
        assert "Traceback" not in err[0]
    assert not (tmp_path / "t").exists()

    # A folder written before manifests existed is read as it is.
    (mixed / "manifest.json").unlink()
    assert rundir.verify(mixed) is None
    assert main(["-q", "transfer", str(mixed), str(h5ad), "--out", str(tmp_path / "t")]) == 0


def test_manifest_catches_same_size_edits_and_strays(fitted, tmp_path):
    d = _copy(fitted, tmp_path)
    raw = bytearray((d / "train.json").read_bytes())
    raw[-2] = ord(" ") if raw[-2] != ord(" ") else ord("\t")  # same size, other bytes
    (d / "train.json").write_bytes(bytes(raw))
    with pytest.raises(InputError, match=r"train\.json does not match .*same size, different SHA-256"):
        rundir.verify(d)
    d2 = _copy(fitted, tmp_path, "run2")
    (d2 / "result.h5ad").unlink()
    with pytest.raises(InputError, match="listed but missing"):
        rundir.verify(d2)
    d3 = _copy(fitted, tmp_path, "run3")
    (d3 / "transfer.json").write_text("{}")
    with pytest.raises(InputError, match="not listed: it comes from another run"):
        rundir.verify(d3)


# ---------------------------------------------------------------------------- --overwrite
def test_rerun_needs_overwrite_and_then_replaces_the_whole_run(fitted, h5ad, tmp_path, capsys):
    d = _copy(fitted, tmp_path)
    before = _snapshot(d)
    capsys.readouterr()
    assert _fit(h5ad, d, "--seed", 1) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already holds a `sctopic fit` run" in err[0] and "--overwrite" in err[0]
    assert _snapshot(d) == before

    (d / "notes.txt").write_text("mine")  # not part of the run: replaced with it
    assert _fit(h5ad, d, "--seed", 1, "--overwrite") == 0
    after = _snapshot(d)
    assert set(after) == {"model.pt", "result.h5ad", "train.json", "manifest.json"}
    assert after["model.pt"] != before["model.pt"]
    assert rundir.verify(d)["run_id"] != json.loads(before["manifest.json"])["run_id"]
    assert not _temporaries(d)


def test_a_folder_of_unknown_files_is_never_replaced(h5ad, tmp_path, capsys):
    d = tmp_path / "mine"
    d.mkdir()
    (d / "thesis.tex").write_text("precious")
    for extra in ([], ["--overwrite"]):
        assert _fit(h5ad, d, *extra) == 2
        err = capsys.readouterr().err
        assert "holds no sctopic run (thesis.tex)" in err
    assert (d / "thesis.tex").read_text() == "precious" and len(list(d.iterdir())) == 1


def test_transfer_refuses_a_fit_folder(fitted, h5ad, tmp_path, capsys):
    d = _copy(fitted, tmp_path)
    before = _snapshot(d)
    capsys.readouterr()
    assert main(["-q", "transfer", str(d), str(h5ad), "--out", str(d)]) == 2
    assert "is the folder of the model being transferred" in capsys.readouterr().err
    other = _copy(fitted, tmp_path, "other_fit")
    for extra in ([], ["--overwrite"]):
        assert main(["-q", "transfer", str(d), str(h5ad), "--out", str(other), *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "holds a `sctopic fit` run" in err[0]
    assert _snapshot(d) == before and _snapshot(other) == before

    t = tmp_path / "t"
    assert main(["-q", "transfer", str(d), str(h5ad), "--out", str(t)]) == 0
    m = rundir.verify(t)
    assert m["command"] == "transfer" and {f["path"] for f in m["files"]} == {"result.h5ad", "transfer.json"}
    assert json.loads((t / "transfer.json").read_text())["model_run_id"] == rundir.read_manifest(d)["run_id"]
    assert main(["-q", "transfer", str(d), str(h5ad), "--out", str(t)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["-q", "transfer", str(d), str(h5ad), "--out", str(t), "--overwrite"]) == 0
    # and fit refuses a transfer folder
    assert _fit(h5ad, t, "--overwrite") == 2
    assert "holds a `sctopic transfer` run" in capsys.readouterr().err


# ---------------------------------------------------------------------------- failures while writing
class Boom(RuntimeError):
    """Stands in for a crash (disk full, kill) half-way through writing the outputs."""


def test_failure_while_writing_leaves_the_old_outputs_byte_identical(fitted, h5ad, tmp_path, monkeypatch):
    import sctopic.data.io as io

    d = _copy(fitted, tmp_path)
    before = _snapshot(d)
    real = io.write_h5ad_atomic

    def half(adata, path):  # model.pt is already in the staging folder; result.h5ad half-written
        Path(path).write_bytes(b"half an h5ad")
        raise Boom("disk full")

    monkeypatch.setattr(io, "write_h5ad_atomic", half)
    with pytest.raises(Boom):
        _fit(h5ad, d, "--seed", 5, "--overwrite")
    assert _snapshot(d) == before
    assert not _temporaries(d)

    # a failure in the manifest step (after every file is written) changes nothing either
    monkeypatch.setattr(io, "write_h5ad_atomic", real)
    monkeypatch.setattr(rundir, "swap_in", lambda *a: (_ for _ in ()).throw(Boom("killed")))
    with pytest.raises(Boom):
        _fit(h5ad, d, "--seed", 5, "--overwrite")
    assert _snapshot(d) == before and not _temporaries(d)

    # a new folder is not created at all by a failed run
    monkeypatch.setattr(io, "write_h5ad_atomic", half)
    with pytest.raises(Boom):
        _fit(h5ad, tmp_path / "new", "--seed", 5)
    assert not (tmp_path / "new").exists() and not _temporaries(tmp_path / "new")


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_temporaries_of_killed_runs_are_cleaned_and_a_half_swap_is_undone(fitted, h5ad, tmp_path):
    d = _copy(fitted, tmp_path)
    before = _snapshot(d)
    host = rundir.host_tag()
    pid = _dead_pid()
    stale = tmp_path / f".run.sctopic-tmp-{host}-{pid}-abcd1234"
    stale.mkdir()
    (stale / "model.pt").write_bytes(b"half")
    alive = tmp_path / f".run.sctopic-tmp-{host}-{os.getpid()}-beef0000"  # a run in progress: kept
    alive.mkdir()
    assert rundir.clean_stale(d) == [stale]
    assert not stale.exists() and alive.exists()
    alive.rmdir()

    # killed between the two renames of a swap: the previous outputs come back
    old = tmp_path / f".run.sctopic-old-{host}-{pid}-abcd1234"
    os.rename(d, old)
    rundir.clean_stale(d)
    assert _snapshot(d) == before and not old.exists()

    # and the next fit cleans a stale staging folder by itself
    stale.mkdir()
    assert _fit(h5ad, d, "--overwrite") == 0
    assert not stale.exists() and not _temporaries(d)


def test_swap_without_renameat2_keeps_one_unit(fitted, tmp_path, monkeypatch):
    d = _copy(fitted, tmp_path)
    new = tmp_path / ".run.sctopic-tmp-x"
    new.mkdir()
    (new / "a.txt").write_text("new")
    monkeypatch.setattr(rundir, "_exchange", lambda a, b: False)
    rundir.swap_in(new, d)
    assert [p.name for p in d.iterdir()] == ["a.txt"] and not _temporaries(d) and not new.exists()


# ---------------------------------------------------------------------------- fit --resume
def test_fit_resume_records_resumes_and_leaves_no_checkpoint(h5ad, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    args = ["--max-epochs", 3, "--checkpoint-every", 1]
    crash_after(monkeypatch, 2)
    assert _fit(h5ad, out, *args) == 130  # interrupted after the epoch-2 checkpoint
    monkeypatch.undo()
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt"]
    assert not _temporaries(out)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert _fit(h5ad, out, *args, "--resume") == 0  # only a checkpoint: no --overwrite needed
    rep = json.loads((out / "train.json").read_text())
    assert [r["from_epoch"] for r in rep["resumes"]] == [2]
    assert rundir.verify(out)["extra"]["resumes"][0]["from_epoch"] == 2
    assert not (out / "checkpoint.pt").exists() and not _temporaries(out)


@pytest.fixture()
def ckpt_run(pbmc_small, tmp_path):
    data = pbmc_small.copy()
    path = tmp_path / "ck.pt"
    sctopic.SCETM(data.copy(), n_topics=3, n_hidden=16, emb_dim=8).train(
        max_epochs=1, batch_size=256, progress=False, seed=0, write_results=False,
        checkpoint_path=path, checkpoint_every=1)
    return data, path


def _resume(data, path):
    return sctopic.SCETM(data, n_topics=3, n_hidden=16, emb_dim=8).train(
        max_epochs=1, batch_size=256, progress=False, seed=0, write_results=False,
        checkpoint_path=path, resume=True)


def test_resume_refused_on_shuffled_cells(ckpt_run):
    data, path = ckpt_run
    perm = np.random.default_rng(0).permutation(data.n_obs)
    with pytest.raises(InputError, match=r"cells reordered") as err:
        _resume(data[perm].copy(), path)
    assert "obs_names_sha256" in str(err.value) and "counts_sha256" in str(err.value)
    m = _resume(data.copy(), path)  # the same data resume
    assert [r["from_epoch"] for r in m.resumes_] == [1]


def test_resume_refused_on_counts_moved_between_cells_with_the_same_totals(ckpt_run):
    data, path = ckpt_run
    X = data.X.tocsr().copy()
    a, b = X.indptr[0], X.indptr[1]  # first value of cell 0 and of cell 1, different values
    j = next(k for k in range(b, X.indptr[2]) if X.data[k] != X.data[a])
    X.data[a], X.data[j] = X.data[j], X.data[a]
    changed = data.copy()
    changed.X = X
    assert changed.X.sum() == data.X.sum() and changed.X.nnz == data.X.nnz
    with pytest.raises(InputError, match=r"data\.counts_sha256: counts differ") as err:
        _resume(changed, path)
    assert "total_counts" not in str(err.value) and "obs_names" not in str(err.value)


def test_fingerprint_is_the_same_in_memory_and_out_of_core(h5ad):
    import anndata as ad

    from sctopic.data.backed import BackedCounts
    from sctopic.data.fingerprint import counts_digest

    X = ad.read_h5ad(h5ad).X
    mem = counts_digest(X)
    assert counts_digest(X.toarray()) == mem
    assert counts_digest(BackedCounts(h5ad)) == mem
    assert counts_digest(X, block_rows=7) == mem  # independent of the block size


# ---------------------------------------------------------------------------- save()
def test_save_refuses_an_existing_file_unless_overwrite(pbmc_small, tmp_path):
    m = sctopic.SCETM(pbmc_small[:100].copy(), n_topics=3, n_hidden=16, emb_dim=8).train(
        max_epochs=1, batch_size=100, progress=False)
    p = m.save(tmp_path / "m.pt")
    first = p.read_bytes()
    with pytest.raises(InputError, match="exists; pass overwrite=True"):
        m.save(p)
    assert p.read_bytes() == first
    m.save(p, overwrite=True)
    assert sctopic.SCETM.load(p).genes == m.genes
    with pytest.raises(InputError, match="is a directory"):
        m.save(tmp_path, overwrite=True)


# ---------------------------------------------------------------------------- select-k and bench
def test_select_k_is_one_unit_and_needs_overwrite(h5ad, tmp_path, capsys, monkeypatch):
    out = tmp_path / "sk"
    args = ["-q", "select-k", str(h5ad), "--ks", "2", "3", "--seeds", "0", "1", "--max-epochs", "1",
            "--n-hvg", "0", "--device", "cpu", "--model", "scetm", "--out", str(out)]
    assert main(args) == 0
    m = rundir.verify(out)
    assert m["command"] == "select-k" and "stability.png" in {f["path"] for f in m["files"]}
    before = _snapshot(out)
    capsys.readouterr()
    assert main(args) == 2 and "--overwrite" in capsys.readouterr().err
    import sctopic.plotting.stability as plots

    monkeypatch.setattr(plots, "stability_curves", lambda *a, **k: (_ for _ in ()).throw(Boom("x")))
    with pytest.raises(Boom):
        main([*args, "--overwrite"])
    assert _snapshot(out) == before and not _temporaries(out)


def test_bench_failure_in_the_report_leaves_the_old_outputs(h5ad, tmp_path, monkeypatch, capsys):
    import yaml

    cfg = {"out": "out", "seeds": [0], "n_topics": 3, "genesets": [], "permutations": 0,
           "datasets": {"d": {"path": str(h5ad), "labels": "bulk_labels"}}, "methods": ["pca"]}
    path = tmp_path / "b.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "out"
    assert main(["-q", "bench", str(path)]) == 0
    assert rundir.verify(out)["command"] == "bench"
    before = _snapshot(out)
    assert main(["-q", "bench", str(path)]) == 0  # a benchmark continues without --overwrite
    assert _snapshot(out).keys() == before.keys()

    import sctopic.bench.report as report

    monkeypatch.setattr(report, "plot_metrics", lambda *a, **k: (_ for _ in ()).throw(Boom("disk full")))
    with pytest.raises(Boom):
        main(["-q", "bench", str(path), "--no-resume"])
    assert _snapshot(out).keys() == before.keys() and rundir.verify(out)
    assert not _temporaries(out)
    monkeypatch.undo()
    fit_dir = tmp_path / "fit"
    assert _fit(h5ad, fit_dir) == 0
    capsys.readouterr()
    assert main(["-q", "bench", str(path), "--out", str(fit_dir)]) == 2
    assert "holds a `sctopic fit` run" in capsys.readouterr().err


def test_bench_continues_from_a_killed_run(h5ad, tmp_path):
    import yaml

    cfg = {"out": "out", "seeds": [0, 1], "n_topics": 3, "genesets": [], "permutations": 0,
           "datasets": {"d": {"path": str(h5ad), "labels": "bulk_labels"}}, "methods": ["pca"]}
    path = tmp_path / "b.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out, full = tmp_path / "out", tmp_path / "full"
    assert main(["-q", "bench", str(path), "--seeds", "0"]) == 0
    assert main(["-q", "bench", str(path), "--out", str(full)]) == 0
    # What a bench killed after finishing seed 1 leaves: its staging folder with both rows.
    staging = tmp_path / f".out.sctopic-tmp-{rundir.host_tag()}-{_dead_pid()}-0000aaaa"
    shutil.copytree(full, staging)
    (staging / "manifest.json").unlink()
    (staging / ".sctopic-command").write_text("bench\n")
    import pandas as pd

    df = pd.read_csv(staging / "results.csv")
    df.loc[df["seed"] == 1, "ari_oracle"] = 0.123456  # marks the row the killed run finished
    df.to_csv(staging / "results.csv", index=False)
    assert main(["-q", "bench", str(path)]) == 0  # seed 1 is taken from the killed run, not rerun
    res = pd.read_csv(out / "results.csv")
    assert sorted(res["seed"]) == [0, 1]
    assert res.loc[res["seed"] == 1, "ari_oracle"].item() == pytest.approx(0.123456)
    assert not _temporaries(out)
