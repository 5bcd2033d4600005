"""Benchmark configuration: read a YAML file and check every field, naming the bad one.

Schema (every field but ``datasets`` and ``methods`` is optional)::

    out: results/paper_table1        # output folder, relative to the config file's folder
    seeds: [0, 1, 2]
    n_topics: 100                    # topics (latent dimensions for linear_scvi)
    genesets: [go_bp_human]          # bundled names or GMT paths (the first gives tc/ora_*/gsea_*)
    permutations: 1000               # GSEA permutations (0 skips GSEA)
    evaluate: {fdr: 0.05}            # other keyword arguments of sctopic.metrics.evaluate
    train: {max_epochs: 200}         # train() defaults of sctopic's models (sce2tm, scetm)
    save_results: false              # keep each run's result.h5ad under out/runs/...
    datasets:
      pbmc3k: {path: ../data/pbmc3k.h5ad, labels: cell_type, batch_key: null, n_hvg: 5000,
               layer: null}
      pbmc68k: {path: "builtin:pbmc68k_reduced", labels: cell_type}
      baron: {path: ../data/baron.h5ad, labels: cell_type, genesets: [go_bp_mouse],  # own libraries
              case_insensitive_genes: true}  # mouse genes in upper case (INS1 for Ins1)
    methods:                         # a list of built-in names, or a mapping
      sce2tm: {}                     # a built-in name: its settings, updated by params/train
      scetm: {train: {max_epochs: 800}}
      sce2tm_random: {model: sce2tm, params: {external_key: random}}

Relative paths are resolved against the folder of the config file.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sctopic.errors import InputError

#: model kinds a method can use
MODELS: tuple[str, ...] = ("sce2tm", "scetm", "pca", "linear_scvi", "scvi")

#: built-in method name -> (model, constructor params)
BUILTIN_METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "pca": ("pca", {}),
    "sce2tm": ("sce2tm", {}),
    "sce2tm_paper": ("sce2tm", {"preset": "paper"}),
    "sce2tm_wo_ecr": ("sce2tm", {"ecr_weight": 0.0}),
    "sce2tm_wo_cve": ("sce2tm", {"cross_view": False}),
    "sce2tm_w_ec": ("sce2tm", {"cross_view": False, "external_concat": True}),
    "scetm": ("scetm", {}),
    "linear_scvi": ("linear_scvi", {}),
    "scvi": ("scvi", {}),
}

#: label shown in tables and figures for the built-in methods
METHOD_LABELS: dict[str, str] = {
    "pca": "PCA",
    "sce2tm": "scE2TM",
    "sce2tm_paper": "scE2TM (paper preset)",
    "sce2tm_wo_ecr": "scE2TM w/o ECR",
    "sce2tm_wo_cve": "scE2TM w/o CVE",
    "sce2tm_w_ec": "scE2TM w/ EC",
    "scetm": "scETM",
    "linear_scvi": "LinearSCVI",
    "scvi": "SCVI",
}

#: prefix of a ``path`` naming a dataset bundled with sctopic
BUILTIN_PREFIX = "builtin:"

_TOP_KEYS = {
    "out", "seeds", "n_topics", "genesets", "permutations", "evaluate", "train",
    "save_results", "datasets", "methods", "description",
}
_DATASET_KEYS = {"path", "labels", "batch_key", "n_hvg", "layer", "genesets", "case_insensitive_genes"}
_METHOD_KEYS = {"model", "params", "train"}
#: evaluate() arguments the runner sets itself
_EVALUATE_RESERVED = {"adata_or_dir", "labels", "batch_key", "genesets", "model", "use_rep",
                      "seed", "permutations"}
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


@dataclass
class DatasetSpec:
    """One dataset of the benchmark."""

    name: str
    path: str  #: absolute path of an .h5ad file, or ``"builtin:<name>"``
    labels: str
    batch_key: str | None = None
    n_hvg: int | None = None  #: highly variable genes to keep; ``None`` keeps all
    layer: str | None = None
    #: gene-set libraries for this dataset (e.g. mouse GO for mouse data); None: the config's
    genesets: list[str] | None = None
    #: match the libraries' genes ignoring case (mouse genes stored in upper case); not in the
    #: settings hash: before it existed, matching ignored case by default, so rows stay valid
    case_insensitive_genes: bool = False

    def describe(self) -> dict[str, Any]:
        """The settings that change results (for the settings hash)."""
        out = {"path": self.path, "labels": self.labels, "batch_key": self.batch_key,
               "n_hvg": self.n_hvg, "layer": self.layer}
        if self.genesets is not None:  # only then: hashes of earlier configs stay valid
            out["genesets"] = list(self.genesets)
        return out


@dataclass
class MethodSpec:
    """One method: a model kind with constructor ``params`` and ``train`` keyword arguments."""

    name: str
    model: str
    params: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """Display name (the paper's spelling for built-in methods)."""
        return METHOD_LABELS.get(self.name, self.name)


@dataclass
class BenchConfig:
    """A checked benchmark configuration (see the module docstring for the YAML schema)."""

    path: Path | None
    out: Path
    seeds: list[int]
    n_topics: int
    datasets: dict[str, DatasetSpec]
    methods: dict[str, MethodSpec]
    genesets: list[str] = field(default_factory=lambda: ["go_bp_human"])
    permutations: int = 1000
    evaluate: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    save_results: bool = False
    description: str | None = None

    def select(
        self,
        methods: list[str] | None = None,
        datasets: list[str] | None = None,
        seeds: list[int] | None = None,
    ) -> "BenchConfig":
        """A copy restricted to some methods and datasets, or with other seeds.

        Raises
        ------
        InputError
            For a method or dataset name that the configuration does not define.
        """
        cfg = copy.deepcopy(self)
        if methods:
            _check_subset(methods, cfg.methods, "--methods", "methods")
            cfg.methods = {m: cfg.methods[m] for m in _unique(methods)}
        if datasets:
            _check_subset(datasets, cfg.datasets, "--datasets", "datasets")
            cfg.datasets = {d: cfg.datasets[d] for d in _unique(datasets)}
        if seeds is not None:
            cfg.seeds = _check_seeds(list(seeds), "--seeds")
        return cfg

    def override_training(self, max_epochs: int | None = None, device: str | None = None) -> "BenchConfig":
        """A copy whose trained methods all use ``max_epochs`` epochs and/or ``device``.

        PCA, which is not trained, is left as it is.
        """
        cfg = copy.deepcopy(self)
        for m in cfg.methods.values():
            if m.model == "pca":
                continue
            if max_epochs is not None:
                m.train["max_epochs"] = int(max_epochs)
            if device is not None:
                m.train["device"] = str(device)
        return cfg

    def to_dict(self) -> dict[str, Any]:
        """The resolved configuration as plain data (written next to the results)."""
        return {
            "config": None if self.path is None else str(self.path),
            "out": str(self.out), "seeds": list(self.seeds), "n_topics": self.n_topics,
            "genesets": list(self.genesets), "permutations": self.permutations,
            "evaluate": dict(self.evaluate), "train": dict(self.train),
            "save_results": self.save_results,
            "datasets": {n: {**d.describe(), **({"case_insensitive_genes": True} if d.case_insensitive_genes else {})}
                         for n, d in self.datasets.items()},
            "methods": {n: {"model": m.model, "params": m.params, "train": m.train}
                        for n, m in self.methods.items()},
        }


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _check_subset(names: list[str], known: dict, flag: str, field_name: str) -> None:
    bad = [n for n in names if n not in known]
    if bad:
        raise InputError(
            f"{flag}: {', '.join(map(repr, bad))} not in the config's {field_name} "
            f"(defined: {', '.join(known) or 'none'})"
        )


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _check_seeds(seeds: Any, where: str) -> list[int]:
    if _is_int(seeds):
        seeds = [seeds]
    if not isinstance(seeds, list) or not seeds:
        raise InputError(f"{where}: expected a non-empty list of whole numbers, got {seeds!r}")
    bad = [s for s in seeds if not _is_int(s) or s < 0]
    if bad:
        raise InputError(f"{where}: expected whole numbers >= 0, got {', '.join(map(repr, bad))}")
    if len(set(seeds)) != len(seeds):
        raise InputError(f"{where}: seeds repeat: {seeds}")
    return [int(s) for s in seeds]


class _Checker:
    """Field checks whose errors start with the config file name and the field path."""

    def __init__(self, source: str):
        self.source = source

    def fail(self, where: str, problem: str) -> InputError:
        return InputError(f"{self.source}: {where}: {problem}")

    def mapping(self, value: Any, where: str, allowed: set[str] | None = None) -> dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.fail(where, f"expected a mapping (key: value), got {type(value).__name__} {value!r}")
        bad = [str(k) for k in value if not isinstance(k, str)]
        if bad:
            raise self.fail(where, f"keys must be names, got {', '.join(bad)}")
        if allowed is not None:
            unknown = sorted(set(value) - allowed)
            if unknown:
                raise self.fail(
                    where, f"unknown field(s) {', '.join(map(repr, unknown))} (allowed: {', '.join(sorted(allowed))})"
                )
        return value

    def string(self, value: Any, where: str, optional: bool = False) -> str | None:
        if value is None and optional:
            return None
        if not isinstance(value, str) or not value:
            raise self.fail(where, f"expected a non-empty string, got {value!r}")
        return value

    def int_at_least(self, value: Any, where: str, low: int) -> int:
        if not _is_int(value) or value < low:
            raise self.fail(where, f"expected a whole number >= {low}, got {value!r}")
        return int(value)

    def name(self, value: str, where: str) -> str:
        if not _NAME_RE.match(value):
            raise self.fail(where, f"name {value!r} may hold only letters, digits and _ . + - "
                                   "(it is used in file names)")
        return value


def _resolve_path(text: str, base: Path) -> Path:
    p = Path(os.path.expanduser(text))
    return p if p.is_absolute() else (base / p)


def _bundled_dataset_names() -> list[str]:
    from sctopic import datasets

    return list(getattr(datasets, "__all__", []))


def _parse_dataset(chk: _Checker, name: str, entry: Any, base: Path) -> DatasetSpec:
    where = f"datasets.{name}"
    chk.name(name, where)
    entry = chk.mapping(entry, where, _DATASET_KEYS)
    if "path" not in entry:
        raise chk.fail(f"{where}.path", "missing (an .h5ad file, or builtin:pbmc68k_reduced)")
    if "labels" not in entry:
        raise chk.fail(f"{where}.labels", "missing (the obs column with cell types)")
    path = chk.string(entry["path"], f"{where}.path")
    if path.startswith(BUILTIN_PREFIX):
        known = _bundled_dataset_names()
        if path[len(BUILTIN_PREFIX):] not in known:
            raise chk.fail(f"{where}.path", f"no bundled dataset {path!r} (bundled: "
                                            f"{', '.join(BUILTIN_PREFIX + k for k in known)})")
    else:
        p = _resolve_path(path, base)
        if not p.is_file():
            raise chk.fail(f"{where}.path", f"no such file: {p}")
        path = str(p.resolve())
    n_hvg = entry.get("n_hvg")
    if n_hvg is not None:
        n_hvg = chk.int_at_least(n_hvg, f"{where}.n_hvg", 0) or None
    return DatasetSpec(
        name=name, path=path,
        labels=chk.string(entry["labels"], f"{where}.labels"),
        batch_key=chk.string(entry.get("batch_key"), f"{where}.batch_key", optional=True),
        n_hvg=n_hvg,
        layer=chk.string(entry.get("layer"), f"{where}.layer", optional=True),
        genesets=_parse_genesets(chk, entry["genesets"], f"{where}.genesets") if "genesets" in entry else None,
        case_insensitive_genes=_flag(chk, entry.get("case_insensitive_genes", False),
                                     f"{where}.case_insensitive_genes"),
    )


def _flag(chk: _Checker, raw: Any, where: str) -> bool:
    if not isinstance(raw, bool):
        raise chk.fail(where, f"expected true or false, got {raw!r}")
    return raw


def _parse_genesets(chk: _Checker, raw: Any, where: str) -> list[str]:
    """A library name or path, or a list of them."""
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or not raw:
        raise chk.fail(where, "expected a gene-set library name or a non-empty list of them")
    return [chk.string(g, f"{where}[{i}]") for i, g in enumerate(raw)]


def _parse_method(chk: _Checker, name: str, entry: Any) -> MethodSpec:
    where = f"methods.{name}"
    chk.name(name, where)
    entry = chk.mapping(entry, where, _METHOD_KEYS)
    params = dict(chk.mapping(entry.get("params"), f"{where}.params"))
    train = dict(chk.mapping(entry.get("train"), f"{where}.train"))
    model = entry.get("model")
    if model is None:
        if name not in BUILTIN_METHODS:
            raise chk.fail(
                f"{where}.model", f"missing: {name!r} is not a built-in method "
                f"({', '.join(BUILTIN_METHODS)}), so say which model it uses ({', '.join(MODELS)})"
            )
        model, base_params = BUILTIN_METHODS[name]
        params = {**base_params, **params}
    elif model not in MODELS:
        raise chk.fail(f"{where}.model", f"unknown model {model!r} (known: {', '.join(MODELS)})")
    for key in ("seed", "adata"):
        if key in params or key in train:
            raise chk.fail(where, f"{key!r} is set by the runner (use the top-level seeds)")
    for key in ("n_top_genes", "layer"):
        if key in params:
            raise chk.fail(f"{where}.params.{key}", "is a dataset setting: set n_hvg / layer under datasets")
    return MethodSpec(name=name, model=str(model), params=params, train=train)


def parse_config(data: Any, path: str | os.PathLike | None = None) -> BenchConfig:
    """Check a configuration given as plain data (what the YAML file holds).

    Parameters
    ----------
    data
        The parsed YAML document.
    path
        The config file; relative paths are resolved against its folder (default: the
        current directory) and error messages start with its name.

    Returns
    -------
    BenchConfig

    Raises
    ------
    InputError
        Naming the bad field, e.g. ``"paper.yaml: datasets.pbmc3k.path: no such file: ..."``.
    """
    cfg_path = None if path is None else Path(path).resolve()
    base = Path.cwd() if cfg_path is None else cfg_path.parent
    chk = _Checker("config" if cfg_path is None else cfg_path.name)
    data = chk.mapping(data, "top level", _TOP_KEYS)

    datasets_raw = chk.mapping(data.get("datasets"), "datasets")
    if not datasets_raw:
        raise chk.fail("datasets", "missing or empty: define at least one dataset")
    datasets = {name: _parse_dataset(chk, name, entry, base) for name, entry in datasets_raw.items()}

    methods_raw = data.get("methods")
    if isinstance(methods_raw, list):
        unknown = [m for m in methods_raw if m not in BUILTIN_METHODS]
        if unknown:
            raise chk.fail("methods", f"unknown built-in method(s) {', '.join(map(repr, unknown))} "
                                      f"(built-in: {', '.join(BUILTIN_METHODS)}); define custom "
                                      "methods as a mapping with model/params/train")
        if len(set(methods_raw)) != len(methods_raw):
            raise chk.fail("methods", f"names repeat: {methods_raw}")
        methods_raw = {m: None for m in methods_raw}
    methods_raw = chk.mapping(methods_raw, "methods")
    if not methods_raw:
        raise chk.fail("methods", "missing or empty: list at least one method")
    methods = {name: _parse_method(chk, name, entry) for name, entry in methods_raw.items()}

    seeds = _check_seeds(data.get("seeds", [0]), f"{chk.source}: seeds")
    n_topics = chk.int_at_least(data.get("n_topics", 100), "n_topics", 2)
    permutations = chk.int_at_least(data.get("permutations", 1000), "permutations", 0)

    genesets_raw = data.get("genesets", ["go_bp_human"])
    if genesets_raw is None:
        genesets_raw = []
    if isinstance(genesets_raw, str):
        genesets_raw = [genesets_raw]
    if not isinstance(genesets_raw, list):
        raise chk.fail("genesets", f"expected a list of library names or GMT paths, got {genesets_raw!r}")
    from sctopic.genesets import available

    bundled = set(available())
    genesets = []
    for i, g in enumerate(genesets_raw):
        g = chk.string(g, f"genesets[{i}]")
        if g.lower() in bundled and not _resolve_path(g, base).is_file():
            genesets.append(g.lower())
            continue
        p = _resolve_path(g, base)
        if not p.is_file():
            raise chk.fail(f"genesets[{i}]", f"{g!r} is neither a bundled library "
                                             f"({', '.join(sorted(bundled))}) nor a file ({p})")
        genesets.append(str(p.resolve()))

    evaluate = dict(chk.mapping(data.get("evaluate"), "evaluate"))
    import inspect

    from sctopic.metrics.evaluate import evaluate as evaluate_fn

    allowed = set(inspect.signature(evaluate_fn).parameters) - _EVALUATE_RESERVED
    bad = sorted(set(evaluate) - allowed)
    if bad:
        hint = " (genesets and permutations go at the top level)" if set(bad) & {"genesets", "permutations"} else ""
        raise chk.fail("evaluate", f"unknown option(s) {', '.join(map(repr, bad))}{hint}; "
                                   f"allowed: {', '.join(sorted(allowed))}")

    train = dict(chk.mapping(data.get("train"), "train"))
    if "seed" in train:
        raise chk.fail("train.seed", "is set by the runner (use the top-level seeds)")
    save_results = data.get("save_results", False)
    if not isinstance(save_results, bool):
        raise chk.fail("save_results", f"expected true or false, got {save_results!r}")
    out_raw = chk.string(data.get("out", "bench_results"), "out")
    description = data.get("description")
    return BenchConfig(
        path=cfg_path, out=_resolve_path(out_raw, base).resolve(), seeds=seeds, n_topics=n_topics,
        datasets=datasets, methods=methods, genesets=genesets, permutations=permutations,
        evaluate=evaluate, train=train, save_results=save_results,
        description=None if description is None else str(description),
    )


def load_config(path: str | os.PathLike) -> BenchConfig:
    """Read and check a benchmark configuration file (YAML).

    Parameters
    ----------
    path
        The YAML file.

    Returns
    -------
    BenchConfig
        As :func:`parse_config` gives it, relative paths resolved against the file's folder.

    Raises
    ------
    InputError
        When the file is missing, is not valid YAML, or a field is wrong (the message names it).
    """
    import yaml

    p = Path(path)
    if not p.is_file():
        raise InputError(f"no such config file: {p}")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        msg = " ".join(str(exc).split())
        raise InputError(f"{p.name}: not valid YAML: {msg}") from None
    if data is None:
        raise InputError(f"{p.name}: the file is empty")
    return parse_config(data, p)


def _file_id(path: str) -> str:
    """A file named by its base name and size, so that moving a checkout keeps the hash."""
    p = Path(path)
    if p.is_file():
        return f"{p.name}:{p.stat().st_size}"
    return str(path)


def settings_hash(cfg: BenchConfig, method: MethodSpec, dataset: DatasetSpec, train: dict) -> str:
    """Short hash of everything that changes one run's numbers (not the seed).

    A finished run is reused on resume only when its hash is unchanged.
    """
    payload = {
        "model": method.model, "params": method.params, "train": train,
        "dataset": {**dataset.describe(), "path": _file_id(dataset.path)}, "n_topics": cfg.n_topics,
        "genesets": [_file_id(g) for g in cfg.genesets],
        "permutations": cfg.permutations, "evaluate": cfg.evaluate,
    }
    recipe = _recipe(method.model)
    if recipe is not None:  # only then: hashes of models without a recipe stay as they were
        payload["recipe"] = recipe
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def _recipe(model: str) -> dict | None:
    """Defaults that a model takes from its presets rather than its signature (SCE2TM's), so
    that a change of the default recipe reruns the runs that used it instead of reusing them."""
    if model != "sce2tm":
        return None
    from sctopic.models.sce2tm import PRESETS, SCE2TM

    return {"presets": PRESETS, "clustering": SCE2TM.clustering_representation}
