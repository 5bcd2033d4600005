"""The models a benchmark can run, behind one interface.

Each model kind turns (dataset, method settings, seed) into a result AnnData that follows the
contract of :mod:`sctopic.data.outputs`, so :func:`sctopic.metrics.evaluate` scores every
method the same way. torch and scvi-tools are imported inside the fit functions only.

* ``sce2tm``, ``scetm``: sctopic's models; gene selection by the model (``n_top_genes`` =
  the dataset's ``n_hvg``), constructor and train seeds = the run's seed; ``scetm`` gets the
  dataset's ``batch_key`` unless ``params`` sets one (``batch_key: null`` turns it off).
* ``pca``: ``n_comps`` (default 50) principal components of log-normalised counts of the
  dataset's highly variable genes; no topics, so the interpretability metrics are empty.
* ``linear_scvi``, ``scvi``: scvi-tools' LinearSCVI (LDVAE) and SCVI when ``import scvi``
  works, otherwise the run is recorded as skipped. LinearSCVI's latent space has ``n_topics``
  dimensions unless ``params`` sets ``n_latent`` and its decoder loadings (genes x latent,
  signed) are scored as the topic-gene matrix; SCVI is scored on its latent space only.
  ``train`` takes ``max_epochs``, ``batch_size``, ``lr`` (sent as ``plan_kwargs``), ``device``
  (``auto``/``cpu``/``cuda[:N]``) and any other keyword argument of scvi-tools' ``train``.
"""
from __future__ import annotations

import inspect
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from sctopic.bench.config import DatasetSpec, MethodSpec
from sctopic.errors import InputError


class DatasetData:
    """A loaded dataset, with its highly-variable-gene subset computed once on demand."""

    def __init__(self, spec: DatasetSpec, adata):
        self.spec = spec
        self.adata = adata
        self._hvg = None

    def hvg(self):
        """The data restricted to the dataset's ``n_hvg`` genes (all genes when unset)."""
        if self._hvg is None:
            from sctopic.data.counts import select_genes

            n = self.spec.n_hvg
            self._hvg = select_genes(self.adata, n, self.spec.layer) if n else self.adata
        return self._hvg


def load_dataset(spec: DatasetSpec) -> DatasetData:
    """Read a dataset and check that its label, batch and layer fields exist.

    Raises
    ------
    InputError
        Naming the field (``datasets.<name>.labels`` ...) and the columns that exist.
    """
    from sctopic.bench.config import BUILTIN_PREFIX
    from sctopic.data.io import read_adata

    if spec.path.startswith(BUILTIN_PREFIX):
        from sctopic import datasets

        adata = getattr(datasets, spec.path[len(BUILTIN_PREFIX):])()
    else:
        adata = read_adata(spec.path)
    check_dataset_fields(spec, adata.obs.columns, adata.layers.keys())
    return DatasetData(spec, adata)


def check_dataset_fields(spec: DatasetSpec, obs_columns, layers) -> None:
    """Raise a clear error when the labels/batch column or the layer is missing."""
    cols = [str(c) for c in obs_columns]
    for key, value in (("labels", spec.labels), ("batch_key", spec.batch_key)):
        if value is not None and value not in cols:
            raise InputError(
                f"datasets.{spec.name}.{key}: no column {value!r} in obs of {spec.path} "
                f"(columns: {', '.join(cols) or 'none'})"
            )
    if spec.layer is not None and spec.layer not in list(layers):
        raise InputError(
            f"datasets.{spec.name}.layer: no layer {spec.layer!r} in {spec.path} "
            f"(layers: {', '.join(map(str, layers)) or 'none'})"
        )


@dataclass
class FitResult:
    """What a model run hands to evaluation and to the results table."""

    adata: Any  #: result AnnData following the contract of sctopic.data.outputs
    model_key: str | None  #: ``uns['sctopic']['model']`` of the result (None: no topics)
    use_rep: str | None  #: obsm key to cluster (None: the model's theta)
    n_genes: int
    n_topics: int | None
    epochs: int | None = None
    seconds_setup: float = 0.0
    seconds_train: float = 0.0
    seconds_per_epoch: float = float("nan")
    device: str | None = None
    #: zero-argument callable returning the AnnData written as result.h5ad when results are kept
    to_save: Callable[[], Any] | None = None
    info: dict[str, Any] = field(default_factory=dict)


def _keywords(fn, drop: set[str]) -> tuple[set[str], bool]:
    """Keyword names of a callable (minus ``drop``) and whether it takes ``**kwargs``."""
    params = inspect.signature(fn).parameters
    var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    names = {n for n, p in params.items()
             if p.kind not in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)}
    return names - drop - {"self"}, var_kw


def _check_keys(given: dict, known: set[str], var_kw: bool, where: str, what: str, owner: str) -> None:
    bad = sorted(set(given) - known)
    if bad and not var_kw:
        raise InputError(f"{where}: unknown {what} {', '.join(map(repr, bad))} of {owner} "
                         f"(known: {', '.join(sorted(known)) or 'none'})")


class ModelKind:
    """Interface of a model kind (see the module docstring)."""

    name: str = ""
    #: whether the config's top-level ``train`` defaults apply to it
    takes_global_train: bool = False

    def unavailable(self) -> str | None:
        """Why the model cannot run here (a missing optional package), or None."""
        return None

    def train_kwargs(self, global_train: dict, method: MethodSpec) -> dict:
        """The train keyword arguments of a method: global defaults, then its own."""
        return dict(method.train)

    def check(self, method: MethodSpec, train: dict, global_train: dict) -> None:
        """Raise InputError for parameters the model does not take."""

    def fit(self, data: DatasetData, method: MethodSpec, train: dict, n_topics: int, seed: int) -> FitResult:
        raise NotImplementedError


_RUNNER_TRAIN = {"seed", "progress", "write_results"}
_RUNNER_INIT = {"adata", "seed", "layer", "n_top_genes"}


class SctopicModel(ModelKind):
    """sctopic's SCE2TM or SCETM."""

    takes_global_train = True

    def __init__(self, name: str, class_name: str):
        self.name = name
        self.class_name = class_name

    def model_class(self):
        import sctopic

        return getattr(sctopic, self.class_name)

    def unavailable(self) -> str | None:
        try:
            self.model_class()
        except (ImportError, AttributeError) as exc:
            return f"sctopic.{self.class_name} is not available ({type(exc).__name__}: {exc})"
        return None

    def train_names(self) -> tuple[set[str], bool]:
        """The model's ``train()`` keywords (run options included) minus the runner's own."""
        return self.model_class().train_arguments() - _RUNNER_TRAIN, False

    def train_kwargs(self, global_train: dict, method: MethodSpec) -> dict:
        names, var_kw = self.train_names()
        out = {k: v for k, v in global_train.items() if var_kw or k in names}
        out.update(method.train)
        return out

    def check(self, method: MethodSpec, train: dict, global_train: dict) -> None:
        cls = self.model_class()
        names, var_kw = _keywords(cls.__init__, _RUNNER_INIT)
        _check_keys(method.params, names, var_kw, f"methods.{method.name}.params",
                    "parameter(s)", cls.__name__)
        names, var_kw = self.train_names()
        for key in _RUNNER_TRAIN & set(method.train):
            raise InputError(f"methods.{method.name}.train.{key}: is set by the runner")
        _check_keys(method.train, names, var_kw, f"methods.{method.name}.train",
                    "argument(s)", f"{cls.__name__}.train")

    def fit(self, data: DatasetData, method: MethodSpec, train: dict, n_topics: int, seed: int) -> FitResult:
        cls = self.model_class()
        params = {"n_topics": n_topics, **method.params}
        if self.name == "scetm" and "batch_key" not in method.params and data.spec.batch_key:
            params["batch_key"] = data.spec.batch_key
        adata = data.adata.copy()  # the model writes its outputs into it
        t0 = time.perf_counter()
        model = cls(adata, layer=data.spec.layer, n_top_genes=data.spec.n_hvg, seed=seed, **params)
        t1 = time.perf_counter()
        model.train(seed=seed, progress=False, **train)
        t2 = time.perf_counter()
        adata = model.adata
        key = str(getattr(model, "model_name", self.name))
        if f"X_{key}" not in adata.obsm:  # a model that does not write back by itself
            model.write_results()
        hist = getattr(model, "history_", {}) or {}
        epoch_s = np.asarray(hist.get("epoch_seconds", []), dtype=float)
        settings = getattr(model, "train_settings_", {}) or {}
        epochs = settings.get("max_epochs", train.get("max_epochs"))
        seconds_train = float(getattr(model, "train_seconds_", t2 - t1))
        if len(epoch_s):
            per_epoch = float(epoch_s.mean())
        else:
            per_epoch = seconds_train / epochs if epochs else float("nan")
        genes = list(model.genes)
        return FitResult(
            adata=adata, model_key=str(key), use_rep=None, n_genes=len(genes),
            n_topics=int(model.n_topics), epochs=None if epochs is None else int(epochs),
            seconds_setup=t1 - t0, seconds_train=seconds_train, seconds_per_epoch=per_epoch,
            device=settings.get("device"), to_save=lambda: adata[:, genes].copy(),
        )


class PCAModel(ModelKind):
    """Principal components of log-normalised counts: the plain baseline."""

    name = "pca"

    def check(self, method: MethodSpec, train: dict, global_train: dict) -> None:
        _check_keys(method.params, {"n_comps"}, False, f"methods.{method.name}.params", "parameter(s)", "pca")
        if method.train:
            raise InputError(f"methods.{method.name}.train: pca is not trained; remove train")
        n = method.params.get("n_comps", 50)
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise InputError(f"methods.{method.name}.params.n_comps: expected a whole number >= 1, got {n!r}")

    def fit(self, data: DatasetData, method: MethodSpec, train: dict, n_topics: int, seed: int) -> FitResult:
        import anndata as ad

        from sctopic.data.counts import get_counts, pca_embedding

        t0 = time.perf_counter()
        sub = data.hvg()
        X = get_counts(sub, data.spec.layer)
        t1 = time.perf_counter()
        emb = pca_embedding(X, int(method.params.get("n_comps", 50)), seed)
        t2 = time.perf_counter()
        res = ad.AnnData(obs=sub.obs.copy(), var=sub.var[[]].copy())
        res.obsm["X_pca"] = emb
        return FitResult(
            adata=res, model_key=None, use_rep="X_pca", n_genes=int(sub.n_vars), n_topics=None,
            seconds_setup=t1 - t0, seconds_train=t2 - t1, to_save=lambda: res,
            info={"n_comps": int(emb.shape[1])},
        )


class ScviModel(ModelKind):
    """scvi-tools' LinearSCVI or SCVI (optional dependency)."""

    def __init__(self, name: str, class_name: str):
        self.name = name
        self.class_name = class_name

    def unavailable(self) -> str | None:
        from importlib import import_module

        try:
            import_module("scvi")
        except ImportError:
            return "scvi-tools not installed"
        return None

    def check(self, method: MethodSpec, train: dict, global_train: dict) -> None:
        for key in _RUNNER_TRAIN & set(method.train):
            raise InputError(f"methods.{method.name}.train.{key}: is set by the runner")

    @staticmethod
    def _train_args(train: dict) -> dict:
        out = dict(train)
        lr = out.pop("lr", None)
        if lr is not None:
            out["plan_kwargs"] = {**out.get("plan_kwargs", {}), "lr": lr}
        device = out.pop("device", None)
        if device is not None and device != "auto":
            device = str(device)
            if device == "cpu":
                out.setdefault("accelerator", "cpu")
            elif device.startswith("cuda"):
                out.setdefault("accelerator", "gpu")
                if ":" in device:
                    out.setdefault("devices", [int(device.split(":", 1)[1])])
            else:
                raise InputError(f"device must be auto, cpu or cuda[:N], got {device!r}")
        return out

    def fit(self, data: DatasetData, method: MethodSpec, train: dict, n_topics: int, seed: int) -> FitResult:
        import anndata as ad
        import scvi

        params = dict(method.params)
        batch_key = params.pop("batch_key", data.spec.batch_key)
        if self.name == "linear_scvi":
            params.setdefault("n_latent", n_topics)
        t0 = time.perf_counter()
        sub = data.hvg()
        work = ad.AnnData(X=sub.X if data.spec.layer is None else sub.layers[data.spec.layer],
                          obs=sub.obs.copy(), var=sub.var[[]].copy())
        scvi.settings.seed = int(seed)
        cls = getattr(scvi.model, self.class_name)
        cls.setup_anndata(work, batch_key=batch_key)
        model = cls(work, **params)
        t1 = time.perf_counter()
        model.train(**self._train_args(train))
        t2 = time.perf_counter()
        latent = np.asarray(model.get_latent_representation(), dtype=np.float32)
        res = ad.AnnData(obs=sub.obs.copy(), var=sub.var[[]].copy())
        key = self.name
        res.obsm[f"X_{key}"] = latent
        n_topics_out = None
        use_rep = f"X_{key}"
        if self.name == "linear_scvi":
            loadings = model.get_loadings()  # genes x latent, signed
            loadings = loadings.reindex(res.var_names)
            beta = np.nan_to_num(np.asarray(loadings, dtype=np.float32).T)
            res.uns[key] = {"topic_gene": beta, "genes": np.asarray(res.var_names, dtype=object)}
            res.uns["sctopic"] = {"model": key}
            n_topics_out = int(beta.shape[0])
            use_rep = None
        hist = getattr(model, "history", None) or {}
        epochs = None
        for name in ("elbo_train", "train_loss_epoch"):
            if name in hist:
                epochs = int(len(hist[name]))
                break
        if epochs is None:
            epochs = train.get("max_epochs")
        secs = t2 - t1
        return FitResult(
            adata=res, model_key=key if self.name == "linear_scvi" else None, use_rep=use_rep,
            n_genes=int(sub.n_vars), n_topics=n_topics_out, epochs=epochs,
            seconds_setup=t1 - t0, seconds_train=secs,
            seconds_per_epoch=secs / epochs if epochs else float("nan"),
            device=str(getattr(model, "device", "")) or None, to_save=lambda: res,
            info={"n_latent": int(latent.shape[1]), "scvi_version": getattr(scvi, "__version__", None)},
        )


#: model kind name -> implementation
MODEL_KINDS: dict[str, ModelKind] = {
    "sce2tm": SctopicModel("sce2tm", "SCE2TM"),
    "scetm": SctopicModel("scetm", "SCETM"),
    "pca": PCAModel(),
    "linear_scvi": ScviModel("linear_scvi", "LinearSCVI"),
    "scvi": ScviModel("scvi", "SCVI"),
}


def get_model_kind(name: str) -> ModelKind:
    """The implementation of a model kind.

    Raises
    ------
    InputError
        For an unknown name.
    """
    try:
        return MODEL_KINDS[name]
    except KeyError:
        raise InputError(f"unknown model {name!r} (known: {', '.join(MODEL_KINDS)})") from None


def check_global_train(global_train: dict) -> None:
    """Raise InputError for a top-level ``train`` key that no available sctopic model takes."""
    if not global_train:
        return
    known: set[str] = set()
    for kind in MODEL_KINDS.values():
        if isinstance(kind, SctopicModel) and kind.unavailable() is None:
            names, var_kw = kind.train_names()
            if var_kw:
                return
            known |= names
    for key in _RUNNER_TRAIN & set(global_train):
        raise InputError(f"train.{key}: is set by the runner")
    _check_keys(global_train, known, False, "train", "argument(s)", "the models' train()")
