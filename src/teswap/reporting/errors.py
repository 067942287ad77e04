"""Errors the reporting layer raises; the CLI prints each as one line and exits 2."""

from __future__ import annotations

from teswap.errors import TeswapError


class ReportError(TeswapError, ValueError):
    """The store, a revision or an option cannot produce the requested report or comparison."""


class CrossMachineError(ReportError):
    """Two commits were measured on different machines; their timings are not comparable."""
