"""The benchmark runner: config checks, one CSV row per run, table = pandas, resume, CLI errors."""
from __future__ import annotations

import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from sctopic.bench import load_config, parse_config, read_results, run_benchmark, write_report
from sctopic.bench import methods as bench_methods
from sctopic.bench.report import TABLE_METRICS
from sctopic.cli import main
from sctopic.errors import InputError

SEEDS = [0, 1]
TOPIC_METHODS = ["sce2tm", "sce2tm_wo_ecr", "sce2tm_wo_cve", "sce2tm_w_ec"]


def _has_scetm() -> bool:
    import sctopic

    try:
        sctopic.SCETM
    except (ImportError, AttributeError):
        return False
    return True


METHODS = ["pca", *TOPIC_METHODS] + (["scetm"] if _has_scetm() else [])


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    """300 real PBMCs (bundled pbmc68k_reduced) with two pseudo-donors as batches."""
    from sctopic.datasets import pbmc68k_reduced

    a = pbmc68k_reduced()
    rng = np.random.default_rng(0)
    a = a[np.sort(rng.choice(a.n_obs, 300, replace=False))].copy()
    a = a[:, np.asarray(a.X.sum(0)).ravel() > 0].copy()
    a.obs["batch"] = pd.Categorical(np.where(np.arange(a.n_obs) % 2 == 0, "d1", "d2"))
    path = tmp_path_factory.mktemp("data") / "pbmc300.h5ad"
    a.write_h5ad(path)
    return path


def _config(folder: Path, data_path, methods=None, **top) -> dict:
    cfg = {
        "out": "out",
        "seeds": SEEDS,
        "n_topics": 5,
        "genesets": ["go_bp_human"],
        "permutations": 20,
        "train": {"max_epochs": 2, "batch_size": 150},
        "datasets": {"pbmc": {"path": str(data_path), "labels": "cell_type", "batch_key": "batch",
                              "n_hvg": 400}},
        "methods": METHODS if methods is None else methods,
    }
    cfg.update(top)
    return cfg


def _write(folder: Path, cfg: dict, name: str = "bench.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    p = folder / name
    p.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return p


def _bench(args, capsys):
    code = main(["-q", "bench", *map(str, args)])
    return code, capsys.readouterr()


class _FitCounter:
    """Counts fits of every model kind (patched onto the classes)."""

    def __init__(self, monkeypatch):
        self.calls: list[tuple[str, int]] = []
        for cls in (bench_methods.SctopicModel, bench_methods.PCAModel):
            orig = cls.fit

            def fit(kind, data, method, train, n_topics, seed, _orig=orig):
                self.calls.append((method.name, seed))
                return _orig(kind, data, method, train, n_topics, seed)

            monkeypatch.setattr(cls, "fit", fit)


@pytest.fixture(scope="module")
def bench_out(tmp_path_factory, data_file):
    """One full benchmark run through the CLI (the other tests copy its output)."""
    folder = tmp_path_factory.mktemp("bench")
    cfg_path = _write(folder, _config(folder, data_file))
    code = main(["-q", "bench", str(cfg_path)])
    assert code == 0
    return folder / "out", cfg_path


def test_csv_has_one_row_per_run(bench_out):
    out, _ = bench_out
    df = pd.read_csv(out / "results.csv")
    assert len(df) == len(METHODS) * len(SEEDS)
    assert not df.duplicated(["dataset", "method", "seed"]).any()
    assert set(df["method"]) == set(METHODS) and set(df["seed"]) == set(SEEDS)
    assert (df["status"] == "ok").all()
    topic = df[df["method"].isin(TOPIC_METHODS)]
    for col in ("ari_oracle", "nmi_oracle", "ari_fixed", "asw", "kbet", "batch_asw", "tc", "td", "tq",
                "ip", "ora_n", "ora_u", "gsea_n", "seconds_train", "seconds_per_epoch", "seconds_eval"):
        assert topic[col].notna().all(), col
    assert (topic["seconds_per_epoch"] > 0).all() and (topic["epochs"] == 2).all()
    assert (topic["n_genes"] <= 400).all() and (topic["n_topics"] == 5).all()
    pca = df[df["method"] == "pca"]
    assert pca["ari_oracle"].notna().all()
    assert pca[["tc", "td", "tq", "ip", "ora_n", "gsea_n"]].isna().all().all()
    # every run also leaves its full evaluation
    assert (out / "runs" / "pbmc" / "sce2tm" / "seed1" / "metrics.json").is_file()


def test_table_is_mean_sd_of_the_csv(bench_out):
    out, _ = bench_out
    df = pd.read_csv(out / "results.csv")
    text = (out / "table.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| method")]
    table = {r.split("|")[1].strip(): [c.strip() for c in r.strip().strip("|").split("|")] for r in rows}
    from sctopic.bench.config import METHOD_LABELS

    ok = df[df["status"] == "ok"]
    for method in METHODS:
        cells = table[METHOD_LABELS[method]]
        assert cells[1] == str(len(SEEDS))
        g = ok[ok["method"] == method]
        for (title, col, digits), cell in zip(TABLE_METRICS, cells[2:]):
            mean, sd = g[col].mean(), g[col].std()
            if np.isnan(mean):
                assert cell == "–", (method, title)
                continue
            m, s = (float(v) for v in cell.split(" ± "))
            tol = 0.5 * 10 ** -digits + 1e-9
            assert abs(m - mean) <= tol and abs(s - sd) <= tol, (method, title, cell, mean, sd)
    summ = pd.read_csv(out / "summary.csv")
    row = summ[(summ["method"] == "sce2tm") & (summ["metric"] == "td")].iloc[0]
    vals = ok.loc[ok["method"] == "sce2tm", "td"]
    assert row["n"] == len(SEEDS)
    np.testing.assert_allclose([row["mean"], row["sd"]], [vals.mean(), vals.std()])


def test_figures_are_written(bench_out):
    out, _ = bench_out
    for name in ("metrics_pbmc.png", "clustering_vs_interpretability.png"):
        p = out / "figures" / name
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 10_000


def test_resume_skips_done_runs_and_reruns_changed(bench_out, tmp_path, capsys, monkeypatch):
    out0, cfg0 = bench_out
    folder = tmp_path / "b"
    shutil.copytree(cfg0.parent, folder)
    cfg = folder / cfg0.name
    out = folder / "out"
    before = pd.read_csv(out / "results.csv")
    counter = _FitCounter(monkeypatch)

    code, cap = _bench([cfg], capsys)  # everything done: nothing runs
    assert code == 0, cap.err
    assert counter.calls == []
    pd.testing.assert_frame_equal(pd.read_csv(out / "results.csv"), before)

    # an interrupted benchmark: the last row never got written
    before.iloc[:-1].to_csv(out / "results.csv", index=False)
    code, cap = _bench([cfg], capsys)
    assert code == 0, cap.err
    last = before.iloc[-1]
    assert counter.calls == [(last["method"], last["seed"])]
    after = pd.read_csv(out / "results.csv")
    assert len(after) == len(before)
    pd.testing.assert_frame_equal(after.iloc[:-1], before.iloc[:-1])  # earlier rows untouched

    # changed settings: only the affected runs run again
    counter.calls.clear()
    code, cap = _bench([cfg, "--max-epochs", 3, "--methods", "sce2tm", "pca"], capsys)
    assert code == 0, cap.err
    assert sorted(counter.calls) == [("sce2tm", 0), ("sce2tm", 1)]  # pca is not trained
    after = pd.read_csv(out / "results.csv")
    assert len(after) == len(before)
    assert (after.loc[after["method"] == "sce2tm", "epochs"] == 3).all()
    assert (after.loc[after["method"] == "sce2tm_wo_ecr", "epochs"] == 2).all()

    # --no-resume runs the selection again, keeping every other row
    counter.calls.clear()
    code, cap = _bench([cfg, "--no-resume", "--methods", "pca", "--seeds", 1], capsys)
    assert code == 0, cap.err
    assert counter.calls == [("pca", 1)]
    assert len(pd.read_csv(out / "results.csv")) == len(before)


def test_failing_run_stops_or_is_recorded(tmp_path, data_file, capsys):
    methods = {"pca": {}, "broken": {"model": "sce2tm", "params": {"external_key": "X_nope",
                                                                     "cross_view": False,
                                                                     "external_concat": True}}}
    cfg = _write(tmp_path, _config(tmp_path, data_file, methods=methods, seeds=[0]))
    code, cap = _bench([cfg], capsys)
    assert code == 2 and "X_nope" in cap.err and "Traceback" not in cap.err
    df = pd.read_csv(tmp_path / "out" / "results.csv")
    assert list(df["method"]) == ["pca"] and (df["status"] == "ok").all()  # kept

    code, cap = _bench([cfg, "--keep-going"], capsys)
    assert code == 0, cap.err
    df = pd.read_csv(tmp_path / "out" / "results.csv")
    broken = df[df["method"] == "broken"].iloc[0]
    assert broken["status"].startswith("failed: InputError") and "X_nope" in broken["status"]
    assert "failed: InputError" in (tmp_path / "out" / "table.md").read_text()


def test_unavailable_method_is_recorded_as_skipped(tmp_path, data_file, monkeypatch):
    monkeypatch.setattr(bench_methods.ScviModel, "unavailable", lambda self: "scvi-tools not installed")
    cfg = parse_config(_config(tmp_path, data_file, methods=["pca", "linear_scvi", "scvi"], seeds=[0]),
                       _write(tmp_path, {}))
    df = run_benchmark(cfg, progress=False, log=lambda line: None)
    assert len(df) == 3
    skipped = df[df["method"] != "pca"]
    assert (skipped["status"] == "skipped: scvi-tools not installed").all()
    assert skipped["ari_oracle"].isna().all()
    write_report(df, cfg.out)
    assert "0 (1× skipped: scvi-tools not installed)" in (cfg.out / "table.md").read_text()


def _fake_scvi(n_latent_seen: list):
    """A stand-in for scvi-tools with its documented API, to test the glue code only."""

    class _Model:
        def __init__(self, adata, n_latent=10, **kw):
            self.adata, self.n_latent = adata, n_latent
            n_latent_seen.append(n_latent)
            self.history = {}

        @classmethod
        def setup_anndata(cls, adata, layer=None, batch_key=None):
            assert layer is None
            cls.batch_key = batch_key

        def train(self, max_epochs=None, batch_size=128, plan_kwargs=None, **kw):
            self.history = {"elbo_train": pd.DataFrame({"elbo_train": np.arange(max_epochs or 3)})}

        def get_latent_representation(self):
            rng = np.random.default_rng(0)
            return rng.normal(size=(self.adata.n_obs, self.n_latent))

        def get_loadings(self):
            rng = np.random.default_rng(1)
            return pd.DataFrame(rng.normal(size=(self.adata.n_vars, self.n_latent)),
                                index=self.adata.var_names)

    mod = types.ModuleType("scvi")
    mod.settings = types.SimpleNamespace(seed=None)
    mod.model = types.SimpleNamespace(LinearSCVI=type("LinearSCVI", (_Model,), {}),
                                      SCVI=type("SCVI", (_Model,), {}))
    mod.__version__ = "fake"
    return mod


def test_scvi_methods_through_a_stand_in(tmp_path, data_file, monkeypatch):
    seen: list = []
    monkeypatch.setitem(sys.modules, "scvi", _fake_scvi(seen))
    methods = {"linear_scvi": {"train": {"max_epochs": 4, "lr": 1e-3}}, "scvi": {}}
    cfg = parse_config(_config(tmp_path, data_file, methods=methods, seeds=[0]), _write(tmp_path, {}))
    df = run_benchmark(cfg, progress=False, log=lambda line: None).set_index("method")
    assert (df["status"] == "ok").all()
    assert seen == [5, 10]  # LinearSCVI gets n_topics latent dimensions, SCVI its default
    assert np.isfinite(df.loc["linear_scvi", ["ari_oracle", "td", "tc", "ip"]].astype(float)).all()
    assert df.loc["linear_scvi", "epochs"] == 4 and df.loc["linear_scvi", "n_topics"] == 5
    assert np.isnan(df.loc["scvi", ["td", "tc"]].astype(float)).all() and np.isfinite(df.loc["scvi", "ari_oracle"])


@pytest.mark.parametrize(
    "edit, pattern",
    [
        (lambda c: c["datasets"]["pbmc"].update(path="missing.h5ad"), "datasets.pbmc.path: no such file"),
        (lambda c: c["datasets"]["pbmc"].update(labels="celltype"), "datasets.pbmc.labels: no column 'celltype'"),
        (lambda c: c.update(methods={"x": {"model": "lda"}}), "methods.x.model: unknown model 'lda'"),
        (lambda c: c.update(methods={"mine": {}}), "methods.mine.model: missing"),
        (lambda c: c.update(methods=["sce2tm", "nmf"]), "unknown built-in method(s) 'nmf'"),
        (lambda c: c.update(seeds=[0, "one"]), "seeds: expected whole numbers >= 0"),
        (lambda c: c.update(seeds=1.5), "seeds: expected a non-empty list"),
        (lambda c: c.update(n_topics=1), "n_topics: expected a whole number >= 2"),
        (lambda c: c.update(epochs=3), "unknown field(s) 'epochs'"),
        (lambda c: c.update(methods={"sce2tm": {"params": {"ecr_wieght": 1}}}),
         "methods.sce2tm.params: unknown parameter(s) 'ecr_wieght' of SCE2TM"),
        (lambda c: c.update(methods={"sce2tm": {"train": {"max_epoch": 1}}}),
         "methods.sce2tm.train: unknown argument(s) 'max_epoch'"),
        (lambda c: c["train"].update(max_epoch=1), "train: unknown argument(s) 'max_epoch'"),
        (lambda c: c.update(evaluate={"permutations": 5}), "genesets and permutations go at the top level"),
        (lambda c: c.update(genesets=["no_such_library"]), "genesets[0]: 'no_such_library' is neither"),
    ],
)
def test_bad_config_fails_with_one_line(tmp_path, data_file, capsys, edit, pattern):
    cfg = _config(tmp_path, data_file)
    edit(cfg)
    path = _write(tmp_path, cfg)
    code, cap = _bench([path], capsys)
    assert code == 2
    lines = cap.err.strip().splitlines()
    assert len(lines) == 1 and pattern in lines[0] and lines[0].startswith("sctopic bench: error:"), cap.err
    assert not (tmp_path / "out" / "results.csv").exists()


def test_bad_yaml_and_cli_selection_errors(tmp_path, data_file, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("datasets: [unclosed\n")
    code, cap = _bench([bad], capsys)
    assert code == 2 and "bad.yaml: not valid YAML" in cap.err and len(cap.err.strip().splitlines()) == 1
    code, cap = _bench([tmp_path / "none.yaml"], capsys)
    assert code == 2 and "no such config file" in cap.err
    path = _write(tmp_path, _config(tmp_path, data_file))
    code, cap = _bench([path, "--methods", "pca", "nope"], capsys)
    assert code == 2 and "--methods: 'nope' not in the config's methods" in cap.err


def test_paths_relative_to_config_and_shipped_configs(tmp_path, data_file):
    shutil.copy(data_file, tmp_path / "d.h5ad")
    cfg = parse_config({"out": "res", "datasets": {"d": {"path": "d.h5ad", "labels": "cell_type"}},
                        "methods": ["pca"]}, tmp_path / "sub" / ".." / "c.yaml")
    assert cfg.out == tmp_path.resolve() / "res"
    assert cfg.datasets["d"].path == str((tmp_path / "d.h5ad").resolve())
    assert cfg.seeds == [0] and cfg.n_topics == 100 and cfg.genesets == ["go_bp_human"]
    root = Path(__file__).resolve().parents[1] / "benchmarks" / "configs"
    smoke = load_config(root / "smoke.yaml")
    assert smoke.datasets["pbmc68k"].path == "builtin:pbmc68k_reduced"
    with pytest.raises(InputError, match="--datasets"):
        smoke.select(datasets=["pbmc3k"])
    paper_yaml = yaml.safe_load((root / "paper_table1.yaml").read_text())
    required = {"pca", "sce2tm", "sce2tm_paper", "sce2tm_wo_ecr", "sce2tm_wo_cve", "sce2tm_w_ec", "scetm",
                "linear_scvi", "scvi"}
    assert required <= set(paper_yaml["methods"])  # the paper's Table 1 rows and the paper preset
    assert paper_yaml["seeds"] == [0, 1, 2] and paper_yaml["n_topics"] == 100
    if Path(root / paper_yaml["datasets"]["pbmc3k"]["path"]).exists():
        paper = load_config(root / "paper_table1.yaml")
        assert paper.datasets["kang8"].batch_key == "batch" and paper.datasets["pbmc3k"].n_hvg == 5000


def test_bench_help_does_not_import_torch():
    code = ("import sys; from sctopic.cli import build_parser; import sctopic.bench; "
            "build_parser(['bench', 'x.yaml']); assert 'torch' not in sys.modules, 'torch imported'")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([sys.executable, "-m", "sctopic", "bench", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--resume" in r.stdout and "--max-epochs" in r.stdout


def test_report_only_rewrites_table(bench_out, tmp_path, capsys):
    out0, cfg0 = bench_out
    folder = tmp_path / "b"
    shutil.copytree(cfg0.parent, folder)
    (folder / "out" / "table.md").unlink()
    shutil.rmtree(folder / "out" / "figures")
    code, cap = _bench([folder / cfg0.name, "--report-only"], capsys)
    assert code == 0, cap.err
    assert (folder / "out" / "table.md").is_file() and (folder / "out" / "figures" / "metrics_pbmc.png").is_file()
    assert len(read_results(folder / "out" / "results.csv")) == len(METHODS) * len(SEEDS)


def test_dataset_genesets_override_the_config_libraries(tmp_path, data_file, monkeypatch):
    """A dataset may name its own libraries (mouse GO for mouse data); the others use the config's.
    The settings hash of a dataset without the key is unchanged, so earlier results stay resumable."""
    from sctopic.bench import runner

    cfg = _config(tmp_path, data_file, methods=["pca"])
    cfg["datasets"]["own"] = dict(cfg["datasets"]["pbmc"], genesets="hallmark")
    parsed = parse_config(cfg, tmp_path / "c.yaml")
    assert parsed.datasets["own"].genesets == ["hallmark"] and parsed.datasets["pbmc"].genesets is None
    assert "genesets" not in parsed.datasets["pbmc"].describe()
    assert parsed.datasets["own"].describe()["genesets"] == ["hallmark"]
    seen = {}

    def spy(run, data, cfg_, libraries, out):
        seen[run.dataset.name] = [lib.name for lib in libraries]
        return {"dataset": run.dataset.name, "method": run.method.name, "seed": run.seed, "status": "ok",
                "settings_hash": run.settings_hash}

    monkeypatch.setattr(runner, "run_one", spy)
    run_benchmark(parsed, progress=False)
    assert seen == {"pbmc": ["go_bp_human"], "own": ["hallmark"]}
    bad = _config(tmp_path, data_file, methods=["pca"])
    bad["datasets"]["pbmc"]["genesets"] = []
    with pytest.raises(InputError, match="datasets.pbmc.genesets"):
        parse_config(bad, tmp_path / "c.yaml")


def test_a_new_default_recipe_reruns_sce2tm_runs(tmp_path, data_file, monkeypatch):
    """SCE2TM takes its defaults from its presets: changing them changes its runs' settings hash
    (so resume reruns them), and leaves the other models' hashes alone."""
    from sctopic.bench.config import settings_hash
    from sctopic.models import sce2tm

    cfg = parse_config(_config(tmp_path, data_file, methods=["sce2tm", "pca"]), tmp_path / "c.yaml")
    ds = cfg.datasets["pbmc"]
    before = {m: settings_hash(cfg, cfg.methods[m], ds, {}) for m in ("sce2tm", "pca")}
    changed = {**sce2tm.PRESETS, "default": {**sce2tm.PRESETS["default"], "ecr_delay": 0.25}}
    monkeypatch.setattr(sce2tm, "PRESETS", changed)
    after = {m: settings_hash(cfg, cfg.methods[m], ds, {}) for m in ("sce2tm", "pca")}
    assert after["sce2tm"] != before["sce2tm"] and after["pca"] == before["pca"]


def test_case_insensitive_genes_flag(tmp_path, data_file):
    """A dataset entry's ``case_insensitive_genes`` is parsed, checked, written to
    bench_config.json, and left out of the settings hash (matching ignored case by default
    before it existed, so earlier rows stay valid)."""
    from sctopic.bench.runner import plan_runs

    base = {"out": str(tmp_path / "o"), "seeds": [0], "n_topics": 3, "genesets": ["hallmark"],
            "datasets": {"d": {"path": str(data_file), "labels": "cell_type"}}, "methods": {"pca": {}}}
    plain = parse_config(base, tmp_path / "c.yaml")
    flagged_raw = {**base, "datasets": {"d": {**base["datasets"]["d"], "case_insensitive_genes": True}}}
    flagged = parse_config(flagged_raw, tmp_path / "c.yaml")
    assert flagged.datasets["d"].case_insensitive_genes and not plain.datasets["d"].case_insensitive_genes
    assert [r.settings_hash for r in plan_runs(flagged)] == [r.settings_hash for r in plan_runs(plain)]
    assert flagged.to_dict()["datasets"]["d"]["case_insensitive_genes"] is True
    bad = {**base, "datasets": {"d": {**base["datasets"]["d"], "case_insensitive_genes": "yes"}}}
    with pytest.raises(InputError, match="case_insensitive_genes"):
        parse_config(bad, tmp_path / "c.yaml")
