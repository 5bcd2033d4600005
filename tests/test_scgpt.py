"""scGPT adapter: a tiny random checkpoint in the standard folder format, and its guards."""
from __future__ import annotations

import json
import os
import pickle
import shutil

import numpy as np
import pytest
import torch

from sctopic.errors import InputError
from sctopic.external.scgpt import (
    EncoderLayer,
    ScGPTCheckpoint,
    ScGPTConfig,
    ScGPTEncoder,
    bin_values,
    load_scgpt,
    scgpt_embed,
)

D, NHEAD, DHID, NLAYERS = 16, 2, 32, 2


def _tiny_checkpoint(genes: list[str], seed: int = 0) -> ScGPTCheckpoint:
    vocab = {g: i for i, g in enumerate(genes)}
    for t in ("<pad>", "<cls>", "<eoc>"):
        vocab[t] = len(vocab)
    cfg = ScGPTConfig(vocab_size=len(vocab), d_model=D, nhead=NHEAD, d_hid=DHID, nlayers=NLAYERS,
                      pad_value=-2.0)
    gen = torch.Generator().manual_seed(seed)
    model = ScGPTEncoder(cfg, pad_id=vocab["<pad>"])
    with torch.no_grad():
        for p in model.parameters():  # every tensor random, so a wrongly loaded one shows
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return ScGPTCheckpoint(model.eval(), vocab, cfg, {"path": "memory"})


def _write_real_format(ck: ScGPTCheckpoint, d) -> dict:
    """Write the folder as scGPT does: flash-attention names, extra heads, scGPT's args keys."""
    ck.save(d)
    state = ck.model.state_dict()
    real = {}
    for k, v in state.items():  # layer 0 as flash-attention checkpoints name it
        real[k.replace("layers.0.self_attn.in_proj_", "layers.0.self_attn.Wqkv.")] = v
    real["decoder.fc.0.weight"] = torch.zeros(D, D)       # expression decoder (unused)
    real["mvc_decoder.gene2query.weight"] = torch.zeros(D, D)
    real["flag_encoder.weight"] = torch.zeros(2, D)
    real["transformer_encoder.layers.0.self_attn.cross_attn.in_proj_weight"] = torch.zeros(3 * D, D)
    torch.save(real, d / "best_model.pt")
    args = {"embsize": D, "nheads": NHEAD, "d_hid": DHID, "nlayers": NLAYERS, "n_layers_cls": 3,
            "dropout": 0.2, "pad_token": "<pad>", "pad_value": -2, "mask_value": -1, "n_bins": 51,
            "input_emb_style": "continuous", "max_seq_len": 1200, "fast_transformer": True}
    (d / "args.json").write_text(json.dumps(args))
    return real


@pytest.fixture(scope="module")
def adata(pbmc_small):
    a = pbmc_small[:60].copy()
    return a[:, np.asarray(a.X.sum(0)).ravel() > 0].copy()


@pytest.fixture(scope="module")
def ckpt(adata):
    genes = list(adata.var_names)
    rng = np.random.default_rng(1)
    in_vocab = sorted(rng.choice(len(genes), int(0.8 * len(genes)), replace=False))
    return _tiny_checkpoint([genes[i] for i in in_vocab] + ["NOT_IN_DATA1", "NOT_IN_DATA2"])


@pytest.fixture(scope="module")
def ckpt_dir(ckpt, tmp_path_factory):
    d = tmp_path_factory.mktemp("scgpt")
    _write_real_format(ckpt, d)
    return d


def _broken(ckpt_dir, tmp_path, edit):
    d = tmp_path / "broken"
    shutil.copytree(ckpt_dir, d)
    state = torch.load(d / "best_model.pt", weights_only=True)
    edit(state)
    torch.save(state, d / "best_model.pt")
    return d


def test_embedding_shape_unit_norm_and_report(adata, ckpt_dir):
    emb, info = scgpt_embed(adata, ckpt_dir, progress=False, return_info=True)
    assert emb.shape == (adata.n_obs, D) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert info["n_genes_in_vocab"] == int(0.8 * adata.n_vars)
    assert 0.79 < info["gene_coverage"] < 0.81
    # the unused heads were seen and reported, not silently dropped
    assert info["ignored_tensors"] == 4
    assert info["loaded_tensors"] == len(load_scgpt(ckpt_dir).model.state_dict())


def test_loaded_checkpoint_equals_in_memory_model(adata, ckpt, ckpt_dir):
    from_disk = scgpt_embed(adata, ckpt_dir, progress=False, seed=3)
    in_memory = scgpt_embed(adata, ckpt, progress=False, seed=3)
    np.testing.assert_array_equal(from_disk, in_memory)


def test_deterministic_and_seed_matters_when_subsampling(adata, ckpt_dir):
    a = scgpt_embed(adata, ckpt_dir, progress=False, seed=0, max_genes=30, batch_size=16)
    b = scgpt_embed(adata, ckpt_dir, progress=False, seed=0, max_genes=30, batch_size=7)
    c = scgpt_embed(adata, ckpt_dir, progress=False, seed=1, max_genes=30)
    np.testing.assert_allclose(a, b, atol=1e-5)  # batching does not change the result
    assert not np.allclose(a, c, atol=1e-3)     # the seed drives the gene subsampling
    state = torch.random.get_rng_state()
    scgpt_embed(adata, ckpt_dir, progress=False, seed=5)
    assert torch.equal(state, torch.random.get_rng_state())  # caller's torch state untouched


def test_matches_an_independent_forward_pass(adata, ckpt):
    """Recompute one cell with torch's own TransformerEncoder (scGPT's non-flash path)."""
    emb = scgpt_embed(adata, ckpt, progress=False, tie_break="left")
    m, vocab = ckpt.model, ckpt.vocab
    layer = torch.nn.TransformerEncoderLayer(D, NHEAD, DHID, dropout=0.0, batch_first=True)
    ref = torch.nn.TransformerEncoder(layer, NLAYERS, enable_nested_tensor=False).eval()
    ref.load_state_dict({k[len("transformer_encoder."):]: v for k, v in m.state_dict().items()
                         if k.startswith("transformer_encoder.")})
    X = adata.X.toarray() if hasattr(adata.X, "toarray") else np.asarray(adata.X)
    for i in (0, 17):
        cols = [j for j, g in enumerate(adata.var_names) if g in vocab and X[i, j] > 0]
        vals = X[i, cols].astype(np.float64)
        edges = np.quantile(vals, np.linspace(0, 1, 50))
        bins = np.digitize(vals, edges)
        toks = torch.tensor([[vocab["<cls>"]] + [vocab[adata.var_names[j]] for j in cols]])
        v = torch.tensor([[-2.0] + bins.tolist()], dtype=torch.float32).unsqueeze(-1)
        with torch.no_grad():
            sd = m.state_dict()
            g = torch.nn.functional.layer_norm(sd["encoder.embedding.weight"][toks], (D,),
                                               sd["encoder.enc_norm.weight"], sd["encoder.enc_norm.bias"])
            h = torch.relu(v @ sd["value_encoder.linear1.weight"].T + sd["value_encoder.linear1.bias"])
            h = h @ sd["value_encoder.linear2.weight"].T + sd["value_encoder.linear2.bias"]
            h = torch.nn.functional.layer_norm(h, (D,), sd["value_encoder.norm.weight"], sd["value_encoder.norm.bias"])
            out = ref(g + h)[0, 0]
        np.testing.assert_allclose(emb[i], (out / out.norm()).numpy(), atol=1e-5)


def test_encoder_layer_is_torch_transformer_layer():
    torch.manual_seed(0)
    ref = torch.nn.TransformerEncoderLayer(D, NHEAD, DHID, dropout=0.0, batch_first=True).eval()
    mine = EncoderLayer(D, NHEAD, DHID)
    mine.load_state_dict(ref.state_dict())  # same names: strict load succeeds
    x = torch.randn(3, 9, D)
    mask = torch.zeros(3, 9, dtype=torch.bool)
    mask[0, 6:] = True
    with torch.no_grad():
        np.testing.assert_allclose(mine(x, mask)[~mask].numpy(),
                                   ref(x, src_key_padding_mask=mask)[~mask].numpy(), atol=1e-5)


def test_binning_matches_scgpt_rules():
    v = np.array([1, 1, 1, 2, 5, 9, 30], dtype=np.float32)
    left = bin_values(v, 51, None)
    assert left.min() >= 1 and left.max() == 50 and np.all(np.diff(left) >= 0)
    rnd = bin_values(v, 51, np.random.default_rng(0))
    assert rnd.min() >= 1 and rnd.max() <= 50
    assert len(set(rnd[:3].tolist())) > 1  # ties on bin edges are spread
    np.testing.assert_array_equal(rnd[3:], left[3:])  # values strictly inside a bin are not


def test_missing_tensor_fails_loudly(ckpt_dir, tmp_path):
    d = _broken(ckpt_dir, tmp_path, lambda s: s.pop("transformer_encoder.layers.1.linear2.weight"))
    with pytest.raises(InputError, match=r"missing.*layers\.1\.linear2\.weight"):
        load_scgpt(d)


def test_wrong_shape_fails_loudly(ckpt_dir, tmp_path):
    def edit(s):
        s["encoder.embedding.weight"] = torch.zeros(s["encoder.embedding.weight"].shape[0] + 3, D)
    with pytest.raises(InputError, match=r"wrong shape.*encoder\.embedding\.weight"):
        load_scgpt(_broken(ckpt_dir, tmp_path, edit))


def test_extra_layer_or_unknown_tensor_fails_loudly(ckpt_dir, tmp_path):
    def extra_layer(s):  # args.json says 2 layers; the checkpoint has a third
        s["transformer_encoder.layers.2.linear1.weight"] = torch.zeros(DHID, D)
    with pytest.raises(InputError, match=r"layers\.2\.linear1\.weight"):
        load_scgpt(_broken(ckpt_dir, tmp_path, extra_layer))

    def unknown_module(s):
        s["pos_embedding.weight"] = torch.zeros(4, D)
    d = _broken(ckpt_dir, tmp_path / "b", unknown_module)
    with pytest.raises(InputError, match="pos_embedding.weight"):
        load_scgpt(d)
    with pytest.warns(UserWarning, match="unknown"):
        assert load_scgpt(d, strict=False).report["unknown"] == ["pos_embedding.weight"]


def test_args_disagreeing_with_weights_fail(ckpt_dir, tmp_path):
    d = tmp_path / "args"
    shutil.copytree(ckpt_dir, d)
    args = json.loads((d / "args.json").read_text())
    args["d_hid"] = 64
    (d / "args.json").write_text(json.dumps(args))
    with pytest.raises(InputError, match="linear1.weight"):
        load_scgpt(d)
    del args["nlayers"]
    (d / "args.json").write_text(json.dumps(args))
    with pytest.raises(InputError, match="nlayers"):
        load_scgpt(d)


def test_code_carrying_checkpoint_is_refused(ckpt_dir, tmp_path):
    d = tmp_path / "evil"
    shutil.copytree(ckpt_dir, d)
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    with open(d / "best_model.pt", "wb") as fh:
        pickle.dump({"x": Evil()}, fh, protocol=2)
    with pytest.raises(InputError, match="refused|tensors-only"):
        load_scgpt(d)
    assert not marker.exists()


def test_missing_file_is_named(ckpt_dir, tmp_path):
    d = tmp_path / "nofile"
    shutil.copytree(ckpt_dir, d)
    (d / "vocab.json").unlink()
    with pytest.raises(InputError, match="vocab.json"):
        load_scgpt(d)


def test_bad_input_values_are_rejected(adata, ckpt):
    neg = adata.copy()
    neg.X = neg.X.toarray().astype(np.float32) - 1.0
    with pytest.raises(InputError, match="negative"):
        scgpt_embed(neg, ckpt, progress=False)
    nan = adata.copy()
    x = nan.X.toarray().astype(np.float32)
    x[0, 0] = np.nan
    nan.X = x
    with pytest.raises(InputError, match="NaN"):
        scgpt_embed(nan, ckpt, progress=False)


def test_log_normalised_input_gives_same_bins(adata, ckpt):
    import scanpy as sc

    logn = adata.copy()
    sc.pp.normalize_total(logn, target_sum=1e4)
    sc.pp.log1p(logn)
    a = scgpt_embed(adata, ckpt, progress=False, tie_break="left")
    b = scgpt_embed(logn, ckpt, progress=False, tie_break="left")
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_low_vocabulary_coverage(adata, ckpt):
    ens = adata.copy()
    ens.var_names = [f"ENSG{i:011d}" for i in range(ens.n_vars)]
    with pytest.raises(InputError, match="ensembl"):
        scgpt_embed(ens, ckpt, progress=False)
    half = adata.copy()  # half the genes renamed away: a warning, still an embedding
    names = list(half.var_names)
    for j in range(0, len(names), 2):
        names[j] = f"x{j}"
    half.var_names = names
    with pytest.warns(UserWarning, match="found in the scGPT vocabulary"):
        assert scgpt_embed(half, ckpt, progress=False).shape == (adata.n_obs, D)


def test_category_value_style_and_pre_norm_roundtrip(adata, tmp_path):
    genes = list(adata.var_names)
    vocab = {g: i for i, g in enumerate(genes + ["<pad>", "<cls>", "<eoc>"])}
    cfg = ScGPTConfig(vocab_size=len(vocab), d_model=D, nhead=NHEAD, d_hid=DHID, nlayers=1,
                      pad_value=51, input_emb_style="category", pre_norm=True)
    torch.manual_seed(0)
    ck = ScGPTCheckpoint(ScGPTEncoder(cfg, pad_id=vocab["<pad>"]).eval(), vocab, cfg)
    assert ck.model.state_dict()["value_encoder.embedding.weight"].shape == (53, D)
    ck.save(tmp_path)
    loaded = load_scgpt(tmp_path)
    assert loaded.config == cfg
    np.testing.assert_array_equal(scgpt_embed(adata, loaded, progress=False),
                                  scgpt_embed(adata, ck, progress=False))
