"""Profile one SCE2TM training step on CUDA (``gpu_run.sh profile``): where the 12 ms go.

The step is ``bench_flops.make_step``'s (512 anchors + 512 neighbours of Kang 8 donors, the
defaults); prints torch.profiler's top operators by device and host time, the number of
host-device synchronisations per step, and the median step time with and without the
profiler. Writes the full table to ``$OUT/profile_step.txt``.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import anndata as ad
import bench_flops as F
import torch
from harness import DATASETS, make_parser, time_fn, write_text

import sctopic


def main(argv=None) -> int:
    make_parser(__doc__).parse_args(argv)  # no options: --help only
    adata = ad.read_h5ad(DATASETS["kang8"].path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = sctopic.SCE2TM(adata, seed=0)
    dev = "cuda"
    m.module.to(dev)
    mod, fwd_bwd, full_step, opt, kw = F.make_step(m, F.model_counts(m, adata), m.external_.matrix, 512, 0,
                                                   "dense", device=dev)
    step = time_fn(full_step, 30, warmup=5, stat="median", device=dev)
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(10):
            full_step()
        torch.cuda.synchronize()
    ka = prof.key_averages()
    by_dev = ka.table(sort_by="self_device_time_total", row_limit=20)
    by_cpu = ka.table(sort_by="self_cpu_time_total", row_limit=25)
    syncs = {e.key: e.count / 10 for e in ka
             if e.key in ("cudaStreamSynchronize", "cudaDeviceSynchronize", "aten::item",
                          "aten::_local_scalar_dense", "cudaMemcpyAsync", "cudaLaunchKernel",
                          "cuLaunchKernel", "cudaLaunchKernelExC")}
    dev_total = sum(e.self_device_time_total for e in ka) / 10 / 1e3
    text = (f"median step {step * 1e3:.2f} ms; summed kernel time per step {dev_total:.2f} ms; "
            f"per step counts {syncs}; sinkhorn iterations {getattr(mod.ecr, 'last_iterations', '?')}\n\n"
            f"By device time:\n{by_dev}\n\nBy host time:\n{by_cpu}\n")
    write_text(Path(os.environ.get("OUT", "/tmp")) / "profile_step.txt", text)
    print(text[:6000])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
