"""What every user-facing topic model shares: its AnnData-facing surface.

A model holds a pure-torch ``module`` (:mod:`sctopic.nn`, implementing the API of
:mod:`sctopic.nn.base`) and this surface, following scvi-tools' split between ``module`` and
``model``: construction from AnnData (:mod:`sctopic.models.inputs`), ``train`` through the one
training plan (:mod:`sctopic.train.plan`), the outputs (``get_latent_representation``,
``get_cell_topics``, ``get_normalized_expression``, ``get_topic_gene``, ``history``), the
AnnData output contract (:mod:`sctopic.data.outputs`) and one-file ``save``/``load``.

A new model subclasses :class:`BaseTopicModel` and defines ``model_name``,
``_make_module()`` and ``train()`` (which builds a :class:`~sctopic.train.plan.TrainingPlan`
and calls :meth:`BaseTopicModel._fit`).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, ClassVar

import anndata as ad
import numpy as np
import pandas as pd
import torch

from sctopic.data.io import atomic_write, read_adata
from sctopic.data.loader import RowStore, batch_indices
from sctopic.data.outputs import write_outputs
from sctopic.errors import InputError, SctopicError
from sctopic.models.inputs import aligned_counts, batch_codes, training_counts
from sctopic.train.data import is_backed
from sctopic.train.early_stopping import EarlyStopping
from sctopic.train.plan import BatchBuilder, RunOptions, TrainingPlan, run_plan

FORMAT = "sctopic-model"
FORMAT_VERSION = 1


class BaseTopicModel:
    """Base class of the topic models: data, genes, the torch module and outputs."""

    model_name: ClassVar[str] = "topicmodel"
    #: The representation recommended for neighbours and clustering, ``"theta"`` or ``"logits"``
    #: (written as ``uns["sctopic"]["clustering_key"]``; see :mod:`sctopic.data.outputs`).
    clustering_representation: ClassVar[str] = "theta"

    # ------------------------------------------------------------------ construction
    def _setup(self, adata, layer: str | None, n_top_genes: int | None, backed: bool,
               batch_key: str | None) -> None:
        """Training data (:func:`~sctopic.models.inputs.training_counts`) and batch codes."""
        data = training_counts(adata, layer, n_top_genes, backed)
        self.adata, self.layer, self.backed = data.adata, layer, bool(backed)
        self.genes: list[str] = data.genes
        self._X, self._train_cells = data.X, data.train_cells
        self.mean_library_ = data.mean_library
        self.batch_key = batch_key
        self.batch_categories_, self._batch_codes = batch_codes(self.adata, batch_key)
        self.device = torch.device("cpu")
        self.is_trained_ = False
        self.history_: dict[str, list[float]] = {}
        self.train_settings_: dict[str, Any] = {}
        #: resumes of the last ``train()`` from a checkpoint (see :mod:`sctopic.train.checkpoint`)
        self.resumes_: list[dict[str, Any]] = []
        self._data_fingerprint: dict[str, Any] | None = None
        self._clear_early_stopping()

    def _clear_early_stopping(self) -> None:
        #: early stopping's outcome of the last ``train()`` (``stopped_epoch``, ``best_epoch``...;
        #: see :mod:`sctopic.train.early_stopping`), or None when it was off
        self.early_stopping_: dict[str, Any] | None = None
        #: rows of ``adata`` held out of the last ``train()`` for early stopping (empty when off)
        self.heldout_cells_ = np.zeros(0, dtype=np.int64)

    def data_fingerprint(self) -> dict[str, Any]:
        """A fingerprint of the training cells' counts over the model's genes.

        Shape, non-zeros, total, the SHA-256 of the CSR arrays, and the hashes of the cell and
        gene names (:func:`sctopic.data.fingerprint.data_fingerprint`). Reused from the
        checkpoint when training computed it, else computed now (one pass over the counts;
        out of core, over the file) and cached.
        """
        from sctopic.data.fingerprint import data_fingerprint

        if getattr(self, "_data_fingerprint", None) is None:
            if self._X is None:
                raise InputError("this model has no training data attached; load it with adata=... first.")
            cells = self._train_cells
            obs = None if self.adata is None else self.adata.obs_names[cells].astype(str)
            fp = data_fingerprint(self._X[cells], obs_names=obs, var_names=[str(g) for g in self.genes])
            fp["batch_categories"] = list(self.batch_categories_ or [])
            self._data_fingerprint = fp
        return dict(self._data_fingerprint)

    @staticmethod
    def _check_n_topics(n_topics) -> None:
        """K is a whole number >= 2 (checked before reading the data: fail fast)."""
        import numbers

        if isinstance(n_topics, bool) or not isinstance(n_topics, numbers.Integral):
            raise InputError(f"n_topics must be a whole number >= 2, got {n_topics!r}.")
        if int(n_topics) < 2:
            raise InputError(f"n_topics must be at least 2, got {n_topics}.")

    def _check_topics(self, n_topics: int) -> None:
        """K must be at least 2 and at most the number of genes (topics are distributions over them)."""
        if int(n_topics) < 2:
            raise InputError(f"n_topics must be at least 2, got {n_topics}.")
        if int(n_topics) > len(self.genes):
            raise InputError(f"{n_topics} topics for only {len(self.genes)} genes: topics cannot be distinct "
                             "gene programs. Use fewer topics, or keep more genes (n_top_genes).")

    @property
    def n_batches(self) -> int:
        """Number of batches with intercepts (0 without ``batch_key``)."""
        return len(self.batch_categories_ or [])

    @property
    def n_topics(self) -> int:
        return int(self._init_kwargs["n_topics"])

    @property
    def topic_names(self) -> list[str]:
        return [f"topic_{k}" for k in range(self.n_topics)]

    @property
    def init_params(self) -> dict[str, Any]:
        """The settings the model was created with (JSON-able; saved with the model)."""
        return dict(self._init_kwargs)

    @property
    def is_trained(self) -> bool:
        """Whether :meth:`train` has run (or a trained model was loaded)."""
        return bool(self.is_trained_)

    @property
    def history(self) -> pd.DataFrame:
        """Per-epoch training history: losses (means over the epoch's cells), ``lr`` (the rate
        after the epoch's last step), ``epoch_seconds``, model statistics and, with early
        stopping, ``heldout_reconstruction`` (NaN on epochs without a check); index ``epoch``
        (1-based)."""
        frame = pd.DataFrame({k: pd.Series(v, dtype=float) for k, v in self.history_.items()})
        frame.index = pd.RangeIndex(1, len(frame) + 1, name="epoch")
        return frame

    @classmethod
    def train_arguments(cls) -> set[str]:
        """Every keyword ``train()`` accepts: its own arguments and the run options
        (:class:`~sctopic.train.plan.RunOptions`) it passes on."""
        import inspect
        from dataclasses import fields

        params = inspect.signature(cls.train).parameters
        own = {n for n, p in params.items() if n != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
        return own | {f.name for f in fields(RunOptions)}

    def _check_trained(self) -> None:
        if not self.is_trained:
            raise SctopicError(f"the {type(self).__name__} model is not trained yet; call .train() first.")

    # ------------------------------------------------------------------ training
    @staticmethod
    def _early_stopping(early_stopping: bool, validation_fraction: float, check_every: int, patience: int,
                        min_delta: float) -> EarlyStopping | None:
        """The plan's early-stopping settings from ``train()``'s arguments (None when off).

        The values are checked even when it is off, so a mistyped setting is caught at once.
        """
        if not isinstance(early_stopping, (bool, np.bool_)):
            raise InputError(f"early_stopping must be True or False, got {early_stopping!r}.")
        config = EarlyStopping(validation_fraction, check_every, patience, min_delta)
        config.check()
        return config if early_stopping else None

    def _fit(self, plan: TrainingPlan, run_options: dict[str, Any], batch_builder: BatchBuilder,
             step_stats=None, eval_views: dict[str, np.ndarray] | None = None) -> None:
        """Run ``plan`` (see :func:`sctopic.train.plan.run_plan`) and record its result.

        ``eval_views``: per-cell encoder inputs besides the counts, one row per training cell
        (``self._train_cells``), for early stopping's held-out check.
        """
        options = RunOptions.from_kwargs(run_options)
        if self._X is None:
            raise InputError("this model has no training data attached; load it with adata=... first.")
        cells = self._train_cells
        codes = None if self._batch_codes is None or not self.n_batches else self._batch_codes[cells]
        obs_names = None if self.adata is None else self.adata.obs_names[cells].astype(str)
        result = run_plan(plan, options, module=self.module, X=self._X[cells], codes=codes,
                          batch_builder=batch_builder, identity=self, step_stats=step_stats,
                          obs_names=obs_names, eval_views=eval_views)
        self.early_stopping_ = result.early_stopping
        self.heldout_cells_ = np.asarray(cells)[result.heldout].astype(np.int64)
        self.resumes_ = result.resumes
        self._data_fingerprint = result.data_fingerprint
        self.device = result.device
        self.history_ = result.history
        self.train_seconds_ = result.seconds
        self.train_settings_ = result.settings
        self.is_trained_ = True
        if options.write_results and self.adata is not None and result.is_main:
            self.write_results()

    # ------------------------------------------------------------------ outputs
    def get_topic_gene(self) -> pd.DataFrame:
        """Topic-gene matrix beta as a DataFrame, topics x genes."""
        beta = self.module.topic_gene().detach().cpu().numpy()
        return pd.DataFrame(beta, index=self.topic_names, columns=self.genes)

    def topic_gene_frame(self) -> pd.DataFrame:
        """Same as :meth:`get_topic_gene` (the name DESIGN.md 2.3 uses)."""
        return self.get_topic_gene()

    def top_genes(self, n: int = 10) -> pd.DataFrame:
        """The ``n`` highest-weighted genes of each topic: rows topics, columns ranks 1..n."""
        if int(n) != n or n < 1:
            raise InputError(f"n must be a positive integer (genes per topic), got {n!r}.")
        beta = self.get_topic_gene().to_numpy()
        n = int(min(n, beta.shape[1]))
        order = np.argsort(-beta, axis=1, kind="stable")[:, :n]
        names = np.asarray(self.genes, dtype=object)[order]
        return pd.DataFrame(names, index=self.topic_names, columns=[f"gene_{r + 1}" for r in range(n)])

    def _counts_of(self, adata, layer: str | None, allow_missing_genes: bool):
        """``(data, X)``: the training data, or ``adata`` aligned to the model's genes."""
        if adata is None:
            if self._X is None:
                raise InputError("no data attached; pass adata=...")
            return self.adata, self._X
        data = read_adata(adata)
        return data, aligned_counts(data, self.genes, layer if layer is not None else self.layer,
                                    allow_missing_genes)

    def get_cell_topics(self, adata: ad.AnnData | str | None = None, logits: bool = False,
                        layer: str | None = None, batch_size: int = 4096,
                        allow_missing_genes: bool = False) -> np.ndarray:
        """Cell-topic proportions theta (rows sum to 1), or the topic logits delta.

        Parameters
        ----------
        adata
            ``None`` for the training data, or new cells (genes aligned by name: zero-shot
            transfer).
        logits
            Return the posterior-mean logits delta instead of theta = softmax(delta).
        layer
            Layer of ``adata`` with raw counts (default: the training layer).
        batch_size
            Cells per inference batch.
        allow_missing_genes
            Fill model genes absent from ``adata`` with zeros (with a warning stating the
            fraction) instead of failing.
        """
        self._check_trained()
        data, X = self._counts_of(adata, layer, allow_missing_genes)
        delta = self._encode(data, X, adata is None, batch_size)
        return delta if logits else _softmax(delta)

    def _encode(self, data, X, is_training_data: bool, batch_size: int) -> np.ndarray:
        """Topic logits delta of the cells of ``X`` (counts over the model's genes)."""
        view = self._inference_view(data, is_training_data)
        self.module.eval()
        dev = self.device
        delta = np.empty((X.shape[0], self.n_topics), dtype=np.float32)
        if is_backed(X):
            from sctopic.data.backed import to_torch
            from sctopic.data.validate import check_counts

            # Blocks in file order; each is split into inference batches.
            for i0, i1, B in X.iter_blocks(max(batch_size, 8192)):
                if not is_training_data:  # new data on disk: validated as it streams
                    check_counts(B, f"{X.where} of {X.path.name}")
                for s in range(0, i1 - i0, batch_size):
                    e = min(s + batch_size, i1 - i0)
                    v = None if view is None else torch.as_tensor(view[i0 + s:i0 + e], device=dev)
                    delta[i0 + s:i0 + e] = self.module.infer(to_torch(B[s:e], "csr", dev), v).cpu().numpy()
        else:
            store = RowStore(X, dev, storage="csr")
            for idx in batch_indices(X.shape[0], batch_size, False, None, dev):
                v = None if view is None else torch.as_tensor(view[idx.cpu().numpy()], device=dev)
                delta[idx.cpu().numpy()] = self.module.infer(store.rows_csr(idx), v).cpu().numpy()
        return delta

    def get_latent_representation(self, adata: ad.AnnData | str | None = None, **kwargs) -> np.ndarray:
        """The cells' topic proportions theta (scvi-tools' name; see :meth:`get_cell_topics`)."""
        return self.get_cell_topics(adata, **kwargs)

    def get_normalized_expression(self, adata: ad.AnnData | str | None = None, *,
                                  topics: np.ndarray | None = None, batches=None,
                                  library_size: float | str = 1.0, layer: str | None = None,
                                  batch_size: int = 4096) -> np.ndarray:
        """Expected expression decoded from cell-topic proportions (what perturbation decodes).

        ``p_i = softmax(decoder_logits(theta_i) + lambda_b(i))`` over the model's genes, the
        mean of the multinomial the model reconstructs counts from, divided by the library
        size; the decoder runs in evaluation mode (batch norm with its running statistics),
        so each cell is decoded independently of the others.

        Parameters
        ----------
        adata
            Cells to encode (``None``: the training data); ignored for theta when ``topics``
            is given, but still the source of batch labels and observed library sizes.
        topics
            ``(n, K)`` cell-topic proportions to decode instead of the encoder's theta (e.g.
            shifted topic intensities).
        batches
            Batch label of each cell (values of ``batch_key``) for models with batch
            intercepts; default ``adata.obs[batch_key]`` when ``adata`` has it. Unknown labels
            (with a warning), and all cells without labels, get the mean intercept.
        library_size
            Scale of each row: a number (1.0: proportions that sum to 1), or ``"observed"``:
            each cell's total count over the model's genes.
        layer, batch_size
            Counts layer of ``adata``; cells decoded at once.

        Returns
        -------
        numpy.ndarray
            ``(n, V)`` float64 over :attr:`genes`.
        """
        self._check_trained()
        # The cells' counts are read (and aligned) once: for their theta, batches and library sizes.
        needs_cells = topics is None or adata is not None or library_size == "observed"
        data, X = self._counts_of(adata, layer, False) if needs_cells else (None, None)
        theta = _softmax(self._encode(data, X, adata is None, batch_size)) if topics is None else topics
        theta = np.asarray(theta, dtype=np.float32)
        if theta.ndim != 2 or theta.shape[1] != self.n_topics:
            raise InputError(f"topics has shape {theta.shape}; expected cells x {self.n_topics} topics.")
        if batches is None and self.batch_key and data is not None and self.batch_key in data.obs:
            batches = data.obs[self.batch_key].to_numpy()
        codes = self._codes_of(batches, theta.shape[0])
        out = self._decode(theta, codes, batch_size)
        if isinstance(library_size, str):
            if library_size != "observed":
                raise InputError(f"library_size must be a number or 'observed', got {library_size!r}.")
            if X is None or X.shape[0] != theta.shape[0]:
                raise InputError("library_size='observed' needs the cells' counts: pass adata with one row per cell.")
            return out * np.asarray(X.sum(axis=1), dtype=np.float64).reshape(-1, 1)
        return out if float(library_size) == 1.0 else out * float(library_size)

    def _codes_of(self, batches, n: int) -> torch.Tensor | None:
        """Batch codes of ``batches`` among the model's categories (-1: unknown; None: no labels)."""
        if not self.n_batches or batches is None:
            return None
        lookup = {c: i for i, c in enumerate(self.batch_categories_)}
        codes = np.array([lookup.get(str(b), -1) for b in batches], dtype=np.int64)
        if len(codes) != n:
            raise InputError(f"{len(codes)} batch labels for {n} cells.")
        if (codes < 0).any():
            import warnings

            warnings.warn(f"{int((codes < 0).sum())} cells have a batch the model does not know; they "
                          "are decoded with the mean batch intercept.", UserWarning, stacklevel=3)
        return torch.as_tensor(codes)

    def _decode(self, theta: np.ndarray, codes: torch.Tensor | None, chunk: int) -> np.ndarray:
        module, dev = self.module, self.device
        was_training = module.training
        module.eval()
        out = []
        try:
            with torch.no_grad():
                for s in range(0, theta.shape[0], chunk):
                    th = torch.as_tensor(theta[s:s + chunk], device=dev)
                    b = None if codes is None else codes[s:s + chunk].to(dev)
                    logits = module.generative(th, b)["logits"]
                    out.append(torch.softmax(logits.double(), dim=1).cpu().numpy())
        finally:
            module.train(was_training)
        return np.concatenate(out, 0) if out else np.zeros((0, len(self.genes)))

    def write_results(self, adata: ad.AnnData | None = None, key_added: str | None = None,
                      layer: str | None = None, allow_missing_genes: bool = False) -> ad.AnnData:
        """Write outputs into ``adata`` (default: the training data) following the contract of
        :mod:`sctopic.data.outputs` (``obsm['X_<key>']``, ``obsm['X_<key>_logits']``,
        ``varm['<key>_topic_gene']``, ``varm['<key>_gene_embedding']``, ``uns['<key>']``,
        ``uns['sctopic']['model']`` and ``uns['sctopic']['clustering_key']``, the ``obsm`` key to
        build neighbours, clusters and UMAPs on)."""
        self._check_trained()
        logits = self.get_cell_topics(adata, logits=True, layer=layer,
                                      allow_missing_genes=allow_missing_genes)
        module = self.module
        with torch.no_grad():
            gene_emb, topic_emb = module.gene_embedding(), module.topic_embedding()
        return write_outputs(
            self.adata if adata is None else adata, key_added or self.model_name,
            logits=logits, theta=_softmax(logits), topic_gene=self.get_topic_gene().to_numpy(),
            genes=self.genes, topic_names=self.topic_names,
            params=json.dumps(self._init_kwargs, sort_keys=True),
            gene_embedding=gene_emb.detach().cpu().numpy(), topic_embedding=topic_emb.detach().cpu().numpy(),
            clustering=self.clustering_representation)

    # ------------------------------------------------------------------ save / load
    def _meta(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "class": type(self).__name__,
            "init": self._init_kwargs,
            "genes": self.genes,
            "extra": {**self._extra_meta(), "train_settings": self.train_settings_,
                      # only when on: files of runs without it stay as they were
                      **({"early_stopping": self.early_stopping_} if getattr(self, "early_stopping_", None) else {})},
            "batch": {"key": self.batch_key, "categories": list(self.batch_categories_ or [])},
            "history": self.history_,
            "is_trained": self.is_trained,
        }

    def save(self, path: str | os.PathLike, overwrite: bool = False) -> Path:
        """Save the model to one file: tensors plus plain JSON metadata (no pickled objects).

        The file is written under a temporary name and renamed, so an interrupted save never
        leaves a truncated model behind.

        Parameters
        ----------
        path
            The model file (e.g. ``model.pt``).
        overwrite
            Replace an existing file (default False: an existing file is an error, as in
            scvi-tools' ``save(overwrite=False)``).

        Raises
        ------
        InputError
            ``path`` exists and ``overwrite`` is False, or ``path`` is a directory.
        """
        path = Path(path)
        if path.is_dir():
            raise InputError(f"{path} is a directory; give a file name such as {path / 'model.pt'}.")
        if path.exists() and not overwrite:
            raise InputError(f"{path} exists; pass overwrite=True to replace it (or choose another file name).")
        state = {k: v.detach().cpu() for k, v in self.module.state_dict().items()}
        payload = {"meta": json.dumps(self._meta()), "state_dict": state}
        return atomic_write(path, lambda tmp: torch.save(payload, tmp))

    @classmethod
    def load(cls, path: str | os.PathLike, adata=None, layer: str | None = None, device: str = "cpu"):
        """Load a model saved with :meth:`save`.

        The file is read with ``torch.load(weights_only=True)``, which refuses pickled code.
        With ``adata``, the model is attached to it; its genes must contain the model's genes
        (they are aligned by name).
        """
        meta, state = read_model_file(path)
        if meta["class"] != cls.__name__:
            raise InputError(f"{path} holds a {meta['class']} model; load it with sctopic.{meta['class']}.load.")
        self = cls.__new__(cls)
        self._init_kwargs = meta["init"]
        self.genes = list(meta["genes"])
        self.history_ = meta.get("history", {})
        self.is_trained_ = bool(meta.get("is_trained", False))
        batch = meta.get("batch", {}) or {}
        self.batch_key = batch.get("key")
        self.batch_categories_ = list(batch.get("categories", []))
        self._batch_codes = None
        extra = meta.get("extra", {})
        self.train_settings_ = extra.get("train_settings", {})
        self._clear_early_stopping()
        self.early_stopping_ = extra.get("early_stopping")
        self._restore_extra(extra)
        self.module = self._make_module()
        self.module.load_state_dict(state)
        self.module.eval()
        self.device = torch.device(device)
        self.module.to(self.device)
        self.adata, self.layer, self._X, self._train_cells, self.backed = None, layer, None, None, False
        self.resumes_, self._data_fingerprint = [], None
        if adata is not None:
            self.adata = read_adata(adata)
            self._X = aligned_counts(self.adata, self.genes, layer, allow_missing_genes=False)
            self._train_cells = np.arange(self.adata.n_obs)
        return self

    # Hooks for subclasses.
    def _make_module(self) -> torch.nn.Module:  # pragma: no cover - abstract
        raise NotImplementedError

    def _extra_meta(self) -> dict[str, Any]:
        return {}

    def _restore_extra(self, extra: dict[str, Any]) -> None:
        pass

    def _inference_view(self, data: ad.AnnData | None, is_training_data: bool) -> np.ndarray | None:
        """Extra per-cell input of the encoder at inference (an external view), or None."""
        return None


def read_model_file(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``(meta, state_dict)`` of a model file written by :meth:`BaseTopicModel.save`.

    Read with ``torch.load(weights_only=True)``, which refuses pickled code.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"no such model file: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling refused or not a torch file
        raise InputError(
            f"{path} is not an sctopic model file or contains objects that are not plain "
            f"tensors (refused for safety): {str(exc).splitlines()[0][:200]}"
        ) from exc
    if not isinstance(payload, dict) or "meta" not in payload or "state_dict" not in payload:
        raise InputError(f"{path} is not an sctopic model file.")
    meta = json.loads(payload["meta"])
    if meta.get("format") != FORMAT:
        raise InputError(f"{path} is not an sctopic model file.")
    return meta, payload["state_dict"]


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


__all__ = ["BaseTopicModel", "read_model_file"]
