"""Policies from names or JSON files, and `--tol` overrides of single bounds."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from teswap.parity.policies import POLICIES
from teswap.parity.rule import METRICS, RELATIVE_SUFFIX, Bound, Policy, PolicyError

_POLICY_FIELDS = {"base", "name", "version", "description", "provenance", "bounds"}
_BOUND_FIELDS = {"kind", "value", "slack", "provenance"}


def get_policy(name_or_path: str | os.PathLike[str]) -> Policy:
    """A named policy (a key of POLICIES) or one read from a JSON file.

    File shape; with "base", every field but "bounds" is optional and bounds change the base's:
        {"base": "bf16",                 # optional: a name in POLICIES to start from
         "name": "bf16-strict",          # without base: required; with it: "<base>+<file stem>"
         "version": 1, "description": "...", "provenance": "...",
         "bounds": {"kl_div": 0.001,                              # a number sets the value
                    "kl_div_vs_stock": {"value": 4, "slack": 1e-6, "provenance": "..."},
                    "top5_agreement": {"value": 0.95},            # new bound: kind follows the metric
                    "max_abs": null}}                             # drops the base's bound
    Bound keys are metric names, plus "_vs_stock" for relative bounds; `Policy.to_dict` writes this.
    """
    name = os.fspath(name_or_path)
    if name in POLICIES:
        return POLICIES[name]()
    path = Path(name)
    if path.suffix != ".json" and os.sep not in name and not path.exists():
        raise PolicyError(f"unknown policy {name!r}; known: {', '.join(POLICIES)}, or a path to a .json file")
    if not path.is_file():
        raise PolicyError(f"policy file not found: {name}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise PolicyError(f"{name}: not valid JSON ({error.msg}, line {error.lineno})") from None
    return policy_from_dict(data, origin=name)


def policy_from_dict(data: Any, *, origin: str = "policy dict") -> Policy:
    """A policy from the JSON shape `get_policy` documents; `origin` prefixes error messages."""
    if not isinstance(data, dict):
        raise PolicyError(f"{origin}: a policy file holds a JSON object, not {type(data).__name__}")
    unknown = sorted(data.keys() - _POLICY_FIELDS)
    if unknown:
        raise PolicyError(f"{origin}: unknown field(s) {unknown}; allowed: {sorted(_POLICY_FIELDS)}")
    bounds = data.get("bounds", {})
    if not isinstance(bounds, dict):
        raise PolicyError(f"{origin}: 'bounds' must be an object keyed by bound name")
    header = {key: data[key] for key in ("name", "version", "description", "provenance") if key in data}
    for key, wanted in (("name", str), ("version", int), ("description", str), ("provenance", str)):
        if key in header and (not isinstance(header[key], wanted) or isinstance(header[key], bool)):
            raise PolicyError(f"{origin}: {key!r} must be a {wanted.__name__}")
    if "base" in data:
        base_name = data["base"]
        if not isinstance(base_name, str) or base_name not in POLICIES:
            raise PolicyError(f"{origin}: unknown base policy {base_name!r}; known: {', '.join(POLICIES)}")
        base = POLICIES[base_name]()
        header.setdefault("name", f"{base.name}+{Path(origin).stem}")
        header.setdefault("provenance", f"{origin} over {base.name} v{base.version}: {base.provenance}")
    else:
        missing = sorted({"name", "version", "description", "provenance"} - header.keys())
        if missing:
            raise PolicyError(f"{origin}: a policy without 'base' needs {missing}")
        base = None
    changes = {key: _as_change(key, entry, origin) for key, entry in bounds.items()}
    return _with_changes(base, changes, origin, header)


def override(policy: Policy, values: Mapping[str, float]) -> Policy:
    """`policy` with bound values replaced, e.g. {"kl_div": 0.01, "kl_div_vs_stock.slack": 1e-6}.

    A key names a bound (metric, or metric + "_vs_stock"), optionally with ".slack"; a bound the
    policy lacks is added. Changed bounds say so in their provenance.
    """
    changes: dict[str, dict[str, Any]] = {}
    for key, number in values.items():
        bound_key, _, field = key.partition(".")
        if field not in ("", "slack"):
            raise PolicyError(f"--tol {key}: only BOUND or BOUND.slack can be overridden")
        changes.setdefault(bound_key, {})[field or "value"] = _number(number, f"--tol {key}")
    return _with_changes(policy, changes, "--tol", {})


def parse_overrides(items: Iterable[str]) -> dict[str, float]:
    """{"kl_div": 0.01} from command-line strings like "kl_div=0.01"."""
    parsed = {}
    for item in items:
        key, _, text = item.partition("=")
        try:
            parsed[key.strip()] = float(text)
        except ValueError:
            raise PolicyError(f"--tol expects BOUND=NUMBER (e.g. kl_div=0.01), got {item!r}") from None
        if not key.strip():
            raise PolicyError(f"--tol expects BOUND=NUMBER (e.g. kl_div=0.01), got {item!r}")
    return parsed


def _as_change(key: str, entry: Any, origin: str) -> dict[str, Any] | None:
    """A file's bound entry as fields to set (None: drop the bound)."""
    if entry is None:
        return None
    if not isinstance(entry, dict):
        return {"value": _number(entry, f"{origin}: bound {key}")}
    unknown = sorted(entry.keys() - _BOUND_FIELDS)
    if unknown:
        raise PolicyError(f"{origin}: bound {key}: unknown field(s) {unknown}; allowed: {sorted(_BOUND_FIELDS)}")
    change = dict(entry)
    for field in ("value", "slack"):
        if field in change:
            change[field] = _number(change[field], f"{origin}: bound {key}.{field}")
    return change


def _with_changes(base: Policy | None, changes: Mapping[str, dict[str, Any] | None], origin: str,
                  header: Mapping[str, Any]) -> Policy:
    bounds = dict(base.bounds) if base else {}
    try:
        for key, change in changes.items():
            if change is None:
                if bounds.pop(key, None) is None:
                    raise PolicyError(f"cannot drop bound {key}: the base policy has none")
            elif key in bounds:
                note = f"set by {origin}, replacing {bounds[key].rule()}"
                bounds[key] = replace(bounds[key], **{"provenance": note, **change})
            else:
                bounds[key] = _new_bound(key, change, origin)
        if base is None:
            return Policy(bounds=bounds, **header)
        return replace(base, bounds=bounds, **header)
    except PolicyError as error:
        raise PolicyError(f"{origin}: {error}") from None


def _new_bound(key: str, change: Mapping[str, Any], origin: str) -> Bound:
    metric = key.removesuffix(RELATIVE_SUFFIX)
    if metric not in METRICS:
        raise PolicyError(f"unknown bound {key!r}; bounds are a metric ({', '.join(METRICS)}), "
                          f"optionally + {RELATIVE_SUFFIX!r}")
    if "value" not in change:
        raise PolicyError(f"new bound {key} needs a value")
    fields = {"kind": METRICS[metric][0], "provenance": f"set by {origin}", **change}
    return Bound(metric=metric, relative_to_stock=key != metric, **fields)


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PolicyError(f"{where} must be a number, got {value!r}")
    return float(value)
