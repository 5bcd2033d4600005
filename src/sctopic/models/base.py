"""Shared machinery of the user-facing topic models: data preparation, outputs, save/load.

A model holds a pure-torch ``module`` (``sctopic.nn``) and the AnnData-facing logic here,
following scvi-tools' split between ``module`` and ``model``.
"""
from __future__ import annotations

import json
import logging
import os
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from sctopic.data.counts import drop_empty, get_counts, select_genes
from sctopic.data.io import atomic_write, read_adata
from sctopic.data.loader import batch_indices
from sctopic.data.validate import nonzero_masks
from sctopic.errors import InputError, SctopicError

log = logging.getLogger(__name__)

FORMAT = "sctopic-model"
FORMAT_VERSION = 1


@dataclass
class TrainingData:
    """What a model's training loop needs: the training cells' counts on the device."""

    X: Any  # scipy CSR of the training cells (in memory) or a BackedCounts (out of core)
    n: int
    cells: np.ndarray
    layout: str
    rows: Any  # index tensor -> minibatch (dense or sparse CSR)
    codes: torch.Tensor | None  # batch index per training cell, or None
    device: torch.device
    #: ``(batch_size, generator) -> iterator of index tensors`` covering the training cells once
    #: (an epoch); the indices are positions among the training cells.
    batches: Any = None
    #: The part of a global minibatch this process trains on (identity in one process; see
    #: :mod:`sctopic.train.distributed`). Applied to indices before rows are gathered.
    shard: Any = None
    #: ``index tensor -> minibatch tensor or a callable giving it`` (out of core: a read started
    #: in the background; resolve with :func:`sctopic.data.loader.resolve_ahead`).
    fetch: Any = None
    #: ``"32"`` or ``"bf16"``: the training precision resolved for the device.
    precision: str = "32"

    def __post_init__(self):
        if self.fetch is None:
            self.fetch = self.rows
        if self.batches is None:
            self.batches = lambda batch_size, gen: batch_indices(self.n, batch_size, True, gen, self.device)
        if self.shard is None:
            self.shard = _identity


def _identity(t):
    return t


@contextmanager
def seeded(seed: int, device: torch.device | None = None):
    """Seed torch's global generators inside the block and restore them afterwards.

    Weight initialisation, dropout and the reparameterisation noise draw from torch's global
    generator; forking it keeps a fitted model reproducible without changing the caller's
    random state.
    """
    devices = [device] if device is not None and device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


class BaseTopicModel:
    """Base class of the topic models: holds data, genes, the torch module and outputs.

    Subclasses define :attr:`model_name`, :meth:`_make_module` and :meth:`train`.
    """

    model_name: ClassVar[str] = "topicmodel"

    # ------------------------------------------------------------------ data
    def _setup_data(self, adata, layer: str | None, n_top_genes: int | None, backed: bool = False) -> None:
        self.backed = bool(backed)
        if backed:
            self._setup_backed(adata, layer, n_top_genes)
            return
        adata = read_adata(adata)
        if getattr(adata, "isbacked", False):
            adata = adata.to_memory()
        self.adata = adata
        self.layer = layer
        data = select_genes(adata, n_top_genes, layer) if n_top_genes else adata
        X = get_counts(data, layer)
        cells, genes = nonzero_masks(X)
        if not genes.all():
            _warn_zero_genes(genes)
            X = X[:, genes]
        _check_training_cells(cells)
        self.genes: list[str] = [str(g) for g in data.var_names[genes]]
        self._X = sp.csr_matrix(X)
        self._train_cells = np.flatnonzero(cells)

    def _setup_backed(self, adata, layer: str | None, n_top_genes: int | None) -> None:
        """Out-of-core data: ``X`` stays on disk; one pass validates it and ranks the genes."""
        from sctopic.data.backed import BackedCounts, scan_counts, select_genes_backed
        from sctopic.data.validate import check_unique_names

        path = _backed_path(adata)
        self.adata = read_adata(path, backed=True)
        self.layer = layer
        check_unique_names(self.adata.var_names, "gene")
        check_unique_names(self.adata.obs_names, "cell")
        full = BackedCounts(path, layer)
        if full.shape[0] == 0 or full.shape[1] == 0:
            raise InputError(f"the data are empty ({full.shape[0]} cells x {full.shape[1]} genes).")
        stats = scan_counts(full)
        if n_top_genes and n_top_genes < full.shape[1]:
            cols = select_genes_backed(stats, int(n_top_genes))
        elif n_top_genes is not None and n_top_genes < 0:
            raise InputError(f"n_top_genes must be >= 0 (0 keeps all genes), got {n_top_genes}.")
        else:
            cols = np.arange(full.shape[1])
        keep = stats.gene_totals[cols] > 0
        if not keep.all():
            _warn_zero_genes(keep)
            cols = cols[keep]
        X = full.subset(cols=cols)
        totals = stats.cell_totals if len(cols) == full.shape[1] else _row_totals(X)
        cells = totals > 0
        _check_training_cells(cells)
        self.genes = [str(g) for g in self.adata.var_names[cols]]
        self._X = X
        self._train_cells = np.flatnonzero(cells)

    def _aligned_counts(self, adata: ad.AnnData, layer: str | None, allow_missing_genes: bool):
        """Counts of ``adata`` over the model's genes, in the model's order (a
        :class:`~sctopic.data.backed.BackedCounts` view for a backed AnnData)."""
        names = pd.Index(adata.var_names.astype(str))
        if not names.is_unique:
            raise InputError("the data have duplicate gene names; run adata.var_names_make_unique().")
        pos = names.get_indexer(self.genes)
        missing = int((pos < 0).sum())
        if getattr(adata, "isbacked", False) and not missing:
            from sctopic.data.backed import BackedCounts

            return BackedCounts(adata.filename, layer, cols=pos)
        if missing:
            frac = missing / len(self.genes)
            eg = ", ".join(g for g, p in zip(self.genes, pos) if p < 0)[:200]
            if not allow_missing_genes:
                raise InputError(
                    f"{missing} of the model's {len(self.genes)} genes ({frac:.1%}) are missing from "
                    f"the data (e.g. {eg}). Use data with the same genes, or pass "
                    "allow_missing_genes=True to fill them with zeros."
                )
            warnings.warn(
                f"{missing} of the model's {len(self.genes)} genes ({frac:.1%}) are missing from "
                "the data and are filled with zeros.", UserWarning, stacklevel=3,
            )
        X = get_counts(adata, layer)
        present = np.flatnonzero(pos >= 0)
        # A 0/1 selection matrix maps data columns to model columns in one sparse product.
        S = sp.csr_matrix(
            (np.ones(len(present), np.float32), (pos[present], present)),
            shape=(X.shape[1], len(self.genes)),
        )
        out = sp.csr_matrix(X @ S)
        out.sort_indices()  # a fixed summation order: same input, bit-identical output
        return out

    # ------------------------------------------------------------------ outputs
    @property
    def n_topics(self) -> int:
        return int(self._init_kwargs["n_topics"])

    @property
    def topic_names(self) -> list[str]:
        return [f"topic_{k}" for k in range(self.n_topics)]

    def _check_trained(self) -> None:
        if not getattr(self, "is_trained_", False):
            raise SctopicError(f"the {type(self).__name__} model is not trained yet; call .train() first.")

    def get_topic_gene(self) -> pd.DataFrame:
        """Topic-gene matrix beta as a DataFrame, topics x genes (each gene's column sums to 1)."""
        beta = self._beta().detach().cpu().numpy()
        return pd.DataFrame(beta, index=self.topic_names, columns=self.genes)

    # Alias in the scverse spirit of DESIGN.md 2.3.
    def topic_gene_frame(self) -> pd.DataFrame:
        """Same as :meth:`get_topic_gene`."""
        return self.get_topic_gene()

    def top_genes(self, n: int = 10) -> pd.DataFrame:
        """The ``n`` highest-weighted genes of each topic: rows topics, columns ranks 1..n."""
        beta = self._beta().detach().cpu().numpy()
        n = int(min(n, beta.shape[1]))
        order = np.argsort(-beta, axis=1, kind="stable")[:, :n]
        names = np.asarray(self.genes, dtype=object)[order]
        return pd.DataFrame(names, index=self.topic_names, columns=[f"gene_{r + 1}" for r in range(n)])

    def write_results(self, adata: ad.AnnData | None = None, key_added: str | None = None,
                      layer: str | None = None, allow_missing_genes: bool = False) -> ad.AnnData:
        """Write outputs into ``adata`` (default: the training data) following scverse conventions.

        Writes ``obsm['X_<key>']`` (theta, rows sum to 1), ``obsm['X_<key>_logits']`` (the topic
        logits delta, posterior means), ``varm['<key>_gene_embedding']`` and
        ``varm['<key>_topic_gene']`` (genes the model does not use get NaN rows), and
        ``uns['<key>']`` with ``topic_gene`` (K x V over ``uns['<key>']['genes']``),
        ``topic_embedding``, ``genes``, ``topic_names`` and ``params`` (a JSON string);
        ``uns['sctopic']['model']`` names the key.
        """
        self._check_trained()
        key = key_added or self.model_name
        target = self.adata if adata is None else adata
        logits = self.get_cell_topics(adata, logits=True, layer=layer,
                                      allow_missing_genes=allow_missing_genes)
        target.obsm[f"X_{key}_logits"] = logits
        target.obsm[f"X_{key}"] = _softmax(logits)
        beta = self._beta().detach().cpu().numpy()
        gene_emb = self._gene_embedding()
        pos = pd.Index(target.var_names.astype(str)).get_indexer(self.genes)
        ok = pos >= 0
        if gene_emb is not None:
            ge = np.full((target.n_vars, gene_emb.shape[1]), np.nan, dtype=np.float32)
            ge[pos[ok]] = gene_emb[ok]
            target.varm[f"{key}_gene_embedding"] = ge
        tg = np.full((target.n_vars, beta.shape[0]), np.nan, dtype=np.float32)
        tg[pos[ok]] = beta.T[ok]
        target.varm[f"{key}_topic_gene"] = tg
        uns = {
            "topic_gene": beta.astype(np.float32),
            "genes": np.asarray(self.genes, dtype=object),
            "topic_names": np.asarray(self.topic_names, dtype=object),
            "params": json.dumps(self._init_kwargs, sort_keys=True),
        }
        topic_emb = self._topic_embedding()
        if topic_emb is not None:
            uns["topic_embedding"] = topic_emb
        target.uns[key] = uns
        target.uns["sctopic"] = {"model": key}
        return target

    # ------------------------------------------------------------------ save / load
    def _meta(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "class": type(self).__name__,
            "init": self._init_kwargs,
            "genes": self.genes,
            "extra": self._extra_meta(),
            "batch": {"key": getattr(self, "batch_key", None),
                      "categories": list(getattr(self, "batch_categories_", []) or [])},
            "history": getattr(self, "history_", {}),
            "is_trained": bool(getattr(self, "is_trained_", False)),
        }

    def _extra_meta(self) -> dict[str, Any]:
        return {}

    def save(self, path: str | os.PathLike, overwrite: bool = True) -> Path:
        """Save the model to one file: tensors plus plain JSON metadata (no pickled objects).

        The file is written under a temporary name and renamed, so an interrupted save never
        leaves a truncated model behind.
        """
        path = Path(path)
        if path.exists() and not overwrite:
            raise InputError(f"{path} exists; pass overwrite=True to replace it.")
        state = {k: v.detach().cpu() for k, v in self.module.state_dict().items()}
        payload = {"meta": json.dumps(self._meta()), "state_dict": state}
        return atomic_write(path, lambda tmp: torch.save(payload, tmp))

    @classmethod
    def load(cls, path: str | os.PathLike, adata=None, layer: str | None = None,
             device: str = "cpu"):
        """Load a model saved with :meth:`save`.

        The file is read with ``torch.load(weights_only=True)``, which refuses pickled code.
        With ``adata``, the model is attached to it; its genes must contain the model's genes
        (they are aligned by name).
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
        self._restore_extra(meta.get("extra", {}))
        self.module = self._make_module()
        self.module.load_state_dict(payload["state_dict"])
        self.module.eval()
        self.device = torch.device(device)
        self.module.to(self.device)
        self.adata, self.layer, self._X, self._train_cells = None, layer, None, None
        if adata is not None:
            adata = read_adata(adata)
            self.adata = adata
            self._X = self._aligned_counts(adata, layer, allow_missing_genes=False)
            self._train_cells = np.arange(adata.n_obs)
        return self

    def _restore_extra(self, extra: dict[str, Any]) -> None:
        pass

    # Hooks for subclasses.
    def _make_module(self) -> torch.nn.Module:  # pragma: no cover - abstract
        raise NotImplementedError

    def _beta(self) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _gene_embedding(self) -> np.ndarray | None:
        return None

    def _topic_embedding(self) -> np.ndarray | None:
        return None

    def _inference_view(self, data: ad.AnnData | None, is_training_data: bool) -> np.ndarray | None:
        """Extra per-cell input of the encoder at inference (an external view), or None."""
        return None

    def get_cell_topics(
        self,
        adata: ad.AnnData | str | None = None,
        logits: bool = False,
        layer: str | None = None,
        batch_size: int = 4096,
        allow_missing_genes: bool = False,
    ) -> np.ndarray:
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
        from sctopic.data.loader import RowStore, batch_indices

        self._check_trained()
        if adata is None:
            if self._X is None:
                raise InputError("no data attached; pass adata=...")
            X, data = self._X, self.adata
        else:
            data = read_adata(adata)
            X = self._aligned_counts(data, layer if layer is not None else self.layer, allow_missing_genes)
        view = self._inference_view(data, adata is None)
        self.module.eval()
        dev = self.device
        delta = np.empty((X.shape[0], self.n_topics), dtype=np.float32)
        if _is_backed(X):
            from sctopic.data.backed import to_torch

            # Blocks in file order; each is split into inference batches.
            from sctopic.data.validate import check_counts

            for i0, i1, B in X.iter_blocks(max(batch_size, 8192)):
                if adata is not None:  # new data on disk: validated as it streams
                    check_counts(B, f"{X.where} of {X.path.name}")
                for s in range(0, i1 - i0, batch_size):
                    e = min(s + batch_size, i1 - i0)
                    v = None if view is None else torch.as_tensor(view[i0 + s:i0 + e], device=dev)
                    with torch.no_grad():
                        delta[i0 + s:i0 + e] = self.module.infer(to_torch(B[s:e], "csr", dev), v).cpu().numpy()
        else:
            store = RowStore(X, dev, storage="csr")
            for idx in batch_indices(X.shape[0], batch_size, False, None, dev):
                v = None if view is None else torch.as_tensor(view[idx.cpu().numpy()], device=dev)
                with torch.no_grad():
                    delta[idx.cpu().numpy()] = self.module.infer(store.rows_csr(idx), v).cpu().numpy()
        if logits:
            return delta
        return _softmax(delta)

    def _prepare_training(self, max_epochs: int, batch_size: int, device: str, storage: str,
                          num_workers: int = 1, block_size: int | None = None,
                          pool_blocks: int | None = None, precision: str = "32",
                          compile: bool = False) -> TrainingData:
        """Check the training arguments, place the training cells on the device, move the module.

        Shared by every model's ``train``: minibatches are sliced from one ``RowStore`` in the
        layout :func:`~sctopic.data.loader.minibatch_layout` picks, or, out of core, read by
        :class:`~sctopic.data.backed.BackedMinibatches` (``num_workers`` reader threads,
        ``block_size`` cells per read, ``pool_blocks`` blocks shuffled together). ``precision``
        is resolved for the device (:func:`sctopic.nn.precision.resolve_precision`), and
        ``compile`` is refused with sparse minibatches, which torch.compile cannot trace.
        """
        from sctopic.data.loader import RowStore, minibatch_layout
        from sctopic.nn.precision import resolve_precision
        from sctopic.train import resolve_device

        if self._X is None:
            raise InputError("this model has no training data attached; load it with adata=... first.")
        if max_epochs < 1 or batch_size < 2:
            raise InputError("max_epochs must be >= 1 and batch_size >= 2.")
        dev = resolve_device(device)
        self.device = dev
        cells = self._train_cells
        X = self._X[cells]
        layout = minibatch_layout(X, storage)
        if compile and layout == "csr":
            raise InputError("compile=True needs dense minibatches (torch.compile does not trace "
                             "sparse CSR tensors): pass storage='dense'.")
        prec = resolve_precision(precision, dev)
        if _is_backed(X):
            from sctopic.data.backed import DEFAULT_BLOCK_SIZE, DEFAULT_POOL_BLOCKS, BackedMinibatches

            mb = BackedMinibatches(X, layout, dev, block_size=block_size or DEFAULT_BLOCK_SIZE,
                                   pool_blocks=pool_blocks or DEFAULT_POOL_BLOCKS,
                                   num_workers=num_workers)
            codes = None
            if self._batch_codes is not None and self.n_batches > 0:
                codes = torch.as_tensor(self._batch_codes[cells], device=dev)
            self.module.to(dev)
            return TrainingData(X=X, n=X.shape[0], cells=cells, layout=layout, rows=mb.rows,
                                codes=codes, device=dev, batches=mb.batches, fetch=mb.fetch,
                                precision=prec)
        store = RowStore(X, dev, storage="auto" if layout == "dense" else "csr")
        codes = None
        if self._batch_codes is not None and self.n_batches > 0:
            codes = torch.as_tensor(self._batch_codes[cells], device=dev)
        self.module.to(dev)
        return TrainingData(X=X, n=X.shape[0], cells=cells, layout=layout,
                            rows=store.rows if layout == "dense" else store.rows_csr,
                            codes=codes, device=dev, precision=prec)

    def _finish_training(self, history: dict, t_start: float, dist, settings: dict,
                         write_results: bool) -> None:
        """Shared end of every model's ``train``: close the distributed run, record history,
        time and settings, and (on rank 0) write the outputs into the training AnnData."""
        from sctopic.train.distributed import finish as finish_distributed

        dist_info = finish_distributed(self.module, dist)
        self.module.eval()
        self.history_ = {key: [float(v) for v in vals] for key, vals in history.items()}
        self.train_seconds_ = time.perf_counter() - t_start
        self.is_trained_ = True
        self.train_settings_ = {**settings, "world_size": dist.world_size}
        if dist_info:
            self.train_settings_["distributed"] = dist_info
        if write_results and self.adata is not None and dist.is_main:
            self.write_results()

    # ------------------------------------------------------------------ batches
    def _setup_batches(self, batch_key: str | None) -> None:
        """Batch codes of the training cells from ``adata.obs[batch_key]`` (None: no batches)."""
        self.batch_key = batch_key
        self.batch_categories_: list[str] = []
        self._batch_codes = None
        if batch_key is None:
            return
        if batch_key not in self.adata.obs.columns:
            cols = ", ".join(map(str, self.adata.obs.columns[:20]))
            raise InputError(f"batch_key {batch_key!r} is not a column of adata.obs (columns: {cols}).")
        col = self.adata.obs[batch_key]
        if col.isna().any():
            raise InputError(
                f"adata.obs[{batch_key!r}] has {int(col.isna().sum())} missing values; fill or drop "
                "those cells first."
            )
        cat = pd.Categorical(col.astype(str))
        self.batch_categories_ = [str(c) for c in cat.categories]
        if len(self.batch_categories_) < 2:
            warnings.warn(f"adata.obs[{batch_key!r}] holds a single batch; batch terms have no effect.",
                          UserWarning, stacklevel=3)
        self._batch_codes = np.asarray(cat.codes, dtype=np.int64)

    @property
    def n_batches(self) -> int:
        """Number of batches with intercepts (0 without ``batch_key``)."""
        return len(getattr(self, "batch_categories_", []) or [])

def _warn_zero_genes(keep: np.ndarray) -> None:
    warnings.warn(
        f"dropping {int((~keep).sum())} of {len(keep)} genes with zero counts from the "
        "model (they carry no information).", UserWarning, stacklevel=4,
    )


def _check_training_cells(cells: np.ndarray) -> None:
    """Refuse fewer than 2 cells with counts; warn about the cells left out of training."""
    if cells.sum() < 2:
        raise InputError("fewer than 2 cells have non-zero counts; nothing to train on.")
    if not cells.all():
        warnings.warn(
            f"{int((~cells).sum())} of {len(cells)} cells have zero counts over the model's "
            "genes; they are left out of training (their outputs are still computed).",
            UserWarning, stacklevel=4,
        )


def _is_backed(X) -> bool:
    from sctopic.data.backed import BackedCounts

    return isinstance(X, BackedCounts)


def _backed_path(adata) -> str:
    """The file behind ``backed=True`` input: a path, or an AnnData opened with backed='r'."""
    if isinstance(adata, (str, os.PathLike)):
        return str(adata)  # read_adata checks it (existence, suffix, HDF5) with clear messages
    if isinstance(adata, ad.AnnData) and getattr(adata, "isbacked", False):
        return str(adata.filename)
    raise InputError(
        "backed=True trains from a file on disk: pass the .h5ad path (or an AnnData opened "
        "with anndata.read_h5ad(path, backed='r')), not an in-memory AnnData."
    )


def _row_totals(X) -> np.ndarray:
    """Per-row totals of a backed matrix (one pass)."""
    out = np.zeros(X.shape[0], dtype=np.float64)
    for i0, i1, B in X.iter_blocks():
        out[i0:i1] = np.asarray(B.sum(axis=1)).ravel()
    return out


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


# drop_empty is re-exported for users who want to clean data themselves.
__all__ = ["BaseTopicModel", "TrainingData", "drop_empty", "seeded"]
