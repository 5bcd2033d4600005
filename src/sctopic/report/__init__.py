"""A self-contained HTML report of a fitted topic model (``sctopic report``).

See :func:`build_report`.
"""
from sctopic.report.html import build_report, find_evaluation

__all__ = ["build_report", "find_evaluation"]
