"""The te probe: every "no" has a reason a person can act on."""

from __future__ import annotations

import importlib.abc
import sys

import pytest
import torch

import te_standin
from teswap.hardware.probe import probe_te, probe_te_fp8


class _BrokenTE(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports of transformer_engine.pytorch fail as they do on a CPU machine with TE's wheel."""

    def find_spec(self, name, path=None, target=None):
        if name == "transformer_engine.pytorch":
            return importlib.machinery.ModuleSpec(name, self)
        return None

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        raise RuntimeError("cudnn shared object not found.")


def test_not_installed_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformer_engine", None)
    monkeypatch.setitem(sys.modules, "transformer_engine.pytorch", None)
    result = probe_te()
    assert not result and "not installed" in result.reason and "teswap[te]" in result.reason


def test_broken_extension_import_is_reported_not_raised(monkeypatch):
    import types

    package = types.ModuleType("transformer_engine")
    package.__path__ = []  # a package, so the submodule import reaches the finder below
    monkeypatch.setitem(sys.modules, "transformer_engine", package)
    monkeypatch.delitem(sys.modules, "transformer_engine.pytorch", raising=False)
    monkeypatch.setattr(sys, "meta_path", [_BrokenTE(), *sys.meta_path])
    result = probe_te()
    assert not result
    assert result.reason == "transformer_engine.pytorch failed to import: RuntimeError: cudnn shared object not found."


def test_importable_te_without_cuda_says_no_cuda(monkeypatch):
    te_standin.install(monkeypatch)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    result = probe_te()
    assert not result and "no CUDA device" in result.reason
    fp8 = probe_te_fp8()
    assert not fp8 and fp8.reason == result.reason


def test_fp8_reason_comes_from_te(monkeypatch):
    module = te_standin.install(monkeypatch)
    module.is_fp8_available = lambda return_reason=False: (
        (False, "Device compute capability 8.9 or higher required for FP8 execution.") if return_reason else False
    )
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    fp8 = probe_te_fp8()
    expected = "TransformerEngine: Device compute capability 8.9 or higher required for FP8 execution."
    assert not fp8 and fp8.reason == expected


@pytest.mark.te
def test_real_te_probe_is_available():
    assert probe_te()
