"""scGPT cell embeddings from a local checkpoint, in pure torch (no ``scgpt`` package).

The standard scGPT checkpoint folder holds

* ``vocab.json``: gene symbol -> token id, with the special tokens ``<pad>``, ``<cls>``,
  ``<eoc>`` (appended with the next ids when absent, as scGPT's ``GeneVocab`` does);
* ``args.json``: the training arguments; used here: ``embsize`` (or ``d_model``), ``nheads``,
  ``d_hid``, ``nlayers``, ``pad_value``, and optionally ``pad_token`` (``"<pad>"``), ``n_bins``
  (51), ``input_emb_style`` (``"continuous"``; ``"category"`` and ``"scaling"`` also work),
  ``pre_norm`` (false);
* ``best_model.pt``: the state dict of scGPT's ``TransformerModel``, read with
  ``torch.load(weights_only=True)`` (tensors only; a pickle that would run code is refused).

Only the cell-embedding path is built: ``encoder`` (gene embedding + LayerNorm), ``value_encoder``
and ``transformer_encoder.layers.N`` (self-attention, feed-forward, two LayerNorms). Those
tensors must all be present with exactly the expected names and shapes, or loading fails with an
:class:`~sctopic.errors.InputError` naming them. Flash-attention names
(``self_attn.Wqkv.*``, ``self_attn._impl.*``) are renamed to torch's ``in_proj_*`` as scGPT's
own ``load_pretrained`` does, and a ``module.`` prefix (DistributedDataParallel) is dropped.
Tensors of heads the embedding does not use (expression/MVC/classification decoders, batch
encoders, the generative cross-attention, the flag encoder...) are ignored and listed in the
report; any other unknown tensor makes loading fail, because it may change the forward pass.

The recipe follows scGPT's ``tasks.cell_emb.get_batch_cell_embeddings`` (``cell_embedding_mode
="cls"``): genes are matched to the vocabulary by symbol and genes outside it are dropped; for
each cell the expressed (non-zero) genes are taken, their values binned per cell into
``n_bins - 1`` quantile bins (ties spread at random, as scGPT's default ``_digitize``), a
``<cls>`` token with value ``pad_value`` is put first, cells with more than ``max_genes - 1``
expressed genes are randomly subsampled, the batch is padded, and the transformer output at the
``<cls>`` position, L2-normalised, is the embedding. Per-cell quantile binning does not change
under per-cell scaling or log1p, so raw counts and log-normalised values give the same bins.

Inference runs in float32 (scGPT's own code runs under CUDA autocast, i.e. in float16 on a GPU,
so its embeddings differ from these in the third decimal or so).

All randomness (gene subsampling, tie spreading) comes from one ``numpy`` generator seeded with
``seed``, and torch's generators are seeded (and restored afterwards) around the forward pass:
the same input and seed give the same embedding.

Speed, measured on this project's 2-core x86 CPU with one torch thread, fp32, random weights of
the real size (vocabulary 60,697, 12 layers, d = 512, 8 heads, feed-forward 512: scGPT
whole-human): 3.1 s per cell at 1,200 tokens and 0.9 s per cell at 600 tokens (batches of 8).
The cost per cell is about 80 GFLOP at 1,200 tokens (half of it grows with the square of the
length), about 26 GFLOP/s here. Extrapolated: 10,000 cells with about 1,000 expressed genes
each take roughly 6 hours on one thread; more cores shorten that (not measured here), a GPU far
more (no GPU was available to measure). The tiny test model (2 layers, d = 16) embeds about
200 cells per second, where tokenisation dominates. Compute the view once with
``sctopic embed`` and reuse the ``obsm`` key.
"""
from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import anndata as ad
import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

from sctopic.data.validate import check_nonnegative
from sctopic.errors import InputError
from sctopic.external.common import (
    coverage_check,
    expression_matrix,
    gene_names,
    progress_bar,
    read_json,
)
from sctopic.utils.random import seeded

log = logging.getLogger(__name__)

SPECIAL_TOKENS = ("<pad>", "<cls>", "<eoc>")
VOCAB_FILE, ARGS_FILE, MODEL_FILE = "vocab.json", "args.json", "best_model.pt"

#: Top-level modules of scGPT's TransformerModel that the cell embedding does not use.
IGNORED_MODULES = (
    "decoder", "mvc_decoder", "cls_decoder", "flag_encoder", "grad_reverse_discriminator",
    "batch_encoder", "dsbn", "bn", "sim", "creterion_cce", "pos_encoder",
)
#: Tensors inside the embedding modules that the perceptual forward pass does not use.
_IGNORED_INSIDE = re.compile(r"^transformer_encoder\.layers\.\d+\.self_attn\.cross_attn\.")
#: Flash-attention parameter names -> torch.nn.MultiheadAttention names (as scGPT's load_pretrained).
_RENAMES = (
    (re.compile(r"self_attn\._impl\.Wqkv\."), "self_attn.in_proj_"),
    (re.compile(r"self_attn\.Wqkv\."), "self_attn.in_proj_"),
    (re.compile(r"self_attn\._impl\.out_proj\."), "self_attn.out_proj."),
)


# ------------------------------------------------------------------------------ configuration
@dataclass(frozen=True)
class ScGPTConfig:
    """Architecture of the embedding path, read from ``args.json``.

    Attributes
    ----------
    vocab_size
        Rows of the gene embedding (vocabulary size including special tokens).
    d_model, nhead, d_hid, nlayers
        Width, attention heads, feed-forward width and depth of the transformer.
    pad_value
        Expression value of the ``<cls>`` token and of padding (``-2`` in the released models).
    pad_token
        Padding token (``"<pad>"``).
    n_bins
        Number of value bins (values run 1..n_bins-1 for expressed genes).
    input_emb_style
        ``"continuous"`` (released models), ``"category"`` or ``"scaling"``.
    n_input_bins
        Rows of the category value embedding (``"category"`` only; default ``n_bins + 2``).
    pre_norm
        scGPT's pre-norm scheme instead of the default post-norm.
    """

    vocab_size: int
    d_model: int
    nhead: int
    d_hid: int
    nlayers: int
    pad_value: float
    pad_token: str = "<pad>"
    n_bins: int = 51
    input_emb_style: str = "continuous"
    n_input_bins: int | None = None
    pre_norm: bool = False

    def __post_init__(self) -> None:
        if self.input_emb_style == "category" and self.n_input_bins is None:
            object.__setattr__(self, "n_input_bins", self.n_bins + 2)  # scGPT's convention

    @classmethod
    def from_args(cls, args: dict, vocab_size: int, where: str = ARGS_FILE) -> "ScGPTConfig":
        """Build from the parsed ``args.json`` of a checkpoint."""

        def need(*names):
            for n in names:
                if n in args:
                    return args[n]
            raise InputError(f"{where} lacks {' or '.join(map(repr, names))}; is this an scGPT checkpoint?")

        style = str(args.get("input_emb_style", "continuous"))
        if style not in ("continuous", "category", "scaling"):
            raise InputError(f"{where}: unknown input_emb_style {style!r}.")
        try:
            n_bins = int(args.get("n_bins", 51))
            n_input = args.get("n_input_bins", n_bins + 2 if style == "category" else None)
            cfg = cls(
                vocab_size=int(vocab_size),
                d_model=int(need("embsize", "d_model")),
                nhead=int(need("nheads", "nhead")),
                d_hid=int(need("d_hid")),
                nlayers=int(need("nlayers")),
                pad_value=float(need("pad_value")),
                pad_token=str(args.get("pad_token", "<pad>")),
                n_bins=n_bins,
                input_emb_style=style,
                n_input_bins=None if n_input is None else int(n_input),
                pre_norm=bool(args.get("pre_norm", False)),
            )
        except (TypeError, ValueError) as exc:
            raise InputError(f"{where}: malformed value ({exc}).") from exc
        if cfg.d_model % cfg.nhead:
            raise InputError(f"{where}: embsize {cfg.d_model} is not divisible by nheads {cfg.nhead}.")
        if min(cfg.d_model, cfg.nhead, cfg.d_hid, cfg.nlayers) < 1 or cfg.n_bins < 3:
            raise InputError(f"{where}: sizes must be positive and n_bins >= 3.")
        return cfg

    def to_args(self) -> dict:
        """``args.json`` content in scGPT's key names."""
        out = {"embsize": self.d_model, "nheads": self.nhead, "d_hid": self.d_hid,
               "nlayers": self.nlayers, "pad_value": self.pad_value, "pad_token": self.pad_token,
               "n_bins": self.n_bins, "input_emb_style": self.input_emb_style,
               "pre_norm": self.pre_norm}
        if self.n_input_bins is not None:
            out["n_input_bins"] = self.n_input_bins
        return out


# ------------------------------------------------------------------------------ modules
class GeneEncoder(nn.Module):
    """Token embedding followed by LayerNorm (``encoder.embedding``, ``encoder.enc_norm``)."""

    def __init__(self, n_tokens: int, d_model: int, padding_idx: int | None = None):
        super().__init__()
        self.embedding = nn.Embedding(n_tokens, d_model, padding_idx=padding_idx)
        self.enc_norm = nn.LayerNorm(d_model)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.enc_norm(self.embedding(tokens))


class ContinuousValueEncoder(nn.Module):
    """``value -> LayerNorm(Linear(ReLU(Linear(min(value, 512)))))`` (scGPT's continuous style)."""

    def __init__(self, d_model: int, max_value: float = 512.0):
        super().__init__()
        self.linear1 = nn.Linear(1, d_model)
        self.linear2 = nn.Linear(d_model, d_model)
        self.norm = nn.LayerNorm(d_model)
        self.max_value = max_value

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        x = torch.clamp(values.unsqueeze(-1), max=self.max_value)
        return self.norm(self.linear2(F.relu(self.linear1(x))))


class CategoryValueEncoder(nn.Module):
    """Embedding of integer-binned values followed by LayerNorm (scGPT's category style)."""

    def __init__(self, n_values: int, d_model: int):
        super().__init__()
        self.embedding = nn.Embedding(n_values, d_model)
        self.enc_norm = nn.LayerNorm(d_model)

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        return self.enc_norm(self.embedding(values.long()))


class EncoderLayer(nn.Module):
    """One transformer block with the parameter names of ``torch.nn.TransformerEncoderLayer``.

    Post-norm (default): ``x = norm1(x + attn(x)); x = norm2(x + ff(x))``, ReLU feed-forward,
    exactly ``nn.TransformerEncoderLayer(batch_first=True)``. Pre-norm follows scGPT's own
    scheme: ``x = norm1(x); x = x + attn(x); x = norm2(x); x = x + ff(x)``.
    """

    def __init__(self, d_model: int, nhead: int, d_hid: int, pre_norm: bool = False):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, batch_first=True)
        self.linear1 = nn.Linear(d_model, d_hid)
        self.linear2 = nn.Linear(d_hid, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.pre_norm = pre_norm

    def _attn(self, x: torch.Tensor, pad_mask: torch.Tensor | None) -> torch.Tensor:
        return self.self_attn(x, x, x, key_padding_mask=pad_mask, need_weights=False)[0]

    def forward(self, x: torch.Tensor, pad_mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.pre_norm:
            x = self.norm1(x)
            x = x + self._attn(x, pad_mask)
            x = self.norm2(x)
            return x + self.linear2(F.relu(self.linear1(x)))
        x = self.norm1(x + self._attn(x, pad_mask))
        return self.norm2(x + self.linear2(F.relu(self.linear1(x))))


class _Stack(nn.Module):
    def __init__(self, layers: list[nn.Module]):
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor, pad_mask: torch.Tensor | None) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, pad_mask)
        return x


class ScGPTEncoder(nn.Module):
    """The part of scGPT's ``TransformerModel`` that computes cell embeddings.

    Its ``state_dict`` keys are exactly the checkpoint's keys for that part
    (``encoder.*``, ``value_encoder.*``, ``transformer_encoder.layers.N.*``).
    """

    def __init__(self, config: ScGPTConfig, pad_id: int | None = None):
        super().__init__()
        self.config = config
        c = config
        self.encoder = GeneEncoder(c.vocab_size, c.d_model, padding_idx=pad_id)
        if c.input_emb_style == "continuous":
            self.value_encoder = ContinuousValueEncoder(c.d_model)
        elif c.input_emb_style == "category":
            self.value_encoder = CategoryValueEncoder(int(c.n_input_bins), c.d_model)
        else:
            self.value_encoder = nn.Identity()
        self.transformer_encoder = _Stack(
            [EncoderLayer(c.d_model, c.nhead, c.d_hid, c.pre_norm) for _ in range(c.nlayers)]
        )

    def forward(self, tokens: torch.Tensor, values: torch.Tensor, pad_mask: torch.Tensor) -> torch.Tensor:
        """Transformer output ``(B, L, d)`` for token ids and values ``(B, L)``; ``pad_mask`` True at padding."""
        g = self.encoder(tokens)
        if self.config.input_emb_style == "scaling":
            x = g * values.unsqueeze(-1)
        else:
            x = g + self.value_encoder(values)
        return self.transformer_encoder(x, pad_mask)

    def cell_embedding(self, tokens: torch.Tensor, values: torch.Tensor, pad_mask: torch.Tensor) -> torch.Tensor:
        """Output at the ``<cls>`` position (first token), L2-normalised, ``(B, d)``."""
        return F.normalize(self.forward(tokens, values, pad_mask)[:, 0, :], p=2, dim=1)


# ------------------------------------------------------------------------------ checkpoint
@dataclass
class ScGPTCheckpoint:
    """A loaded scGPT model with its vocabulary.

    Attributes
    ----------
    model
        The :class:`ScGPTEncoder` (in eval mode, float32, on CPU).
    vocab
        Gene symbol (or special token) -> token id.
    config
        The :class:`ScGPTConfig`.
    report
        ``loaded`` (tensors used), ``ignored`` (tensors of unused heads), ``renamed``
        (flash-attention names translated), ``path``.
    """

    model: ScGPTEncoder
    vocab: dict[str, int]
    config: ScGPTConfig
    report: dict = field(default_factory=dict)

    @property
    def cls_id(self) -> int:
        return self.vocab["<cls>"]

    @property
    def pad_id(self) -> int:
        return self.vocab[self.config.pad_token]

    def save(self, checkpoint_dir: str | Path) -> Path:
        """Write the standard folder (``vocab.json``, ``args.json``, ``best_model.pt``)."""
        import json

        d = Path(checkpoint_dir)
        d.mkdir(parents=True, exist_ok=True)
        (d / VOCAB_FILE).write_text(json.dumps(self.vocab))
        (d / ARGS_FILE).write_text(json.dumps(self.config.to_args(), indent=1))
        torch.save(self.model.state_dict(), d / MODEL_FILE)
        return d


def _read_vocab(path: Path, pad_token: str) -> dict[str, int]:
    raw = read_json(path, "scGPT vocabulary")
    if not isinstance(raw, dict) or not raw:
        raise InputError(f"{path} must hold a JSON object mapping gene symbols to token ids.")
    try:
        vocab = {str(k): int(v) for k, v in raw.items()}
    except (TypeError, ValueError):
        raise InputError(f"{path}: token ids must be integers.") from None
    ids = np.fromiter(vocab.values(), dtype=np.int64)
    if len(np.unique(ids)) != len(ids) or ids.min() < 0:
        raise InputError(f"{path}: token ids must be distinct non-negative integers.")
    for tok in dict.fromkeys((pad_token,) + SPECIAL_TOKENS):  # scGPT appends missing specials
        if tok not in vocab:
            vocab[tok] = int(max(vocab.values())) + 1
    return vocab


def _clean_state(state: dict) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Drop a ``module.`` prefix, translate flash-attention names; return (state, renamed keys)."""
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    out, renamed = {}, []
    for k, v in state.items():
        new = k
        for pat, rep in _RENAMES:
            new = pat.sub(rep, new)
        if new != k:
            renamed.append(k)
        if new in out:
            raise InputError(f"checkpoint tensors {k!r} and another both map to {new!r}.")
        out[new] = v
    return out, renamed


def _short(keys: list[str], n: int = 6) -> str:
    keys = sorted(keys)
    more = f" and {len(keys) - n} more" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def match_state_dict(model: nn.Module, state: dict, strict: bool = True) -> dict:
    """Load ``state`` into ``model``, checking every tensor of the embedding path.

    Parameters
    ----------
    model
        An :class:`ScGPTEncoder`.
    state
        A checkpoint state dict (scGPT names; flash-attention names and a ``module.`` prefix are
        accepted).
    strict
        Refuse tensors that are neither used nor known heads of scGPT (default). With
        ``strict=False`` they are ignored with a warning.

    Returns
    -------
    dict
        ``loaded``, ``ignored``, ``unknown`` and ``renamed`` key lists.

    Raises
    ------
    InputError
        Missing tensors, tensors of the wrong shape, or (``strict``) unknown tensors.
    """
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError("the checkpoint is not a state dict of tensors.")
    state, renamed = _clean_state(state)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    wrong = [
        f"{k} {tuple(state[k].shape)} (expected {tuple(v.shape)})"
        for k, v in expected.items() if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    extra = [k for k in state if k not in expected]
    ignored = [k for k in extra if k.split(".", 1)[0] in IGNORED_MODULES or _IGNORED_INSIDE.match(k)]
    unknown = [k for k in extra if k not in set(ignored)]
    problems = []
    if missing:
        problems.append(f"{len(missing)} tensors of the embedding path are missing: {_short(missing)}")
    if wrong:
        problems.append(f"{len(wrong)} tensors have the wrong shape: {_short(wrong, 4)}")
    inside = [k for k in unknown if k.split(".", 1)[0] in ("encoder", "value_encoder", "transformer_encoder")]
    if inside or (unknown and strict):
        problems.append(
            f"{len(unknown)} tensors are not part of the scGPT architecture described by "
            f"args.json: {_short(unknown)}"
        )
    if problems:
        raise InputError(
            "the scGPT checkpoint does not match args.json/vocab.json: " + "; ".join(problems)
            + ". Refusing to build a partly random model; check that the three files come from "
            "the same checkpoint."
        )
    if unknown:
        import warnings

        warnings.warn(f"ignoring {len(unknown)} unknown checkpoint tensors: {_short(unknown)}",
                      UserWarning, stacklevel=3)
    sd = {k: state[k].detach().to(dtype=expected[k].dtype, device="cpu") for k in expected}
    model.load_state_dict(sd, strict=True)
    return {"loaded": sorted(expected), "ignored": sorted(ignored), "unknown": sorted(unknown),
            "renamed": sorted(renamed)}


def load_scgpt(checkpoint_dir: str | Path, strict: bool = True) -> ScGPTCheckpoint:
    """Load an scGPT checkpoint folder for cell embeddings.

    Parameters
    ----------
    checkpoint_dir
        Folder with ``vocab.json``, ``args.json`` and ``best_model.pt``.
    strict
        See :func:`match_state_dict`.

    Returns
    -------
    ScGPTCheckpoint

    Raises
    ------
    InputError
        A missing file, a file that is not a tensors-only state dict, or tensors that do not
        match the architecture in ``args.json`` and the vocabulary size.
    """
    d = Path(checkpoint_dir).expanduser()
    if not d.is_dir():
        raise InputError(f"scGPT checkpoint folder not found: {d}")
    for name in (VOCAB_FILE, ARGS_FILE, MODEL_FILE):
        if not (d / name).is_file():
            raise InputError(f"{d} is not an scGPT checkpoint folder: {name} is missing "
                             f"(expected {VOCAB_FILE}, {ARGS_FILE}, {MODEL_FILE}).")
    args = read_json(d / ARGS_FILE, "scGPT args")
    if not isinstance(args, dict):
        raise InputError(f"{d / ARGS_FILE} must hold a JSON object.")
    vocab = _read_vocab(d / VOCAB_FILE, str(args.get("pad_token", "<pad>")))
    config = ScGPTConfig.from_args(args, max(vocab.values()) + 1, str(d / ARGS_FILE))
    try:
        state = torch.load(d / MODEL_FILE, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError for code-carrying pickles, RuntimeError for junk
        raise InputError(
            f"could not load {d / MODEL_FILE} as a tensors-only state dict ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}). Files that need arbitrary "
            "unpickling are refused because they could run code."
        ) from exc
    if isinstance(state, dict) and "model_state_dict" in state and isinstance(state["model_state_dict"], dict):
        state = state["model_state_dict"]
    with seeded(0):  # the throw-away initial weights do not draw from the caller's CPU RNG
        model = ScGPTEncoder(config, pad_id=vocab[config.pad_token])
    report = match_state_dict(model, state, strict=strict)
    report["path"] = str(d)
    if report["ignored"]:
        log.info("scGPT: ignoring %d tensors of heads not used for cell embeddings (%s)",
                 len(report["ignored"]), _short(report["ignored"], 3))
    model.eval()
    return ScGPTCheckpoint(model=model, vocab=vocab, config=config, report=report)


# ------------------------------------------------------------------------------ tokenisation
def bin_values(values: np.ndarray, n_bins: int, rng: np.random.Generator | None) -> np.ndarray:
    """Per-cell quantile binning of positive values into 1..n_bins-1 (scGPT's ``binning``).

    Bin edges are the ``n_bins - 1`` quantiles of the cell's values; a value equal to one or
    more edges gets a bin drawn uniformly between its left and right positions (scGPT's
    ``_digitize(side="both")``) when ``rng`` is given, else the left position.
    """
    values = np.asarray(values, dtype=np.float64)
    edges = np.quantile(values, np.linspace(0, 1, n_bins - 1))
    left = np.digitize(values, edges)
    if rng is None:
        return left.astype(np.float32)
    right = np.digitize(values, edges, right=True)
    digits = np.ceil(rng.random(len(values)) * (right - left) + left)
    return digits.astype(np.float32)


def tokenize(
    X: sp.csr_matrix,
    token_ids: np.ndarray,
    cls_id: int,
    pad_value: float,
    n_bins: int,
    max_len: int,
    rng: np.random.Generator,
    tie_break: Literal["random", "left"] = "random",
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Token ids and binned values of each cell, ``<cls>`` first (before padding).

    Parameters
    ----------
    X
        Cells x genes (only genes in the vocabulary), non-negative.
    token_ids
        Vocabulary id of each column of ``X``.
    max_len
        Maximum sequence length counting ``<cls>``; cells with more expressed genes are
        subsampled at random (after binning, as scGPT does).
    """
    out = []
    for i in range(X.shape[0]):
        lo, hi = X.indptr[i], X.indptr[i + 1]
        cols, vals = X.indices[lo:hi], X.data[lo:hi]
        keep = vals > 0
        cols, vals = cols[keep], vals[keep]
        if len(vals):
            vals = bin_values(vals, n_bins, rng if tie_break == "random" else None)
        if len(cols) + 1 > max_len:
            pick = rng.permutation(len(cols))[: max_len - 1]
            cols, vals = cols[pick], vals[pick]
        toks = np.concatenate([[cls_id], token_ids[cols]]).astype(np.int64)
        v = np.concatenate([[pad_value], vals]).astype(np.float32)
        out.append((toks, v))
    return out


def _pad_batch(items: list[tuple[np.ndarray, np.ndarray]], pad_id: int, pad_value: float):
    L = max(len(t) for t, _ in items)
    toks = np.full((len(items), L), pad_id, dtype=np.int64)
    vals = np.full((len(items), L), pad_value, dtype=np.float32)
    for j, (t, v) in enumerate(items):
        toks[j, : len(t)] = t
        vals[j, : len(v)] = v
    t = torch.from_numpy(toks)
    return t, torch.from_numpy(vals), t.eq(pad_id)


# ------------------------------------------------------------------------------ embedding
def scgpt_embed(
    adata: ad.AnnData,
    checkpoint_dir: str | Path | ScGPTCheckpoint,
    *,
    layer: str | None = None,
    gene_key: str | None = None,
    batch_size: int = 64,
    max_genes: int = 1200,
    device: str = "cpu",
    seed: int = 0,
    progress: bool = True,
    min_coverage: float = 0.1,
    tie_break: Literal["random", "left"] = "random",
    return_info: bool = False,
) -> np.ndarray | tuple[np.ndarray, dict]:
    """scGPT cell embeddings (``<cls>`` output, L2-normalised) of every cell of ``adata``.

    Parameters
    ----------
    adata
        Cells x genes with raw counts or log-normalised expression (finite, non-negative).
    checkpoint_dir
        scGPT checkpoint folder (``vocab.json``, ``args.json``, ``best_model.pt``), or a
        :class:`ScGPTCheckpoint` already loaded.
    layer
        Layer holding the expression (default ``adata.X``).
    gene_key
        ``adata.var`` column with gene symbols (default ``var_names``).
    batch_size
        Cells per forward pass.
    max_genes
        Maximum input length counting the ``<cls>`` token (scGPT's ``max_length``, 1200):
        cells with more expressed genes are randomly subsampled to ``max_genes - 1`` genes.
    device
        ``"cpu"``, ``"cuda[:N]"`` or ``"auto"``.
    seed
        Seed of the gene subsampling and bin tie spreading (and torch, restored afterwards).
    progress
        Show a tqdm progress bar.
    min_coverage
        Raise when fewer than this fraction of the data's genes are in the vocabulary (e.g.
        Ensembl IDs against symbols); a warning is given below 50 %.
    tie_break
        ``"random"`` (scGPT's default) or ``"left"`` (deterministic lower bin) for values equal
        to bin edges.
    return_info
        Also return a dict with gene coverage, checkpoint report, seconds and cells per second.

    Returns
    -------
    numpy.ndarray
        ``(n_cells, embsize)`` float32, rows of unit norm (plus the info dict if asked).

    Raises
    ------
    InputError
        Bad checkpoint (see :func:`load_scgpt`), negative/NaN input, or too low coverage.
    """
    from sctopic.utils.device import resolve_device

    t0 = time.perf_counter()
    if batch_size < 1 or max_genes < 2:
        raise InputError("batch_size must be >= 1 and max_genes >= 2.")
    if tie_break not in ("random", "left"):
        raise InputError(f"tie_break must be 'random' or 'left', got {tie_break!r}.")
    X, where = expression_matrix(adata, layer)
    check_nonnegative(X, where)
    ckpt = checkpoint_dir if isinstance(checkpoint_dir, ScGPTCheckpoint) else load_scgpt(checkpoint_dir)
    genes = gene_names(adata, gene_key)
    specials = set(SPECIAL_TOKENS) | {ckpt.config.pad_token}
    ids = np.array([ckpt.vocab.get(g, -1) if g not in specials else -1 for g in genes], dtype=np.int64)
    found = ids >= 0
    coverage = coverage_check(genes, found, "the scGPT vocabulary", min_coverage,
                              "gene symbols (e.g. CD3E)", hint=" (pass gene_key= for a var column of symbols)")
    Xv = sp.csr_matrix(X[:, np.flatnonzero(found)])
    Xv.eliminate_zeros()
    n_expr = np.diff(Xv.indptr)
    empty = int((n_expr == 0).sum())
    if empty:
        import warnings

        warnings.warn(f"{empty} cells express no gene of the scGPT vocabulary; their embedding "
                      "comes from the <cls> token alone.", UserWarning, stacklevel=2)
    tot = np.asarray(X.sum(axis=1)).ravel()
    frac_counts = np.asarray(Xv.sum(axis=1)).ravel() / np.where(tot > 0, tot, 1)

    dev = resolve_device(device)
    model = ckpt.model.to(dev).eval()
    rng = np.random.default_rng(seed)
    cfg = ckpt.config
    out = np.zeros((X.shape[0], cfg.d_model), dtype=np.float32)
    t1 = time.perf_counter()
    with seeded(seed, dev), torch.inference_mode(), progress_bar(X.shape[0], "scGPT", progress) as bar:
        for start in range(0, X.shape[0], batch_size):
            stop = min(start + batch_size, X.shape[0])
            items = tokenize(Xv[start:stop], ids[found], ckpt.cls_id, cfg.pad_value, cfg.n_bins,
                             max_genes, rng, tie_break)
            toks, vals, mask = _pad_batch(items, ckpt.pad_id, cfg.pad_value)
            emb = model.cell_embedding(toks.to(dev), vals.to(dev), mask.to(dev))
            out[start:stop] = emb.float().cpu().numpy()
            bar.update(stop - start)
    model.to("cpu")
    seconds = time.perf_counter() - t0
    info = {
        "model": "scgpt",
        "checkpoint": ckpt.report.get("path"),
        "n_genes": len(genes),
        "n_genes_in_vocab": int(found.sum()),
        "gene_coverage": coverage,
        "median_count_fraction_in_vocab": float(np.median(frac_counts)),
        "median_expressed_genes_in_vocab": float(np.median(n_expr)),
        "cells_truncated": int((n_expr + 1 > max_genes).sum()),
        "cells_without_vocab_genes": empty,
        "ignored_tensors": len(ckpt.report.get("ignored", [])),
        "loaded_tensors": len(ckpt.report.get("loaded", [])),
        "seconds": seconds,
        "cells_per_second": X.shape[0] / max(time.perf_counter() - t1, 1e-9),
        "seed": seed,
        "max_genes": max_genes,
        "device": str(dev),
    }
    log.info("scGPT embedding: %d cells, %s", X.shape[0], info)
    return (out, info) if return_info else out
