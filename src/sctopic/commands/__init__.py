"""CLI command modules, one per sub-command; see :mod:`sctopic.cli`."""
