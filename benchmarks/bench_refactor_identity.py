"""A refactor that must change no numbers: theta, logits, beta and decoded expression before and after.

Trains SCE2TM and SCETM (and scETM+adv) with the same seed on pbmc3k (5000 HVGs) and Kang 8
donors (batch intercepts), 50 epochs, once with the code of a base commit (a ``git worktree``
of ``--base``, imported through ``PYTHONPATH``) and once with the working tree, then writes the
largest absolute difference of every output. Only public API that both versions share is used.

Usage::

    .venv/bin/python benchmarks/bench_refactor_identity.py --base 74c77ad
    .venv/bin/python benchmarks/bench_refactor_identity.py --before-dir /tmp/before_outputs  # reuse a saved run

Writes ``benchmarks/results/refactor_identity.{json,md}``. Run it alone: torch threads are
pinned to 2 for both sides so that the summation order is the same.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from harness import DATASETS, REPO, machine, make_parser, md_table, write_report

RUNS = {
    "pbmc3k_sce2tm": ("pbmc3k", "SCE2TM", {}),
    "pbmc3k_scetm": ("pbmc3k", "SCETM", {}),
    "kang8_sce2tm": ("kang8", "SCE2TM", {"batch_key": "batch"}),
    "kang8_scetm": ("kang8", "SCETM", {"batch_key": "batch"}),
    "kang8_scetm_adv": ("kang8", "SCETM", {"batch_key": "batch", "adversarial": True}),
}
OUTPUTS = ("theta", "logits", "beta", "decoded", "loss")


def train_and_save(out: Path, epochs: int) -> dict[str, float]:
    """Train every run with the sctopic on ``sys.path`` and save its outputs; seconds per run."""
    import anndata as ad
    import torch

    import sctopic
    from sctopic.analysis import decode_expression

    torch.set_num_threads(2)
    seconds = {}
    for name, (dataset, cls_name, kw) in RUNS.items():
        adata = ad.read_h5ad(DATASETS[dataset].path)
        t0 = time.perf_counter()
        model = getattr(sctopic, cls_name)(adata, n_topics=100, n_top_genes=5000, seed=0, **kw)
        model.train(max_epochs=epochs, seed=0, progress=False, device="cpu")
        theta = model.get_cell_topics()
        batches = adata.obs["batch"].to_numpy()[:200] if "batch_key" in kw else None
        np.savez(out / f"{name}.npz", theta=theta, logits=model.get_cell_topics(logits=True),
                 beta=model.get_topic_gene().to_numpy(), decoded=decode_expression(model, theta[:200], batches),
                 loss=np.asarray(model.history_["loss"]))
        seconds[name] = time.perf_counter() - t0
        print(f"{name}: {seconds[name]:.1f} s ({sctopic.__file__})", flush=True)
    return seconds


def main(argv=None) -> int:
    p = make_parser(__doc__, epochs=50, results_dir=True)
    p.add_argument("--base", default=None, help="commit whose code gives the 'before' outputs")
    p.add_argument("--before-dir", default=None, help="outputs of an earlier 'before' run (skips --base)")
    p.add_argument("--save-to", default=None, help="internal: train with the sctopic on sys.path and save here")
    args = p.parse_args(argv)
    if args.save_to:
        train_and_save(Path(args.save_to), args.epochs)
        return 0
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    with tempfile.TemporaryDirectory() as tmp:
        before = Path(args.before_dir) if args.before_dir else Path(tmp) / "before"
        if not args.before_dir:
            if not args.base:
                raise SystemExit("give --base COMMIT or --before-dir DIR")
            tree = Path(tmp) / "tree"
            subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree), args.base], check=True)
            before.mkdir()
            try:
                subprocess.run([sys.executable, __file__, "--save-to", str(before), "--epochs", str(args.epochs)],
                               env={**env, "PYTHONPATH": str(tree / "src")}, check=True)
            finally:
                subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], check=False)
        after = Path(tmp) / "after"
        after.mkdir()
        subprocess.run([sys.executable, __file__, "--save-to", str(after), "--epochs", str(args.epochs)],
                       env=env, check=True)
        rows = {}
        for name in RUNS:
            a, b = np.load(before / f"{name}.npz"), np.load(after / f"{name}.npz")
            rows[name] = {k: float(np.abs(a[k].astype(np.float64) - b[k].astype(np.float64)).max()) for k in OUTPUTS}
    worst = max(v for r in rows.values() for v in r.values())
    md = [f"# Refactor identity: base {args.base or args.before_dir} vs working tree", "",
          f"{args.epochs} epochs, seed 0, 100 topics, 5000 HVGs; max |before - after| per output "
          f"(decoded: 200 cells). {machine()}, load {os.getloadavg()[0]:.2f}.", ""]
    md += md_table(["run", *OUTPUTS], [[n, *(f"{r[k]:.3g}" for k in OUTPUTS)] for n, r in rows.items()])
    md += ["", f"Largest difference over everything: {worst:.3g}."]
    write_report(Path(args.results_dir) / "refactor_identity", {"base": args.base, "epochs": args.epochs,
                                                                 "max_abs_diff": rows, "worst": worst}, "\n".join(md))
    print("\n".join(md))
    return 0 if worst <= 1e-6 else 1


if __name__ == "__main__":
    raise SystemExit(main())
