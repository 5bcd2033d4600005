"""CI regression guard on clustering and topic quality (issue 17).

SCE2TM at its defaults on the bundled pbmc68k_reduced (700 cells, FACS labels), one seed. The
thresholds sit below the spread of five seeds measured by ``benchmarks/bench_quality_guard.py``
(``benchmarks/results/quality_guard.md``, default preset without neighbour rows since
2026-12-04: ARI 0.525-0.546, sd 0.009; TD 0.580-0.670, sd 0.033; with them ARI 0.512-0.521,
TD 0.620-0.720), so a change that costs quality fails here, while the seed-to-seed and
machine-to-machine noise does not.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

GUARD = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_quality_guard.py"
#: min over 5 seeds minus ~3 sd (ARI) and ~1 sd (TD, whose spread is wider).
MIN_ARI, MIN_TD = 0.50, 0.55


def _guard():
    spec = importlib.util.spec_from_file_location("bench_quality_guard", GUARD)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_default_recipe_keeps_its_quality():
    r = _guard().guard_metrics("default", seed=0)
    assert r["ari"] >= MIN_ARI, f"clustering ARI {r['ari']:.3f} fell below {MIN_ARI} (seed spread 0.525-0.546)"
    assert r["td"] >= MIN_TD, f"topic diversity {r['td']:.3f} fell below {MIN_TD} (seed spread 0.580-0.670)"
