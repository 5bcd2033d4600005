"""Data-parallel training under torchrun (2 CPU processes, gloo) on real data.

Each test that launches processes uses ``python -m torch.distributed.run --standalone``, which
picks a free port itself, with one thread per process.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from sctopic.errors import InputError

torch_dist = pytest.importorskip("torch.distributed")
pytestmark = pytest.mark.skipif(not (torch_dist.is_available() and torch_dist.is_gloo_available()),
                                reason="torch.distributed with gloo is not available")

WORKER = textwrap.dedent('''
    import json, os, shutil, sys
    import torch
    import sctopic
    from sctopic.datasets import pbmc68k_reduced

    out = sys.argv[1]
    rank = int(os.environ["RANK"])
    adata = pbmc68k_reduced()

    def record(model, name, **train):
        init = {k: v.detach().clone() for k, v in model.module.state_dict().items()}
        ecr = []
        if hasattr(model.module, "ecr"):
            model.module.ecr.register_forward_hook(
                lambda mod, args, o: ecr.append((float(o.detach()), int(mod.last_iterations))))
        model.train(progress=False, device="cpu", **train)
        torch.save({"state": model.module.state_dict(), "init": init, "ecr": ecr,
                    "settings": json.dumps(model.train_settings_),
                    "history": json.dumps({k: v for k, v in model.history_.items()
                                           if k != "epoch_seconds"}),
                    "has_results": "X_" + model.model_name in model.adata.obsm},
                   f"{out}/{name}_rank{rank}.pt")

    # Keep a copy of the epoch-2 checkpoint (written by rank 0) to resume from below.
    from sctopic.train import checkpoint as C
    save = C.Checkpointer.save
    def save_and_copy(self):
        path = save(self)
        if rank == 0 and self.trainer.epoch == 2:
            shutil.copy(self.path, f"{out}/ck2.pt")
        return path
    C.Checkpointer.save = save_and_copy

    m = sctopic.SCE2TM(adata.copy(), n_topics=8, emb_dim=32, n_hidden=64, seed=0)
    # ECR from the first step (the default recipe delays it), so every step checks it across ranks.
    record(m, "sce2tm", max_epochs=3, batch_size=128, checkpoint_path=f"{out}/ck.pt",
           checkpoint_every=1, ecr_delay=0, ecr_warmup=0)
    torch.distributed.barrier()
    if rank == 0:
        shutil.copy(f"{out}/ck2.pt", f"{out}/ck.pt")
    torch.distributed.barrier()
    r = sctopic.SCE2TM(adata.copy(), n_topics=8, emb_dim=32, n_hidden=64, seed=0)
    r.train(max_epochs=3, batch_size=128, progress=False, device="cpu", checkpoint_path=f"{out}/ck.pt",
            checkpoint_every=1, resume=True, ecr_delay=0, ecr_warmup=0)
    torch.save(r.module.state_dict(), f"{out}/resumed_rank{rank}.pt")
    s = sctopic.SCETM(adata.copy(), n_topics=8, emb_dim=32, n_hidden=64, batch_key="phase",
                      adversarial=True, seed=0)
    record(s, "scetm", max_epochs=3, batch_size=200, adv_cutoff=0.0)
    # Out of core: small blocks, so most sampled neighbours are read by each rank's
    # row-reader process.
    adata.write_h5ad(f"{out}/pbmc_rank{rank}.h5ad")
    b = sctopic.SCE2TM(f"{out}/pbmc_rank{rank}.h5ad", backed=True, n_topics=8, emb_dim=32,
                       n_hidden=64, seed=0)
    record(b, "backed", max_epochs=2, batch_size=128, block_size=100, pool_blocks=2)
''')


def _env() -> dict:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def _torchrun(args: list[str], cwd: Path, timeout: int = 180) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           *args]
    proc = subprocess.Popen(cmd, cwd=cwd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher and its workers
        stdout, stderr = proc.communicate()
        pytest.fail(f"torchrun timed out after {timeout} s:\n{stdout[-2000:]}\n{stderr[-3000:]}")
    assert proc.returncode == 0, stdout[-3000:] + stderr[-3000:]
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


@pytest.fixture(scope="module")
def two_rank_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    (tmp / "worker.py").write_text(WORKER)
    _torchrun([str(tmp / "worker.py"), str(tmp)], cwd=tmp)
    return {name: [torch.load(tmp / f"{name}_rank{r}.pt", weights_only=True) for r in (0, 1)]
            for name in ("sce2tm", "scetm", "resumed", "backed")}


@pytest.mark.parametrize("name", ["sce2tm", "scetm", "backed"])
def test_both_ranks_end_with_identical_parameters(two_rank_runs, name):
    r0, r1 = two_rank_runs[name]
    assert r0["state"].keys() == r1["state"].keys()
    for key in r0["state"]:
        assert torch.equal(r0["state"][key], r1["state"][key]), key
    # Training happened: every parameter tensor moved away from its initial value.
    moved = [k for k in r0["state"] if r0["state"][k].is_floating_point()
             and not torch.equal(r0["state"][k], r0["init"][k])]
    assert any("encoder" in k for k in moved) and any("decoder" in k for k in moved)
    settings = json.loads(r0["settings"])
    assert settings["world_size"] == 2
    assert settings["distributed"]["backend"] == "gloo"
    assert settings["distributed"]["max_param_diff_across_ranks"] == 0.0
    # The loss history is the global mean, the same on both ranks.
    assert r0["history"] == r1["history"]
    # Only rank 0 writes results.
    assert r0["has_results"] and not r1["has_results"]


def test_resume_under_torchrun_is_bit_for_bit(two_rank_runs):
    full = two_rank_runs["sce2tm"][0]["state"]
    for resumed in two_rank_runs["resumed"]:
        assert resumed.keys() == full.keys()
        for key in full:
            assert torch.equal(resumed[key], full[key]), key


def test_ecr_is_computed_identically_on_every_rank(two_rank_runs):
    r0, r1 = two_rank_runs["sce2tm"]
    assert len(r0["ecr"]) > 10
    assert r0["ecr"] == r1["ecr"]  # same loss value and same Sinkhorn iterations every step


def test_cli_under_torchrun_writes_outputs_once(tmp_path, pbmc_small):
    data = tmp_path / "pbmc.h5ad"
    pbmc_small.write_h5ad(data)
    out = tmp_path / "fit"
    r = _torchrun(["-m", "sctopic", "-q", "fit", str(data), "--out", str(out), "--n-topics", "6",
                   "--max-epochs", "2", "--batch-size", "128", "--device", "cpu",
                   "--checkpoint-every", "1"], cwd=tmp_path)
    assert r.stdout.count("trained sce2tm") == 1  # printed by rank 0 only
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "model.pt", "result.h5ad", "train.json"]
    report = json.loads((out / "train.json").read_text())
    assert report["distributed"]["world_size"] == 2
    assert report["distributed"]["backend"] == "gloo"
    assert report["distributed"]["max_param_diff_across_ranks"] == 0.0
    assert report["settings"]["world_size"] == 2
    import sctopic

    model = sctopic.SCE2TM.load(out / "model.pt")
    assert model.is_trained_


def test_single_process_is_not_distributed(monkeypatch):
    from sctopic.train import distributed as d

    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    ctx = d.setup("auto", "cpu")
    assert not ctx.enabled and ctx.world_size == 1 and ctx.is_main
    t = torch.arange(10)
    assert ctx.shard(t) is t
    assert d.finish(torch.nn.Linear(2, 2), ctx) == {}
    # Under torchrun with one process, "auto" stays single-process too.
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("RANK", "0")
    ctx = d.setup("auto", "cpu")
    assert not ctx.enabled and ctx.shard(t) is t


def test_shard_splits_a_global_batch_across_ranks():
    from sctopic.train.distributed import DistContext

    t = torch.arange(11)
    parts = [DistContext(rank=r, world_size=3, backend="gloo").shard(t) for r in range(3)]
    assert sorted(torch.cat(parts).tolist()) == list(range(11))
    assert [len(p) for p in parts] == [4, 4, 3]


def test_small_last_batch_is_skipped():
    from sctopic.data.loader import batch_indices
    from sctopic.train.distributed import skip_small_batches

    batches = skip_small_batches(lambda bs, gen: batch_indices(103, bs, True, gen, "cpu"), 4)
    sizes = [len(b) for b in batches(50, torch.Generator().manual_seed(0))]
    assert sizes == [50, 50]


def test_single_process_model_records_world_size_one(small_adata):
    import sctopic

    m = sctopic.SCE2TM(small_adata, n_topics=4, emb_dim=16, n_hidden=32, cross_view=False)
    m.train(max_epochs=1, batch_size=128, progress=False, device="cpu")
    assert m.train_settings_["world_size"] == 1 and "distributed" not in m.train_settings_


def test_bad_distributed_settings_fail_clearly(small_adata, monkeypatch, tmp_path, capsys):
    import sctopic
    from sctopic.cli import main

    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    m = sctopic.SCE2TM(small_adata, n_topics=4, emb_dim=16, n_hidden=32, cross_view=False)
    with pytest.raises(InputError, match="torchrun"):
        m.train(max_epochs=1, progress=False, device="cpu", distributed=True)
    with pytest.raises(InputError, match="distributed must be"):
        m.train(max_epochs=1, progress=False, device="cpu", distributed="mpi")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="nccl backend needs CUDA"):
            m.train(max_epochs=1, progress=False, distributed="nccl")
        data = tmp_path / "x.h5ad"
        small_adata.write_h5ad(data)
        assert main(["fit", str(data), "--out", str(tmp_path / "o"), "--backend", "nccl",
                     "--max-epochs", "1"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "nccl backend needs CUDA" in err[0]


def test_devices_flag_rebuilds_the_command_line(tmp_path):
    from sctopic.cli import build_parser
    from sctopic.commands.fit import _relaunch_argv

    argv = ["-q", "fit", "data.h5ad", "--out", str(tmp_path), "--devices", "2", "--max-epochs", "3",
            "--no-cross-view", "--external", "pca", "--backend", "gloo"]
    args = build_parser(argv).parse_args(argv)
    rebuilt = _relaunch_argv(args, args._parser)
    assert "--devices" not in rebuilt
    again = build_parser(rebuilt).parse_args(rebuilt)
    for key in ("data", "out", "max_epochs", "no_cross_view", "external_key", "backend", "quiet"):
        assert getattr(again, key) == getattr(args, key), key
    assert again.devices is None
