"""CI regression guard on clustering and topic quality (issue 17).

SCE2TM at its defaults on the bundled pbmc68k_reduced (700 cells, FACS labels), one seed. The
thresholds sit below the spread of five seeds measured by ``benchmarks/bench_quality_guard.py``
(``benchmarks/results/quality_guard.md``, default preset with per-cell reconstruction
weighting: ARI 0.512-0.521, sd 0.003; TD 0.620-0.720, sd 0.042), so a change that costs quality fails here, while the seed-to-seed and
machine-to-machine noise does not.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

GUARD = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_quality_guard.py"
#: min over 5 seeds minus ~4 sd (ARI: its sd of 0.003 is smaller than machine-to-machine
#: differences are likely to be) and ~1.5 sd (TD, whose spread is wider).
MIN_ARI, MIN_TD = 0.50, 0.55


def _guard():
    spec = importlib.util.spec_from_file_location("bench_quality_guard", GUARD)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_default_recipe_keeps_its_quality():
    r = _guard().guard_metrics("default", seed=0)
    assert r["ari"] >= MIN_ARI, f"clustering ARI {r['ari']:.3f} fell below {MIN_ARI} (seed spread 0.512-0.521)"
    assert r["td"] >= MIN_TD, f"topic diversity {r['td']:.3f} fell below {MIN_TD} (seed spread 0.620-0.720)"
