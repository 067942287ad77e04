"""Typed errors teswap raises; the CLI turns each into one line and exit code 2."""

from __future__ import annotations


class TeswapError(Exception):
    """Base class: something the user can fix, reported without a traceback."""


class UnsupportedConfigError(TeswapError, ValueError):
    """The model config asks for something a TE-layout decoder layer cannot express."""


class UnsupportedInputError(TeswapError, ValueError):
    """A forward call asks for something the swapped layer does not honour (cache, padding)."""


class MappingError(TeswapError, KeyError):
    """A state dict has keys the HF<->TE mapping does not account for, or lacks keys it needs."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class BackendUnavailableError(TeswapError, RuntimeError):
    """The requested backend cannot run here; the message carries the probe's reason."""


class SourceError(TeswapError, ValueError):
    """A model source (preset name, config, directory) cannot be resolved."""
