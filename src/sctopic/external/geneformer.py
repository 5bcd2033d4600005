"""Geneformer cell embeddings from a local model folder (optional extra: ``transformers``).

Geneformer (Theodoris et al., Nature 2023) reads a cell as a *rank-value encoding*: the cell's
counts are divided by its total (times 10,000) and by each gene's median over the pretraining
corpus, the expressed genes are sorted by that value (highest first) and written as token ids.
This module re-implements that tokenisation (no ``geneformer`` package) and runs the BERT model
with ``transformers``:

* ``model_dir``: a Hugging Face BERT folder (``config.json`` plus ``model.safetensors`` or
  ``pytorch_model.bin``; ``BertForMaskedLM`` or fine-tuned checkpoints). It is loaded with
  ``local_files_only=True`` (no network) and without remote code; every tensor of the BERT
  encoder must be present with the right shape, head tensors (``cls.*``, ``classifier.*``,
  ``pooler.*``) are ignored and reported, anything else is refused.
* ``token_dictionary``: Ensembl gene ID -> token id, with ``<pad>`` (and ``<mask>``; the 95M
  models add ``<cls>`` and ``<eos>``, which are then put around each cell as Geneformer V2 does).
* ``gene_median_file``: Ensembl gene ID -> median normalised expression.

Both dictionaries may be JSON or Geneformer's pickles; pickles are read with an unpickler that
accepts plain data only (a crafted pickle cannot run code here).

Genes are matched by Ensembl ID (version suffixes such as ``.12`` are dropped): from
``adata.var[gene_id_key]`` (default ``"gene_id"`` when that column exists) or ``var_names``.
Sequences are truncated to the model's ``max_position_embeddings`` (2,048 or 4,096). The cell
embedding is the mean of the chosen hidden layer over the gene tokens (padding and the special
tokens left out). ``layer=-1`` is the last layer; Geneformer's own ``EmbExtractor`` uses the
second-to-last by default (``layer=-2`` here).

Counts must be raw: the normalisation by total counts and gene medians assumes them. The total
of each cell is taken over all genes of ``adata`` (Geneformer uses ``obs['n_counts']``: pass
``total_counts_key="n_counts"`` to use such a column).
"""
from __future__ import annotations

import logging
import re
import time
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import scipy.sparse as sp

from sctopic.data.counts import get_counts
from sctopic.errors import InputError
from sctopic.external.common import coverage_check, progress_bar, read_dict_file

log = logging.getLogger(__name__)

TARGET_SUM = 10_000
_VERSION = re.compile(r"\.\d+$")
_HEAD_PREFIXES = ("cls.", "classifier.", "pooler.", "bert.pooler.")


def _require_transformers():
    try:
        import transformers  # noqa: F401
    except ImportError as exc:
        raise InputError(
            "the Geneformer adapter needs the optional 'transformers' package: "
            "install sctopic[geneformer] (pip install 'transformers>=4.30')."
        ) from exc
    return transformers


def find_dictionary(model_dir: str | Path, kind: str) -> Path:
    """Find ``token_dictionary*`` or ``gene_median_dictionary*`` (``.json`` or ``.pkl``) in a folder."""
    d = Path(model_dir)
    hits = sorted(p for p in d.glob(f"{kind}*") if p.suffix in (".json", ".pkl", ".pickle"))
    if not hits:
        raise InputError(
            f"no {kind}*.pkl or {kind}*.json in {d}; put Geneformer's dictionaries beside the "
            "model or pass token_dictionary= and gene_median_file= explicitly."
        )
    if len(hits) > 1:
        raise InputError(f"several {kind} files in {d} ({', '.join(p.name for p in hits)}); pass one explicitly.")
    return hits[0]


def load_geneformer(model_dir: str | Path):
    """Load a BERT model folder, checking that every encoder tensor was read.

    Returns
    -------
    model, report
        A ``transformers.BertModel`` in eval mode (no pooler) and a dict with ``ignored``
        (head tensors) and ``path``.
    """
    transformers = _require_transformers()
    d = Path(model_dir).expanduser()
    if not (d / "config.json").is_file():
        raise InputError(f"{d} is not a Hugging Face model folder (config.json missing).")
    cfg = transformers.AutoConfig.from_pretrained(d, local_files_only=True)
    if getattr(cfg, "model_type", None) != "bert":
        raise InputError(f"{d}: model_type {getattr(cfg, 'model_type', None)!r}; Geneformer models are BERT.")
    tf_log = transformers.utils.logging
    logger = tf_log.get_logger("transformers")
    level, bars_off = logger.level, tf_log.is_progress_bar_enabled() is False
    logger.setLevel(logging.ERROR)  # our own report replaces transformers' load table
    tf_log.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model, info = transformers.BertModel.from_pretrained(
                d, add_pooling_layer=False, output_loading_info=True, local_files_only=True,
            )
    except (OSError, RuntimeError, ValueError) as exc:
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "mismatched" in text:
            text = "tensor shapes in the weights file do not match config.json"
        raise InputError(f"could not load the Geneformer model in {d}: {text}. Refusing to use "
                         "a partly random model.") from exc
    finally:
        logger.setLevel(level)
        if not bars_off:
            tf_log.enable_progress_bar()
    missing = sorted(info.get("missing_keys", []))
    mismatched = sorted(str(m) for m in info.get("mismatched_keys", []))
    unexpected = sorted(info.get("unexpected_keys", []))
    unknown = [k for k in unexpected if not k.startswith(_HEAD_PREFIXES)]
    if missing or mismatched or unknown or info.get("error_msgs"):
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} tensors ({', '.join(missing[:5])})")
        if mismatched:
            parts.append(f"wrong shapes ({', '.join(mismatched[:3])})")
        if unknown:
            parts.append(f"unknown tensors ({', '.join(unknown[:5])})")
        if info.get("error_msgs"):
            parts.append("; ".join(map(str, info["error_msgs"]))[:300])
        raise InputError(
            f"the Geneformer checkpoint in {d} does not match its config.json: {'; '.join(parts)}. "
            "Refusing to use a partly random model."
        )
    model.eval()
    return model, {"ignored": unexpected, "path": str(d)}


def _ensembl(ids) -> list[str]:
    return [_VERSION.sub("", str(g)) for g in ids]


def rank_value_tokens(
    X: sp.csr_matrix,
    totals: np.ndarray,
    medians: np.ndarray,
    tokens: np.ndarray,
    max_len: int,
) -> list[np.ndarray]:
    """Geneformer's rank-value encoding of each cell (token ids, highest value first).

    ``X`` holds the counts of the dictionary genes, ``totals`` each cell's total count,
    ``medians`` and ``tokens`` each column's median and token id. Ties keep column order.
    """
    out = []
    for i in range(X.shape[0]):
        lo, hi = X.indptr[i], X.indptr[i + 1]
        cols, vals = X.indices[lo:hi], X.data[lo:hi].astype(np.float64)
        keep = vals > 0
        cols, vals = cols[keep], vals[keep]
        norm = vals / max(float(totals[i]), 1e-12) * TARGET_SUM / medians[cols]
        order = np.argsort(-norm, kind="stable")[:max_len]
        out.append(tokens[cols[order]].astype(np.int64))
    return out


def geneformer_embed(
    adata: ad.AnnData,
    model_dir: str | Path,
    token_dictionary: str | Path | dict | None = None,
    gene_median_file: str | Path | dict | None = None,
    *,
    layer: str | None = None,
    gene_id_key: str | None = None,
    total_counts_key: str | None = None,
    emb_layer: int = -1,
    batch_size: int = 32,
    device: str = "cpu",
    seed: int = 0,
    progress: bool = True,
    min_coverage: float = 0.1,
    return_info: bool = False,
) -> np.ndarray | tuple[np.ndarray, dict]:
    """Geneformer cell embeddings (mean-pooled hidden states) of every cell of ``adata``.

    Each cell is rank-value encoded (:func:`rank_value_tokens`: its dictionary genes ordered by
    count / cell total / gene median, as many as the model takes) and the hidden states of
    layer ``emb_layer`` are averaged over its gene tokens.

    Parameters
    ----------
    adata
        Cells x genes with raw counts.
    model_dir
        Hugging Face BERT folder of a Geneformer model.
    token_dictionary, gene_median_file
        Paths (``.pkl`` or ``.json``) or dicts keyed by Ensembl ID; by default the files named
        ``token_dictionary*`` and ``gene_median_dictionary*`` in ``model_dir``.
    layer
        Layer of ``adata`` with the raw counts (default ``X``).
    gene_id_key
        ``adata.var`` column with Ensembl IDs; default ``"gene_id"`` if present, else
        ``var_names``.
    total_counts_key
        ``adata.obs`` column with each cell's total count (default: sum over ``adata``'s genes).
    emb_layer
        Index into the hidden states (``-1`` last layer; ``-2`` Geneformer's default).
    batch_size
        Cells per forward pass.
    device
        ``"cpu"``, ``"cuda[:N]"`` or ``"auto"``.
    seed
        Seed of torch's generators during the pass (restored afterwards); inference itself is
        deterministic.
    progress
        Show a tqdm progress bar.
    min_coverage
        Raise when fewer than this fraction of the data's genes are in the dictionaries.
    return_info
        Also return a dict with coverage, ignored tensors and timings.

    Returns
    -------
    numpy.ndarray
        ``(n_cells, hidden_size)`` float32 (plus the info dict if asked).
    """
    import torch

    from sctopic.utils.device import resolve_device
    from sctopic.utils.random import seeded

    t0 = time.perf_counter()
    _require_transformers()
    if batch_size < 1:
        raise InputError("batch_size must be >= 1.")
    X = get_counts(adata, layer)
    model_dir = Path(model_dir).expanduser()
    tok = token_dictionary if isinstance(token_dictionary, dict) else read_dict_file(
        Path(token_dictionary) if token_dictionary is not None else find_dictionary(model_dir, "token_dictionary"),
        "Geneformer token dictionary")
    med = gene_median_file if isinstance(gene_median_file, dict) else read_dict_file(
        Path(gene_median_file) if gene_median_file is not None else find_dictionary(model_dir, "gene_median_dictionary"),
        "Geneformer gene median dictionary")
    if "<pad>" not in tok:
        raise InputError("the token dictionary has no '<pad>' token; is it Geneformer's?")
    model, report = load_geneformer(model_dir)
    cfg = model.config
    if max(int(v) for v in tok.values()) >= cfg.vocab_size:
        raise InputError(f"token ids reach {max(tok.values())} but the model has {cfg.vocab_size} tokens; "
                         "the token dictionary does not belong to this model.")
    if gene_id_key is None and "gene_id" in adata.var.columns:
        gene_id_key = "gene_id"
    if gene_id_key is not None and gene_id_key not in adata.var.columns:
        raise InputError(f"gene column {gene_id_key!r} not found in adata.var.")
    raw_ids = adata.var[gene_id_key] if gene_id_key is not None else adata.var_names
    genes = _ensembl(raw_ids)
    found = np.array([g in tok and g in med for g in genes])
    coverage = coverage_check(genes, found, "the Geneformer dictionaries", min_coverage,
                              "Ensembl gene IDs (e.g. ENSG00000167286)",
                              hint=" (pass gene_id_key= for a var column of Ensembl IDs)")
    cols = np.flatnonzero(found)
    medians = np.array([float(med[genes[j]]) for j in cols])
    if not np.all(np.isfinite(medians)) or (medians <= 0).any():
        raise InputError("the gene median dictionary holds non-positive or missing medians.")
    tokens = np.array([int(tok[genes[j]]) for j in cols], dtype=np.int64)
    if total_counts_key is not None:
        if total_counts_key not in adata.obs.columns:
            raise InputError(f"obs column {total_counts_key!r} not found.")
        totals = adata.obs[total_counts_key].to_numpy(dtype=np.float64)
    else:
        totals = np.asarray(X.sum(axis=1)).ravel().astype(np.float64)
    Xg = sp.csr_matrix(X[:, cols])
    Xg.eliminate_zeros()
    pad_id = int(tok["<pad>"])
    special = "<cls>" in tok and "<eos>" in tok
    max_pos = int(cfg.max_position_embeddings)
    max_genes = max_pos - 2 if special else max_pos
    dev = resolve_device(device)
    model.to(dev)
    hidden = int(cfg.hidden_size)
    out = np.zeros((X.shape[0], hidden), dtype=np.float32)
    n_tokens = np.zeros(X.shape[0], dtype=np.int64)
    t1 = time.perf_counter()
    with seeded(seed, dev), torch.inference_mode(), progress_bar(X.shape[0], "Geneformer", progress) as bar:
        for start in range(0, X.shape[0], batch_size):
            stop = min(start + batch_size, X.shape[0])
            seqs = rank_value_tokens(Xg[start:stop], totals[start:stop], medians, tokens, max_genes)
            if special:
                seqs = [np.concatenate([[tok["<cls>"]], s, [tok["<eos>"]]]).astype(np.int64) for s in seqs]
            L = max(max(len(s) for s in seqs), 1)
            ids = np.full((len(seqs), L), pad_id, dtype=np.int64)
            gene_mask = np.zeros((len(seqs), L), dtype=bool)
            for j, s in enumerate(seqs):
                ids[j, : len(s)] = s
                lo, hi = (1, len(s) - 1) if special else (0, len(s))
                gene_mask[j, lo:hi] = True
            lens = np.array([len(s) for s in seqs])
            att = torch.from_numpy(np.arange(L)[None, :] < lens[:, None]).long()
            res = model(input_ids=torch.from_numpy(ids).to(dev), attention_mask=att.to(dev),
                        output_hidden_states=True)
            h = res.hidden_states[emb_layer].float()
            gm = torch.from_numpy(gene_mask).to(dev).unsqueeze(-1).float()
            pooled = (h * gm).sum(1) / gm.sum(1).clamp_min(1.0)
            out[start:stop] = pooled.cpu().numpy()
            n_tokens[start:stop] = gene_mask.sum(1)
            bar.update(stop - start)
    model.to("cpu")
    empty = int((n_tokens == 0).sum())
    if empty:
        warnings.warn(f"{empty} cells express no gene of the Geneformer dictionaries; their "
                      "embedding is zero.", UserWarning, stacklevel=2)
    info = {
        "model": "geneformer",
        "checkpoint": report["path"],
        "n_genes": len(genes),
        "n_genes_in_dictionary": int(found.sum()),
        "gene_coverage": coverage,
        "median_tokens_per_cell": float(np.median(n_tokens)),
        "cells_truncated": int((np.diff(Xg.indptr) > max_genes).sum()),
        "cells_without_dictionary_genes": empty,
        "ignored_tensors": len(report["ignored"]),
        "emb_layer": emb_layer,
        "special_tokens": bool(special),
        "seconds": time.perf_counter() - t0,
        "cells_per_second": X.shape[0] / max(time.perf_counter() - t1, 1e-9),
        "device": str(dev),
    }
    log.info("Geneformer embedding: %d cells, %s", X.shape[0], info)
    return (out, info) if return_info else out
