"""The te probe: every "no" has a reason a person can act on, on every TE API generation."""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import types

import pytest
import torch

import te_standin
from teswap.hardware.probe import probe_te, probe_te_fp8, probe_te_recipe
from teswap.hardware.te_api import numerics_environment, parse_te_version
from teswap.store.provenance import Provenance, capture_provenance

GENERATIONS = list(te_standin.GENERATIONS)


class _BrokenTE(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports of transformer_engine.pytorch fail with `error`, as TE's do when something is missing."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def find_spec(self, name, path=None, target=None):
        if name == "transformer_engine.pytorch":
            return importlib.machinery.ModuleSpec(name, self)
        return None

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        raise self.error


def _break_te_import(monkeypatch, error: Exception) -> None:
    package = types.ModuleType("transformer_engine")
    package.__path__ = []  # a package, so the submodule import reaches the finder below
    monkeypatch.setitem(sys.modules, "transformer_engine", package)
    monkeypatch.delitem(sys.modules, "transformer_engine.pytorch", raising=False)
    monkeypatch.setattr(sys, "meta_path", [_BrokenTE(error), *sys.meta_path])


def test_not_installed_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformer_engine", None)
    monkeypatch.setitem(sys.modules, "transformer_engine.pytorch", None)
    result = probe_te()
    assert not result and "not installed" in result.reason and "teswap[te]" in result.reason


def test_a_module_te_imports_is_named_when_missing(monkeypatch):
    """TE imports pydantic, einops, ...: their absence is not "TE is not installed"."""
    _break_te_import(monkeypatch, ModuleNotFoundError("No module named 'pydantic'", name="pydantic"))
    result = probe_te()
    assert not result and "'pydantic'" in result.reason and "TE is not installed" not in result.reason
    assert "transformer_engine is not installed" not in result.reason


def test_a_missing_te_extension_says_how_to_install(monkeypatch):
    _break_te_import(monkeypatch, ModuleNotFoundError("No module named 'transformer_engine_torch'",
                                                      name="transformer_engine_torch"))
    result = probe_te()
    assert not result and result.reason.startswith("transformer_engine_torch is not installed")


def test_broken_extension_import_is_reported_not_raised(monkeypatch):
    _break_te_import(monkeypatch, RuntimeError("cudnn shared object not found."))
    result = probe_te()
    assert not result
    assert result.reason == "transformer_engine.pytorch failed to import: RuntimeError: cudnn shared object not found."


def test_te_older_than_2_0_is_refused_with_the_version(monkeypatch):
    te_standin.install(monkeypatch)
    monkeypatch.setattr(sys.modules["transformer_engine"], "__version__", "1.13.0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    result = probe_te()
    assert not result and result.reason == "teswap's te backend needs TransformerEngine >= 2.0; 1.13 is installed"


@pytest.mark.parametrize("text, parsed", [("2.9.0", (2, 9)), ("2.20.0.dev0+d0067d0", (2, 20)), ("1.13", (1, 13))])
def test_te_versions_parse_to_major_minor(text, parsed):
    assert parse_te_version(text) == parsed


@pytest.mark.parametrize("version", GENERATIONS)
def test_importable_te_without_cuda_says_no_cuda(monkeypatch, version):
    te_standin.install(monkeypatch, version)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    result = probe_te()
    assert not result and "no CUDA device" in result.reason
    fp8 = probe_te_fp8()
    assert not fp8 and fp8.reason == result.reason


@pytest.mark.parametrize("version", GENERATIONS)
def test_fp8_reason_comes_from_the_check_this_te_version_has(monkeypatch, version):
    """TE >= 2.9: transformer_engine.pytorch.is_fp8_available(return_reason=True); before:
    transformer_engine.pytorch.fp8.FP8GlobalStateManager.is_fp8_available() (the stand-in has each
    only where TE has it, and warns, an error here, where TE deprecates it)."""
    module = te_standin.install(monkeypatch, version)
    module.answers["is_fp8_available"] = (False, "Device compute capability 8.9 or higher required for FP8 execution.")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    fp8 = probe_te_fp8()
    assert not fp8
    assert fp8.reason.startswith(f"TransformerEngine {version}: Device compute capability 8.9 or higher "
                                 "required for FP8 execution; DelayedScaling needs compute capability >= 8.9")
    del module.answers["is_fp8_available"]
    probe_te_recipe.cache_clear()
    assert probe_te_fp8()


def test_te_numerics_environment_is_recorded_in_provenance(monkeypatch):
    monkeypatch.setenv("NVTE_FP8_CURRENT_SCALING_POWER_2_SCALES", "1")
    monkeypatch.setenv("NVTE_FUSED_ATTN", "0")
    monkeypatch.setenv("NOT_TE", "x")
    assert numerics_environment() == {"NVTE_FP8_CURRENT_SCALING_POWER_2_SCALES": "1", "NVTE_FUSED_ATTN": "0"}
    provenance = capture_provenance()
    assert provenance.libraries.transformer_engine_env == numerics_environment()
    data = provenance.to_dict()
    assert Provenance.from_dict(data) == provenance
    del data["libraries"]["transformer_engine_env"]  # a record written before this field existed
    assert Provenance.from_dict(data).libraries.transformer_engine_env == {}


@pytest.mark.te
def test_real_te_probe_is_available():
    assert probe_te()
