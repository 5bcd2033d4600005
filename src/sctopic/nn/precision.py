"""Mixed precision: bfloat16 matrix products where the hardware runs them fast.

``precision="bf16"`` runs the dense matrix products of a training step (the encoder's layers,
``theta @ beta``, the cluster head) in bfloat16 through :func:`torch.autocast`, while the
parameters, the optimiser, the squared distances behind ``beta``, the Sinkhorn solve, sparse
products and every loss stay in float32 (the modules cast their outputs back to float32 and
disable autocast around those parts). bfloat16 keeps float32's exponent range, so no loss
scaling is needed. On CPUs with AVX512-BF16 or AMX, a 1024 x 1287 x 200 product ran 4.6x
faster than in float32 on one core of the 2-core benchmark machine; NVIDIA GPUs from Ampere on
have bf16 tensor cores.
"""
from __future__ import annotations

import contextlib
from functools import lru_cache

import torch

PRECISIONS = ("auto", "32", "bf16")


@lru_cache(maxsize=1)
def cpu_has_fast_bf16() -> bool:
    """Whether this CPU has native bfloat16 dot products (AVX512-BF16 or AMX-BF16; Linux only)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool({"avx512_bf16", "amx_bf16"} & flags)
    except OSError:
        pass
    return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """``"32"`` or ``"bf16"`` for ``precision`` on ``device`` (``"auto"``: bf16 where fast)."""
    precision = str(precision)
    if precision not in PRECISIONS:
        from sctopic.errors import InputError

        raise InputError(f"precision must be one of {PRECISIONS}, got {precision!r}.")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "32"
    if device.type == "cpu":
        return "bf16" if cpu_has_fast_bf16() else "32"
    return "32"


def autocast(device: torch.device, precision: str, cache_enabled: bool = True):
    """The autocast context of a training step (a no-op for ``"32"``). ``cache_enabled=False``
    for steps captured as CUDA graphs (autocast's cache of casted weights must not outlive a
    capture)."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16, cache_enabled=cache_enabled)
    return contextlib.nullcontext()


def full_precision(x: torch.Tensor):
    """A context in which autocast is off on ``x``'s device (float32 islands in a bf16 step)."""
    return torch.autocast(device_type=x.device.type, enabled=False)


def to_full(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32 if autocast left it in a 16-bit type; float32/float64 pass unchanged."""
    return x.float() if x.dtype in (torch.bfloat16, torch.float16) else x


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The dtype autocast gives matmuls on ``device`` now, or ``None`` when it is off."""
    kind = device.type
    try:
        on = torch.is_autocast_enabled(kind)
    except TypeError:  # pragma: no cover - torch < 2.4 has no per-device query
        on = torch.is_autocast_cpu_enabled() if kind == "cpu" else torch.is_autocast_enabled()
    if not on:
        return None
    try:
        return torch.get_autocast_dtype(kind)
    except AttributeError:  # pragma: no cover - torch < 2.4
        return torch.get_autocast_cpu_dtype() if kind == "cpu" else torch.get_autocast_gpu_dtype()
