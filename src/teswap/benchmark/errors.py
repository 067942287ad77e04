"""Errors the benchmark harness raises; `teswap bench` turns them into one line and exit code 2."""

from __future__ import annotations

from teswap.errors import TeswapError


class BenchConfigError(TeswapError, ValueError):
    """A sweep or timing setting is invalid (unknown workload, empty list, negative budget...)."""

