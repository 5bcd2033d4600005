"""``sctopic fit``: train a topic model on an .h5ad file and write model, results and a report."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from collections.abc import Callable

from sctopic.commands.common import add_overwrite_arg, nonneg_int, positive_int, write_json

# The gradient modes without importing torch at CLI start-up.
ECR_GRADS = ("implicit", "envelope", "unrolled")

MODELS = ("sce2tm", "scetm")
_CLASSES = {"sce2tm": "SCE2TM", "scetm": "SCETM"}

#: CLI destination -> model parameter, for flags whose default is the model's own.
_MODEL_PARAMS = {"n_topics": "n_topics", "n_hvg": "n_top_genes", "seed": "seed", "ecr_weight": "ecr_weight",
                 "ecr_grad": "ecr_grad", "encoder_input": "encoder_input", "max_epochs": "max_epochs",
                 "batch_size": "batch_size", "lr": "lr", "early_stopping": "early_stopping",
                 "lr_schedule": "lr_schedule"}

#: ``--lr-schedule`` choices (each model accepts its own subset; see their ``train()``).
LR_SCHEDULES = ("step", "exponential", "constant", "cosine", "onecycle")


def model_defaults(model: str) -> dict:
    """The defaults of a model's constructor and ``train()`` (one set for the CLI and Python)."""
    import inspect

    import sctopic

    cls = getattr(sctopic, _CLASSES[model])
    out = {}
    for fn in (cls.__init__, cls.train):
        for name, par in inspect.signature(fn).parameters.items():
            if par.default is not inspect.Parameter.empty:
                out[name] = par.default
    return out


def resolve_defaults(args, model: str) -> None:
    """Fill every flag left at None with the model's default (``--n-hvg 0`` keeps all genes)."""
    defaults = model_defaults(model)
    for dest, param in _MODEL_PARAMS.items():
        if getattr(args, dest, None) is None and param in defaults:
            value = defaults[param]
            setattr(args, dest, 0 if dest == "n_hvg" and value is None else value)


def add_training_args(p: argparse.ArgumentParser) -> None:
    """Training flags; those defaulting to None take the chosen model's default."""
    p.add_argument("--n-topics", type=positive_int, default=None, help="number of topics (default: the model's, 100)")
    p.add_argument("--layer", default=None, help="layer with raw counts (default: X)")
    p.add_argument("--external-key", "--external", dest="external_key", default=None,
                   help="sce2tm: external view: an obsm key, 'pca' (default), 'random', 'go', "
                        "'scgpt:DIR' or 'geneformer:DIR'")
    p.add_argument("--batch-key", default=None,
                   help="obs column of batches: per-batch gene intercepts in the decoder")
    p.add_argument("--n-hvg", type=nonneg_int, default=None,
                   help="highly variable genes to keep (default: the model's n_top_genes, 5000; 0 keeps all)")
    p.add_argument("--max-epochs", type=positive_int, default=None,
                   help="epochs (default: the model's; for sce2tm its preset's, 200 (paper: 500); 800 for scetm)")
    p.add_argument("--batch-size", type=positive_int, default=None,
                   help="cells per minibatch (default: the model's; 512 for sce2tm, 2000 for scetm)")
    p.add_argument("--lr", type=float, default=None,
                   help="learning rate (default: the model's; 1e-3 for sce2tm, 5e-3 for scetm)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: the model's, 0)")
    p.add_argument("--lr-schedule", choices=LR_SCHEDULES, default=None,
                   help="learning-rate schedule (default: the model's own: 'step' for sce2tm, halving "
                        "every quarter of the epochs; 'exponential' for scetm). 'cosine': linear warm-up "
                        "over 5%% of the steps, then cosine decay to 1%% of --lr; 'onecycle': PyTorch's "
                        "one-cycle policy peaking at --lr after 25%% of the steps; 'constant'. sce2tm "
                        "offers step, constant, cosine and onecycle; scetm all five")
    p.add_argument("--early-stopping", action=argparse.BooleanOptionalAction, default=None,
                   help="hold 10%% of the cells out of training (seeded), check their mean reconstruction "
                        "NLL every 5 epochs, stop after 3 checks without a 0.1%% improvement and keep the "
                        "best check's weights; train.json records stopped_epoch and best_epoch (default: "
                        "the model's, off; not with --devices)")
    p.add_argument("--device", default="auto", help="auto (default), cpu or cuda[:N]")
    p.add_argument("--ecr-weight", type=float, default=None, help="ECR weight lambda (default: the model's, 100; 0: w/o ECR)")
    p.add_argument("--preset", choices=("default", "paper"), default=None,
                   help="sce2tm: 'default' (the recommended recipe) or 'paper' (the published "
                        "equations and schedule)")
    p.add_argument("--no-cross-view", action="store_true", help="disable the Cross-view Encoder (w/o CVE)")
    p.add_argument("--external-concat", action="store_true",
                   help="concatenate the external view to the encoder input (w/ EC ablation)")
    p.add_argument("--ecr-grad", choices=ECR_GRADS, default=None,
                   help="gradient of ECR through the Sinkhorn plan (default: the model's, implicit)")
    p.add_argument("--encoder-input", choices=("counts", "log1p"), default=None,
                   help="encoder input: raw counts (reference, the model's default) or log1p of normalised counts")
    p.add_argument("--adversarial", action="store_true",
                   help="scetm: batch discriminator on the topic logits (scETM+adv; needs --batch-key)")
    p.add_argument("--gene-sets", default=None,
                   help="scetm: p-scETM with rho fixed to this library (bundled name or GMT path)")


def register(sub) -> None:
    p = sub.add_parser("fit", help="train a topic model on an .h5ad file",
                       description="Train a topic model and write DIR/model.pt, DIR/result.h5ad "
                                   "(the data restricted to the model's genes, plus outputs), "
                                   "DIR/train.json and DIR/manifest.json (the files' sizes and "
                                   "SHA-256). The files are written into a hidden sibling folder and "
                                   "swapped in as one unit when all are complete; a non-empty DIR is "
                                   "replaced only with --overwrite. With --checkpoint-every N, "
                                   "DIR/checkpoint.pt is rewritten atomically every N epochs and goes "
                                   "away once the outputs are in place; after a crash or kill, run "
                                   "the same command with --resume (refused on other data or "
                                   "settings). Under torchrun (`torchrun --nproc-per-node N -m "
                                   "sctopic fit ...`) or with --devices N, N processes train one "
                                   "model data-parallel and only rank 0 writes.")
    p.add_argument("data", help="input .h5ad with raw counts")
    p.add_argument("--model", choices=MODELS, default="sce2tm", help="model (default sce2tm)")
    p.add_argument("--out", required=True, help="output directory")
    add_overwrite_arg(p)
    add_training_args(p)
    p.add_argument("--checkpoint-every", type=nonneg_int, default=0, metavar="N",
                   help="write DIR/checkpoint.pt atomically every N epochs (default 0: never); "
                        "it is removed once all outputs are written")
    p.add_argument("--resume", action="store_true",
                   help="continue from DIR/checkpoint.pt (same data and flags; the result equals "
                        "an uninterrupted run); without a checkpoint, start from scratch")
    p.add_argument("--backed", action="store_true",
                   help="train out of core: X stays on disk and is read in row blocks (constant "
                        "memory; result.h5ad is streamed)")
    p.add_argument("--num-workers", type=positive_int, default=1,
                   help="with --backed: reader threads prefetching blocks (default 1)")
    p.add_argument("--precision", choices=("32", "bf16", "auto"), default="32",
                   help="32 (default), bf16 (matrix products in bfloat16 under autocast) or auto "
                        "(bf16 on GPUs and CPUs with native bf16 units)")
    p.add_argument("--compile", action="store_true",
                   help="run the forward pass through torch.compile (GPUs; dense minibatches)")
    p.add_argument("--cuda-graphs", action="store_true",
                   help="capture the whole training step as CUDA graphs (GPUs; dense minibatches, "
                        "one process; sce2tm then runs a fixed number of Sinkhorn iterations); on "
                        "another device the same step runs uncaptured, with a warning")
    p.add_argument("--sinkhorn-iterations", type=positive_int, default=None, metavar="N",
                   help="sce2tm: exactly N Sinkhorn iterations per step, no convergence check on the "
                        "host (default: solve to tolerance; 50 with --cuda-graphs)")
    p.add_argument("--ecr-solve-dtype", choices=("float64", "float32"), default=None,
                   help="sce2tm: precision of the K x K solve in ECR's gradient (default float64)")
    add_distributed_args(p)
    p.set_defaults(func=run, _parser=p)


def add_distributed_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--devices", type=positive_int, default=None, metavar="N",
                   help="train with N processes (data-parallel, one per GPU, or N CPU processes): "
                        "relaunches this command under torch.distributed.run (torchrun)")
    p.add_argument("--backend", choices=("auto", "gloo", "nccl"), default="auto",
                   help="process-group backend under torchrun: auto (default: nccl on GPUs, gloo "
                        "on the CPU), gloo or nccl")


SCE2TM_ONLY = {"external_key": None, "ecr_weight": None, "no_cross_view": False, "preset": None,
               "external_concat": False, "ecr_grad": None, "encoder_input": None,
               "sinkhorn_iterations": None, "ecr_solve_dtype": None}
SCETM_ONLY = {"adversarial": False, "gene_sets": None}


def _check_flags(args, model: str) -> None:
    """Refuse flags that the chosen model would silently ignore."""
    from sctopic.errors import InputError

    other = SCETM_ONLY if model == "sce2tm" else SCE2TM_ONLY
    for name, default in other.items():
        if getattr(args, name, default) != default:
            flag = "--" + name.replace("_", "-")
            raise InputError(f"{flag} does not apply to --model {model}.")


def fit_and_write(adata, args, out: Path, progress: bool = True, *, command: str = "fit",
                  finish: Callable[[Path, dict], None] | None = None) -> dict:
    """Train according to parsed arguments, write the run's outputs as one unit, return the report.

    Parameters
    ----------
    adata
        The training data (or, with ``args.backed``, ignored for ``args.data``).
    args
        Parsed ``fit`` arguments (flags left at None take the model's defaults).
    out
        The output directory. Refused before training when it holds another command's run,
        files that are not a sctopic run, or (without ``args.overwrite``) a previous fit; a
        ``checkpoint.pt`` alone does not count (``--resume``).
    progress
        Show a progress bar.
    command
        The command recorded in the manifest (``fit`` or ``demo``).
    finish
        Called as ``finish(staging_dir, report)`` after the files are written and before they
        are swapped in (``demo`` adds its metrics there).

    Returns
    -------
    dict
        The report written to ``train.json``.
    """
    import sctopic
    from sctopic.data import rundir

    t0 = time.perf_counter()
    name = getattr(args, "model", "sce2tm") or "sce2tm"
    _check_flags(args, name)
    resolve_defaults(args, name)
    overwrite = bool(getattr(args, "overwrite", False))
    main = _is_main_process()
    if main:  # before any work: refuse a folder this run must not replace
        rundir.check_target(out, command, overwrite=overwrite, ignore=(rundir.CHECKPOINT,))
        rundir.check_parent_writable(out)
        rundir.clean_stale(out)
    train = {k: getattr(args, k) for k in ("max_epochs", "batch_size", "lr")}
    batch_key = getattr(args, "batch_key", None)
    backed = bool(getattr(args, "backed", False))
    if backed:
        # Out of core: the model reads the file itself (see sctopic.data.backed).
        adata = getattr(args, "data", adata)
        train["num_workers"] = int(getattr(args, "num_workers", 1) or 1)
    if name == "scetm":
        model = sctopic.SCETM(
            adata, n_topics=args.n_topics, layer=args.layer, batch_key=batch_key,
            n_top_genes=args.n_hvg or None, gene_sets=getattr(args, "gene_sets", None),
            adversarial=getattr(args, "adversarial", False), seed=args.seed, backed=backed,
        )
    else:
        cross_view = not args.no_cross_view and not args.external_concat
        model = sctopic.SCE2TM(
            adata, n_topics=args.n_topics, layer=args.layer, external_key=args.external_key,
            n_top_genes=args.n_hvg or None, cross_view=cross_view,
            external_concat=args.external_concat, ecr_weight=args.ecr_weight,
            encoder_input=args.encoder_input, ecr_grad=args.ecr_grad, batch_key=batch_key,
            seed=args.seed, backed=backed, preset=getattr(args, "preset", None) or "default",
        )
    every, resume = int(getattr(args, "checkpoint_every", 0) or 0), bool(getattr(args, "resume", False))
    # The checkpoint lives in the output folder itself, where --resume finds it; the swap that
    # puts the finished outputs in place removes it.
    ckpt = out / rundir.CHECKPOINT if every or resume else None
    backend = getattr(args, "backend", "auto") or "auto"
    train["precision"] = getattr(args, "precision", "32") or "32"
    if getattr(args, "compile", False):
        train["compile"] = True
        train["storage"] = "dense"
    if getattr(args, "cuda_graphs", False):
        train["cuda_graphs"] = True
        train["storage"] = "dense"
    for key in ("sinkhorn_iterations", "ecr_solve_dtype"):
        if getattr(args, key, None) is not None:
            train[key] = getattr(args, key)
    for name in ("lr_schedule", "early_stopping"):  # absent from older callers' namespaces (demo)
        if getattr(args, name, None) is not None:
            train[name] = getattr(args, name)
    model.train(**train, device=args.device, seed=args.seed, progress=progress,
                checkpoint_path=ckpt, checkpoint_every=every, resume=resume, distributed=backend)
    settings = {**model.init_params, **model.train_settings_}
    dist_info = settings.pop("distributed", None)
    if not main:  # under torchrun only rank 0 writes
        return {"model": model.model_name, "rank": _rank(), "distributed": dist_info}
    from sctopic.data.io import write_h5ad_atomic
    from sctopic.data.outputs import logits_key, theta_key

    data_path = str(args.data) if hasattr(args, "data") else None
    fingerprint = model.data_fingerprint()
    with rundir.RunWriter(out, command, overwrite=overwrite, ignore=(rundir.CHECKPOINT,)) as writer:
        stage = writer.path
        model.save(stage / "model.pt")
        if backed:
            from sctopic.data.io import write_backed_result

            write_backed_result(model.adata, model.genes, stage / "result.h5ad")
        else:
            result = model.adata[:, model.genes].copy()
            write_h5ad_atomic(result, stage / "result.h5ad")
        hist = model.history_
        epoch_s = hist.get("epoch_seconds", [])
        report = {
            "model": model.model_name,
            "data": data_path,
            "n_cells": int(model.adata.n_obs),
            "n_genes": len(model.genes),
            "settings": settings,
            "external_view": model.init_params.get("external_key"),
            "batch_key": batch_key,
            "batches": list(model.batch_categories_),
            "graphs": model.graph_stats_,
            "seconds_total": time.perf_counter() - t0,
            "seconds_training": model.train_seconds_,
            "seconds_per_epoch": sum(epoch_s) / max(len(epoch_s), 1),
            "final_losses": {k: v[-1] for k, v in hist.items() if k not in ("epoch_seconds", "lr")},
            # stopped_epoch, best_epoch...: only with early stopping (None when off)
            "early_stopping": getattr(model, "early_stopping_", None),
            "distributed": dist_info,
            "run_id": writer.run_id,
            "resumes": list(model.resumes_),
            "data_fingerprint": fingerprint,
            "outputs": {"model": str(out / "model.pt"), "result": str(out / "result.h5ad"),
                        "manifest": str(out / rundir.MANIFEST),
                        "obsm_theta": theta_key(model.model_name), "obsm_logits": logits_key(model.model_name)},
        }
        write_json(report, stage / "train.json")
        if finish is not None:
            finish(stage, report)
        writer.commit(settings=settings, data={**rundir.input_file_info(data_path), **fingerprint},
                      extra={"model": model.model_name, "resumes": list(model.resumes_)})
    if ckpt is not None and ckpt.exists():
        ckpt.unlink()  # every output is in place: the checkpoint is redundant
    return report


def _rank() -> int:
    from sctopic.train.distributed import env_rank

    return env_rank()


def _is_main_process() -> bool:
    return _rank() == 0


def _relaunch_argv(args, parser: argparse.ArgumentParser) -> list[str]:
    """The command line of ``args`` without ``--devices`` (for the torchrun workers)."""
    argv = ["-q"] if getattr(args, "quiet", False) else []
    argv += ["fit", str(args.data)]
    for action in parser._actions:
        if not action.option_strings or action.dest in ("help", "devices"):
            continue
        value = getattr(args, action.dest, action.default)
        if value == action.default or value is None:
            continue
        flag = next((o for o in action.option_strings if o.startswith("--")), action.option_strings[0])
        if isinstance(action, argparse.BooleanOptionalAction):
            argv.append(flag if value else "--no-" + flag[2:])
        elif isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            argv.append(flag)
        else:
            argv += [flag, str(value)]
    return argv


def launch(args, n_procs: int) -> int:
    """Run this ``fit`` command with ``n_procs`` processes under ``torch.distributed.run``."""
    import os
    import subprocess
    import sys

    parser = getattr(args, "_parser", None)
    if parser is None:  # pragma: no cover - only when called without the CLI parser
        from sctopic.errors import InputError

        raise InputError("--devices needs the sctopic command line.")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc-per-node={n_procs}", "-m", "sctopic", *_relaunch_argv(args, parser)]
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    return subprocess.run(cmd, env=env).returncode


def run(args) -> int:
    from sctopic.data.io import read_adata
    from sctopic.errors import InputError
    from sctopic.train.distributed import check_backend, env_world

    check_backend(getattr(args, "backend", "auto"))
    devices = getattr(args, "devices", None)
    world = env_world()
    if devices and devices > 1 and world is None:
        return launch(args, devices)
    if devices and world is not None and devices != world[1]:
        raise InputError(f"--devices {devices} but torchrun started {world[1]} processes; "
                         "drop --devices under torchrun.")
    main = _is_main_process()
    out = Path(args.out)
    if main:  # refuse a folder this run must not replace before reading the data
        from sctopic.data import rundir

        rundir.check_target(out, "fit", overwrite=bool(getattr(args, "overwrite", False)),
                            ignore=(rundir.CHECKPOINT,))
    adata = read_adata(args.data, backed=bool(getattr(args, "backed", False)))
    try:
        report = fit_and_write(adata, args, out, progress=not args.quiet)
    finally:
        if world is not None:
            from sctopic.train.distributed import shutdown

            shutdown(barrier=False)  # rank 0 may still be writing: no need to wait for it
    if not main:
        return 0
    print(f"trained {report['model']} on {report['n_cells']} cells x {report['n_genes']} genes in "
          f"{report['seconds_training']:.1f} s ({report['seconds_per_epoch']:.3f} s/epoch)")
    print(f"wrote {out}/model.pt, {out}/result.h5ad, {out}/train.json, {out}/manifest.json")
    return 0
