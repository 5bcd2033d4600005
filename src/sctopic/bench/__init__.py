"""Benchmark runner: methods x datasets x seeds -> tidy CSV, mean ± sd table, figures.

* :func:`load_config` / :func:`parse_config`: read and check a YAML configuration
  (:mod:`sctopic.bench.config` documents the schema).
* :func:`run_benchmark`: run what is not done yet, writing ``results.csv`` after every run.
* :func:`write_report`: ``table.md``, ``summary.csv`` and ``figures/*.png`` from the table.

Command line: ``sctopic bench CONFIG.yaml``. Nothing here imports torch until a model runs.
"""
from __future__ import annotations

from sctopic.bench.config import (
    BUILTIN_METHODS,
    MODELS,
    BenchConfig,
    DatasetSpec,
    MethodSpec,
    load_config,
    parse_config,
)
from sctopic.bench.report import TABLE_METRICS, markdown_table, summarize, write_report
from sctopic.bench.runner import RESULTS_CSV, plan_runs, read_results, run_benchmark

__all__ = [
    "BUILTIN_METHODS",
    "BenchConfig",
    "DatasetSpec",
    "MODELS",
    "MethodSpec",
    "RESULTS_CSV",
    "TABLE_METRICS",
    "load_config",
    "markdown_table",
    "parse_config",
    "plan_runs",
    "read_results",
    "run_benchmark",
    "summarize",
    "write_report",
]
