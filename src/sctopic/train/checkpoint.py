"""Training checkpoints: write every N epochs atomically, resume bit-for-bit.

A checkpoint holds everything the next epoch depends on:

* the module's ``state_dict`` (parameters and buffers, including batch-norm statistics and
  the warm-start potentials of the ECR Sinkhorn solver);
* the :class:`~sctopic.train.Trainer` state (optimiser, learning-rate schedulers, epoch,
  loss history);
* the state of the ``torch.Generator`` that draws the minibatch order and the neighbours;
* torch's global random state (and the CUDA one on a GPU) *as the next epoch will find it*
  inside the model's ``seeded`` block (reparameterisation noise, dropout);
* a JSON fingerprint of the run: model class, init settings, training settings, genes, the
  names of the training cells and a fingerprint of the training counts (shape, non-zeros,
  total and the SHA-256 of the CSR arrays, :mod:`sctopic.data.fingerprint`), so cells
  reordered or counts moved between cells are caught too;
* the list of earlier resumes of the run (recorded in ``train.json`` by ``sctopic fit``).

Resuming with other settings or other data raises :class:`~sctopic.errors.InputError` naming
what differs.

Resuming therefore gives the same model, bit for bit, as an uninterrupted run with the same
seed on the same machine and device type.

Under ``torchrun`` (:mod:`sctopic.train.distributed`) only rank 0 writes the file; it also
holds every process's global random state (``rank_rng``), and each process restores its own.
The number of processes is part of the fingerprint of a distributed run.

The file is written with :func:`torch.save` (plain tensors, numbers, strings, lists and dicts)
under a temporary name in the same folder, flushed to disk with ``fsync``, then renamed over
the previous checkpoint (``os.replace``, atomic on POSIX and Windows) and the folder is
synced, so a crash at any moment leaves either the previous or the new checkpoint, never a
partial one. It is read with ``torch.load(weights_only=True)``, which refuses pickled code.
"""
from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from sctopic.data.io import atomic_write
from sctopic.errors import InputError

FORMAT = "sctopic-checkpoint"
FORMAT_VERSION = 1


def check_checkpoint_args(checkpoint_path: str | os.PathLike | None, checkpoint_every: int,
                          resume: bool) -> None:
    """Validate the checkpoint arguments of ``train()`` before any work is done.

    Parameters
    ----------
    checkpoint_path
        Checkpoint file, or None.
    checkpoint_every
        Write a checkpoint every this many epochs (0: never).
    resume
        Continue from ``checkpoint_path``.

    Raises
    ------
    InputError
        ``checkpoint_every`` is negative, or a checkpoint is asked for without a path.
    """
    if int(checkpoint_every) != checkpoint_every or checkpoint_every < 0:
        raise InputError(f"checkpoint_every must be an integer >= 0, got {checkpoint_every!r}.")
    if (checkpoint_every or resume) and checkpoint_path is None:
        raise InputError("checkpoint_every > 0 and resume=True need a checkpoint_path.")
    if checkpoint_path is not None and Path(checkpoint_path).is_dir():
        raise InputError(f"checkpoint_path {checkpoint_path} is a directory; give a file name.")


def run_fingerprint(model: Any, X: Any, settings: dict[str, Any],
                    obs_names: Sequence[Any] | None = None) -> dict[str, Any]:
    """A JSON-able description of a training run that a checkpoint must match.

    Parameters
    ----------
    model
        The topic model (its class, ``init_params``, ``genes`` and batch categories are used).
    X
        The training matrix (cells x genes, scipy sparse, dense or ``BackedCounts``): its
        shape, number of non-zeros, total count and the SHA-256 of its CSR arrays
        (:func:`sctopic.data.fingerprint.data_fingerprint`; out of core, one pass over the file).
    settings
        The training settings that change the result (epochs, batch size, learning rate,
        seed, schedules, device type, minibatch layout...).
    obs_names
        Names of the training cells, in the rows' order (None: not compared).

    Returns
    -------
    dict
        Plain JSON types only (tuples become lists), so it compares equal to its own JSON
        round trip.
    """
    from sctopic.data.fingerprint import data_fingerprint

    data = data_fingerprint(X, obs_names=obs_names, var_names=[str(g) for g in model.genes])
    data["batch_categories"] = list(getattr(model, "batch_categories_", []) or [])
    fp = {
        "class": type(model).__name__,
        "init": model.init_params,
        "train": settings,
        "data": data,
    }
    return json.loads(json.dumps(fp, sort_keys=True))


#: data keys added after the first checkpoints: not compared when the checkpoint lacks them
_NEWER_DATA_KEYS = ("counts_sha256", "obs_names_sha256")

#: what a difference in a data key means, for the error message
_DATA_MEANING = {
    "counts_sha256": "counts differ (cells reordered or values changed)",
    "obs_names_sha256": "cell names differ (cells reordered, renamed or another subset)",
    "genes_sha256": "genes differ (other genes or another order)",
    "n_cells": "another number of cells",
    "n_genes": "another number of genes",
    "nnz": "another number of non-zero counts",
    "total_counts": "another total count",
}


def _explain(diff: list[str]) -> list[str]:
    """Say what a differing data key means (``data.counts_sha256: counts differ (...)``)."""
    out = []
    for line in diff:
        key, sep, rest = line.partition(": ")
        meaning = _DATA_MEANING.get(key[len("data."):]) if key.startswith("data.") and sep else None
        if meaning is None:
            out.append(line)
        elif key.endswith("sha256"):
            out.append(f"{key}: {meaning}")
        else:
            out.append(f"{key}: {meaning} ({rest})")
    return out


def _differences(saved: Any, current: Any, prefix: str = "") -> list[str]:
    """Human-readable paths where two JSON values differ."""
    if isinstance(saved, dict) and isinstance(current, dict):
        out = []
        for key in sorted(set(saved) | set(current), key=str):
            name = f"{prefix}.{key}" if prefix else str(key)
            if key not in saved:
                out.append(f"{name} (not in the checkpoint)")
            elif key not in current:
                out.append(f"{name} (only in the checkpoint)")
            else:
                out.extend(_differences(saved[key], current[key], name))
        return out
    if saved != current:
        s, c = json.dumps(saved)[:60], json.dumps(current)[:60]
        return [f"{prefix}: checkpoint {s}, now {c}"]
    return []


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check a checkpoint file.

    Parameters
    ----------
    path
        A file written by :class:`Checkpointer`.

    Returns
    -------
    dict
        ``format``, ``format_version``, ``epoch``, ``fingerprint`` (JSON string), ``module``,
        ``trainer``, ``generator``, ``torch_rng`` and ``cuda_rng`` (None on CPU).

    Raises
    ------
    InputError
        The file is missing, truncated, corrupt, holds pickled objects, or is not a sctopic
        checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"no checkpoint file at {path}.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, garbage, refused pickle
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        raise InputError(
            f"{path} is not a readable sctopic checkpoint (truncated, corrupt, or holding objects "
            f"other than plain tensors): {first}. Delete it to start training from scratch."
        ) from exc
    needed = {"format", "format_version", "epoch", "fingerprint", "module", "trainer",
              "generator", "torch_rng"}
    if not isinstance(state, dict) or state.get("format") != FORMAT or not needed <= set(state):
        raise InputError(f"{path} is not a sctopic checkpoint.")
    if state["format_version"] != FORMAT_VERSION:
        raise InputError(
            f"{path} is a version {state['format_version']} checkpoint; this sctopic reads "
            f"version {FORMAT_VERSION}."
        )
    return state


class Checkpointer:
    """Writes and restores the training state of one run; use it as ``on_epoch_end`` hook.

    Parameters
    ----------
    path
        Checkpoint file (rewritten in place, atomically).
    every
        Write after every ``every``-th epoch (0: never write; :meth:`restore` still works).
    module
        The torch module being trained.
    trainer
        Its :class:`~sctopic.train.Trainer`.
    generator
        The ``torch.Generator`` of minibatch order and neighbour sampling.
    fingerprint
        :func:`run_fingerprint` of the run.
    device
        The training device (its CUDA random state is saved on a GPU).
    dist
        The :class:`~sctopic.train.distributed.DistContext` of a data-parallel run (None: one
        process). Writing then is a collective call (the random states of all processes are
        gathered) and only rank 0 writes.

    Notes
    -----
    Call :meth:`restore` and :meth:`~sctopic.train.Trainer.fit` inside the same ``seeded``
    block, so the restored global random state is the one training draws from.
    """

    def __init__(self, path: str | os.PathLike, every: int, *, module: torch.nn.Module,
                 trainer: Any, generator: torch.Generator, fingerprint: dict[str, Any],
                 device: torch.device | str = "cpu", dist: Any = None):
        self.path = Path(path)
        self.dist = dist if dist is not None and dist.enabled else None
        self.every = int(every)
        self.module = module
        self.trainer = trainer
        self.generator = generator
        self.fingerprint = fingerprint
        self.device = torch.device(device)
        #: resumes of this run so far (``from_epoch``, ``checkpoint``, ``at``), carried in the file
        self.resumes: list[dict[str, Any]] = []

    def _cuda(self) -> bool:
        return self.device.type == "cuda"

    def state(self) -> dict[str, Any]:
        """The checkpoint payload of the current moment (plain tensors and containers)."""
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "epoch": int(self.trainer.epoch),
            "fingerprint": json.dumps(self.fingerprint, sort_keys=True),
            "module": {k: v.detach().cpu() for k, v in self.module.state_dict().items()},
            "trainer": self.trainer.state_dict(),
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(self.device) if self._cuda() else None,
            "resumes": json.dumps(self.resumes),
        }

    def save(self) -> Path:
        """Write the checkpoint now (temporary file, fsync, rename, folder fsync).

        In a data-parallel run every process must call it; only rank 0 writes.
        """
        payload = self.state()
        if self.dist is not None:
            from sctopic.train.distributed import gather_rng_states

            payload["rank_rng"] = gather_rng_states(self.dist)
            if not self.dist.is_main:
                return self.path

        # atomic_write flushes the file to disk before the rename and the folder after it.
        atomic_write(self.path, lambda tmp: torch.save(payload, tmp))
        return self.path

    def __call__(self, epoch: int) -> None:
        """The ``on_epoch_end`` hook: write when ``epoch`` is a multiple of ``every``."""
        if self.every > 0 and epoch % self.every == 0:
            self.save()

    def restore(self, missing_ok: bool = True) -> int:
        """Load the checkpoint into module, trainer, generator and the global random state.

        Parameters
        ----------
        missing_ok
            Without a checkpoint file, warn and start from scratch (True, so a job can
            always be launched with ``resume``), or raise (False).

        Returns
        -------
        int
            The epoch training continues from (0 when starting from scratch).

        Raises
        ------
        InputError
            Unreadable file, or a run fingerprint (settings, genes, data) that differs from
            this run's.
        """
        if self.dist is None or self.dist.is_main:
            for stale in self.path.parent.glob(self.path.name + ".*.tmp"):
                stale.unlink(missing_ok=True)  # left by a process killed while writing
        if not self.path.exists():
            if not missing_ok:
                raise InputError(f"no checkpoint file at {self.path}.")
            warnings.warn(f"resume: no checkpoint at {self.path} yet; training starts from epoch 0.",
                          UserWarning, stacklevel=3)
            return 0
        state = load_checkpoint(self.path)
        try:
            saved = json.loads(state["fingerprint"])
        except (TypeError, ValueError) as exc:
            raise InputError(f"{self.path}: the checkpoint's fingerprint is not valid JSON.") from exc
        current = self.fingerprint
        if isinstance(saved.get("data"), dict) and isinstance(current.get("data"), dict):
            missing = [k for k in _NEWER_DATA_KEYS if k not in saved["data"] and k in current["data"]]
            if missing:  # written by an older sctopic: compare what it recorded
                current = {**current, "data": {k: v for k, v in current["data"].items() if k not in missing}}
        diff = _explain(_differences(saved, current))
        if diff:
            shown = "; ".join(diff[:8]) + (f"; and {len(diff) - 8} more" if len(diff) > 8 else "")
            raise InputError(
                f"{self.path} was written by a different training run and cannot be resumed with "
                f"these settings or data: {shown}. Use the original settings and data, or delete "
                "the checkpoint to start from scratch."
            )
        if state["cuda_rng"] is None and self._cuda():
            raise InputError(f"{self.path} was written on a CPU; resume it on the CPU.")
        try:
            self.module.load_state_dict(state["module"])
            self.trainer.load_state_dict(state["trainer"])
            self.generator.set_state(state["generator"])
            rank_rng = state.get("rank_rng")
            if self.dist is not None and rank_rng is not None and len(rank_rng) == self.dist.world_size:
                from sctopic.train.distributed import set_rng_state

                set_rng_state(rank_rng[self.dist.rank], self.dist)
            else:
                torch.set_rng_state(state["torch_rng"])
                if self._cuda():
                    torch.cuda.set_rng_state(state["cuda_rng"], self.device)
        except (RuntimeError, KeyError, ValueError, TypeError) as exc:
            raise InputError(f"{self.path} does not fit this model: {str(exc)[:300]}") from exc
        try:
            earlier = json.loads(state.get("resumes") or "[]")
        except (TypeError, ValueError):
            earlier = []
        self.resumes = [*earlier, {"from_epoch": int(self.trainer.epoch), "checkpoint": str(self.path),
                                   "at": datetime.now(timezone.utc).isoformat(timespec="seconds")}]
        return int(self.trainer.epoch)


def make_checkpointer(checkpoint_path: str | os.PathLike | None, checkpoint_every: int, resume: bool,
                      *, model: Any, X: Any, settings: dict[str, Any], module: torch.nn.Module,
                      trainer: Any, generator: torch.Generator,
                      device: torch.device | str, dist: Any = None,
                      obs_names: Sequence[Any] | None = None) -> Checkpointer | None:
    """The :class:`Checkpointer` of a ``train()`` call, or None without checkpoint arguments.

    Parameters
    ----------
    checkpoint_path, checkpoint_every, resume
        The ``train()`` arguments (see :func:`check_checkpoint_args`).
    model, X, settings, obs_names
        For :func:`run_fingerprint`.
    module, trainer, generator, device, dist
        See :class:`Checkpointer`. With a distributed ``dist``, the number of processes joins
        the fingerprint's training settings.
    """
    check_checkpoint_args(checkpoint_path, checkpoint_every, resume)
    if checkpoint_path is None:
        return None
    if dist is not None and dist.enabled:
        settings = {**settings, "world_size": int(dist.world_size)}
    return Checkpointer(checkpoint_path, checkpoint_every, module=module, trainer=trainer,
                        generator=generator, fingerprint=run_fingerprint(model, X, settings, obs_names),
                        device=device, dist=dist)


__all__ = ["Checkpointer", "check_checkpoint_args", "load_checkpoint", "make_checkpointer",
           "run_fingerprint"]
