"""Nothing lost, nothing silent (issue 18): a parametrised suite of bad inputs and faults.

Every case in :data:`CASES` runs through the real command line (``sctopic.cli.main``, in
process) or the Python API on tiny real data (120 PBMCs, 3 topics, 1 epoch) and asserts

* the exit status (CLI) or the exception type (API: :class:`~sctopic.errors.InputError`, or
  :class:`~sctopic.errors.OutputError` for a failed write),
* a one-line message naming the problem (a distinctive fragment) and no traceback,
* that every output that existed before (a previous fit, transfer, select-k run, JSON, TSV,
  HTML and h5ad files) and the fitted model read by the commands are byte-identical afterwards.

Cases whose outcome is ``handled`` (the input is legal and the code copes, e.g. an external
view given as an array) assert the result instead. ``benchmarks/list_badinput_cases.py``
writes the table of cases and outcomes from :data:`CASES`.

Faults: a full disk (``OSError(ENOSPC)`` injected at each write path: checkpoint, model.pt,
result.h5ad through h5py, JSON/TSV/HTML text, plots, GMT, the flush before the rename, the
swap), read-only destinations, and SIGKILL at 20 moments of ``sctopic fit`` followed by
``--resume`` (see the end of the file). As root, ``chmod 0o555`` does not stop writes, so the
read-only cases inject the ``PermissionError`` the system would raise (and, where tmpfs can be
mounted, one case each uses a real full and a real read-only file system).
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from sctopic.errors import InputError, OutputError, SctopicError

FIT = ["--model", "scetm", "--n-topics", "3", "--n-hvg", "0", "--max-epochs", "1", "--batch-size", "100",
       "--device", "cpu", "--seed", "0"]
SCE2TM = ["--model", "sce2tm", "--n-topics", "3", "--n-hvg", "0", "--max-epochs", "1", "--batch-size", "100",
          "--device", "cpu"]
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


# ============================================================================ the environment
class Env:
    """Paths of the data, bad files, the fitted model and the previous outputs (one per module)."""

    def __getattr__(self, name: str) -> Path:  # pragma: no cover - a typo in a case
        raise AttributeError(name)


def _write(path: Path, adata: ad.AnnData) -> Path:
    adata.write_h5ad(path)
    return path


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> Env:
    from sctopic.cli import main
    from sctopic.datasets import pbmc68k_reduced

    root = tmp_path_factory.mktemp("badinput")
    e = Env()
    e.root = root
    a = pbmc68k_reduced()[:120]
    a = a[:, np.asarray(a.X.sum(0)).ravel() > 0].copy()
    a.obs["cond"] = np.where(np.arange(a.n_obs) % 2 == 0, "ctrl", "stim")
    d = root / "data"
    d.mkdir()
    e.data = _write(d / "raw.h5ad", a)
    b = a.copy()
    b.X = b.X.astype(np.float32)
    b.X.data = np.log1p(b.X.data * 3.7)
    e.norm = _write(d / "norm.h5ad", b)
    b = a.copy()
    b.X = b.X.astype(np.float32)
    b.X.data[::7] = np.nan
    e.nan = _write(d / "nan.h5ad", b)
    b = a.copy()
    b.X = b.X.astype(np.float32)
    b.X.data[::5] *= -1
    e.neg = _write(d / "neg.h5ad", b)
    e.zero_cells = _write(d / "zero_cells.h5ad", a[:0].copy())
    e.zero_genes = _write(d / "zero_genes.h5ad", a[:, :0].copy())
    b = a.copy()
    b.X = sp.csr_matrix(b.shape, dtype=np.float32)
    e.all_zero = _write(d / "all_zero.h5ad", b)
    b = a.copy()
    X = b.X.tolil()
    X[:5] = 0
    b.X = X.tocsr()
    e.some_zero = _write(d / "some_zero.h5ad", b)
    b = a.copy()
    b.var_names = list(b.var_names[:-1]) + [b.var_names[0]]
    e.dup = _write(d / "dup.h5ad", b)
    b = a.copy()
    b.obsm["X_const"] = np.ones((b.n_obs, 8), np.float32)
    b.obsm["X_nan"] = np.random.default_rng(0).normal(size=(b.n_obs, 8)).astype(np.float32)
    b.obsm["X_nan"][3, 2] = np.nan
    b.obs["batch_one"] = ["a"] * (b.n_obs - 1) + ["b"]
    b.obs["batch_float"] = np.random.default_rng(0).random(b.n_obs)
    b.obs["batch_nan"] = pd.Categorical(["a", "b"] * 59 + [np.nan, np.nan])
    b.obs["cond_float"] = np.random.default_rng(1).random(b.n_obs)
    e.extra = _write(d / "extra.h5ad", b)
    e.fewgenes = _write(d / "fewgenes.h5ad", a[:, 10:].copy())
    b = a[:, :20].copy()
    b.var_names = [f"OTHER{i}" for i in range(20)]
    e.othergenes = _write(d / "othergenes.h5ad", b)
    e.garbage = d / "garbage.h5ad"
    e.garbage.write_bytes(b"\x00\x01 not hdf5 " * 200)
    e.text = d / "counts.csv"
    e.text.write_text("gene,cell1\nA,1\n")
    # bulk samples for survival
    rng = np.random.default_rng(0)
    bulk = ad.AnnData(rng.normal(size=(30, a.n_vars)).astype(np.float32), var=a.var[[]].copy(),
                      obs=pd.DataFrame(index=[f"s{i}" for i in range(30)]))
    bulk.obs["time"] = rng.uniform(1, 100, 30)
    bulk.obs["event"] = (np.arange(30) % 2).astype(float)
    bulk.obs["time_text"] = ["long"] * 30
    bulk.obs["time_neg"] = -bulk.obs["time"]
    bulk.obs["event_text"] = ["dead"] * 30
    bulk.obs["no_event"] = 0.0
    e.bulk = _write(d / "bulk.h5ad", bulk)
    # gene-set files
    genes = list(a.var_names)
    e.gmt_text = d / "notes.gmt"
    e.gmt_text.write_text("These are my favourite genes\nHES4 TNFRSF4 SSU72\n")
    e.gmt_binary = d / "binary.gmt"
    e.gmt_binary.write_bytes(bytes(range(256)) * 8)
    e.gmt_empty = d / "empty.gmt"
    e.gmt_empty.write_text("# nothing here\n\n")
    e.gmt_nogenes = d / "nogenes.gmt"
    e.gmt_nogenes.write_text("SET_A\tdescription\nSET_B\tdescription\n")
    e.gmt_mouse = d / "mouse.gmt"
    e.gmt_mouse.write_text("".join(f"SET{i}\tna\t" + "\t".join(g.capitalize() for g in genes[i * 25:(i + 1) * 25])
                                   + "\n" for i in range(10)))
    # ortholog tables
    e.orth_binary = d / "orth.tsv"
    e.orth_binary.write_bytes(os.urandom(2000).replace(b"\n", b"\x00"))
    e.orth_onecol = d / "orth_onecol.tsv"
    e.orth_onecol.write_text("\n".join(genes[:50]) + "\n")
    e.orth_ragged = d / "orth_ragged.csv"
    e.orth_ragged.write_text("human,mouse\nCD74,Cd74\nACTB,Actb,extra,more\n")
    e.orth_nomatch = d / "orth_nomatch.tsv"
    e.orth_nomatch.write_text("".join(f"X{i}\tY{i}\n" for i in range(20)))
    # the fitted model read by the commands, and a tiny one (6 genes)
    e.fit = root / "fit"
    assert main(["-q", "fit", str(e.data), "--out", str(e.fit), *FIT]) == 0
    e.tiny_data = _write(d / "tiny.h5ad", a[:, np.argsort(-np.asarray(a.X.sum(0)).ravel())[:6]].copy())
    e.tiny = root / "tiny"
    assert main(["-q", "fit", str(e.tiny_data), "--out", str(e.tiny), *FIT]) == 0
    # previous outputs that no failed command may change
    p = root / "prev"
    p.mkdir()
    e.prev = p
    e.prev_fit = p / "fit_run"
    shutil.copytree(e.fit, e.prev_fit)
    e.prev_transfer = p / "transfer_run"
    assert main(["-q", "transfer", str(e.fit), str(e.data), "--out", str(e.prev_transfer)]) == 0
    e.prev_sk = p / "sk_run"
    e.prev_sk.mkdir()
    (e.prev_sk / "stability.json").write_text('{"suggested_k": 3}\n')  # a select-k run of an older version
    for name, text in (("eval.json", "{}\n"), ("enrich.tsv", "library\tset\n"), ("report.html", "<html></html>\n"),
                       ("surv.tsv", "topic\thr\n"), ("perturb.json", "{}\n"), ("set.gmt", "S\tna\tA\n")):
        (p / name).write_text(text)
        setattr(e, "prev_" + name.split(".")[0], p / name)
    e.prev_emb = p / "emb.h5ad"
    shutil.copy(e.data, e.prev_emb)
    e.prev_plots = p / "plots"
    e.prev_plots.mkdir()
    (e.prev_plots / "perturb_lfc.png").write_bytes(b"\x89PNG old")
    e.afile = p / "afile"
    e.afile.write_text("a plain file, not a folder\n")
    e.mine = p / "mine"
    e.mine.mkdir()
    (e.mine / "thesis.tex").write_text("precious\n")
    e.ro = p / "readonly"
    e.ro.mkdir()
    os.chmod(e.ro, 0o555)
    yield e
    os.chmod(e.ro, 0o755)


def _tree(*folders: Path) -> dict[str, str]:
    """SHA-256 of every file under ``folders`` (and of the folders' listings)."""
    out = {}
    for f in folders:
        for p in sorted(f.rglob("*")):
            if p.is_file():
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
            elif p.is_dir():
                out[str(p) + "/"] = ",".join(sorted(q.name for q in p.iterdir()))
    return out


# ============================================================================ fault injection
def _under(path, folder: Path) -> bool:
    try:
        return Path(os.path.abspath(path)).is_relative_to(Path(os.path.abspath(folder)))
    except (TypeError, ValueError):
        return False


def readonly(folder_attr: str = "ro", code: int = errno.EACCES) -> Callable:
    """Make writes under a folder fail as on a read-only destination.

    Not root: ``chmod 0o555`` (set up in ``env``) is what refuses them. As root, permissions do
    not stop writes, so the ``PermissionError``/``OSError(EROFS)`` the system would raise is
    injected where files and folders are created (``mkstemp``, ``mkdir``, ``rename``).
    """
    def inject(mp, e):
        folder = getattr(e, folder_attr)
        if not IS_ROOT and code == errno.EACCES:
            return
        real_mkstemp, real_mkdir, real_rename = tempfile.mkstemp, os.mkdir, os.rename

        def mkstemp(*a, dir=None, **k):
            if dir is not None and _under(dir, folder):
                raise OSError(code, os.strerror(code), str(dir))
            return real_mkstemp(*a, dir=dir, **k)

        def mkdir(path, *a, **k):
            if _under(path, folder):
                raise OSError(code, os.strerror(code), str(path))
            return real_mkdir(path, *a, **k)

        def rename(src, dst, *a, **k):
            if _under(dst, folder):
                raise OSError(code, os.strerror(code), str(dst))
            return real_rename(src, dst, *a, **k)

        mp.setattr(tempfile, "mkstemp", mkstemp)
        mp.setattr(os, "mkdir", mkdir)
        mp.setattr(os, "rename", rename)
    return inject


def _enospc(*_a, **_k):
    raise OSError(errno.ENOSPC, "No space left on device")


def full_disk(target: str) -> Callable:
    """Make one write path fail as on a full disk.

    ``torch.save`` (model.pt, checkpoint.pt), ``h5py`` (result.h5ad: h5py names the errno only
    in its message), ``text`` (JSON, TSV, HTML, GMT), ``csv`` (pandas), ``png`` (matplotlib),
    ``fsync`` (the flush before the rename), ``mkstemp`` (the first file of a command: fails
    before any work), ``swap`` (the rename that puts a run in place; EIO).
    """
    def inject(mp, e):
        if target == "torch.save":
            import torch

            mp.setattr(torch, "save", _enospc)
        elif target == "h5py":
            def write_h5ad(self, *a, **k):
                raise OSError("Can't synchronously write data (file write failed: time = Thu Dec  3, "
                              "filename = 'x', file descriptor = 9, errno = 28, error message = 'No space "
                              "left on device', buf = 0x1, total write size = 4096)")
            mp.setattr(ad.AnnData, "write_h5ad", write_h5ad)
        elif target == "text":
            mp.setattr(Path, "write_text", _enospc)
        elif target == "csv":
            mp.setattr(pd.DataFrame, "to_csv", _enospc)
        elif target == "png":
            import matplotlib.figure

            mp.setattr(matplotlib.figure.Figure, "savefig", _enospc)
        elif target == "gmt":
            import sctopic.genesets.gmt as gmt

            real = gmt._open_text

            class Full:
                def __init__(self, fh):
                    self.fh = fh

                def __enter__(self):
                    self.fh.__enter__()
                    return self

                def __exit__(self, *exc):
                    return self.fh.__exit__(*exc)

                def writelines(self, lines):
                    raise OSError(errno.ENOSPC, "No space left on device")

            mp.setattr(gmt, "_open_text", lambda *a, **k: Full(real(*a, **k)))
        elif target == "fsync":
            def fsync(fd):
                raise OSError(errno.EIO, "Input/output error")
            mp.setattr(os, "fsync", fsync)
        elif target == "mkstemp":
            mp.setattr(tempfile, "mkstemp", _enospc)
        elif target == "swap":
            from sctopic.data import rundir

            def swap(*a, **k):
                raise OSError(errno.EIO, "Input/output error", str(a[1]))
            mp.setattr(rundir, "swap_in", swap)
        else:  # pragma: no cover
            raise ValueError(target)
    return inject


# ============================================================================ the cases
@dataclass(frozen=True)
class Case:
    """One bad input or fault.

    ``argv(env)`` (CLI) or ``api(env)`` (Python) runs it; ``fragment`` must occur in the message.
    ``outcome``: ``error`` (a clear one-line error) or ``handled`` (legal input, coped with:
    ``check(env, result)`` asserts the result).
    """

    id: str
    item: str
    fragment: str = ""
    argv: Callable[[Env], list] | None = None
    api: Callable[[Env], Any] | None = None
    exc: type[BaseException] = InputError
    exit: int = 2
    outcome: str = "error"
    inject: Callable | None = None
    check: Callable | None = None
    argparse: bool = False  # refused by argparse (usage line + one error line)

    @property
    def surface(self) -> str:
        return "CLI" if self.argv is not None else "API"


def cli(id, item, fragment, argv, **kw) -> Case:
    return Case(id=id, item=item, fragment=fragment, argv=argv, **kw)


def api(id, item, fragment, fn, **kw) -> Case:
    return Case(id=id, item=item, fragment=fragment, api=fn, **kw)


def _fit(e, data, *extra, out=None):
    return ["fit", str(data), "--out", str(out or e.prev_fit), "--overwrite", *FIT, *map(str, extra)]


def _fit2(e, data, *extra, out=None):
    return ["fit", str(data), "--out", str(out or e.prev_fit), "--overwrite", *SCE2TM, *map(str, extra)]


def _eval(e, *extra, src=None):
    return ["evaluate", str(src or e.fit), "--genesets", "none", "--permutations", "0", *map(str, extra)]


def _enrich(e, *extra):
    return ["enrich", str(e.fit), "--permutations", "0", "--method", "ora", *map(str, extra)]


def _report(e, *extra):
    return ["report", str(e.fit), "--genesets", "none", "--layout", "pca", *map(str, extra)]


def _sk(e, data=None, *extra, ks=("2", "3"), seeds=("0", "1")):
    return ["select-k", str(data or e.data), "--ks", *ks, "--seeds", *seeds, "--max-epochs", "1", "--n-hvg", "0",
            "--device", "cpu", "--out", str(e.prev_sk), "--overwrite", *map(str, extra)]


def _transfer(e, data=None, *extra, out=None):
    return ["transfer", str(e.fit), str(data or e.data), "--out", str(out or e.prev_transfer), "--overwrite",
            *map(str, extra)]


def _perturb(e, *extra, control="ctrl", target="stim", group="cond"):
    return ["perturb", str(e.fit), "--group-key", group, "--control", control, "--target", target,
            "--n-null", "0", "--json", str(e.prev_perturb), *map(str, extra)]


def _surv(e, *extra, out=None):
    return ["survival", str(e.fit), str(e.bulk), "--out", str(out or e.prev_surv), *map(str, extra)]


def _embed(e, *extra, out=None, data=None):
    return ["embed", str(data or e.data), "--external", "random", "--out", str(out or e.prev_emb), *map(str, extra)]


def _model(e):
    from sctopic.models.transfer import load_model

    return load_model(e.fit)


def _adata(e, which="data"):
    return ad.read_h5ad(getattr(e, which))


def _sce2tm(e, which="data", **kw):
    import sctopic

    return sctopic.SCE2TM(_adata(e, which), n_topics=3, n_top_genes=None, **kw)


def _scetm(e, which="data", **kw):
    import sctopic

    return sctopic.SCETM(_adata(e, which), **{"n_topics": 3, "n_top_genes": None, **kw})


def _train(e, **kw):
    return _scetm(e).train(**{"max_epochs": 1, "batch_size": 100, "progress": False, "device": "cpu", **kw})


def _check_external(e, m):
    emb = m.external_.matrix
    assert emb.shape == (m.adata.n_obs, 8) and np.isfinite(emb).all()
    ref = np.random.default_rng(0).normal(size=emb.shape).astype(np.float32)
    np.testing.assert_array_equal(emb, ref)  # rows in the data's cell order


def _shuffled_frame(e):
    a = _adata(e)
    ref = np.random.default_rng(0).normal(size=(a.n_obs, 8)).astype(np.float32)
    order = np.random.default_rng(1).permutation(a.n_obs)
    return pd.DataFrame(ref[order], index=a.obs_names[order])


def _check_perturb(e, _):
    res = json.loads(e.prev_perturb.read_text())
    assert res["topics"] == ["topic_0"] and np.isfinite(res["spearman_lfc"])
    e.prev_perturb.write_text("{}\n")  # back to the previous output for the other cases


def _atomic(e, inject_target):
    from sctopic.data.io import write_text_atomic

    return write_text_atomic("new text", e.prev_eval)


def _save_model(e):
    m = _model(e)
    return m.save(e.prev_fit / "model.pt", overwrite=True)


def _write_gmt(e):
    from sctopic.genesets import write_gmt

    return write_gmt({"S": ["A", "B"]}, e.prev_set)


def _cox(e, cov):
    from sctopic.analysis.survival import survival_association

    bulk = _adata(e, "bulk")
    scores = pd.DataFrame(np.random.default_rng(0).normal(size=(30, 2)), index=bulk.obs_names, columns=["t0", "t1"])
    return survival_association(scores, bulk.obs["time"], bulk.obs["event"], cov)


CASES: list[Case] = [
    # ---------------------------------------------------------------- input files (earlier cases)
    cli("fit-missing-file", "input", "no such file", lambda e: _fit(e, e.root / "nope.h5ad")),
    cli("fit-garbage-h5ad", "input", "could not read", lambda e: _fit(e, e.garbage)),
    cli("fit-not-h5ad", "input", "is not an .h5ad file", lambda e: _fit(e, e.text)),
    cli("fit-directory-as-data", "input", "is a directory", lambda e: _fit(e, e.fit)),
    cli("fit-normalised-X", "input", "non-integer", lambda e: _fit(e, e.norm)),
    cli("fit-nan-X", "input", "NaN", lambda e: _fit(e, e.nan)),
    cli("fit-negative-X", "input", "negative", lambda e: _fit(e, e.neg)),
    cli("fit-zero-cells", "input", "empty", lambda e: _fit(e, e.zero_cells)),
    cli("fit-zero-genes", "input", "empty", lambda e: _fit(e, e.zero_genes)),
    cli("fit-all-zero-cells", "input", "have non-zero counts", lambda e: _fit(e, e.all_zero)),
    cli("fit-duplicate-genes", "input", "duplicate gene names", lambda e: _fit(e, e.dup)),
    cli("fit-missing-layer", "input", "layer 'counts' not found", lambda e: _fit(e, e.data, "--layer", "counts")),
    cli("fit-missing-obsm-key", "input", "not in adata.obsm",
        lambda e: _fit2(e, e.extra, "--external-key", "X_nope")),
    cli("fit-external-nan", "input", "NaN or infinite", lambda e: _fit2(e, e.extra, "--external-key", "X_nan")),
    cli("transfer-normalised-X", "input", "non-integer", lambda e: _transfer(e, e.norm)),
    cli("transfer-no-shared-genes", "input", "only 0 of the model's 752 genes", lambda e: _transfer(e, e.othergenes)),
    cli("transfer-missing-model", "input", "no model file",
        lambda e: ["transfer", str(e.root / "nofit"), str(e.data), "--out", str(e.prev_transfer), "--overwrite"]),
    cli("evaluate-missing-dir", "input", "no such file or directory", lambda e: _eval(e, src=e.root / "nofit")),
    cli("evaluate-garbage-h5ad", "input", "could not read", lambda e: _eval(e, src=e.garbage)),
    cli("select-k-normalised-X", "input", "non-integer", lambda e: _sk(e, e.norm)),
    cli("embed-garbage-h5ad", "input", "could not read", lambda e: _embed(e, data=e.garbage)),
    api("api-read-garbage", "input", "could not read", lambda e: __import__("sctopic").SCETM(str(e.garbage))),
    api("api-nan-X", "input", "NaN", lambda e: _scetm(e, "nan")),
    api("api-negative-X", "input", "negative", lambda e: _scetm(e, "neg")),
    api("api-normalised-X", "input", "non-integer", lambda e: _scetm(e, "norm")),
    api("api-zero-cells", "input", "empty", lambda e: _scetm(e, "zero_cells")),
    api("api-all-zero-cells", "input", "have non-zero counts", lambda e: _scetm(e, "all_zero")),
    api("api-some-zero-cells", "input", "", lambda e: _train(e).get_cell_topics(_adata(e, "some_zero")),
        outcome="handled", check=lambda e, th: np.testing.assert_allclose(th.sum(1), 1, rtol=1e-5)),
    api("api-not-anndata", "input", "expected an AnnData", lambda e: __import__("sctopic").SCETM([[1, 2]], n_topics=3)),
    # ---------------------------------------------------------------- K and optimiser settings (item 7)
    cli("fit-k-larger-than-genes", "7", "topics for only", lambda e: _fit(e, e.tiny_data, "--n-topics", "7")),
    cli("fit-k-1", "7", "at least 2", lambda e: _fit(e, e.data, "--n-topics", "1")),
    cli("fit-k-0", "7", "expected a number >= 1", lambda e: _fit(e, e.data, "--n-topics", "0"), argparse=True),
    cli("fit-k-text", "7", "expected a whole number", lambda e: _fit(e, e.data, "--n-topics", "many"),
        argparse=True),
    cli("fit-lr-negative", "7", "lr must be a positive number", lambda e: _fit(e, e.data, "--lr", "-1")),
    cli("fit-lr-zero", "7", "lr must be a positive number", lambda e: _fit(e, e.data, "--lr", "0")),
    cli("fit-lr-nan", "7", "lr must be a positive number", lambda e: _fit(e, e.data, "--lr", "nan")),
    cli("fit-lr-inf", "7", "lr must be a positive number", lambda e: _fit(e, e.data, "--lr", "inf")),
    cli("fit-batch-size-1", "7", "batch_size >= 2", lambda e: _fit(e, e.data, "--batch-size", "1")),
    cli("fit-max-epochs-0", "7", "expected a number >= 1", lambda e: _fit(e, e.data, "--max-epochs", "0"),
        argparse=True),
    cli("fit-ecr-weight-negative", "7", "ecr_weight must be", lambda e: _fit2(e, e.data, "--ecr-weight", "-1")),
    cli("fit-ecr-weight-nan", "7", "ecr_weight must be", lambda e: _fit2(e, e.data, "--ecr-weight", "nan")),
    cli("fit-flag-of-other-model", "7", "does not apply", lambda e: _fit(e, e.data, "--ecr-weight", "5")),
    cli("select-k-one-k", "7", "at least two", lambda e: _sk(e, ks=("3",))),
    cli("select-k-one-seed", "7", "at least two", lambda e: _sk(e, seeds=("0",))),
    cli("select-k-tolerance-negative", "7", "--tolerance must be >= 0", lambda e: _sk(e, None, "--tolerance", "-1")),
    cli("fit-unknown-device", "7", "unknown device 'tpu'", lambda e: _fit(e, e.data, "--device", "tpu")),
    cli("evaluate-resolution-negative", "7", "--resolution) must be a number > 0",
        lambda e: _eval(e, "--resolution", "-1")),
    cli("survival-penalizer-negative", "7", "--penalizer) must be a finite number >= 0",
        lambda e: _surv(e, "--penalizer", "-1")),
    cli("transfer-min-shared-above-1", "7", "between 0 and 1", lambda e: _transfer(e, None, "--min-shared", "2")),
    cli("perturb-shift-nan", "7", "--shift) must be a finite number", lambda e: _perturb(e, "--shift", "nan",
                                                                                         "--topics", "0")),
    api("api-n-topics-0", "7", "at least 2", lambda e: _scetm(e, n_topics=0)),
    api("api-n-topics-fraction", "7", "whole number", lambda e: _scetm(e, n_topics=2.5)),
    api("api-n-topics-text", "7", "whole number", lambda e: __import__("sctopic").SCE2TM(_adata(e), n_topics="3")),
    api("api-lr-negative", "7", "lr must be a positive number", lambda e: _train(e, lr=-1)),
    api("api-lr-nan", "7", "lr must be a positive number", lambda e: _train(e, lr=float("nan"))),
    api("api-batch-size-0", "7", "batch_size >= 2", lambda e: _train(e, batch_size=0)),
    api("api-max-epochs-0", "7", "max_epochs must be >= 1", lambda e: _train(e, max_epochs=0)),
    api("api-unknown-train-option", "7", "unknown argument", lambda e: _train(e, weight_decay=-1)),
    api("api-lr-schedule-unknown", "7", "lr_schedule must be None (the model's own) or one of",
        lambda e: _train(e, lr_schedule="cosin")),
    cli("fit-lr-schedule-not-offered", "7", "for SCE2TM, got 'exponential'",
        lambda e: _fit2(e, e.data, "--lr-schedule", "exponential")),
    api("api-validation-fraction-above-half", "7", "validation_fraction must be in (0, 0.5]",
        lambda e: _train(e, early_stopping=True, validation_fraction=0.6)),
    api("api-early-stopping-patience-0", "7", "patience must be a whole number of checks >= 1",
        lambda e: _train(e, early_stopping=True, patience=0)),
    api("api-early-stopping-too-few-cells", "7", "holds out 6 cells; early stopping needs at least 10",
        lambda e: _train(e, early_stopping=True, validation_fraction=0.05)),
    api("api-ecr-weight-nan", "7", "ecr_weight must be", lambda e: _sce2tm(e, ecr_weight=float("nan"))),
    api("api-top-genes-negative", "7", "positive integer", lambda e: _model(e).top_genes(-3)),
    api("api-top-genes-zero", "7", "positive integer", lambda e: _model(e).top_genes(0)),
    api("api-top-genes-fraction", "7", "positive integer", lambda e: _model(e).top_genes(2.5)),
    # ---------------------------------------------------------------- --top-n larger than the genes (item 7, 9)
    cli("evaluate-top-n-larger-than-genes", "7", "pass --top-n between 1 and 752", lambda e: _eval(e, "--top-n", 5000)),
    cli("evaluate-tiny-model-default-top-n", "9", "--top-n between 1 and 6", lambda e: _eval(e, src=e.tiny)),
    cli("evaluate-top-n-zero", "7", "--top-n must be >= 1", lambda e: _eval(e, "--top-n", 0)),
    cli("report-top-n-larger-than-genes", "7", "--top-n 5000 is larger than the model's 752 genes",
        lambda e: _report(e, "--top-n", 5000, "--out", e.prev_report)),
    cli("select-k-top-n-larger-than-genes", "7", "--top-n", lambda e: _sk(e, None, "--top-n", 5000)),
    cli("enrich-top-n-larger-than-genes", "7", "top_n must be between",
        lambda e: _enrich(e, "-g", "hallmark", "--top-n", 5000, "--out", e.prev_enrich)),
    # ---------------------------------------------------------------- external views (items 7, 8)
    cli("fit-external-constant", "8", "is constant", lambda e: _fit2(e, e.extra, "--external-key", "X_const")),
    api("api-external-constant", "8", "is constant", lambda e: _sce2tm(e, "extra", external_key="X_const")),
    api("api-external-ndarray", "7", "", lambda e: _sce2tm(
        e, external_key=np.random.default_rng(0).normal(size=(120, 8)).astype(np.float32)),
        outcome="handled", check=_check_external),
    api("api-external-dataframe-shuffled", "7", "", lambda e: _sce2tm(e, external_key=_shuffled_frame(e)),
        outcome="handled", check=_check_external),
    api("api-external-ndarray-wrong-rows", "7", "has 119 rows but the data has 120 cells",
        lambda e: _sce2tm(e, external_key=np.zeros((119, 8), np.float32))),
    api("api-external-dataframe-wrong-index", "7", "have no row in the embedding",
        lambda e: _sce2tm(e, external_key=pd.DataFrame(np.random.default_rng(0).normal(size=(120, 8))))),
    api("api-external-3d", "7", "must be 2-dimensional", lambda e: _sce2tm(e, external_key=np.zeros((120, 2, 2)))),
    api("api-external-list", "7", "external_key must be", lambda e: _sce2tm(e, external_key=[1, 2, 3])),
    api("api-external-text-array", "7", "non-numeric", lambda e: _sce2tm(e, external_key=np.full((120, 2), "a"))),
    # ---------------------------------------------------------------- silent today (item 8)
    api("api-fewer-genes-than-topics", "8", "topics for only 6 genes",
        lambda e: _scetm(e, "tiny_data", n_topics=7)),
    cli("fit-batch-with-one-cell", "8", "has only 1 cell", lambda e: _fit(e, e.extra, "--batch-key", "batch_one")),
    cli("fit-batch-key-continuous", "8", "has only 1 cell", lambda e: _fit(e, e.extra, "--batch-key", "batch_float")),
    cli("fit-batch-key-missing-values", "8", "missing values", lambda e: _fit(e, e.extra, "--batch-key", "batch_nan")),
    cli("fit-batch-key-absent", "8", "is not a column", lambda e: _fit(e, e.data, "--batch-key", "nope")),
    api("api-batch-with-one-cell", "8", "has only 1 cell", lambda e: _sce2tm(e, "extra", batch_key="batch_one")),
    cli("evaluate-continuous-labels", "8", "holds continuous numbers",
        lambda e: _eval(e, "--labels", "percent_mito")),
    cli("evaluate-labels-absent", "8", "no label column", lambda e: _eval(e, "--labels", "nope")),
    cli("perturb-continuous-group", "8", "holds continuous numbers",
        lambda e: _perturb(e, "--data", e.extra, group="cond_float")),
    api("api-differential-continuous-labels", "8", "holds continuous numbers",
        lambda e: __import__("sctopic.analysis.inputs", fromlist=["x"]).obs_labels(_adata(e, "extra"), "cond_float",
                                                                                   "groupby")),
    cli("evaluate-mouse-sets-on-human", "8", "mostly after upper-casing",
        lambda e: ["evaluate", str(e.fit), "--genesets", str(e.gmt_mouse), "--permutations", "0"]),
    cli("enrich-mouse-sets-on-human", "8", "go_bp_mouse",
        lambda e: _enrich(e, "-g", e.gmt_mouse, "--out", e.prev_enrich)),
    api("api-match-mouse-sets-on-human", "8", "another species",
        lambda e: __import__("sctopic.genesets", fromlist=["x"]).read_gmt(e.gmt_mouse).match(_model(e).genes)),
    api("api-match-mouse-sets-case-insensitive", "8", "",
        lambda e: __import__("sctopic.genesets", fromlist=["x"]).read_gmt(e.gmt_mouse).match(
            _model(e).genes, case_insensitive=True),
        outcome="handled", check=lambda e, m: (len(m) == 10 and m.report.n_case_insensitive >= 240) or
        pytest.fail(str(m.report))),
    # ---------------------------------------------------------------- misleading messages (item 9)
    cli("enrich-text-file-as-gmt", "9", "not a GMT file", lambda e: _enrich(e, "-g", e.gmt_text, "--out", e.prev_enrich)),
    cli("evaluate-text-file-as-gmt", "9", "not a GMT file",
        lambda e: ["evaluate", str(e.fit), "--genesets", str(e.gmt_text), "--permutations", "0"]),
    cli("enrich-binary-gmt", "9", "not a readable GMT", lambda e: _enrich(e, "-g", e.gmt_binary, "--out", e.prev_enrich)),
    cli("enrich-empty-gmt", "9", "contains no gene sets", lambda e: _enrich(e, "-g", e.gmt_empty, "--out", e.prev_enrich)),
    cli("enrich-gmt-without-genes", "9", "sets but no genes",
        lambda e: _enrich(e, "-g", e.gmt_nogenes, "--out", e.prev_enrich)),
    cli("enrich-missing-gmt", "9", "neither a bundled name", lambda e: _enrich(e, "-g", e.root / "no.gmt", "--out", e.prev_enrich)),
    cli("enrich-min-size-above-max", "9", "is larger than --max-size",
        lambda e: _enrich(e, "-g", "hallmark", "--min-size", 50, "--max-size", 10, "--out", e.prev_enrich)),
    cli("survival-text-time", "9", "not numbers", lambda e: _surv(e, "--time-key", "time_text")),
    cli("survival-text-event", "9", "is not numeric", lambda e: _surv(e, "--event-key", "event_text")),
    cli("survival-negative-time", "9", "must be >= 0", lambda e: _surv(e, "--time-key", "time_neg")),
    cli("survival-no-event", "9", "no event is observed", lambda e: _surv(e, "--event-key", "no_event")),
    cli("survival-time-key-absent", "9", "is not in the bulk data", lambda e: _surv(e, "--time-key", "nope")),
    cli("survival-plot-topic-without-plot", "9", "needs --plot", lambda e: _surv(e, "--plot-topic", "topic_0")),
    cli("transfer-binary-orthologs", "7", "is not a text file",
        lambda e: _transfer(e, None, "--orthologs", e.orth_binary)),
    cli("transfer-one-column-orthologs", "9", "has one column",
        lambda e: _transfer(e, None, "--orthologs", e.orth_onecol)),
    cli("transfer-ragged-orthologs", "7", "is malformed", lambda e: _transfer(e, None, "--orthologs", e.orth_ragged)),
    cli("transfer-orthologs-without-match", "9", "matches the model's genes",
        lambda e: _transfer(e, None, "--orthologs", e.orth_nomatch)),
    cli("transfer-missing-orthologs", "9", "does not exist",
        lambda e: _transfer(e, None, "--orthologs", e.root / "no.tsv")),
    api("api-orthologs-one-column-frame", "9", "it needs two",
        lambda e: __import__("sctopic.models.transfer", fromlist=["x"]).read_orthologs(
            pd.DataFrame({"a": ["CD74"]}), ["CD74"], ["Cd74"])),
    cli("perturb-missing-genes", "9", "--allow-missing-genes", lambda e: _perturb(e, "--data", e.fewgenes)),
    cli("perturb-allow-missing-genes", "9", "", lambda e: _perturb(e, "--data", e.fewgenes, "--allow-missing-genes",
                                                                    "--topics", "0"),
        outcome="handled", exit=0, check=_check_perturb),
    cli("perturb-control-absent", "9", "has 0 cells", lambda e: _perturb(e, control="nope")),
    cli("perturb-group-key-absent", "9", "is not in adata.obs", lambda e: _perturb(e, group="nope")),
    cli("perturb-control-equals-target", "9", "must differ", lambda e: _perturb(e, target="ctrl")),
    # ---------------------------------------------------------------- output destinations (items 3, 7)
    cli("fit-out-is-a-file", "7", "exists and is not a directory", lambda e: _fit(e, e.data, out=e.afile)),
    cli("fit-out-under-a-file", "7", "is a file, not a folder", lambda e: _fit(e, e.data, out=e.afile / "run")),
    cli("fit-out-read-only", "7", "the destination is read-only", lambda e: _fit(e, e.data, out=e.ro / "run"), inject=readonly()),
    cli("fit-out-read-only-fs", "7", "Read-only file system", lambda e: _fit(e, e.data, out=e.ro / "run"),
        inject=readonly(code=errno.EROFS)),
    cli("fit-out-foreign-files", "1", "holds no sctopic run", lambda e: _fit(e, e.data, out=e.mine)),
    cli("fit-out-holds-a-transfer", "1", "holds a `sctopic transfer` run",
        lambda e: _fit(e, e.data, out=e.prev_transfer)),
    cli("fit-out-without-overwrite", "1", "pass --overwrite",
        lambda e: ["fit", str(e.data), "--out", str(e.prev_fit), *FIT]),
    cli("evaluate-json-under-a-file", "3", "is a file, not a folder", lambda e: _eval(e, "--json", e.afile / "x.json")),
    cli("evaluate-json-read-only", "3", "the destination is read-only", lambda e: _eval(e, "--json", e.ro / "x.json"),
        inject=readonly()),
    cli("evaluate-json-is-a-directory", "3", "is a directory", lambda e: _eval(e, "--json", e.prev)),
    cli("enrich-out-under-a-file", "3", "is a file, not a folder",
        lambda e: _enrich(e, "-g", "hallmark", "--out", e.afile / "e.tsv")),
    cli("enrich-out-read-only", "3", "the destination is read-only", lambda e: _enrich(e, "-g", "hallmark", "--out", e.ro / "e.tsv"),
        inject=readonly()),
    cli("report-out-under-a-file", "3", "is a file, not a folder", lambda e: _report(e, "--out", e.afile / "r.html")),
    cli("report-out-read-only", "3", "the destination is read-only", lambda e: _report(e, "--out", e.ro / "r.html"),
        inject=readonly()),
    cli("report-out-is-a-directory", "3", "is a directory", lambda e: _report(e, "--out", e.prev)),
    cli("survival-out-under-a-file", "3", "is a file, not a folder", lambda e: _surv(e, out=e.afile / "s.tsv")),
    cli("survival-plot-read-only", "3", "the destination is read-only", lambda e: _surv(e, "--plot", e.ro / "km.png"),
        inject=readonly()),
    cli("perturb-json-under-a-file", "3", "is a file, not a folder",
        lambda e: ["perturb", str(e.fit), "--group-key", "cond", "--control", "ctrl", "--target", "stim",
                   "--json", str(e.afile / "p.json")]),
    cli("perturb-plots-under-a-file", "3", "is a file, not a folder",
        lambda e: _perturb(e, "--plots", e.afile / "plots")),
    cli("perturb-plots-is-a-file", "3", "is a file; give a folder", lambda e: _perturb(e, "--plots", e.afile)),
    cli("select-k-out-is-a-file", "7", "exists and is not a directory",
        lambda e: _sk(e)[:-3] + ["--out", str(e.afile)]),
    cli("select-k-out-read-only", "7", "the destination is read-only", lambda e: _sk(e)[:-3] + ["--out", str(e.ro / "sk")],
        inject=readonly()),
    cli("select-k-out-holds-a-fit", "1", "holds a `sctopic fit` run", lambda e: _sk(e)[:-3] + ["--out", str(e.prev_fit)]),
    cli("transfer-out-is-the-model-folder", "1", "is the folder of the model",
        lambda e: ["transfer", str(e.fit), str(e.data), "--out", str(e.fit)]),
    cli("transfer-out-under-a-file", "7", "is a file, not a folder", lambda e: _transfer(e, out=e.afile / "t")),
    cli("transfer-out-read-only", "7", "the destination is read-only", lambda e: _transfer(e, out=e.ro / "t"), inject=readonly()),
    cli("embed-out-under-a-file", "3", "is a file, not a folder", lambda e: _embed(e, out=e.afile / "e.h5ad")),
    cli("embed-out-read-only", "3", "the destination is read-only", lambda e: _embed(e, out=e.ro / "e.h5ad"), inject=readonly()),
    cli("embed-out-is-the-input", "3", "is the input file", lambda e: _embed(e, out=e.data)),
    cli("embed-out-not-h5ad", "3", "must end in .h5ad", lambda e: _embed(e, out=e.prev / "e.txt")),
    cli("embed-unknown-view", "7", "unknown view",
        lambda e: ["embed", str(e.data), "--external", "magic", "--out", str(e.prev_emb)]),
    # ---------------------------------------------------------------- full disk and I/O errors (item 4)
    cli("fit-disk-full-at-start", "4", "no space left", lambda e: _fit(e, e.data), inject=full_disk("mkstemp")),
    cli("fit-disk-full-checkpoint", "4", "no space left to write",
        lambda e: _fit(e, e.data, "--checkpoint-every", 1, out=e.root / "ckfull"), inject=full_disk("torch.save")),
    cli("fit-disk-full-model", "4", "no space left to write", lambda e: _fit(e, e.data), inject=full_disk("torch.save")),
    cli("fit-disk-full-h5py", "4", "no space left to write", lambda e: _fit(e, e.data), inject=full_disk("h5py")),
    cli("fit-disk-full-json", "4", "no space left to write", lambda e: _fit(e, e.data), inject=full_disk("text")),
    cli("fit-io-error-flush", "4", "Input/output error", lambda e: _fit(e, e.data), inject=full_disk("fsync")),
    cli("fit-io-error-swap", "4", "Input/output error", lambda e: _fit(e, e.data), inject=full_disk("swap")),
    cli("transfer-disk-full-h5py", "4", "no space left to write", lambda e: _transfer(e), inject=full_disk("h5py")),
    cli("evaluate-disk-full-json", "4", "no space left to write", lambda e: _eval(e, "--json", e.prev_eval),
        inject=full_disk("text")),
    cli("enrich-disk-full-tsv", "4", "no space left to write",
        lambda e: _enrich(e, "-g", "hallmark", "--out", e.prev_enrich), inject=full_disk("csv")),
    cli("survival-disk-full-tsv", "4", "no space left to write", lambda e: _surv(e), inject=full_disk("text")),
    cli("perturb-disk-full-json", "4", "no space left to write", lambda e: _perturb(e, "--topics", "0"),
        inject=full_disk("text")),
    cli("survival-disk-full-plot", "4", "no space left to write",
        lambda e: _surv(e, "--plot", e.prev_plots / "perturb_lfc.png", out=e.root / "surv_new.tsv"),
        inject=full_disk("png")),
    cli("embed-disk-full-h5py", "4", "no space left to write", lambda e: _embed(e), inject=full_disk("h5py")),
    cli("report-disk-full-html", "4", "no space left to write", lambda e: _report(e, "--out", e.prev_report),
        inject=full_disk("text")),
    api("api-save-disk-full", "4", "no space left to write", _save_model, exc=OutputError,
        inject=full_disk("torch.save")),
    api("api-write-gmt-disk-full", "4", "no space left to write", _write_gmt, exc=OutputError,
        inject=full_disk("gmt")),
    api("api-atomic-write-flush-fails", "4", "Input/output error", lambda e: _atomic(e, "fsync"), exc=OutputError,
        inject=full_disk("fsync")),
    # ---------------------------------------------------------------- survival covariates (item 10)
    api("api-covariates-missing-samples", "10", "has no value for 5 of the 30 samples",
        lambda e: _cox(e, _adata(e, "bulk").obs[["time"]].iloc[5:].rename(columns={"time": "age"}))),
    api("api-covariates-duplicated-samples", "10", "duplicated sample names",
        lambda e: _cox(e, pd.DataFrame({"age": np.arange(31.0)}, index=[f"s{i}" for i in range(30)] + ["s0"]))),
    # ---------------------------------------------------------------- manifests (items 1, 2)
    cli("evaluate-mixed-folder", "2", "does not match", lambda e: _eval(e, src=e.mixed)),
    cli("transfer-mixed-folder", "2", "does not match",
        lambda e: ["transfer", str(e.mixed), str(e.data), "--out", str(e.prev_transfer), "--overwrite"]),
]


@pytest.fixture(scope="module")
def mixed(env):
    """A fit folder whose result.h5ad was replaced by another file (a mixed run)."""
    d = env.root / "mixed"
    shutil.copytree(env.fit, d)
    shutil.copy(env.data, d / "result.h5ad")
    env.mixed = d
    return d


def _protected(e: Env) -> tuple[Path, ...]:
    return (e.prev, e.fit, e.tiny, e.root / "data")


def _temporaries(e: Env) -> list[Path]:
    return sorted(p for f in (e.prev, e.root) for p in f.glob(".*sctopic-*"))


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, env, mixed, monkeypatch, capsys):
    from sctopic.cli import main

    before = _tree(*_protected(env))
    if case.inject is not None:
        case.inject(monkeypatch, env)
    if case.argv is not None:
        argv = list(map(str, case.argv(env)))
        capsys.readouterr()
        try:
            rc = main(["-q", *argv])
        except SystemExit as exc:  # argparse
            rc = exc.code
        monkeypatch.undo()
        err = capsys.readouterr().err
        assert "Traceback" not in err, err
        assert rc == case.exit, (rc, err)
        if case.outcome == "error":
            lines = err.strip().splitlines()
            if case.argparse:
                assert lines[0].startswith("usage:") and len([ln for ln in lines if "error:" in ln]) == 1, err
            else:
                assert len(lines) == 1, err
            assert lines[-1].startswith(f"sctopic {argv[0]}: error: ") or case.argparse, err
            assert case.fragment in lines[-1], (case.fragment, err)
        if case.check is not None:
            case.check(env, None)
    else:
        if case.outcome == "error":
            with pytest.raises(case.exc) as info:
                case.api(env)
            monkeypatch.undo()
            msg = str(info.value)
            assert isinstance(info.value, SctopicError)
            assert "\n" not in msg and case.fragment in msg, msg
        else:
            result = case.api(env)
            monkeypatch.undo()
            case.check(env, result)
    assert _tree(*_protected(env)) == before, "a previous output or an input changed"
    assert not _temporaries(env), _temporaries(env)
    for leftover in ("ckfull", "run"):
        p = env.root / leftover
        assert not p.exists() or [q.name for q in p.iterdir()] in ([], ["checkpoint.pt"]), list(p.iterdir())


def test_the_suite_has_at_least_100_cases_and_unique_ids():
    ids = [c.id for c in CASES]
    assert len(ids) >= 100 and len(set(ids)) == len(ids)
    assert {c.outcome for c in CASES} <= {"error", "handled"}


# ============================================================================ umask, real file systems
def test_outputs_honour_the_umask(env, tmp_path):
    """Files written atomically get 0666 less the umask, not mkstemp's private 0600 (item 5)."""
    from sctopic.data.io import write_text_atomic

    old = os.umask(0o027)
    try:
        p = write_text_atomic("x", tmp_path / "a.txt")
        assert p.stat().st_mode & 0o777 == 0o640
        os.umask(0o002)
        p = write_text_atomic("x", tmp_path / "b.txt")
        assert p.stat().st_mode & 0o777 == 0o664
    finally:
        os.umask(old)
    for f in ("model.pt", "result.h5ad", "train.json", "manifest.json"):
        assert (env.fit / f).stat().st_mode & 0o777 == 0o666 & ~old, f


@pytest.fixture()
def tmpfs(tmp_path):
    """A tiny tmpfs (root only; the test is skipped where it cannot be mounted)."""
    mounted = []

    def mount(size: str, ro: bool = False) -> Path:
        d = tmp_path / f"fs{len(mounted)}"
        d.mkdir()
        opts = f"size={size}" + (",ro" if ro else "")
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(d)], capture_output=True)
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({r.stderr.decode().strip()[:80]})")
        mounted.append(d)
        return d

    yield mount
    for d in mounted:  # lazily where a failed writer still holds a file open there
        if subprocess.run(["umount", str(d)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(d)], capture_output=True)


def test_real_full_disk_and_read_only_file_system(env, tmpfs, capsys):
    """A real 256 KiB file system fills up while ``fit`` writes; a real read-only one refuses at once."""
    from sctopic.cli import main

    full = tmpfs("256k")
    capsys.readouterr()
    rc = main(["-q", "fit", str(env.data), "--out", str(full / "run"), *FIT])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "no space left to write" in err[0] and "free" in err[0], err
    assert list(full.iterdir()) == []  # nothing at the final name, no staging folder left
    ro = tmpfs("1m", ro=True)
    t0 = time.perf_counter()
    rc = main(["-q", "fit", str(env.data), "--out", str(ro / "run"), *FIT])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "Read-only file system" in err[0], err
    assert time.perf_counter() - t0 < 5  # refused before training


# ============================================================================ SIGKILL during fit, then --resume
#: A small server that imports sctopic once and forks one child per command: each child is a
#: separate process running the real ``sctopic fit`` (``sctopic.cli.main``), killed with a real
#: SIGKILL, without paying torch's import for each of the 20 kill points.
_FORK_SERVER = r"""
import json, os, sys
import anndata, torch, sctopic, sctopic.cli, sctopic.commands.fit  # imported once, before any fork
from sctopic.cli import main
for line in sys.stdin:
    job = json.loads(line)  # {"argv": [...], "stderr": file or null}
    argv = job["argv"]
    pid = os.fork()
    if pid == 0:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)
        os.dup2(os.open(job["stderr"], os.O_WRONLY | os.O_CREAT) if job["stderr"] else null, 2)
        try:
            rc = main(argv)
        except BaseException:
            rc = 99
        os._exit(rc)
    print(json.dumps({"pid": pid}), flush=True)
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
                      "rc": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None}), flush=True)
"""

KILL_FIT = ["--model", "scetm", "--n-topics", "3", "--n-hvg", "0", "--max-epochs", "8", "--batch-size", "40",
            "--device", "cpu", "--seed", "0", "--checkpoint-every", "1"]
#: (anchor, delay in seconds): kill that long after the child starts, after its first
#: checkpoint appears (training), or after its staging folder appears (writing the outputs).
KILL_POINTS = ([("start", d) for d in (0.0, 0.05, 0.3)]
               + [("checkpoint", d) for d in (0.0, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.55, 0.7)]
               + [("staging", d) for d in (0.0, 0.003, 0.01, 0.02, 0.04, 0.08, 0.15)])
QUICK_KILL_POINTS = [("start", 0.05), ("checkpoint", 0.1), ("staging", 0.01)]


class ForkServer:
    def __init__(self):
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore")
        self.proc = subprocess.Popen([sys.executable, "-c", _FORK_SERVER], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env)

    def start(self, argv: list[str], stderr: Path | None = None) -> int:
        self.proc.stdin.write(json.dumps({"argv": argv, "stderr": None if stderr is None else str(stderr)}) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())["pid"]

    def wait(self) -> dict:
        line = self.proc.stdout.readline()
        assert line, "the fork server died"
        return json.loads(line)

    def run(self, argv: list[str], stderr: Path | None = None) -> dict:
        self.start(argv, stderr)
        return self.wait()

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


@pytest.fixture(scope="module")
def kill_env(env):
    """The fork server and an uninterrupted reference run (forked the same way)."""
    server = ForkServer()
    ref = env.root / "kill_ref"
    res = server.run(["-q", "fit", str(env.data), "--out", str(ref), *KILL_FIT])
    assert res == {"signal": None, "rc": 0}, res
    yield server, ref
    server.close()


def _staging(out: Path) -> bool:
    prefix = f".{out.name}.sctopic-tmp-"
    return any(n.startswith(prefix) for n in os.listdir(out.parent))


def _kill_at(server: ForkServer, argv: list[str], out: Path, anchor: str, delay: float) -> tuple[str, dict]:
    """Start ``argv``, SIGKILL it ``delay`` s after ``anchor``; return (phase seen, status)."""
    pid = server.start(argv)
    t0 = time.monotonic()
    seen = None
    while time.monotonic() - t0 < 120:
        if seen is None:
            if anchor == "start" or (anchor == "checkpoint" and (out / "checkpoint.pt").exists()) \
                    or (anchor == "staging" and _staging(out)):
                seen = time.monotonic()
        if seen is not None and time.monotonic() - seen >= delay:
            break
        try:
            if os.waitpid(pid, os.WNOHANG) != (0, 0):  # pragma: no cover - not our child
                break
        except ChildProcessError:
            pass
        time.sleep(0.001)
    phase = ("writing" if _staging(out) else "training" if (out / "checkpoint.pt").exists() else "starting")
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    status = server.wait()
    if status["signal"] is None:
        phase = "finished"
    return phase, status


def _same_run(a: Path, b: Path) -> None:
    import torch

    sa = torch.load(a / "model.pt", map_location="cpu", weights_only=True)["state_dict"]
    sb = torch.load(b / "model.pt", map_location="cpu", weights_only=True)["state_dict"]
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    ra, rb = ad.read_h5ad(a / "result.h5ad"), ad.read_h5ad(b / "result.h5ad")
    for key in ra.obsm:
        np.testing.assert_array_equal(ra.obsm[key], rb.obsm[key])
    assert list(ra.var_names) == list(rb.var_names)


def _kill_and_resume(env, kill_env, points) -> list[str]:
    from sctopic.data import rundir

    server, ref = kill_env
    phases = []
    for i, (anchor, delay) in enumerate(points):
        out = env.root / f"kill_{anchor}_{i}"
        argv = ["-q", "fit", str(env.data), "--out", str(out), *KILL_FIT]
        phase, status = _kill_at(server, argv, out, anchor, delay)
        assert status["signal"] in (None, signal.SIGKILL) and status["rc"] in (None, 0), status
        # never a mixed folder: nothing, only the checkpoint, or one complete run
        # (a temporary checkpoint.pt.*.tmp of a killed checkpoint write is no final name)
        names = sorted(n for n in (os.listdir(out) if out.exists() else [])
                       if not (n.startswith("checkpoint.pt.") and n.endswith(".tmp")))
        complete = (out / rundir.MANIFEST).exists()
        assert names in ([], ["checkpoint.pt"]) or complete, (anchor, delay, names)
        if complete:
            rundir.verify(out)
        else:
            res = server.run([*argv, "--resume"])
            assert res == {"signal": None, "rc": 0}, (anchor, delay, res)
            rundir.verify(out)
        assert sorted(os.listdir(out)) == ["manifest.json", "model.pt", "result.h5ad", "train.json"]
        assert not _staging(out)
        _same_run(ref, out)
        phases.append(phase)
    return phases


def test_sigkill_during_fit_then_resume_quick(env, kill_env):
    """SIGKILL at 3 moments (start, training, writing); --resume gives the uninterrupted result."""
    phases = _kill_and_resume(env, kill_env, QUICK_KILL_POINTS)
    assert "training" in phases, phases


@pytest.mark.slow
def test_sigkill_during_fit_then_resume_20_points(env, kill_env):
    """SIGKILL at 20 moments (3 while starting, 10 while training, 7 while writing the outputs),
    each followed by ``fit --resume``: every result is bit-identical to the uninterrupted run
    and the output folder is never mixed."""
    phases = _kill_and_resume(env, kill_env, KILL_POINTS)
    assert len(phases) == 20
    assert phases.count("training") >= 5 and phases.count("writing") >= 2, phases


def test_real_full_disk_while_h5py_writes_is_no_crash(env, kill_env, tmpfs):
    """Once segfault territory (signal 11 with h5py tracebacks): a real file system with room for
    model.pt (1.6 MB) but not result.h5ad fills up while h5py writes, in a separate process: a
    one-line error naming result.h5ad and the free space, exit 2, no signal, nothing left."""
    server, _ = kill_env
    fs = tmpfs("2500k")
    err = env.root / "h5py_full.err"
    res = server.run(["-q", "fit", str(env.data), "--out", str(fs / "run"), *FIT], stderr=err)
    lines = err.read_text().strip().splitlines()
    assert res == {"signal": None, "rc": 2}, (res, lines)
    assert len(lines) == 1 and "Traceback" not in lines[0], lines
    assert "no space left to write" in lines[0] and "result.h5ad" in lines[0] and " free " in lines[0], lines
    assert list(fs.iterdir()) == []


def test_atomic_write_flushes_the_file_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    """Item 4: fsync(file) -> rename -> fsync(folder); a file never appears before its bytes are on disk."""
    import sctopic.data.io as io

    calls = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))),
                                                 real_fsync(fd)))
    monkeypatch.setattr(os, "replace", lambda a, b: (calls.append(("replace", str(b))), real_replace(a, b)))
    io.write_text_atomic("x", tmp_path / "a.txt")
    assert [c[0] for c in calls] == ["fsync", "replace", "fsync"], calls
    assert calls[0][1].startswith(str(tmp_path / "a.txt.")) and calls[0][1].endswith(".tmp")
    assert calls[2][1] == str(tmp_path)
